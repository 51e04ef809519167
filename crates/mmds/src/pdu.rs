//! The frames the stack reads and writes: Ethernet II, ARP for IPv4, IPv4 without
//! options or fragments on output, TCP with the MSS option. Parsing checks every length
//! against the bytes there are and returns `None` for anything malformed, so a guest's
//! frame can never index out of bounds.

use std::net::Ipv4Addr;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length without options (all the stack writes).
pub const IPV4_LEN: usize = 20;
/// TCP header length without options.
pub const TCP_LEN: usize = 20;
/// ARP payload length for Ethernet/IPv4.
pub const ARP_LEN: usize = 28;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// TCP flags.
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

/// An Ethernet frame's addresses, type and payload.
#[derive(Debug, Clone, Copy)]
pub struct Ethernet<'a> {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType.
    pub ethertype: u16,
    /// What follows the header.
    pub payload: &'a [u8],
}

impl<'a> Ethernet<'a> {
    /// Parse an untagged Ethernet II frame.
    pub fn parse(frame: &'a [u8]) -> Option<Self> {
        Some(Self {
            dst: mac_at(frame, 0)?,
            src: mac_at(frame, 6)?,
            ethertype: be16(frame, 12)?,
            payload: frame.get(ETH_LEN..)?,
        })
    }
}

/// Write an Ethernet header into the front of `buf`.
pub fn write_ethernet(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// An ARP request or reply for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub operation: u16,
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: [u8; 6],
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

impl Arp {
    /// Parse an ARP payload; `None` unless it is Ethernet/IPv4 ARP.
    pub fn parse(p: &[u8]) -> Option<Self> {
        if be16(p, 0)? != 1 || be16(p, 2)? != ETHERTYPE_IPV4 || p.get(4..6)? != [6, 4] {
            return None;
        }
        Some(Self {
            operation: be16(p, 6)?,
            sha: mac_at(p, 8)?,
            spa: ipv4_at(p, 14)?,
            tha: mac_at(p, 18)?,
            tpa: ipv4_at(p, 24)?,
        })
    }

    /// Write this ARP payload into `buf` (at least [`ARP_LEN`] bytes).
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..2].copy_from_slice(&1u16.to_be_bytes());
        buf[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        buf[4] = 6;
        buf[5] = 4;
        buf[6..8].copy_from_slice(&self.operation.to_be_bytes());
        buf[8..14].copy_from_slice(&self.sha);
        buf[14..18].copy_from_slice(&self.spa.octets());
        buf[18..24].copy_from_slice(&self.tha);
        buf[24..28].copy_from_slice(&self.tpa.octets());
    }
}

/// The IPv4 header fields the stack uses, and the packet's payload.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub protocol: u8,
    /// More fragments set, or a fragment offset: part of a bigger packet.
    pub fragment: bool,
    /// Whether the header's checksum is right.
    pub checksum_ok: bool,
    /// The payload (up to the header's total length).
    pub payload: &'a [u8],
}

impl<'a> Ipv4<'a> {
    /// Only the destination, for the cheap "is this for us" check.
    pub fn destination(p: &[u8]) -> Option<Ipv4Addr> {
        ipv4_at(p, 16)
    }

    /// Parse an IPv4 packet; `None` if the header is malformed or the lengths disagree.
    pub fn parse(p: &'a [u8]) -> Option<Self> {
        let first = *p.first()?;
        let ihl = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || ihl < IPV4_LEN {
            return None;
        }
        let total = usize::from(be16(p, 2)?);
        if total < ihl || total > p.len() {
            return None;
        }
        let frag = be16(p, 6)?;
        Some(Self {
            src: ipv4_at(p, 12)?,
            dst: ipv4_at(p, 16)?,
            protocol: *p.get(9)?,
            fragment: frag & 0x2000 != 0 || frag & 0x1fff != 0,
            checksum_ok: checksum(&[p.get(..ihl)?]) == 0,
            payload: p.get(ihl..total)?,
        })
    }
}

