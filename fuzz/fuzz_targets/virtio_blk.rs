//! virtio-blk: `block::parse_request` and the `BlockWorker` (sync or io_uring engine,
//! read-write or read-only) over a small raw image in a temp file.
//!
//! Input: `data[0]` holds the switches (bit 0 io_uring, bit 1 EVENT_IDX, bit 2
//! structured, bit 3 read-only); the rest is either
//! - raw: guest memory itself (descriptor table, rings, headers, buffers: anything goes),
//! - structured: a list of requests, each a type, a sector and a few descriptors with
//!   lengths, flags and addresses from the input, linked correctly (direct or through an
//!   indirect table) and offered on the avail ring, so the fuzzer spends its time on
//!   request semantics (sector ranges at the end of the disk, odd lengths, segments of
//!   discard/write-zeroes, buffers over the rings) rather than on finding a valid chain.
//!
//! Every chain is first given to `parse_request` on a queue of its own, and what it
//! accepts is checked against guest memory and the disk's size; then the worker serves
//! the queue (kicked twice, io_uring completions waited for). Afterwards the image must
//! have its size and no more allocated blocks than a full image: nothing was written
//! outside it.
#![no_main]
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::OnceLock;

use block::request::{SECTOR_SIZE, req_type};
use block::{BlockWorker, Request, RequestKind, parse_request};
use libfuzzer_sys::fuzz_target;
use virtio_devices::device::{DeviceWorker, VmMemory, pop_chain};
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Sectors of the image: small, so requests at and past its end are easy to reach.
const SECTORS: u64 = 64;
const IMAGE_BYTES: u64 = SECTORS * SECTOR_SIZE;
const MEM_SIZE: usize = 256 << 10;
const QSIZE: u16 = 64;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Indirect tables of the structured mode, one 1 KiB slot per request.
const INDIRECT: u64 = 0x4000;
/// Start of the data area of the structured mode.
const DATA: u64 = 0x1_0000;
/// Most requests of one structured input.
const MAX_REQUESTS: usize = 32;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

struct Image {
    /// The image, unlinked at once (libFuzzer leaves by `exit`, so nothing would remove
    /// it later); the worker opens it again through `path`.
    file: File,
    /// `/proc/self/fd/N` of `file`.
    path: PathBuf,
    /// 512-byte blocks of the fully written image.
    full_blocks: u64,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let named = dir.join(format!("vireo-fuzz-blk-{}.raw", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&named)
            .expect("fuzz image");
        let _ = std::fs::remove_file(&named);
        file.write_all_at(&fill(), 0).expect("fuzz image");
        let full_blocks = file.metadata().expect("fuzz image").blocks();
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Image {
            file,
            path,
            full_blocks,
        }
    })
}

fn fill() -> Vec<u8> {
    (0..IMAGE_BYTES)
        .map(|i| (i / SECTOR_SIZE) as u8 ^ 0xa5)
        .collect()
}

/// Input bytes, read front to back; zeroes once they run out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

fn set_desc(mem: &VmMemory, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let raw = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
    let _ = mem.write_obj(raw, GuestAddress(at));
}

