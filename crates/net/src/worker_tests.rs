//! Layer-1 tests of the net worker: queues laid out in guest memory, the worker called
//! directly, a datagram socket pair as the host network.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_devices::device::VmMemory;
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::backend::SocketBackend;

const MEM_SIZE: usize = 4 << 20;
const RINGS: [u64; 2] = [0x1_0000, 0x2_0000];
const BUF_BASE: u64 = 0x10_0000;
const QSIZE: u16 = 256;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = 1;
const MRG: u64 = 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF;

/// A guest driver's view of the two queues, the worker, and the host end of the wire.
struct Harness {
    mem: Arc<VmMemory>,
    irq: TestInterrupt,
    peer: UnixDatagram,
    worker: NetWorker<SocketBackend>,
    queues: Vec<Queue>,
    next_desc: [u16; 2],
    next_buf: u64,
}

impl Harness {
    fn new(features: u64) -> Self {
        Self::with_limits(features, RateLimiter::unlimited(), RateLimiter::unlimited())
    }

    fn with_limits(features: u64, rx: RateLimiter, tx: RateLimiter) -> Self {
        let mem = guest_memory(MEM_SIZE);
        let (backend, peer) = SocketBackend::pair().unwrap();
        let worker =
            NetWorker::new(backend, rx, tx, features, Arc::new(NetMetrics::default())).unwrap();
        let queues = (0..2)
            .map(|q| {
                let (desc, avail, used) = Self::layout(q);
                let mut queue = Queue::new(QSIZE).unwrap();
                queue.set_size(QSIZE);
                queue.set_desc_table_address(Some(desc.0 as u32), Some((desc.0 >> 32) as u32));
                queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
                queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
                queue.set_ready(true);
                queue
            })
            .collect();
        Self {
            mem,
            irq: TestInterrupt::default(),
            peer,
            worker,
            queues,
            next_desc: [0; 2],
            next_buf: BUF_BASE,
        }
    }

    /// Where queue `q`'s rings are: (descriptor table, avail ring, used ring).
    fn layout(q: usize) -> (GuestAddress, GuestAddress, GuestAddress) {
        let desc = RINGS[q];
        let avail = desc + 16 * u64::from(QSIZE);
        let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
        (GuestAddress(desc), GuestAddress(avail), GuestAddress(used))
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_buf;
        self.next_buf = (a + len + 15) & !15;
        assert!(
            self.next_buf <= MEM_SIZE as u64,
            "test buffers fit guest memory"
        );
        a
    }

    /// Publish one chain of `(addr, len, device-writable)` descriptors; returns its head.
    fn add_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let first = self.next_desc[q];
        assert!(usize::from(first) + descs.len() <= usize::from(QSIZE));
        let (table, avail, _) = Self::layout(q);
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            let next = if last { 0 } else { first + i as u16 + 1 };
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            let at = table.unchecked_add(16 * u64::from(first + i as u16));
            self.mem.write_obj(d, at).unwrap();
        }
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE));
        self.mem.write_obj(first, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.next_desc[q] += descs.len() as u16;
        first
    }

    /// One single-descriptor rx chain per size; returns the buffer addresses.
    fn add_rx_buffers(&mut self, sizes: &[u32]) -> Vec<u64> {
        sizes
            .iter()
            .map(|&s| {
                let a = self.alloc(u64::from(s));
                self.add_chain(RX_QUEUE, &[(a, s, true)]);
                a
            })
            .collect()
    }

    /// One tx chain, one readable descriptor per part.
    fn add_tx_frame(&mut self, parts: &[&[u8]]) -> u16 {
        let descs: Vec<(u64, u32, bool)> = parts
            .iter()
            .map(|p| {
                let a = self.alloc(p.len() as u64);
                self.mem.write_slice(p, GuestAddress(a)).unwrap();
                (a, p.len() as u32, false)
            })
            .collect();
        self.add_chain(TX_QUEUE, &descs)
    }

    fn kick(&mut self, q: usize) -> Result<(), WorkerError> {
        let mut qs: Vec<&mut Queue> = self.queues.iter_mut().collect();
        self.worker
            .process_queue(q, &mut qs, self.mem.as_ref(), &self.irq)
    }

    fn extra(&mut self, index: usize) -> Result<(), WorkerError> {
        let mut qs: Vec<&mut Queue> = self.queues.iter_mut().collect();
        self.worker
            .process_extra(index, &mut qs, self.mem.as_ref(), &self.irq)
    }

    /// The backend's inner epoll fired (as the worker thread would see it).
    fn backend_ready(&mut self) -> Result<(), WorkerError> {
        self.extra(0)
    }

    /// Whether the worker's backend fd (its first extra fd) is readable now.
    fn backend_polled_ready(&self) -> bool {
        let ep = Epoll::new().unwrap();
        ep.ctl(
            ControlOperation::Add,
            self.worker.extra_fds()[0],
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
        ep.wait(0, &mut [EpollEvent::default(); 1]).unwrap() == 1
    }

    /// Every used element of queue `q` so far: (head, len).
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let (_, _, used) = Self::layout(q);
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        (0..u64::from(idx))
            .map(|i| {
                let e = used.unchecked_add(4 + 8 * i);
                (
                    self.mem.read_obj(e).unwrap(),
                    self.mem.read_obj(e.unchecked_add(4)).unwrap(),
                )
            })
            .collect()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn recv_all(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 16];
        while let Ok(n) = self.peer.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn metric(&self, f: fn(&NetMetrics) -> &virtio_devices::metrics::Counter) -> u64 {
        f(self.worker.metrics()).get()
    }
}

