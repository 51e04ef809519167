//! What the integration tests share: the guest side of the queues (test-support's
//! split-ring driver) in test memory, behind the MMIO transport or given to a worker.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use test_support::virtq::SplitQueue;
pub use test_support::virtq::WRITE;
use virtio_devices::device::VmMemory;
use virtio_devices::testing::MmioDriver;
use vm_memory::{Bytes, GuestAddress};

/// Queue size the tests use.
pub const QSIZE: u16 = 256;

/// The guest side of one queue of the tests: the shared split-ring driver.
pub type Rings<'a> = SplitQueue<'a, VmMemory>;

/// A queue of [`QSIZE`] entries laid out at `base`.
pub fn rings(mem: &VmMemory, base: u64) -> Rings<'_> {
    SplitQueue::new(mem, GuestAddress(base), QSIZE)
}

/// Tell the device where `q`'s rings are (queue `index`) through the MMIO registers.
pub fn setup(d: &mut MmioDriver<'_>, index: u32, q: &Rings<'_>) {
    d.setup_queue(index, u32::from(q.size), q.desc.0, q.avail.0, q.used.0);
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