fn new_queue(event_idx: bool) -> Queue {
    let mut q = Queue::new(QSIZE).expect("queue size");
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// Lay out requests described by the input: each becomes a well-linked chain.
fn structured(mem: &VmMemory, input: &mut Cursor) {
    let mut next_desc = 0u16;
    let mut avail = 0u16;
    for slot in 0..MAX_REQUESTS as u64 {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        let t = match sel % 8 {
            0 | 7 => req_type::IN,
            1 => req_type::OUT,
            2 => req_type::FLUSH,
            3 => req_type::GET_ID,
            4 => req_type::DISCARD,
            5 => req_type::WRITE_ZEROES,
            _ => input.u32(),
        };
        let s = input.u8();
        let sector = if s & 0x80 != 0 {
            input.u64()
        } else {
            u64::from(s)
        };
        let shape = input.u8();
        let indirect = shape & 0x80 != 0;
        // Header split over one or two descriptors (bit 6), 0-3 data descriptors.
        let split_header = shape & 0x40 != 0;
        let ndata = usize::from(shape & 3);
        let hdr_addr = INDIRECT + 0x8000 + slot * 16;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        let _ = mem.write_slice(&h, GuestAddress(hdr_addr));
        let mut descs: Vec<(u64, u32, u16)> = if split_header {
            vec![(hdr_addr, 8, 0), (hdr_addr + 8, 8, 0)]
        } else {
            vec![(hdr_addr, 16, 0)]
        };
        for _ in 0..ndata {
            let len = u32::from(input.u16());
            let flags = input.u8();
            let addr = if flags & 0x80 != 0 {
                input.u64()
            } else {
                DATA + u64::from(input.u16()) * 2
            };
            // Device-readable data gets its first bytes (discard/write-zeroes segments)
            // from the input.
            let content = usize::from(flags >> 2 & 0x1f) * 4;
            if flags & 1 == 0 {
                let bytes = input.bytes(content.min(len as usize)).to_vec();
                let _ = mem.write_slice(&bytes, GuestAddress(addr));
            }
            descs.push((addr, len, if flags & 1 != 0 { WRITE } else { 0 }));
        }
        let st = input.u8();
        // Usually one writable status byte; sometimes longer, empty or read-only.
        let st_len = if st & 0x10 != 0 {
            u32::from(st & 0x0f)
        } else {
            1
        };
        let st_flags = if st & 0x20 != 0 { 0 } else { WRITE };
        descs.push((INDIRECT + 0xa000 + slot * 16, st_len, st_flags));

        let n = descs.len() as u16;
        let head = if indirect {
            let table = INDIRECT + slot * 0x100;
            for (i, (a, l, f)) in descs.iter().enumerate() {
                let i = i as u16;
                let flags = if i + 1 < n { f | NEXT } else { *f };
                set_desc(mem, table + u64::from(i) * 16, *a, *l, flags, i + 1);
            }
            if next_desc >= QSIZE {
                break;
            }
            let head = next_desc;
            set_desc(
                mem,
                DESC + u64::from(head) * 16,
                table,
                u32::from(n) * 16,
                F_INDIRECT,
                0,
            );
            next_desc += 1;
            head
        } else {
            if next_desc + n > QSIZE {
                break;
            }
            let head = next_desc;
            for (i, (a, l, f)) in descs.iter().enumerate() {
                let idx = head + i as u16;
                let flags = if i + 1 < usize::from(n) { f | NEXT } else { *f };
                set_desc(mem, DESC + u64::from(idx) * 16, *a, *l, flags, idx + 1);
            }
            next_desc += n;
            head
        };
        let _ = mem.write_obj(head, GuestAddress(AVAIL + 4 + u64::from(avail) * 2));
        avail += 1;
    }
    let _ = mem.write_obj(avail, GuestAddress(AVAIL + 2));
}

fn in_memory(mem: &VmMemory, addr: GuestAddress, len: u64, access: Permissions) -> bool {
    len == 0 || mem.check_range(addr, len as usize, access)
}

/// What `parse_request` accepts lies in guest memory and on the disk.
fn check_request(mem: &VmMemory, r: &Request) {
    assert!(in_memory(mem, r.status, 1, Permissions::Write));
    match &r.kind {
        RequestKind::Read { sector, buffers } | RequestKind::Write { sector, buffers } => {
            let access = if matches!(r.kind, RequestKind::Read { .. }) {
                Permissions::Write
            } else {
                Permissions::Read
            };
            let mut total = 0u64;
            for b in buffers {
                assert!(in_memory(mem, b.addr, u64::from(b.len), access));
                total += u64::from(b.len);
            }
            assert_eq!(total % SECTOR_SIZE, 0, "data not whole sectors");
            assert!(
                sector
                    .checked_add(total / SECTOR_SIZE)
                    .is_some_and(|end| end <= SECTORS),
                "{sector}+{} beyond the disk",
                total / SECTOR_SIZE
            );
        }
        RequestKind::GetId { buffers } => {
            assert!(!buffers.is_empty());
            for b in buffers {
                assert!(in_memory(mem, b.addr, u64::from(b.len), Permissions::Write));
            }
        }
        RequestKind::Discard(ranges) | RequestKind::WriteZeroes(ranges) => {
            assert!(!ranges.is_empty() && ranges.len() <= 32);
            for r in ranges {
                assert!(
                    r.sector
                        .checked_add(u64::from(r.num_sectors))
                        .is_some_and(|end| end <= SECTORS),
                    "range {r:?} beyond the disk"
                );
            }
        }
        RequestKind::Flush => {}
    }
}

fn parse_all(mem: &VmMemory, event_idx: bool) {
    let mut q = new_queue(event_idx);
    for _ in 0..QSIZE {
        let Ok(Some(chain)) = pop_chain(&mut q, mem) else {
            return;
        };
        match parse_request(mem, chain, SECTORS) {
            Ok(r) => check_request(mem, &r),
            Err(e) => {
                if let Some((addr, _)) = e.status() {
                    assert!(in_memory(mem, addr, 1, Permissions::Write));
                }
            }
        }
    }
}

/// Serve the queue: two kicks, each followed by io_uring completions until none is in
/// flight. The worker is quiesced before guest memory goes away.
fn drive(worker: &mut BlockWorker, mem: &VmMemory, event_idx: bool) {
    let mut q = new_queue(event_idx);
    let irq = TestInterrupt::default();
    for _ in 0..2 {
        if worker.process_queue(0, &mut [&mut q], mem, &irq).is_err() {
            break;
        }
        let mut failed = false;
        while worker.in_flight() > 0 && !failed {
            let fds = worker.extra_fds();
            let mut p = libc::pollfd {
                fd: fds[0],
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack.
            let n = unsafe { libc::poll(&mut p, 1, 5000) };
            assert!(n > 0, "io_uring requests never completed");
            failed = worker.process_extra(0, &mut [&mut q], mem, &irq).is_err();
        }
        if failed {
            break;
        }
    }
    worker.quiesce();
    assert_eq!(worker.in_flight(), 0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&switches, rest)) = data.split_first() else {
        return;
    };
    let uring = switches & 1 != 0 && block::io_uring_available();
    let event_idx = switches & 2 != 0;
    let readonly = switches & 8 != 0;
    let img = image();
    img.file.write_all_at(&fill(), 0).expect("reset image");

    let mem = guest_memory(MEM_SIZE);
    if switches & 4 != 0 {
        structured(&mem, &mut Cursor(rest));
    } else {
        let _ = mem.write_slice(&rest[..rest.len().min(MEM_SIZE)], GuestAddress(0));
    }
    parse_all(&mem, event_idx);

    let cfg = api::DiskConfig {
        id: None,
        path: img.path.clone(),
        readonly,
        format: api::DiskFormat::Raw,
        serial: Some("fuzz".into()),
        rate_limit: api::RateLimit::default(),
        io_engine: if uring {
            api::IoEngine::IoUring
        } else {
            api::IoEngine::Sync
        },
    };
    let mut worker = BlockWorker::new(&cfg).expect("open fuzz image");
    assert_eq!(worker.capacity_sectors(), SECTORS);
    drive(&mut worker, &mem, event_idx);
    drop(worker);

    let meta = img.file.metadata().expect("fuzz image");
    assert_eq!(meta.len(), IMAGE_BYTES, "the image changed size");
    assert!(
        meta.blocks() <= img.full_blocks,
        "blocks allocated beyond the image: {} > {}",
        meta.blocks(),
        img.full_blocks
    );
    if readonly {
        let mut now = vec![0u8; IMAGE_BYTES as usize];
        img.file.read_exact_at(&mut now, 0).expect("image");
        assert!(now == fill(), "a read-only disk was written");
    }
});
