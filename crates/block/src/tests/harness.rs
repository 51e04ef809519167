//! A test driver for [`BlockWorker`]: guest memory, one queue, a bump allocator for
//! buffers, request builders, and helpers for disk images on the host.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_devices::device::{DeviceWorker, VmMemory, WorkerError};
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use test_support::skip;

use crate::request::{SECTOR_SIZE, req_type};
use crate::worker::BlockWorker;

/// Guest memory size.
pub const MEM_SIZE: usize = 16 << 20;
/// Queue size used by the tests.
pub const QSIZE: u16 = 256;
const QBASE: u64 = 0x1_0000;
/// Where indirect tables go.
pub const INDIRECT_BASE: u64 = 0x2_0000;
const DATA_BASE: u64 = 0x10_0000;

pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// The byte at `offset` of a patterned test image.
pub fn pattern(offset: u64) -> u8 {
    ((offset / SECTOR_SIZE).wrapping_mul(37) ^ offset.wrapping_mul(11)) as u8
}

/// A raw image of `sectors` sectors filled with [`pattern`].
pub fn raw_image(dir: &Path, name: &str, sectors: u64) -> PathBuf {
    let path = dir.join(name);
    let data: Vec<u8> = (0..sectors * SECTOR_SIZE).map(pattern).collect();
    std::fs::write(&path, data).unwrap();
    path
}

/// A disk configuration with defaults.
pub fn disk_cfg(path: &Path, engine: api::IoEngine) -> api::DiskConfig {
    api::DiskConfig {
        id: None,
        path: path.to_path_buf(),
        readonly: false,
        format: api::DiskFormat::Raw,
        serial: None,
        rate_limit: api::RateLimit::default(),
        io_engine: engine,
    }
}

/// `Ok` where io_uring works on this host, else why not (for [`test_support::require!`]).
pub fn io_uring() -> Result<(), &'static str> {
    crate::io_uring_available()
        .then_some(())
        .ok_or("io_uring is not available on this host (io_uring_setup fails)")
}

/// The engines to test on this host. Without io_uring only the sync engine runs, and
/// the io_uring half of the calling test is reported through the skip policy (a
/// failure under `CI=true`).
pub fn engines() -> Vec<api::IoEngine> {
    match io_uring() {
        Ok(()) => vec![api::IoEngine::Sync, api::IoEngine::IoUring],
        Err(why) => {
            let test = format!("{} (io_uring engine)", skip::current_test());
            skip::missing(&test, why);
            vec![api::IoEngine::Sync]
        }
    }
}

/// Read `len` bytes of a host file at `offset` through a fresh handle.
pub fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// `Ok` where qemu-img is installed, else why not (for [`test_support::require!`]).
pub fn qemu_img_installed() -> Result<(), String> {
    skip::tool("qemu-img", "qemu-utils").map(|_| ())
}