/// A virtio-net header with the given `num_buffers` and a frame of `len` bytes whose
/// content identifies `seq`.
fn packet(len: usize, seq: u8) -> Vec<u8> {
    let mut p = vec![0u8; NET_HDR_LEN + len];
    for (i, b) in p[NET_HDR_LEN..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seq);
    }
    p
}

fn num_buffers(hdr: &[u8]) -> u16 {
    u16::from_le_bytes([hdr[10], hdr[11]])
}

#[test]
fn tx_single_descriptor_frame_reaches_the_backend_with_its_header() {
    let mut h = Harness::new(0);
    let mut p = packet(60, 1);
    p[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM: the TAP gets the header untouched.
    let head = h.add_tx_frame(&[&p]);
    h.kick(TX_QUEUE).unwrap();
    assert_eq!(h.recv_all(), vec![p]);
    assert_eq!(h.used(TX_QUEUE), vec![(u32::from(head), 0)]);
    assert_eq!(h.irq.used_count(), 1);
    assert_eq!(h.metric(|m| &m.tx_packets_count), 1);
    assert_eq!(h.metric(|m| &m.tx_bytes_count), 60);
    assert_eq!(h.metric(|m| &m.tx_count), 1);
    assert_eq!(h.metric(|m| &m.tx_queue_event_count), 1);
    assert_eq!(h.metric(|m| &m.no_tx_avail_buffer), 0);
    assert_eq!(
        h.metric(|m| &m.tx_spoofed_mac_count),
        0,
        "no MAC of its own"
    );
    h.kick(TX_QUEUE).unwrap();
    assert_eq!(
        h.metric(|m| &m.no_tx_avail_buffer),
        1,
        "a kick with nothing"
    );
}

#[test]
fn frames_sent_from_another_source_mac_are_counted_and_still_sent() {
    let mut h = Harness::new(0);
    let mac = [2, 0, 0, 0, 0, 7];
    h.worker.set_mac(mac);
    let mut own = packet(60, 1);
    own[NET_HDR_LEN + 6..NET_HDR_LEN + 12].copy_from_slice(&mac);
    let spoofed = packet(60, 2);
    h.add_tx_frame(&[&own]);
    h.add_tx_frame(&[&spoofed]);
    h.kick(TX_QUEUE).unwrap();
    assert_eq!(h.recv_all(), vec![own, spoofed]);
    assert_eq!(h.metric(|m| &m.tx_spoofed_mac_count), 1);
    assert_eq!(h.metric(|m| &m.tx_packets_count), 2);
}

#[test]
fn tx_multi_descriptor_frames_are_gathered_whole() {
    let mut h = Harness::new(0);
    let small = packet(100, 2);
    let (hdr, rest) = small.split_at(NET_HDR_LEN);
    let (a, b) = rest.split_at(33);
    let (b, c) = b.split_at(1);
    h.add_tx_frame(&[hdr, a, b, c]);
    // The largest frame allowed, in 17 descriptors of uneven sizes.
    let big = packet(crate::MAX_FRAME_LEN, 3);
    let parts: Vec<&[u8]> = big.chunks(3877).collect();
    h.add_tx_frame(&parts);
    h.kick(TX_QUEUE).unwrap();
    let got = h.recv_all();
    assert!(got == vec![small, big], "frames arrive whole and unchanged");
    assert_eq!(h.used(TX_QUEUE).len(), 2);
    assert_eq!(h.metric(|m| &m.tx_malformed_frames), 0);
}

#[test]
fn tx_malformed_chains_are_dropped_answered_and_counted() {
    let mut h = Harness::new(0);
    let a = h.alloc(0x1_0000);
    h.mem.write_slice(&packet(64, 0), GuestAddress(a)).unwrap();
    let outside = MEM_SIZE as u64 + 0x1000;
    let bad: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(a, 8, false)],                          // shorter than the header
        vec![(a, 12, false), (outside, 64, false)],   // outside guest memory
        vec![(a, 12, false), (a + 100, 64, true)],    // device-writable
        vec![(a, u32::MAX, false)],                   // huge length
        vec![(a, 40_000, false), (a, 40_000, false)], // longer than 64 KiB + header
        vec![(u64::MAX - 4, 64, false)],              // address overflow
        vec![(a, 0, false)],                          // empty
    ];
    let mut heads = Vec::new();
    for chain in &bad {
        heads.push(u32::from(h.add_chain(TX_QUEUE, chain)));
    }
    let good = packet(64, 9);
    heads.push(u32::from(h.add_tx_frame(&[&good])));
    h.kick(TX_QUEUE).unwrap();
    assert_eq!(h.recv_all(), vec![good], "only the good frame goes out");
    let used: Vec<u32> = h.used(TX_QUEUE).iter().map(|&(id, _)| id).collect();
    assert_eq!(used, heads, "every chain is answered, in order");
    assert_eq!(h.metric(|m| &m.tx_malformed_frames), bad.len() as u64);
    assert_eq!(h.metric(|m| &m.tx_packets_count), 1);
}

