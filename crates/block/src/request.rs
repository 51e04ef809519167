//! Parsing one virtio-blk request (virtio 1.2, section 5.2.6) from a descriptor chain.
//!
//! [`parse_request`] is a pure function of guest memory and the chain: it reads the
//! header and the discard/write-zeroes segments, checks every buffer lies in guest
//! memory, every sector range lies on the disk, and lengths are whole sectors. It writes
//! nothing, so it can be fuzzed on its own. The layout is free (`VIRTIO_F_ANY_LAYOUT` is
//! implied by `VERSION_1`): the 16-byte header is the first 16 device-readable bytes,
//! the status is the last byte of the last descriptor, which must be device-writable.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes per virtio-blk sector, whatever the block size.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Size of the request header (`type`, `reserved`, `sector`).
pub const HEADER_SIZE: u64 = 16;
/// Length of a `VIRTIO_BLK_T_GET_ID` answer.
pub const ID_BYTES: usize = 20;
/// Most data buffers in one read or write (the kernel's `IOV_MAX`).
pub const MAX_SEGMENTS: usize = 1024;
/// Most descriptors looked at in one chain; longer chains are refused.
pub const MAX_DESCRIPTORS: usize = MAX_SEGMENTS + 2;
/// Most segments in one discard or write-zeroes request (`max_discard_seg`,
/// `max_write_zeroes_seg`).
pub const MAX_DWZ_SEGMENTS: u32 = 32;
/// Most sectors in one discard or write-zeroes segment (`max_discard_sectors`,
/// `max_write_zeroes_sectors`): 2 GiB.
pub const MAX_DWZ_SECTORS: u32 = 1 << 22;
/// Size of one discard/write-zeroes segment in the request.
const DWZ_SEGMENT_SIZE: u64 = 16;
/// The only defined flag of a discard/write-zeroes segment.
const DWZ_FLAG_UNMAP: u32 = 1;

/// Request types (`virtio_blk_req.type`).
pub mod req_type {
    /// Read sectors.
    pub const IN: u32 = 0;
    /// Write sectors.
    pub const OUT: u32 = 1;
    /// Make completed writes durable.
    pub const FLUSH: u32 = 4;
    /// Read the device serial.
    pub const GET_ID: u32 = 8;
    /// Discard sectors.
    pub const DISCARD: u32 = 11;
    /// Zero sectors.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request not supported.
    pub const UNSUPP: u8 = 2;
}

/// A contiguous guest buffer of a request's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// One segment of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// The driver allows the range to be deallocated (write-zeroes only).
    pub unmap: bool,
}

impl SectorRange {
    /// Byte offset on the disk.
    pub fn offset(&self) -> u64 {
        self.sector << SECTOR_SHIFT
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.num_sectors) << SECTOR_SHIFT
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.num_sectors == 0
    }
}

/// What a well-formed request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Read from `sector` into the buffers.
    Read {
        /// First sector.
        sector: u64,
        /// Device-writable data buffers, whole sectors in total.
        buffers: Vec<Buffer>,
    },
    /// Write the buffers at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Device-readable data buffers, whole sectors in total.
        buffers: Vec<Buffer>,
    },
    /// Make every completed write durable.
    Flush,
    /// Write the serial (up to [`ID_BYTES`]) into the buffers.
    GetId {
        /// Device-writable buffers.
        buffers: Vec<Buffer>,
    },
    /// Discard these ranges (their content becomes unspecified).
    Discard(Vec<SectorRange>),
    /// Make these ranges read as zeroes.
    WriteZeroes(Vec<SectorRange>),
}

/// A parsed request: what to do and where its status byte goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub kind: RequestKind,
    /// Guest address of the status byte (checked to be in guest memory).
    pub status: GuestAddress,
}

impl Request {
    /// Bytes of data moved between guest and disk (for rate limiting).
    pub fn data_len(&self) -> u64 {
        match &self.kind {
            RequestKind::Read { buffers, .. } | RequestKind::Write { buffers, .. } => {
                total_len(buffers)
            }
            _ => 0,
        }
    }
}

/// Why a chain is not a request the device can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain ends in a loop, a bad next index, a bad indirect table or a descriptor
    /// table outside memory: where it ends (and so its status byte) is unknown.
    #[error("broken descriptor chain")]
    BrokenChain,
    /// The chain has more than [`MAX_DESCRIPTORS`] descriptors.
    #[error("descriptor chain longer than {MAX_DESCRIPTORS}")]
    TooManyDescriptors,
    /// The last descriptor is not a device-writable byte in guest memory.
    #[error("no device-writable status byte at the end of the chain")]
    NoStatus,
    /// The request is malformed; answered with `VIRTIO_BLK_S_IOERR`.
    #[error("invalid request: {reason}")]
    Invalid {
        /// Where the status byte goes.
        status: GuestAddress,
        /// What is wrong.
        reason: String,
    },
    /// The request type or a flag is not supported; answered with `VIRTIO_BLK_S_UNSUPP`.
    #[error("unsupported request: {reason}")]
    Unsupported {
        /// Where the status byte goes.
        status: GuestAddress,
        /// What is not supported.
        reason: String,
    },
}

