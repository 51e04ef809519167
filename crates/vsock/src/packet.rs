//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) and how packets are read
//! from TX chains and written into RX chains in guest memory.
//!
//! This module owns the wire format only: it knows nothing about connections. Every
//! length and address comes from the guest, so each one is checked before use; a bad
//! chain is an error value, never a panic.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemory;

/// Size of the packet header on the wire.
pub const HDR_SIZE: usize = 44;
/// The host's context id: where the guest connects to reach host Unix sockets.
pub const HOST_CID: u64 = 2;
/// Largest payload accepted in one TX packet (the Linux driver sends at most 64 KiB).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// Socket type: stream (the only one this device offers).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// One or both directions closed (see [`super::shutdown`]).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// The sender's buffer space changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Flags of `OP_SHUTDOWN`.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    /// Both directions.
    pub const BOTH: u32 = RCV | SEND;
}

/// Why a chain could not be used as a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain has no descriptor at all.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// A TX header in a device-writable descriptor, or an RX header in a readable one.
    #[error("header descriptor has the wrong direction")]
    WrongDirection,
    /// The header does not fit in the chain's first descriptor.
    #[error("header split across descriptors ({0} bytes in the first)")]
    HeaderSplit(u32),
    /// A descriptor is outside guest memory, or the chain's lengths overflow.
    #[error("descriptor outside guest memory: {0}")]
    Memory(String),
    /// The header announces more payload than the device accepts.
    #[error("payload of {0} bytes is over the {MAX_PKT_PAYLOAD}-byte limit")]
    TooLong(u32),
    /// The header announces more payload than the chain carries.
    #[error("payload of {len} bytes but only {avail} in the chain")]
    Truncated {
        /// Announced length.
        len: u32,
        /// Bytes the chain holds after the header.
        avail: usize,
    },
    /// Copying to or from guest memory failed.
    #[error("guest memory access: {0}")]
    Io(String),
}

/// A packet header, host-endian; converted to and from little endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags ([`shutdown`] for `OP_SHUTDOWN`).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decode a header from its wire form.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encode the header in its wire form.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering `self` (ports and cids swapped, no payload).
    pub fn reset_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Self::default()
        }
    }
}

/// A packet the guest sent: its header and, when the header could be read, the payload
/// or why the payload could not be taken.
pub type TxPacket = (Header, Result<Vec<u8>, PacketError>);

/// Read one packet from a TX chain. The header must sit whole in the first descriptor,
/// which must be device-readable. The payload (only read for `OP_RW`) follows the header
/// in the same or the next readable descriptors.
pub fn read_tx<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
) -> Result<TxPacket, PacketError> {
    let first = chain.clone().next().ok_or(PacketError::EmptyChain)?;
    if first.is_write_only() {
        return Err(PacketError::WrongDirection);
    }
    if (first.len() as usize) < HDR_SIZE {
        return Err(PacketError::HeaderSplit(first.len()));
    }
    let mut reader = Reader::new(mem, chain).map_err(|e| PacketError::Memory(e.to_string()))?;
    let mut raw = [0u8; HDR_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|e| PacketError::Io(e.to_string()))?;
    let hdr = Header::from_bytes(&raw);
    if hdr.op != op::RW {
        return Ok((hdr, Ok(Vec::new())));
    }
    let len = hdr.len as usize;
    if len > MAX_PKT_PAYLOAD {
        return Ok((hdr, Err(PacketError::TooLong(hdr.len))));
    }
    let avail = reader.available_bytes();
    if len > avail {
        return Ok((
            hdr,
            Err(PacketError::Truncated {
                len: hdr.len,
                avail,
            }),
        ));
    }
    let mut data = vec![0u8; len];
    let payload = reader
        .read_exact(&mut data)
        .map(|()| data)
        .map_err(|e| PacketError::Io(e.to_string()));
    Ok((hdr, payload))
}

/// Write one packet into an RX chain. `produce` is told how many payload bytes the chain
/// has room for after the header and returns the header and payload to write (the
/// header's `len` is set here), or `None` to write nothing. Returns the bytes written
/// (the used length) and whether `produce` gave a packet.
///
/// The chain must start with a device-writable descriptor that holds the whole header.
pub fn write_rx<'d, M, F>(
    mem: &M,
    chain: DescriptorChain<&M>,
    produce: F,
) -> Result<Option<u32>, PacketError>
where
    M: GuestMemory,
    F: FnOnce(usize) -> Option<(Header, &'d [u8])>,
{
    let first = chain.clone().next().ok_or(PacketError::EmptyChain)?;
    if !first.is_write_only() {
        return Err(PacketError::WrongDirection);
    }
    if (first.len() as usize) < HDR_SIZE {
        return Err(PacketError::HeaderSplit(first.len()));
    }
    let mut writer = Writer::new(mem, chain).map_err(|e| PacketError::Memory(e.to_string()))?;
    let room = writer.available_bytes().saturating_sub(HDR_SIZE);
    let Some((mut hdr, data)) = produce(room) else {
        return Ok(None);
    };
    let n = data.len().min(room).min(MAX_PKT_PAYLOAD);
    let data = &data[..n];
    hdr.len = n as u32;
    writer
        .write_all(&hdr.to_bytes())
        .and_then(|()| writer.write_all(data))
        .map_err(|e| PacketError::Io(e.to_string()))?;
    Ok(Some(u32::try_from(writer.bytes_written()).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_little_endian() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: shutdown::BOTH,
            buf_alloc: 1 << 18,
            fwd_cnt: 0xdead_beef,
        };
        let b = h.to_bytes();
        assert_eq!(&b[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(b[30], 5);
        assert_eq!(Header::from_bytes(&b), h);
        let r = h.reset_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 52, h.src_port)
        );
        assert_eq!((r.op, r.len, r.type_), (op::RST, 0, TYPE_STREAM));
    }
}