#[test]
fn rx_whole_frames_into_single_chains() {
    let mut h = Harness::new(0);
    let bufs = h.add_rx_buffers(&[1526, 1526]);
    let f1 = packet(100, 1);
    let f2 = packet(1514, 2);
    h.peer.send(&f1).unwrap();
    h.peer.send(&f2).unwrap();
    h.backend_ready().unwrap();
    assert_eq!(h.used(RX_QUEUE), vec![(0, 112), (1, 1526)]);
    for (addr, f) in bufs.iter().zip([&f1, &f2]) {
        let got = h.read(*addr, f.len());
        assert_eq!(num_buffers(&got), 1);
        assert_eq!(got[NET_HDR_LEN..], f[NET_HDR_LEN..]);
    }
    assert_eq!(h.irq.used_count(), 1, "one interrupt for the batch");
    assert_eq!(h.metric(|m| &m.rx_packets_count), 2);
    assert_eq!(h.metric(|m| &m.rx_bytes_count), 100 + 1514);
}

#[test]
fn rx_merged_buffers_report_num_buffers() {
    let mut h = Harness::new(MRG);
    let bufs = h.add_rx_buffers(&[1000; 8]);
    let big = packet(3000, 5);
    let small = packet(40, 6);
    h.peer.send(&big).unwrap();
    h.peer.send(&small).unwrap();
    h.backend_ready().unwrap();
    assert_eq!(
        h.used(RX_QUEUE),
        vec![(0, 1000), (1, 1000), (2, 1000), (3, 12), (4, 52)]
    );
    let mut got = Vec::new();
    for (addr, len) in bufs.iter().zip([1000, 1000, 1000, 12]) {
        got.extend(h.read(*addr, len));
    }
    assert_eq!(num_buffers(&got), 4);
    assert_eq!(got[NET_HDR_LEN..], big[NET_HDR_LEN..]);
    let second = h.read(bufs[4], small.len());
    assert_eq!(num_buffers(&second), 1);
    assert_eq!(second[NET_HDR_LEN..], small[NET_HDR_LEN..]);
}