/// Write a 20-byte IPv4 header (no fragments, TTL 64, checksum filled) into `buf`.
pub fn write_ipv4(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) {
    let total = (IPV4_LEN + payload_len) as u16;
    buf[0] = 0x45;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&total.to_be_bytes());
    buf[4..6].copy_from_slice(&0u16.to_be_bytes());
    // Don't fragment.
    buf[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    buf[8] = 64;
    buf[9] = protocol;
    buf[10..12].copy_from_slice(&[0, 0]);
    buf[12..16].copy_from_slice(&src.octets());
    buf[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&[&buf[..IPV4_LEN]]);
    buf[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// A TCP segment's header fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags ([`flags`]).
    pub flags: u8,
    /// Window (never scaled: the stack offers no window scaling).
    pub window: u16,
    /// The MSS option, if present.
    pub mss: Option<u16>,
    /// The data.
    pub payload: &'a [u8],
}

impl<'a> Tcp<'a> {
    /// Parse a TCP segment; `None` if its header does not fit.
    pub fn parse(s: &'a [u8]) -> Option<Self> {
        let offset = usize::from(*s.get(12)? >> 4) * 4;
        if offset < TCP_LEN || offset > s.len() {
            return None;
        }
        Some(Self {
            src_port: be16(s, 0)?,
            dst_port: be16(s, 2)?,
            seq: be32(s, 4)?,
            ack: be32(s, 8)?,
            flags: *s.get(13)?,
            window: be16(s, 14)?,
            mss: mss_option(s.get(TCP_LEN..offset)?),
            payload: s.get(offset..)?,
        })
    }

    /// Sequence space the segment takes: its data, plus one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        let mut n = self.payload.len() as u32;
        if self.flags & flags::SYN != 0 {
            n += 1;
        }
        if self.flags & flags::FIN != 0 {
            n += 1;
        }
        n
    }
}

fn mss_option(mut opts: &[u8]) -> Option<u16> {
    while let Some(&kind) = opts.first() {
        match kind {
            0 => return None,
            1 => opts = &opts[1..],
            _ => {
                let len = usize::from(*opts.get(1)?);
                if len < 2 || len > opts.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    return be16(opts, 2);
                }
                opts = &opts[len..];
            }
        }
    }
    None
}

/// A TCP segment to write.
#[derive(Debug, Clone, Copy)]
pub struct TcpOut<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags.
    pub flags: u8,
    /// Window offered.
    pub window: u16,
    /// An MSS option to add (SYN segments).
    pub mss: Option<u16>,
    /// The data.
    pub payload: &'a [u8],
}