/// Run qemu-img with `args`, panicking with its output on failure.
pub fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One descriptor as the tests describe it: guest address, length, flags, next.
#[derive(Clone, Copy, Debug)]
pub struct D {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// A submitted request: its head, status address and data buffers.
#[derive(Debug, Clone)]
pub struct Sent {
    pub head: u16,
    pub status: GuestAddress,
    pub data: Vec<(GuestAddress, u32)>,
}

/// The driver side of one queue plus the worker under test.
pub struct Harness {
    pub mem: Arc<VmMemory>,
    pub queue: Queue,
    pub worker: BlockWorker,
    pub irq: TestInterrupt,
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    next_data: u64,
    used_seen: u16,
}

impl Harness {
    pub fn new(worker: BlockWorker) -> Self {
        let mem = guest_memory(MEM_SIZE);
        // Laid out by hand: the mock queue's layout overlaps the used ring with the
        // end of the avail ring for large queues.
        let (desc_table, avail, used) = (
            GuestAddress(QBASE),
            GuestAddress(QBASE + 0x1000),
            GuestAddress(QBASE + 0x2000),
        );
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(desc_table.0 as u32), Some(0));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some(0));
        queue.set_used_ring_address(Some(used.0 as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem.as_ref()));
        Self {
            mem,
            queue,
            worker,
            irq: TestInterrupt::default(),
            desc_table,
            avail,
            used,
            next_desc: 0,
            next_data: DATA_BASE,
            used_seen: 0,
        }
    }

    pub fn open(cfg: &api::DiskConfig) -> Self {
        Self::new(BlockWorker::new(cfg).unwrap())
    }

    /// Allocate `len` bytes of guest memory (16-byte aligned), filled with `fill`.
    pub fn alloc(&mut self, len: u32, fill: u8) -> GuestAddress {
        let addr = GuestAddress(self.next_data);
        self.next_data = (self.next_data + u64::from(len) + 15) & !15;
        assert!(self.next_data <= MEM_SIZE as u64, "test data area full");
        self.mem
            .write_slice(&vec![fill; len as usize], addr)
            .unwrap();
        addr
    }

    /// Write a descriptor at `index` of the queue's table.
    pub fn set_desc(&self, index: u16, d: D) {
        let raw = RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, d.flags, d.next));
        self.mem
            .write_obj(raw, self.desc_table.unchecked_add(u64::from(index) * 16))
            .unwrap();
    }

    /// Write descriptors into an indirect table at `table`.
    pub fn set_indirect(&self, table: u64, descs: &[D]) {
        for (i, d) in descs.iter().enumerate() {
            let raw = RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, d.flags, d.next));
            self.mem
                .write_obj(raw, GuestAddress(table + i as u64 * 16))
                .unwrap();
        }
    }

    /// Offer the chain starting at `head` to the device.
    pub fn push_avail(&self, head: u16) {
        let idx_addr = self.avail.unchecked_add(2);
        let idx: u16 = self.mem.read_obj(idx_addr).unwrap();
        let slot = self.avail.unchecked_add(4 + u64::from(idx % QSIZE) * 2);
        self.mem.write_obj(head, slot).unwrap();
        self.mem.write_obj(idx.wrapping_add(1), idx_addr).unwrap();
    }

    /// Put `descs` in consecutive table slots, linked with NEXT, and offer them.
    pub fn add_chain(&mut self, descs: &[(GuestAddress, u32, bool)]) -> u16 {
        let head = self.next_desc;
        assert!(
            usize::from(head) + descs.len() <= usize::from(QSIZE),
            "test uses more descriptors than the table holds"
        );
        for (i, (addr, len, write)) in descs.iter().enumerate() {
            let index = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let mut flags = if *write { WRITE } else { 0 };
            if !last {
                flags |= NEXT;
            }
            self.set_desc(
                index,
                D {
                    addr: addr.0,
                    len: *len,
                    flags,
                    next: (index + 1) % QSIZE,
                },
            );
        }
        self.next_desc = head + descs.len() as u16;
        self.push_avail(head);
        head
    }

    /// A 16-byte request header in guest memory.
    pub fn header(&mut self, t: u32, sector: u64) -> GuestAddress {
        let a = self.alloc(16, 0);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, a).unwrap();
        a
    }

    /// A request of type `t` at `sector` with data buffers of the given lengths
    /// (device-writable for IN and GET_ID, readable otherwise; readable ones are filled
    /// with `fill`), then a status byte preset to 0xff.
    pub fn request(&mut self, t: u32, sector: u64, lens: &[u32], fill: u8) -> Sent {
        let write = t == req_type::IN || t == req_type::GET_ID;
        let hdr = self.header(t, sector);
        let mut descs = vec![(hdr, 16, false)];
        let mut data = Vec::new();
        for &l in lens {
            let a = self.alloc(l, if write { 0xee } else { fill });
            descs.push((a, l, write));
            data.push((a, l));
        }
        let status = self.alloc(1, 0xff);
        descs.push((status, 1, true));
        let head = self.add_chain(&descs);
        Sent { head, status, data }
    }

    /// A discard or write-zeroes request with these (sector, count, flags) segments.
    pub fn dwz(&mut self, t: u32, segs: &[(u64, u32, u32)]) -> Sent {
        let hdr = self.header(t, 0);
        let body = self.alloc(16 * segs.len() as u32, 0);
        for (i, (s, n, f)) in segs.iter().enumerate() {
            let mut seg = [0u8; 16];
            seg[0..8].copy_from_slice(&s.to_le_bytes());
            seg[8..12].copy_from_slice(&n.to_le_bytes());
            seg[12..16].copy_from_slice(&f.to_le_bytes());
            self.mem
                .write_slice(&seg, body.unchecked_add(16 * i as u64))
                .unwrap();
        }
        let status = self.alloc(1, 0xff);
        let head = self.add_chain(&[
            (hdr, 16, false),
            (body, 16 * segs.len() as u32, false),
            (status, 1, true),
        ]);
        Sent {
            head,
            status,
            data: vec![(body, 16 * segs.len() as u32)],
        }
    }

    /// The status byte of a request.
    pub fn status(&self, s: &Sent) -> u8 {
        self.mem.read_obj(s.status).unwrap()
    }

    /// Bytes of guest memory.
    pub fn bytes(&self, addr: GuestAddress, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.mem.read_slice(&mut v, addr).unwrap();
        v
    }

    /// The used ring's guest range (address, length).
    pub fn used_ring(&self) -> (u64, u64) {
        (self.used.0, 6 + 8 * u64::from(QSIZE))
    }

    /// Address of the avail ring's index.
    pub fn avail_idx_addr(&self) -> GuestAddress {
        self.avail.unchecked_add(2)
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used.unchecked_add(2)).unwrap()
    }

    /// New used elements (head, len) since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.used_idx();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self
                .used
                .unchecked_add(4 + u64::from(self.used_seen % QSIZE) * 8);
            let id: u32 = self.mem.read_obj(e).unwrap();
            let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Kick the queue once.
    pub fn kick(&mut self) -> Result<(), WorkerError> {
        let mem = self.mem.clone();
        self.worker
            .process_queue(0, &mut [&mut self.queue], mem.as_ref(), &self.irq)
    }

    /// Wait (up to 5 s) for one of the worker's extra fds and process it.
    pub fn wait_extra(&mut self) -> bool {
        let fds = self.worker.extra_fds();
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd: &RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pfds` is a valid array of pollfds of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 5000) };
        if n <= 0 {
            return false;
        }
        let mem = self.mem.clone();
        for (i, p) in pfds.iter().enumerate() {
            if p.revents & libc::POLLIN != 0 {
                self.worker
                    .process_extra(i, &mut [&mut self.queue], mem.as_ref(), &self.irq)
                    .unwrap();
            }
        }
        true
    }

    /// Kick, then serve completions and timers until `count` more chains are used.
    pub fn run_until(&mut self, count: usize) -> Vec<(u16, u32)> {
        self.kick().unwrap();
        let mut got = self.take_used();
        while got.len() < count {
            assert!(
                self.wait_extra(),
                "timed out: {} of {count} used",
                got.len()
            );
            got.extend(self.take_used());
        }
        got
    }

    /// Kick and wait for every request offered so far to be answered.
    pub fn run(&mut self) -> Vec<(u16, u32)> {
        let avail: u16 = self.mem.read_obj(self.avail.unchecked_add(2)).unwrap();
        let pending = avail.wrapping_sub(self.used_seen) as usize;
        self.run_until(pending)
    }
}
