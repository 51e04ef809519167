//! [`MmdsStack`]: what a NIC that allows MMDS requests puts between the guest and its
//! TAP. Every frame the guest sends goes through [`MmdsStack::detour`] first: an ARP
//! request for the service's address, or an IPv4 packet to it, is the service's (taken,
//! never reaching the TAP); anything else goes on to the TAP. Whenever the guest has
//! receive buffers, the NIC asks [`MmdsStack::write_frame`] before reading the TAP:
//! ARP replies, resets and the connections' segments, in turn.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::MmdsMetrics;
use crate::pdu::{
    self, ARP_LEN, Arp, ETH_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, Ethernet, IPV4_LEN, Ipv4,
    PROTO_TCP, Tcp, TcpOut, flags,
};
use crate::store::Mmds;
use crate::tcp::{Connection, State};
use crate::token::fill_random;

/// The service's MAC address, in its ARP replies and frames (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The service's address unless configured otherwise.
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The only port served.
pub const HTTP_PORT: u16 = 80;
/// Connections open at once; a new one past that replaces the least recently active.
pub const MAX_CONNECTIONS: usize = 30;
/// Resets waiting to be sent; more are dropped (the guest retries anyway).
const MAX_PENDING_RESETS: usize = 16;

/// A reset to send for a segment no connection takes.
#[derive(Debug, Clone, Copy)]
struct Reset {
    mac: [u8; 6],
    ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

/// The metadata service's network side for one NIC.
pub struct MmdsStack {
    ip: Ipv4Addr,
    mmds: Arc<Mutex<Mmds>>,
    metrics: Arc<MmdsMetrics>,
    arp_reply: Option<([u8; 6], Ipv4Addr)>,
    resets: VecDeque<Reset>,
    conns: Vec<Connection>,
    /// Where the next turn of sending starts, for fairness between connections.
    turn: usize,
}

impl std::fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdsStack")
            .field("ip", &self.ip)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl MmdsStack {
    /// A stack answering at `ip` from `mmds`, counting into `metrics`.
    pub fn new(ip: Ipv4Addr, mmds: Arc<Mutex<Mmds>>, metrics: Arc<MmdsMetrics>) -> Self {
        Self {
            ip,
            mmds,
            metrics,
            arp_reply: None,
            resets: VecDeque::new(),
            conns: Vec::new(),
            turn: 0,
        }
    }

    /// The service's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Connections open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Look at a frame the guest sent (the Ethernet frame, without the virtio-net
    /// header; `checksum_partial` if that header says the guest left the TCP checksum to
    /// the device). Returns whether the frame was the service's: taken (answered or
    /// dropped), so it must not reach the TAP.
    pub fn detour(&mut self, frame: &[u8], checksum_partial: bool, now: Instant) -> bool {
        let Some(eth) = Ethernet::parse(frame) else {
            self.metrics.rx_bad_eth.inc();
            return false;
        };
        match eth.ethertype {
            ETHERTYPE_ARP => {
                let Some(arp) = Arp::parse(eth.payload).filter(|a| a.tpa == self.ip) else {
                    return false;
                };
                self.metrics.rx_count.inc();
                self.metrics.rx_accepted.inc();
                if arp.operation == 1 {
                    self.arp_reply = Some((arp.sha, arp.spa));
                }
                true
            }
            ETHERTYPE_IPV4 => {
                if Ipv4::destination(eth.payload) != Some(self.ip) {
                    return false;
                }
                self.metrics.rx_count.inc();
                self.metrics.rx_accepted.inc();
                self.take_ipv4(&eth, checksum_partial, now);
                true
            }
            _ => false,
        }
    }

    fn take_ipv4(&mut self, eth: &Ethernet, checksum_partial: bool, now: Instant) {
        let Some(ip) = Ipv4::parse(eth.payload) else {
            self.metrics.rx_accepted_err.inc();
            return;
        };
        if !ip.checksum_ok || ip.fragment || ip.protocol != PROTO_TCP {
            // Not something the service speaks: dropped, as Firecracker's does.
            self.metrics.rx_accepted_unusual.inc();
            return;
        }
        let Some(seg) = Tcp::parse(ip.payload) else {
            self.metrics.rx_accepted_err.inc();
            return;
        };
        if !checksum_partial && pdu::tcp_checksum(ip.src, ip.dst, ip.payload) != 0 {
            self.metrics.rx_accepted_err.inc();
            return;
        }
        self.take_segment(eth.src, ip.src, &seg, now);
    }

    fn take_segment(&mut self, mac: [u8; 6], src: Ipv4Addr, seg: &Tcp, now: Instant) {
        let found = self.conns.iter().position(|c| {
            c.remote_ip == src && c.remote_port == seg.src_port && c.local_port == seg.dst_port
        });
        let syn = seg.flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN;
        match found {
            // A SYN with a new initial sequence number: the guest reuses the port.
            Some(i) if syn && self.conns[i].irs() != seg.seq => {
                self.drop_connection(i);
                self.open(mac, src, seg, now);
            }
            Some(i) => {
                let mut mmds = self.mmds.lock().unwrap_or_else(|p| p.into_inner());
                self.conns[i].on_segment(seg, &mut mmds, &self.metrics, now);
                drop(mmds);
                self.reap();
            }
            None if syn && seg.dst_port == HTTP_PORT => self.open(mac, src, seg, now),
            None => {
                if seg.flags & flags::RST == 0 {
                    self.metrics.rx_accepted_unusual.inc();
                    self.reset(mac, src, seg);
                }
            }
        }
    }

    fn open(&mut self, mac: [u8; 6], src: Ipv4Addr, syn: &Tcp, now: Instant) {
        self.conns.retain(|c| !c.is_done());
        if self.conns.len() >= MAX_CONNECTIONS
            && let Some(oldest) = (0..self.conns.len()).min_by_key(|&i| self.conns[i].last_active)
        {
            let c = &self.conns[oldest];
            let (mac, ip, port) = (c.remote_mac, c.remote_ip, c.remote_port);
            self.queue_reset(Reset {
                mac,
                ip,
                src_port: HTTP_PORT,
                dst_port: port,
                seq: 0,
                ack: 0,
                flags: flags::RST,
            });
            self.drop_connection(oldest);
        }
        let mut iss = [0u8; 4];
        if fill_random(&mut iss).is_err() {
            // Any number will do where the host's random source fails.
            iss = (now.elapsed().subsec_nanos() ^ 0x5eed_1234).to_ne_bytes();
        }
        self.conns.push(Connection::accept(
            mac,
            src,
            syn,
            u32::from_ne_bytes(iss),
            now,
        ));
        self.metrics.connections_created.inc();
    }

    fn drop_connection(&mut self, index: usize) {
        self.conns.swap_remove(index);
        self.metrics.connections_destroyed.inc();
    }

    /// Answer a segment no connection takes with a reset (RFC 793's rules).
    fn reset(&mut self, mac: [u8; 6], src: Ipv4Addr, seg: &Tcp) {
        let (seq, ack, flags) = if seg.flags & flags::ACK != 0 {
            (seg.ack, 0, flags::RST)
        } else {
            (
                0,
                seg.seq.wrapping_add(seg.seq_len()),
                flags::RST | flags::ACK,
            )
        };
        self.queue_reset(Reset {
            mac,
            ip: src,
            src_port: seg.dst_port,
            dst_port: seg.src_port,
            seq,
            ack,
            flags,
        });
    }

    fn queue_reset(&mut self, r: Reset) {
        if self.resets.len() < MAX_PENDING_RESETS {
            self.resets.push_back(r);
        }
    }

    /// Whether [`MmdsStack::write_frame`] has a frame for the guest.
    pub fn has_output(&self) -> bool {
        self.arp_reply.is_some()
            || !self.resets.is_empty()
            || self.conns.iter().any(Connection::has_output)
    }

    /// When the earliest retransmission timer fires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().filter_map(Connection::deadline).min()
    }