impl TcpOut<'_> {
    /// Header and data length.
    pub fn len(&self) -> usize {
        TCP_LEN + if self.mss.is_some() { 4 } else { 0 } + self.payload.len()
    }

    /// Whether the segment carries nothing at all (never: it has a header).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Write the segment into `buf` (at least [`TcpOut::len`] bytes) with its checksum
    /// over the pseudo-header of `src` and `dst`.
    pub fn write(&self, buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
        let header = if self.mss.is_some() {
            TCP_LEN + 4
        } else {
            TCP_LEN
        };
        buf[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        buf[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[4..8].copy_from_slice(&self.seq.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ack.to_be_bytes());
        buf[12] = ((header / 4) as u8) << 4;
        buf[13] = self.flags;
        buf[14..16].copy_from_slice(&self.window.to_be_bytes());
        buf[16..20].copy_from_slice(&[0, 0, 0, 0]);
        if let Some(mss) = self.mss {
            buf[20] = 2;
            buf[21] = 4;
            buf[22..24].copy_from_slice(&mss.to_be_bytes());
        }
        let len = header + self.payload.len();
        buf[header..len].copy_from_slice(self.payload);
        let sum = tcp_checksum(src, dst, &buf[..len]);
        buf[16..18].copy_from_slice(&sum.to_be_bytes());
    }
}

/// The TCP checksum of `segment` (its checksum field included: 0 means it is right).
pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let len = (segment.len() as u16).to_be_bytes();
    let pseudo = [
        &src.octets()[..],
        &dst.octets()[..],
        &[0, PROTO_TCP],
        &len[..],
    ];
    let pseudo: Vec<u8> = pseudo.concat();
    checksum(&[&pseudo, segment])
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`, each but the last of
/// even length.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u64;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_tcp_round_trip_with_right_checksums() {
        let (a, b) = (
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(169, 254, 169, 254),
        );
        let seg = TcpOut {
            src_port: 80,
            dst_port: 40000,
            seq: 7,
            ack: 9,
            flags: flags::SYN | flags::ACK,
            window: 1000,
            mss: Some(1460),
            payload: b"hi!",
        };
        let mut buf = vec![0u8; IPV4_LEN + seg.len()];
        write_ipv4(&mut buf, b, a, PROTO_TCP, seg.len());
        seg.write(&mut buf[IPV4_LEN..], b, a);
        let ip = Ipv4::parse(&buf).unwrap();
        assert!(ip.checksum_ok && !ip.fragment);
        assert_eq!((ip.src, ip.dst, ip.protocol), (b, a, PROTO_TCP));
        assert_eq!(tcp_checksum(b, a, ip.payload), 0);
        let t = Tcp::parse(ip.payload).unwrap();
        assert_eq!((t.src_port, t.dst_port, t.seq, t.ack), (80, 40000, 7, 9));
        assert_eq!(
            (t.flags, t.window, t.mss, t.payload),
            (0x12, 1000, Some(1460), &b"hi!"[..])
        );
        assert_eq!(t.seq_len(), 4);
        buf[IPV4_LEN + 25] ^= 1;
        assert_ne!(tcp_checksum(b, a, Ipv4::parse(&buf).unwrap().payload), 0);
    }

    #[test]
    fn arp_round_trips() {
        let arp = Arp {
            operation: 1,
            sha: [2, 0, 0, 0, 0, 1],
            spa: Ipv4Addr::new(10, 0, 0, 2),
            tha: [0; 6],
            tpa: Ipv4Addr::new(169, 254, 169, 254),
        };
        let mut buf = [0u8; ARP_LEN];
        arp.write(&mut buf);
        assert_eq!(Arp::parse(&buf), Some(arp));
        buf[5] = 16;
        assert_eq!(Arp::parse(&buf), None, "not IPv4 addresses");
    }

    #[test]
    fn malformed_headers_are_none_not_panics() {
        assert!(Ipv4::parse(&[0x45]).is_none());
        let mut p = [0u8; 40];
        p[0] = 0x46; // options, but total length says 0
        assert!(Ipv4::parse(&p).is_none());
        p[0] = 0x44; // IHL 16 bytes
        assert!(Ipv4::parse(&p).is_none());
        p[0] = 0x45;
        p[3] = 60; // total beyond the buffer
        assert!(Ipv4::parse(&p).is_none());
        let mut t = [0u8; 24];
        t[12] = 0xf0; // 60-byte header in 24 bytes
        assert!(Tcp::parse(&t).is_none());
        t[12] = 0x60;
        t[20] = 2;
        t[21] = 9; // option longer than the header
        assert_eq!(Tcp::parse(&t).unwrap().mss, None);
        t[21] = 0;
        assert_eq!(Tcp::parse(&t).unwrap().mss, None, "zero-length option");
        assert!(Ethernet::parse(&[0; 13]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = Ethernet::parse(&bytes);
            let _ = Arp::parse(&bytes);
            if let Some(ip) = Ipv4::parse(&bytes) {
                let _ = Tcp::parse(ip.payload);
            }
            let _ = Tcp::parse(&bytes);
        }
    }
}
