//! Layer-1 tests of the vsock device: a host-side "guest" that lays out the three queues
//! in guest memory (with virtio-queue's `MockSplitQueue`), fills and reads them as a
//! driver would, and talks to real Unix sockets in a temporary directory.

mod device_level;
mod flow;
mod guest_init;
mod host_init;
mod robustness;
mod snapshot;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use virtio_devices::device::{DeviceWorker, VmMemory};
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::device::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VsockWorker};
use crate::packet::{HDR_SIZE, HOST_CID, Header, TYPE_STREAM, op};

/// Guest CID used by the tests.
pub const CID: u64 = 3;
/// Receive buffer the test guest advertises unless a test says otherwise.
pub const GUEST_BUF: u32 = 64 * 1024;
/// A Linux-sized RX buffer: header plus 4 KiB.
pub const RX_BUF: u32 = HDR_SIZE as u32 + 4096;
const MEM_SIZE: usize = 64 << 20;
const DATA_START: u64 = 0x10_0000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A directory removed with its contents when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory under the system's temporary directory.
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vireo-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A raw descriptor as a test writes it: address, length, flags (NEXT is set by the
/// driver between descriptors of one chain).
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// The driver side of one split queue.
pub struct QueueDriver {
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    chains: HashMap<u16, (Vec<u16>, Vec<Desc>)>,
    avail_idx: u16,
    last_used: u16,
}

impl QueueDriver {
    /// Lay out a queue at `base` and return its driver and the device's `Queue`.
    ///
    /// The descriptor table and avail ring are where `MockSplitQueue` puts them; the used
    /// ring is placed here, because the mock (virtio-queue 0.18) ends the avail ring
    /// `len` bytes after its start instead of `2 * len`, so its used ring overlaps the
    /// upper half of the avail ring.
    pub fn create(mem: &VmMemory, base: GuestAddress) -> (Self, Queue) {
        let vq = MockSplitQueue::create(mem, base, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        let used = (vq.avail_addr().0 + 6 + 2 * u64::from(QUEUE_SIZE)).next_multiple_of(4);
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        let d = Self::new(vq.desc_table_addr().0, vq.avail_addr().0, used);
        (d, q)
    }

    /// The ring addresses (descriptor table, avail ring, used ring).
    pub fn addrs(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    fn new(desc: u64, avail: u64, used: u64) -> Self {
        Self {
            desc,
            avail,
            used,
            free: (0..QUEUE_SIZE).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Make a chain of `descs` available; `next_override` (an index into `descs`) lets a
    /// test point the last descriptor back into the chain (a loop).
    pub fn add(&mut self, mem: &VmMemory, descs: &[Desc], next_override: Option<u16>) -> u16 {
        let slots: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, d) in descs.iter().enumerate() {
            let mut flags = if d.write { F_WRITE } else { 0 };
            let mut next = 0;
            if let Some(&n) = slots.get(i + 1) {
                flags |= F_NEXT;
                next = n;
            } else if let Some(k) = next_override {
                flags |= F_NEXT;
                next = slots[usize::from(k)];
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(slots[i])))
                .unwrap();
        }
        let head = slots[0];
        let ring_slot = u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * ring_slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.chains.insert(head, (slots, descs.to_vec()));
        head
    }

    /// Chains the device has put in the used ring since the last call: the descriptors
    /// of each and the used length.
    pub fn take_used(&mut self, mem: &VmMemory) -> Vec<(Vec<Desc>, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != idx {
            let slot = u64::from(self.last_used % QUEUE_SIZE);
            let id: u32 = mem
                .read_obj(GuestAddress(self.used + 4 + 8 * slot))
                .unwrap();
            let len: u32 = mem
                .read_obj(GuestAddress(self.used + 8 + 8 * slot))
                .unwrap();
            let (slots, descs) = self.chains.remove(&(id as u16)).expect("known head");
            self.free.extend(slots);
            out.push((descs, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// Chains made available and not yet used.
    pub fn outstanding(&self) -> usize {
        self.chains.len()
    }
}

/// A vsock worker, its queues in guest memory, and a driver for them.
pub struct Harness {
    _dir: TempDir,
    pub sock: PathBuf,
    pub mem: Arc<VmMemory>,
    pub worker: VsockWorker,
    pub queues: Vec<Queue>,
    pub rx: QueueDriver,
    pub tx: QueueDriver,
    pub irq: TestInterrupt,
    next_buf: u64,
}

impl Harness {
    /// A worker for guest CID 3 with its socket in a fresh temporary directory.
    pub fn new() -> Self {
        let dir = TempDir::new();
        let sock = dir.path().join("v.sock");
        let worker = VsockWorker::bind(CID, &sock).unwrap();
        let mem = guest_memory(MEM_SIZE);
        let mut queues = Vec::new();
        let mut drivers = Vec::new();
        for i in 0..3u64 {
            let (d, q) = QueueDriver::create(&mem, GuestAddress(0x1_0000 * (i + 1)));
            queues.push(q);
            drivers.push(d);
        }
        let mut drivers = drivers.into_iter();
        let rx = drivers.next().unwrap();
        let tx = drivers.next().unwrap();
        Self {
            _dir: dir,
            sock,
            mem,
            worker,
            queues,
            rx,
            tx,
            irq: TestInterrupt::default(),
            next_buf: DATA_START,
        }
    }

    /// Guest memory for a buffer of `len` bytes.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "test guest memory exhausted"
        );
        a
    }

    /// The driver kicked queue `index`.
    pub fn kick(&mut self, index: usize) {
        let mut qs: Vec<&mut Queue> = self.queues.iter_mut().collect();
        self.worker
            .process_queue(index, &mut qs, self.mem.as_ref(), &self.irq)
            .unwrap();
    }

    /// The worker's epoll fd became readable.
    pub fn host_event(&mut self) {
        let mut qs: Vec<&mut Queue> = self.queues.iter_mut().collect();
        self.worker
            .process_extra(0, &mut qs, self.mem.as_ref(), &self.irq)
            .unwrap();
    }

    /// Offer `n` RX buffers of `size` bytes (one descriptor each, as Linux does) and kick.
    pub fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let addr = self.alloc(size);
            let mem = self.mem.clone();
            self.rx.add(
                &mem,
                &[Desc {
                    addr,
                    len: size,
                    write: true,
                }],
                None,
            );
        }
        self.kick(RX_QUEUE);
    }

    /// Put a TX chain made of `descs` and kick.
    pub fn send_raw(&mut self, descs: &[Desc], next_override: Option<u16>) {
        let mem = self.mem.clone();
        self.tx.add(&mem, descs, next_override);
        self.kick(TX_QUEUE);
        self.tx.take_used(&mem);
    }

    /// Write bytes into fresh guest memory; returns the address.
    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        let a = self.alloc(bytes.len().max(1) as u32);
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        a
    }

    /// Send a packet the way Linux does: header and payload in two readable descriptors.
    pub fn send(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        let h = self.put(&hdr.to_bytes());
        let mut descs = vec![Desc {
            addr: h,
            len: HDR_SIZE as u32,
            write: false,
        }];
        if !data.is_empty() {
            let d = self.put(data);
            descs.push(Desc {
                addr: d,
                len: data.len() as u32,
                write: false,
            });
        }
        self.send_raw(&descs, None);
    }

    /// Packets the device has written into RX buffers since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mem = self.mem.clone();
        let mut out = Vec::new();
        for (descs, len) in self.rx.take_used(&mem) {
            if (len as usize) < HDR_SIZE {
                continue;
            }
            let d = descs[0];
            let mut raw = [0u8; HDR_SIZE];
            mem.read_slice(&mut raw, GuestAddress(d.addr)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HDR_SIZE + hdr.len as usize, "used length");
            let mut data = vec![0u8; hdr.len as usize];
            mem.read_slice(&mut data, GuestAddress(d.addr + HDR_SIZE as u64))
                .unwrap();
            out.push((hdr, data));
        }
        out
    }

    /// Handle host events and collect what reaches the guest, a few rounds (the host
    /// side's writes are already in the sockets when this is called).
    pub fn pump(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..4 {
            self.host_event();
            out.extend(self.recv());
        }
        out
    }

    /// A header from the guest port `src` to host port `dst`.
    pub fn hdr(&self, op: u16, src: u32, dst: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF,
            fwd_cnt: 0,
        }
    }

    /// Connect a host process to the device socket and ask for guest `port`.
    pub fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        s
    }

    /// Full host-initiated handshake to guest `port`: returns the host stream and the
    /// device's local port. RX buffers must be posted.
    pub fn establish_host(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = self.host_connect(port);
        let pkts = self.pump();
        let req = pkts
            .iter()
            .find(|(h, _)| h.op == op::REQUEST && h.dst_port == port)
            .expect("a REQUEST")
            .0;
        let local = req.src_port;
        let resp = self.hdr(op::RESPONSE, port, local);
        self.send(resp, &[]);
        let line = read_line(&mut s);
        assert_eq!(line, format!("OK {local}\n"));
        (s, local)
    }

    /// Number of live connections.
    pub fn connections(&mut self) -> usize {
        self.worker.muxer().connection_count()
    }
}

/// Read one `\n`-terminated line, a byte at a time.
pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "line so far: {line:?}");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether the host stream sees end of file (within its read timeout).
pub fn host_sees_eof(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// Read exactly `n` bytes from the host stream.
pub fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// Payload bytes of the RW packets in `pkts`, concatenated.
pub fn rw_bytes(pkts: &[(Header, Vec<u8>)]) -> Vec<u8> {
    pkts.iter()
        .filter(|(h, _)| h.op == op::RW)
        .flat_map(|(_, d)| d.iter().copied())
        .collect()
}

/// A recognisable pattern of `n` bytes.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