impl RequestError {
    /// Where to write the answer, if the chain has a status byte.
    pub fn status(&self) -> Option<(GuestAddress, u8)> {
        match self {
            Self::Invalid { status: s, .. } => Some((*s, status::IOERR)),
            Self::Unsupported { status: s, .. } => Some((*s, status::UNSUPP)),
            _ => None,
        }
    }
}

fn total_len(buffers: &[Buffer]) -> u64 {
    buffers.iter().map(|b| u64::from(b.len)).sum()
}

#[derive(Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    writable: bool,
}

/// Parse the request in `chain` for a disk of `capacity_sectors` sectors.
///
/// Checks made here (each failure is a [`RequestError`], never a panic): the chain is
/// complete and at most [`MAX_DESCRIPTORS`] long; its last byte is device-writable and
/// in memory; device-readable descriptors come before device-writable ones; every buffer
/// lies in guest memory; the header is 16 device-readable bytes; read/write data is whole
/// sectors, at most [`MAX_SEGMENTS`] buffers, and within the disk; discard/write-zeroes
/// segments are whole, at most [`MAX_DWZ_SEGMENTS`], within the disk, with known flags.
/// Whether the disk is read-only is for the caller to check.
pub fn parse_request<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    capacity_sectors: u64,
) -> Result<Request, RequestError> {
    let mut descs: Vec<Desc> = Vec::new();
    let mut last_has_next = false;
    for d in chain {
        if descs.len() == MAX_DESCRIPTORS {
            return Err(RequestError::TooManyDescriptors);
        }
        last_has_next = d.has_next();
        descs.push(Desc {
            addr: d.addr(),
            len: d.len(),
            writable: d.is_write_only(),
        });
    }
    // The chain iterator stops early (after a descriptor that says "next") on loops,
    // bad indices and unreadable tables.
    let Some(last) = descs.last().copied() else {
        return Err(RequestError::BrokenChain);
    };
    if last_has_next {
        return Err(RequestError::BrokenChain);
    }
    if !last.writable || last.len == 0 {
        return Err(RequestError::NoStatus);
    }
    let status = last
        .addr
        .checked_add(u64::from(last.len) - 1)
        .filter(|a| mem.check_range(*a, 1, Permissions::Write))
        .ok_or(RequestError::NoStatus)?;
    let invalid = |reason: &str| RequestError::Invalid {
        status,
        reason: reason.to_string(),
    };

    // The status byte is no data.
    if let Some(d) = descs.last_mut() {
        d.len -= 1;
    }
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in &descs {
        if d.len == 0 {
            continue;
        }
        let access = if d.writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(d.addr, d.len as usize, access) {
            return Err(invalid("buffer outside guest memory"));
        }
        let b = Buffer {
            addr: d.addr,
            len: d.len,
        };
        if d.writable {
            writable.push(b);
        } else if !writable.is_empty() {
            return Err(invalid(
                "device-readable buffer after a device-writable one",
            ));
        } else {
            readable.push(b);
        }
    }

    if total_len(&readable) < HEADER_SIZE {
        return Err(if descs.first().is_some_and(|d| d.writable) {
            invalid("header in a device-writable descriptor")
        } else {
            invalid("header shorter than 16 bytes")
        });
    }
    let (header, data_out) = split_at(&readable, HEADER_SIZE);
    let mut hdr = [0u8; HEADER_SIZE as usize];
    read_buffers(mem, &header, &mut hdr).map_err(|_| invalid("header unreadable"))?;
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = hdr;
    let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes(s);

    let kind = match req_type {
        req_type::IN | req_type::OUT => {
            let buffers = if req_type == req_type::IN {
                writable
            } else {
                data_out
            };
            check_data(&buffers, sector, capacity_sectors).map_err(|r| invalid(&r))?;
            if req_type == req_type::IN {
                RequestKind::Read { sector, buffers }
            } else {
                RequestKind::Write { sector, buffers }
            }
        }
        req_type::FLUSH => RequestKind::Flush,
        req_type::GET_ID => {
            if writable.is_empty() {
                return Err(invalid("GET_ID without a device-writable buffer"));
            }
            RequestKind::GetId { buffers: writable }
        }
        req_type::DISCARD | req_type::WRITE_ZEROES => {
            let discard = req_type == req_type::DISCARD;
            let ranges = parse_ranges(mem, &data_out, capacity_sectors, discard, status)?;
            if discard {
                RequestKind::Discard(ranges)
            } else {
                RequestKind::WriteZeroes(ranges)
            }
        }
        t => {
            return Err(RequestError::Unsupported {
                status,
                reason: format!("request type {t}"),
            });
        }
    };
    Ok(Request { kind, status })
}