#[test]
fn rx_without_buffers_waits_for_a_kick_and_keeps_order() {
    let mut h = Harness::new(0);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| packet(200 + i, i as u8)).collect();
    for f in &frames {
        h.peer.send(f).unwrap();
    }
    h.backend_ready().unwrap();
    assert!(h.used(RX_QUEUE).is_empty());
    assert!(h.worker.has_pending_rx(), "one frame read and kept");
    assert!(
        !h.backend_polled_ready(),
        "the backend is not polled while there is nowhere to put frames"
    );
    // A kick with still nothing available changes nothing.
    h.kick(RX_QUEUE).unwrap();
    assert!(h.used(RX_QUEUE).is_empty());
    let bufs = h.add_rx_buffers(&[1526; 3]);
    h.kick(RX_QUEUE).unwrap();
    assert_eq!(h.used(RX_QUEUE).len(), 3);
    for (addr, f) in bufs.iter().zip(&frames) {
        assert_eq!(h.read(*addr, f.len())[NET_HDR_LEN..], f[NET_HDR_LEN..]);
    }
    assert!(!h.worker.has_pending_rx());
    assert!(!h.backend_polled_ready(), "nothing more to read");
    h.peer.send(&frames[0]).unwrap();
    assert!(h.backend_polled_ready(), "polled again once buffers came");
}

#[test]
fn rx_merged_frame_waits_for_enough_buffers() {
    let mut h = Harness::new(MRG);
    let mut bufs = h.add_rx_buffers(&[1000, 1000]);
    let f = packet(3500, 7);
    h.peer.send(&f).unwrap();
    h.backend_ready().unwrap();
    assert!(
        h.used(RX_QUEUE).is_empty(),
        "2000 bytes of buffers for 3512"
    );
    bufs.extend(h.add_rx_buffers(&[1000, 1000]));
    h.kick(RX_QUEUE).unwrap();
    assert_eq!(
        h.used(RX_QUEUE),
        vec![(0, 1000), (1, 1000), (2, 1000), (3, 512)]
    );
    let mut got = Vec::new();
    for (addr, len) in bufs.iter().zip([1000, 1000, 1000, 512]) {
        got.extend(h.read(*addr, len));
    }
    assert_eq!(num_buffers(&got), 4);
    assert_eq!(got[NET_HDR_LEN..], f[NET_HDR_LEN..]);
}

#[test]
fn rx_with_event_idx_asks_for_a_kick_at_the_avail_index() {
    let mut h = Harness::new(0);
    h.queues[RX_QUEUE].set_event_idx(true);
    h.peer.send(&packet(60, 1)).unwrap();
    h.backend_ready().unwrap();
    let (_, _, used) = Harness::layout(RX_QUEUE);
    let avail_event_addr = used.unchecked_add(4 + 8 * u64::from(QSIZE));
    let avail_event: u16 = h.mem.read_obj(avail_event_addr).unwrap();
    assert_eq!(avail_event, 0, "kick me when the first buffer is added");
    h.add_rx_buffers(&[200]);
    h.kick(RX_QUEUE).unwrap();
    assert_eq!(h.used(RX_QUEUE), vec![(0, 72)]);
}

#[test]
fn rx_malformed_chains_are_answered_empty() {
    let mut h = Harness::new(MRG);
    let a = h.alloc(4096);
    let outside = MEM_SIZE as u64 - 100;
    let bad: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(a, 1500, false)],                // device-readable
        vec![(a, 100, true), (a, 100, false)], // readable after writable
        vec![(outside, 1500, true)],           // crosses the end of memory
        vec![(a, 4, true)],                    // no room for a header
        vec![(a, u32::MAX, true)],             // huge
        vec![(u64::MAX - 10, 1500, true)],     // address overflow
    ];
    for chain in &bad {
        h.add_chain(RX_QUEUE, chain);
    }
    let good = h.add_rx_buffers(&[1526]);
    let f = packet(500, 3);
    h.peer.send(&f).unwrap();
    h.backend_ready().unwrap();
    let mut expected: Vec<(u32, u32)> = (0..bad.len() as u32).map(|i| (i, 0)).collect();
    // Chain heads: one descriptor each but the second chain has two.
    expected[2..].iter_mut().for_each(|e| e.0 += 1);
    expected.push((bad.len() as u32 + 1, 512));
    assert_eq!(h.used(RX_QUEUE), expected);
    assert_eq!(h.read(good[0], f.len())[NET_HDR_LEN..], f[NET_HDR_LEN..]);
    assert_eq!(h.metric(|m| &m.rx_fails), bad.len() as u64);
}