    /// Run the retransmission timers due at `now`; connections that gave up go.
    pub fn on_timer(&mut self, now: Instant) {
        for c in &mut self.conns {
            c.on_timeout(now);
        }
        self.reap();
    }

    fn reap(&mut self) {
        let before = self.conns.len();
        self.conns.retain(|c| !c.is_done());
        let gone = (before - self.conns.len()) as u64;
        self.metrics.connections_destroyed.add(gone);
    }

    /// Write the next frame for the guest (an Ethernet frame) into `buf` and return its
    /// length; `None` if there is none (or `buf` is too small for any, which a NIC's
    /// receive buffer never is: frames are at most 14 + 20 + 24 + [`crate::tcp::MSS`]).
    pub fn write_frame(&mut self, buf: &mut [u8], now: Instant) -> Option<usize> {
        let len = self.frame_into(buf, now);
        if let Some(n) = len {
            self.metrics.tx_count.inc();
            self.metrics.tx_frames.inc();
            self.metrics.tx_bytes.add(n as u64);
        }
        self.reap();
        len
    }

    fn frame_into(&mut self, buf: &mut [u8], now: Instant) -> Option<usize> {
        const MAX_FRAME: usize = ETH_LEN + IPV4_LEN + 24 + crate::tcp::MSS as usize;
        if buf.len() < MAX_FRAME {
            self.metrics.tx_errors.inc();
            return None;
        }
        if let Some((mac, ip)) = self.arp_reply.take() {
            pdu::write_ethernet(buf, mac, MMDS_MAC, ETHERTYPE_ARP);
            Arp {
                operation: 2,
                sha: MMDS_MAC,
                spa: self.ip,
                tha: mac,
                tpa: ip,
            }
            .write(&mut buf[ETH_LEN..]);
            return Some(ETH_LEN + ARP_LEN);
        }
        if let Some(r) = self.resets.pop_front() {
            let seg = TcpOut {
                src_port: r.src_port,
                dst_port: r.dst_port,
                seq: r.seq,
                ack: r.ack,
                flags: r.flags,
                window: 0,
                mss: None,
                payload: &[],
            };
            return Some(self.write_tcp(buf, r.mac, r.ip, &seg));
        }
        let n = self.conns.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Some(seg) = self.conns[i].next_segment(now) {
                self.turn = (i + 1) % n;
                let c = &self.conns[i];
                let out = c.out(&seg);
                return Some(self.write_tcp(buf, c.remote_mac, c.remote_ip, &out));
            }
        }
        None
    }

    fn write_tcp(&self, buf: &mut [u8], mac: [u8; 6], dst: Ipv4Addr, seg: &TcpOut) -> usize {
        pdu::write_ethernet(buf, mac, MMDS_MAC, ETHERTYPE_IPV4);
        pdu::write_ipv4(&mut buf[ETH_LEN..], self.ip, dst, PROTO_TCP, seg.len());
        seg.write(&mut buf[ETH_LEN + IPV4_LEN..], self.ip, dst);
        ETH_LEN + IPV4_LEN + seg.len()
    }

    /// Connections in each state (for tests and debugging).
    pub fn states(&self) -> Vec<State> {
        self.conns.iter().map(Connection::state).collect()
    }
}
