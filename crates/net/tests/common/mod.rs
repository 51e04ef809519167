//! What the integration tests share: a guest driver's split rings in test memory.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use virtio_devices::device::VmMemory;
use virtio_devices::testing::MmioDriver;
use vm_memory::{Address, Bytes, GuestAddress};

/// Queue size the tests use.
pub const QSIZE: u16 = 256;
/// Device-writable descriptor flag.
pub const WRITE: u16 = 2;
const NEXT: u16 = 1;

/// One split virtqueue as a driver lays it out at `base`.
pub struct Rings {
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
}

impl Rings {
    /// Rings at `base`, zeroed.
    pub fn new(mem: &VmMemory, base: u64) -> Self {
        let avail = base + 16 * u64::from(QSIZE);
        let used = (avail + 6 + 2 * u64::from(QSIZE) + 3) & !3;
        let end = used + 6 + 8 * u64::from(QSIZE);
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        Self {
            desc: GuestAddress(base),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
            next_desc: 0,
        }
    }

    /// Tell the device where the rings are (queue `index`) through the MMIO registers.
    pub fn setup(&self, d: &mut MmioDriver<'_>, index: u32) {
        d.setup_queue(
            index,
            u32::from(QSIZE),
            self.desc.0,
            self.avail.0,
            self.used.0,
        );
    }

    /// Publish a chain of `(addr, len, flags)` descriptors; returns its head.
    pub fn add_chain(&mut self, mem: &VmMemory, descs: &[(u64, u32, u16)]) -> u16 {
        let first = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let last = usize::from(i) + 1 == descs.len();
            let at = self.desc.unchecked_add(16 * u64::from(first + i));
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags | if last { 0 } else { NEXT }, at.unchecked_add(12))
                .unwrap();
            mem.write_obj(if last { 0 } else { first + i + 1 }, at.unchecked_add(14))
                .unwrap();
        }
        self.next_desc += descs.len() as u16;
        let idx: u16 = mem.read_obj(self.avail.unchecked_add(2)).unwrap();
        mem.write_obj(
            first,
            self.avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE)),
        )
        .unwrap();
        mem.write_obj(idx.wrapping_add(1), self.avail.unchecked_add(2))
            .unwrap();
        first
    }

    /// Offer chain `head` (already in the descriptor table) again.
    pub fn republish(&self, mem: &VmMemory, head: u16) {
        let idx: u16 = mem.read_obj(self.avail.unchecked_add(2)).unwrap();
        mem.write_obj(
            head,
            self.avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE)),
        )
        .unwrap();
        mem.write_obj(idx.wrapping_add(1), self.avail.unchecked_add(2))
            .unwrap();
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &VmMemory) -> u16 {
        mem.read_obj(self.used.unchecked_add(2)).unwrap()
    }

    /// The head of used element `i` (modulo the ring).
    pub fn used_head(&self, mem: &VmMemory, i: u16) -> u16 {
        let e = self.used.unchecked_add(4 + 8 * u64::from(i % QSIZE));
        mem.read_obj::<u32>(e).unwrap() as u16
    }

    /// A ready device-side queue over these rings (for driving a worker directly).
    pub fn queue(&self) -> virtio_queue::Queue {
        use virtio_queue::QueueT;
        let mut q = virtio_queue::Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Every used element so far: (head, len).
    pub fn used(&self, mem: &VmMemory) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(self.used.unchecked_add(2)).unwrap();
        (0..u64::from(idx))
            .map(|i| {
                let e = self.used.unchecked_add(4 + 8 * i);
                (
                    mem.read_obj(e).unwrap(),
                    mem.read_obj(e.unchecked_add(4)).unwrap(),
                )
            })
            .collect()
    }
}

/// Poll `cond` every millisecond for up to five seconds.
pub fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Read `len` bytes of guest memory.
pub fn read(mem: &VmMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}