#[test]
fn rx_frame_too_big_for_a_chain_without_mrg_is_dropped_and_the_chain_kept() {
    let mut h = Harness::new(0);
    let bufs = h.add_rx_buffers(&[200]);
    h.peer.send(&packet(1000, 1)).unwrap();
    let small = packet(50, 2);
    h.peer.send(&small).unwrap();
    h.backend_ready().unwrap();
    assert_eq!(h.used(RX_QUEUE), vec![(0, 62)]);
    assert_eq!(h.read(bufs[0], 62)[NET_HDR_LEN..], small[NET_HDR_LEN..]);
    assert_eq!(h.metric(|m| &m.rx_fails), 1);
}

#[test]
fn rx_runt_frames_from_the_backend_are_dropped() {
    let mut h = Harness::new(0);
    h.add_rx_buffers(&[200]);
    h.peer.send(&[1, 2, 3]).unwrap();
    h.peer.send(&packet(20, 1)).unwrap();
    h.backend_ready().unwrap();
    assert_eq!(h.used(RX_QUEUE), vec![(0, 32)]);
    assert_eq!(h.metric(|m| &m.rx_fails), 1);
}

#[test]
fn tx_frames_wait_when_the_backend_would_block() {
    let mut h = Harness::new(0);
    let frames: Vec<Vec<u8>> = (0..8).map(|i| packet(60_000, i)).collect();
    for f in &frames {
        h.add_tx_frame(&[f]);
    }
    h.kick(TX_QUEUE).unwrap();
    let mut got = h.recv_all();
    assert!(got.len() < frames.len(), "the socket buffer filled up");
    assert!(h.worker.has_pending_tx());
    assert_eq!(
        h.used(TX_QUEUE).len(),
        got.len(),
        "only sent frames are used"
    );
    let start = Instant::now();
    while got.len() < frames.len() {
        assert!(start.elapsed() < Duration::from_secs(5), "tx never resumed");
        h.backend_ready().unwrap();
        got.extend(h.recv_all());
    }
    assert!(got == frames, "all frames, in order");
    assert_eq!(h.used(TX_QUEUE).len(), frames.len());
    assert!(!h.worker.has_pending_tx());
}

#[test]
fn unknown_queue_and_extra_indexes_are_ignored() {
    let mut h = Harness::new(0);
    h.kick(7).unwrap();
    h.extra(9).unwrap();
    assert!(h.used(RX_QUEUE).is_empty());
    assert_eq!(
        h.worker.extra_fds().len(),
        1,
        "no limiter timers when unlimited"
    );
}

#[test]
fn garbage_avail_index_is_a_worker_error_not_a_panic() {
    let mut h = Harness::new(0);
    let (_, avail, _) = Harness::layout(TX_QUEUE);
    h.mem.write_obj(1000u16, avail.unchecked_add(2)).unwrap();
    assert!(h.kick(TX_QUEUE).is_err());
}

fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let ep = Epoll::new().unwrap();
    ep.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .unwrap();
    ep.wait(timeout.as_millis() as i32, &mut [EpollEvent::default(); 1])
        .unwrap()
        == 1
}

#[test]
fn tx_rate_limit_holds_frames_until_the_timer() {
    let limit = api::RateLimit {
        ops_per_sec: Some(10),
        bytes_per_sec: None,
        ..Default::default()
    };
    let mut h = Harness::with_limits(
        0,
        RateLimiter::unlimited(),
        RateLimiter::new(&limit).unwrap(),
    );
    let fds = h.worker.extra_fds();
    assert_eq!(fds.len(), 2, "backend and tx timer");
    for i in 0..12 {
        h.add_tx_frame(&[&packet(60, i)]);
    }
    h.kick(TX_QUEUE).unwrap();
    let mut got = h.recv_all();
    assert_eq!(got.len(), 10, "a full bucket holds one second's worth");
    assert!(h.worker.has_pending_tx());
    let start = Instant::now();
    while got.len() < 12 {
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(wait_readable(fds[1], Duration::from_secs(2)), "timer armed");
        h.extra(1).unwrap();
        got.extend(h.recv_all());
    }
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "two more at 10/s"
    );
    assert_eq!(h.used(TX_QUEUE).len(), 12);
}

