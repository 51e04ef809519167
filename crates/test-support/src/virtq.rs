//! The driver side of a split virtqueue (virtio 1.2, 2.7), for tests and benches that
//! play the guest: [`SplitQueue`] lays out the descriptor table, the avail ring and the
//! used ring in guest memory, publishes descriptor chains and reads what the device put
//! in the used ring. The device side is whatever the test drives: a worker given
//! [`SplitQueue::queue`], an MMIO transport told the ring addresses, or a vhost-user
//! backend given them through `SET_VRING_ADDR`.
//!
//! ```
//! use test_support::virtq::{SplitQueue, WRITE};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut q = SplitQueue::new(&mem, GuestAddress(0x1000), 16);
//! let head = q.add_chain(&[(0x8_0000, 16, 0), (0x8_1000, 512, WRITE)]);
//! // ... the device serves the chain ...
//! # mem.write_obj(u32::from(head), q.used.unchecked_add(4)).unwrap();
//! # mem.write_obj(512u32, q.used.unchecked_add(8)).unwrap();
//! # mem.write_obj(1u16, q.used.unchecked_add(2)).unwrap();
//! assert_eq!(q.used_idx(), 1);
//! assert_eq!(q.used_elem(0), (u32::from(head), 512));
//! # use vm_memory::Address;
//! ```

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// `VRING_DESC_F_NEXT`: the chain goes on at the descriptor's `next`.
pub const NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`: the buffer is device-writable.
pub const WRITE: u16 = 2;

/// One split virtqueue of `size` entries laid out by the driver in `mem`: descriptor
/// table at `base`, avail ring right after it, used ring 4-aligned after that (the
/// avail ring's `used_event` included). Panics on guest memory errors: the test laid it
/// out.
pub struct SplitQueue<'a, M: GuestMemory + ?Sized> {
    mem: &'a M,
    /// Entries in each ring.
    pub size: u16,
    /// The descriptor table.
    pub desc: GuestAddress,
    /// The avail ring (`flags`, `idx`, `ring[size]`, `used_event`).
    pub avail: GuestAddress,
    /// The used ring (`flags`, `idx`, `ring[size]` of (id, len), `avail_event`).
    pub used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a, M: GuestMemory + ?Sized> SplitQueue<'a, M> {
    /// Lay out (and zero) the rings at `base`.
    pub fn new(mem: &'a M, base: GuestAddress, size: u16) -> Self {
        let desc = base;
        let avail = desc.unchecked_add(16 * u64::from(size));
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(size) + 3) & !3);
        let end = used.unchecked_add(6 + 8 * u64::from(size));
        mem.write_slice(&vec![0u8; (end.0 - base.0) as usize], base)
            .expect("zero the rings");
        Self {
            mem,
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The memory the rings are in.
    pub fn mem(&self) -> &'a M {
        self.mem
    }

    /// Write a chain of `(address, length, flags)` buffers into the next free
    /// descriptors (NEXT flags and links added) and make it available; returns its head.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if last { flags } else { flags | NEXT };
            let next = if last { 0 } else { (idx + 1) % self.size };
            self.write_desc(idx, addr, len, flags, next);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Write descriptor `idx` as given (for chains laid out by hand).
    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc.unchecked_add(16 * u64::from(idx));
        self.write(addr, at);
        self.write(len, at.unchecked_add(8));
        self.write(flags, at.unchecked_add(12));
        self.write(next, at.unchecked_add(14));
    }

    /// Put the chain at `head` in the avail ring and bump its index (a chain the device
    /// used can be offered again this way).
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.write(head, self.avail.unchecked_add(4 + 2 * u64::from(slot)));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Write the avail ring's index (without changing where [`Self::publish`] goes on).
    pub fn set_avail_idx(&self, idx: u16) {
        self.write(idx, self.avail.unchecked_add(2));
    }

    /// The driver's `used_event` (with `VIRTIO_F_EVENT_IDX`).
    pub fn set_used_event(&self, v: u16) {
        self.write(v, self.avail.unchecked_add(4 + 2 * u64::from(self.size)));
    }

    /// The used ring's flags (`VRING_USED_F_NO_NOTIFY` = 1).
    pub fn used_flags(&self) -> u16 {
        self.read(self.used)
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.read(self.used.unchecked_add(2))
    }

    /// Used element `i` (modulo the ring): (descriptor head, length written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used.unchecked_add(4 + 8 * u64::from(i % self.size));
        (self.read(at), self.read(at.unchecked_add(4)))
    }

    /// The used elements `0..used_idx` (for a test that used fewer than `size`).
    pub fn used(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx()).map(|i| self.used_elem(i)).collect()
    }

    /// A ready device-side queue over these rings, for driving a device worker directly.
    pub fn queue(&self) -> virtio_queue::Queue {
        let mut q = virtio_queue::Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
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

    fn write<T: vm_memory::ByteValued>(&self, v: T, at: GuestAddress) {
        self.mem.write_obj(v, at).expect("write the rings");
    }

    fn read<T: vm_memory::ByteValued>(&self, at: GuestAddress) -> T {
        self.mem.read_obj(at).expect("read the rings")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueOwnedT;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn layout_chains_and_a_device_side_queue_agree() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut q = SplitQueue::new(&mem, GuestAddress(0x1000), 8);
        assert_eq!(q.avail, GuestAddress(0x1000 + 128));
        // After flags, idx, 8 entries and used_event (22 bytes), 4-aligned.
        assert_eq!(q.used, GuestAddress(0x1000 + 128 + 24));
        assert_eq!(q.add_chain(&[(0x8000, 16, 0), (0x9000, 512, WRITE)]), 0);
        assert_eq!(q.add_chain(&[(0xa000, 8, 0)]), 2);
        assert_eq!(q.add_chain(&[(0xb000, 8, 0), (0xc000, 8, 0)]), 3);

        let mut device = q.queue();
        let chains: Vec<Vec<(u64, u32, bool)>> = device
            .iter(&mem)
            .unwrap()
            .map(|c| {
                c.map(|d| (d.addr().0, d.len(), d.is_write_only()))
                    .collect()
            })
            .collect();
        assert_eq!(
            chains,
            [
                vec![(0x8000, 16, false), (0x9000, 512, true)],
                vec![(0xa000, 8, false)],
                vec![(0xb000, 8, false), (0xc000, 8, false)],
            ]
        );
        device.add_used(&mem, 2, 8).unwrap();
        assert_eq!(q.used_idx(), 1);
        assert_eq!(q.used(), [(2, 8)]);
        assert_eq!(q.used_flags(), 0);
    }
}