/// Check read/write data: whole sectors, not too many buffers, within the disk.
fn check_data(buffers: &[Buffer], sector: u64, capacity: u64) -> Result<(), String> {
    if buffers.len() > MAX_SEGMENTS {
        return Err(format!("more than {MAX_SEGMENTS} data buffers"));
    }
    let len = total_len(buffers);
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(format!("data length {len} is not a multiple of 512"));
    }
    match sector.checked_add(len >> SECTOR_SHIFT) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(format!(
            "sectors {sector}+{} beyond the disk ({capacity} sectors)",
            len >> SECTOR_SHIFT
        )),
    }
}

/// The discard/write-zeroes segments in `data`.
fn parse_ranges<M: GuestMemory>(
    mem: &M,
    data: &[Buffer],
    capacity: u64,
    discard: bool,
    status: GuestAddress,
) -> Result<Vec<SectorRange>, RequestError> {
    let invalid = |reason: String| RequestError::Invalid { status, reason };
    let len = total_len(data);
    if len == 0 || !len.is_multiple_of(DWZ_SEGMENT_SIZE) {
        return Err(invalid(format!(
            "segment data of {len} bytes is not a whole number of 16-byte segments"
        )));
    }
    let count = len / DWZ_SEGMENT_SIZE;
    if count > u64::from(MAX_DWZ_SEGMENTS) {
        return Err(invalid(format!(
            "{count} segments, at most {MAX_DWZ_SEGMENTS}"
        )));
    }
    // At most 32 segments of 16 bytes: 512 bytes.
    let mut raw = vec![0u8; len as usize];
    read_buffers(mem, data, &mut raw).map_err(|_| invalid("segments unreadable".into()))?;
    let mut ranges = Vec::with_capacity(count as usize);
    for seg in raw.chunks_exact(DWZ_SEGMENT_SIZE as usize) {
        let mut s = [0u8; 8];
        let mut n = [0u8; 4];
        let mut f = [0u8; 4];
        s.copy_from_slice(&seg[0..8]);
        n.copy_from_slice(&seg[8..12]);
        f.copy_from_slice(&seg[12..16]);
        let range = SectorRange {
            sector: u64::from_le_bytes(s),
            num_sectors: u32::from_le_bytes(n),
            unmap: u32::from_le_bytes(f) & DWZ_FLAG_UNMAP != 0,
        };
        let flags = u32::from_le_bytes(f);
        if flags & !DWZ_FLAG_UNMAP != 0 || (discard && range.unmap) {
            return Err(RequestError::Unsupported {
                status,
                reason: format!("segment flags {flags:#x}"),
            });
        }
        if range.num_sectors > MAX_DWZ_SECTORS {
            return Err(invalid(format!(
                "segment of {} sectors, at most {MAX_DWZ_SECTORS}",
                range.num_sectors
            )));
        }
        match range.sector.checked_add(u64::from(range.num_sectors)) {
            Some(end) if end <= capacity => ranges.push(range),
            _ => {
                return Err(invalid(format!(
                    "segment {}+{} beyond the disk ({capacity} sectors)",
                    range.sector, range.num_sectors
                )));
            }
        }
    }
    Ok(ranges)
}

/// Split `buffers` after `at` bytes (which must not exceed their total).
fn split_at(buffers: &[Buffer], at: u64) -> (Vec<Buffer>, Vec<Buffer>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut left = at;
    for b in buffers {
        let len = u64::from(b.len);
        if left >= len {
            head.push(*b);
            left -= len;
        } else if left > 0 {
            // `left` < `b.len`, so it fits in u32 and the address stays in the buffer.
            let l = left as u32;
            head.push(Buffer {
                addr: b.addr,
                len: l,
            });
            tail.push(Buffer {
                addr: b.addr.unchecked_add(u64::from(l)),
                len: b.len - l,
            });
            left = 0;
        } else {
            tail.push(*b);
        }
    }
    (head, tail)
}

/// Fill `out` from the buffers in order.
fn read_buffers<M: GuestMemory>(
    mem: &M,
    buffers: &[Buffer],
    out: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0usize;
    for b in buffers {
        if done >= out.len() {
            break;
        }
        let n = (b.len as usize).min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], b.addr)?;
        done += n;
    }
    Ok(())
}