#[test]
fn rx_rate_limit_stops_polling_until_the_timer() {
    let limit = api::RateLimit {
        ops_per_sec: None,
        bytes_per_sec: Some(1000),
        ..Default::default()
    };
    let mut h = Harness::with_limits(
        0,
        RateLimiter::new(&limit).unwrap(),
        RateLimiter::unlimited(),
    );
    let fds = h.worker.extra_fds();
    assert_eq!(fds.len(), 2, "backend and rx timer");
    h.add_rx_buffers(&[1526; 4]);
    for i in 0..3 {
        h.peer.send(&packet(400, i)).unwrap();
    }
    h.backend_ready().unwrap();
    assert_eq!(
        h.used(RX_QUEUE).len(),
        2,
        "800 of 1000 bytes; the third waits"
    );
    assert!(h.worker.has_pending_rx());
    assert!(!h.backend_polled_ready(), "not polled while rate limited");
    assert!(wait_readable(fds[1], Duration::from_secs(2)));
    h.extra(1).unwrap();
    assert_eq!(h.used(RX_QUEUE).len(), 3);
    assert!(!h.worker.has_pending_rx());
}

#[test]
fn replaced_limits_release_held_frames_through_the_same_timers() {
    let slow = api::RateLimit {
        ops_per_sec: Some(1),
        bytes_per_sec: None,
        ..Default::default()
    };
    let mut h = Harness::with_limits(
        0,
        RateLimiter::new(&api::RateLimit::default()).unwrap(),
        RateLimiter::new(&slow).unwrap(),
    );
    let fds = h.worker.extra_fds();
    assert_eq!(
        fds.len(),
        3,
        "backend, rx timer and tx timer, limited or not"
    );
    for i in 0..3 {
        h.add_tx_frame(&[&packet(60, i)]);
    }
    h.kick(TX_QUEUE).unwrap();
    assert_eq!(h.recv_all().len(), 1, "one frame a second");
    assert!(h.worker.has_pending_tx());
    // Both or neither: a zero rate for rx refuses the tx change too.
    let zero = api::RateLimit {
        ops_per_sec: Some(0),
        bytes_per_sec: None,
        ..Default::default()
    };
    let fast = api::RateLimit {
        ops_per_sec: None,
        bytes_per_sec: Some(1 << 30),
        ..Default::default()
    };
    assert!(h.worker.set_rate_limits(Some(&zero), Some(&fast)).is_err());
    assert_eq!(h.worker.rate_limits().1, slow);
    h.worker.set_rate_limits(None, Some(&fast)).unwrap();
    assert_eq!(
        h.worker.rate_limits(),
        (api::RateLimit::default(), fast),
        "rx left as it was"
    );
    assert_eq!(h.worker.extra_fds(), fds, "the same fds");
    // The tx timer fires at once and the held frames go.
    assert!(wait_readable(fds[2], Duration::from_millis(500)));
    h.extra(2).unwrap();
    assert_eq!(h.recv_all().len(), 2);
    assert!(!h.worker.has_pending_tx());
    assert_eq!(h.used(TX_QUEUE).len(), 3);

    // rx: limited after the start, through the timer registered at the start.
    let rx_slow = api::RateLimit {
        ops_per_sec: None,
        bytes_per_sec: Some(500),
        ..Default::default()
    };
    h.worker.set_rate_limits(Some(&rx_slow), None).unwrap();
    h.add_rx_buffers(&[1526; 3]);
    for i in 0..2 {
        h.peer.send(&packet(400, i)).unwrap();
    }
    h.backend_ready().unwrap();
    assert_eq!(
        h.used(RX_QUEUE).len(),
        1,
        "400 of 500 bytes; the second waits"
    );
    h.worker
        .set_rate_limits(Some(&api::RateLimit::default()), None)
        .unwrap();
    assert!(wait_readable(fds[1], Duration::from_millis(500)));
    h.extra(1).unwrap();
    assert_eq!(h.used(RX_QUEUE).len(), 2);
}

/// A worker answering the metadata service at its default address from a store holding
/// `{"k": "v"}`.
fn mmds_harness() -> (Harness, Arc<mmds::MmdsMetrics>) {
    let mut h = Harness::new(MRG);
    let mut store = mmds::Mmds::default();
    store.put(serde_json::json!({"k": "v"})).unwrap();
    let metrics = Arc::new(mmds::MmdsMetrics::default());
    let stack = mmds::MmdsStack::new(
        mmds::DEFAULT_IPV4,
        Arc::new(std::sync::Mutex::new(store)),
        metrics.clone(),
    );
    h.worker.set_mmds(stack).unwrap();
    (h, metrics)
}

const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// An ARP request from the guest (10.0.0.2) for `target`, with its virtio-net header.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; NET_HDR_LEN + 42];
    let f = &mut p[NET_HDR_LEN..];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&GUEST_MAC);
    f[28..32].copy_from_slice(&[10, 0, 0, 2]);
    f[38..42].copy_from_slice(&target);
    p
}

#[test]
fn mmds_frames_are_answered_on_rx_and_never_reach_the_backend() {
    let (mut h, metrics) = mmds_harness();
    let bufs = h.add_rx_buffers(&[2048, 2048]);
    h.add_tx_frame(&[&arp_request([10, 0, 0, 1])]);
    h.add_tx_frame(&[&arp_request([169, 254, 169, 254])]);
    h.kick(TX_QUEUE).unwrap();
    let sent = h.recv_all();
    assert_eq!(sent.len(), 1, "only the gateway's ARP reaches the TAP");
    assert_eq!(&sent[0][NET_HDR_LEN + 38..NET_HDR_LEN + 42], &[10, 0, 0, 1]);
    assert_eq!(h.used(TX_QUEUE).len(), 2, "both tx chains are used");
    let used = h.used(RX_QUEUE);
    assert_eq!(used.len(), 1, "the service's ARP reply, without an rx kick");
    assert_eq!(used[0].1 as usize, NET_HDR_LEN + 42);
    let reply = h.read(bufs[0], NET_HDR_LEN + 42);
    assert_eq!(&reply[..10], &[0; 10], "a plain header");
    assert_eq!(num_buffers(&reply), 1);
    let f = &reply[NET_HDR_LEN..];
    assert_eq!((&f[..6], &f[6..12]), (&GUEST_MAC[..], &mmds::MMDS_MAC[..]));
    assert_eq!(&f[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&f[28..32], &[169, 254, 169, 254]);
    assert_eq!(metrics.rx_accepted.get(), 1);
    assert_eq!(metrics.tx_frames.get(), 1);
    assert_eq!(h.metric(|m| &m.tx_packets_count), 1, "the TAP's frame only");
}

#[test]
fn mmds_answers_wait_for_rx_buffers_and_come_before_the_backends_frames() {
    let (mut h, _) = mmds_harness();
    h.add_tx_frame(&[&arp_request([169, 254, 169, 254])]);
    h.kick(TX_QUEUE).unwrap();
    assert!(h.used(RX_QUEUE).is_empty(), "no rx buffer yet");
    assert!(h.worker.has_pending_rx(), "the reply waits for buffers");
    h.peer.send(&packet(60, 7)).unwrap();
    let bufs = h.add_rx_buffers(&[2048, 2048]);
    h.kick(RX_QUEUE).unwrap();
    let used = h.used(RX_QUEUE);
    assert_eq!(used.len(), 2);
    assert_eq!(
        h.read(bufs[0] + NET_HDR_LEN as u64 + 12, 2),
        vec![0x08, 0x06],
        "ARP first"
    );
    assert_eq!(
        h.read(bufs[1] + NET_HDR_LEN as u64, 60),
        packet(60, 7)[NET_HDR_LEN..],
        "then the TAP's"
    );
}

#[test]
fn mmds_timer_is_an_extra_fd_and_firing_it_early_is_harmless() {
    let (mut h, _) = mmds_harness();
    assert_eq!(
        h.worker.extra_fds().len(),
        2,
        "the backend's epoll and the MMDS timer"
    );
    h.add_rx_buffers(&[2048]);
    h.extra(1).unwrap();
    assert!(h.used(RX_QUEUE).is_empty());
}
