//! Tests of the request queue, driving [`PmemWorker`] directly with chains laid out in
//! guest memory by virtio-queue's mock driver, and random descriptor tables.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_devices::device::VmMemory;
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;

pub(crate) const MEM_SIZE: usize = 1 << 20;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Request buffers live here.
const BUFS: u64 = 0x8_0000;

/// Offer `bufs` (address, length, flags) as one chain starting at descriptor `slot`.
pub(crate) fn add_chain(vq: &MockSplitQueue<'_, VmMemory>, slot: u16, bufs: &[(u64, u32, u16)]) {
    let descs: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == bufs.len();
            let (flags, next) = if last {
                (flags, 0)
            } else {
                (flags | VRING_DESC_F_NEXT as u16, slot + i as u16 + 1)
            };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    vq.add_desc_chains(&descs, slot).unwrap();
}

/// A flush request as Linux's driver makes it: `type` at `at`, the status at `at + 8`
/// (set to 0xdead beforehand, so an answer shows), offered from descriptor `slot`.
pub(crate) fn add_flush(mem: &VmMemory, vq: &MockSplitQueue<'_, VmMemory>, slot: u16, at: u64) {
    mem.write_obj(REQ_TYPE_FLUSH.to_le(), GuestAddress(at))
        .unwrap();
    mem.write_obj(0xdeadu32, GuestAddress(at + 8)).unwrap();
    add_chain(vq, slot, &[(at, 4, 0), (at + 8, 4, WRITE)]);
}

pub(crate) fn used_idx(mem: &VmMemory, vq: &MockSplitQueue<'_, VmMemory>) -> u16 {
    mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap()
}

/// (head, len) of used element `i`.
pub(crate) fn used_elem(mem: &VmMemory, vq: &MockSplitQueue<'_, VmMemory>, i: u64) -> (u32, u32) {
    let at = vq.used_addr().unchecked_add(4 + 8 * i);
    (
        mem.read_obj(at).unwrap(),
        mem.read_obj(at.unchecked_add(4)).unwrap(),
    )
}

pub(crate) fn status(mem: &VmMemory, at: u64) -> u32 {
    u32::from_le(mem.read_obj(GuestAddress(at + 8)).unwrap())
}

/// A 3 MiB backing file filled with a pattern, in `dir`.
pub(crate) fn backing(dir: &Path, read_only: bool) -> Arc<Backing> {
    let path = dir.join("pmem.img");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, data).unwrap();
    Arc::new(Backing::open(&path, read_only).unwrap())
}

struct Rig {
    _dir: tempfile::TempDir,
    mem: Arc<VmMemory>,
    irq: TestInterrupt,
    metrics: Arc<PmemMetrics>,
}

impl Rig {
    fn new() -> Self {
        Self {
            _dir: tempfile::tempdir().unwrap(),
            mem: guest_memory(MEM_SIZE),
            irq: TestInterrupt::default(),
            metrics: Arc::default(),
        }
    }

    fn worker(&self, read_only: bool, limit: &api::RateLimit) -> PmemWorker {
        PmemWorker::new(
            backing(self._dir.path(), read_only),
            RateLimiter::new(limit).unwrap(),
            self.metrics.clone(),
            "pmem-test",
        )
    }

    fn vq(&self) -> MockSplitQueue<'_, VmMemory> {
        MockSplitQueue::create(self.mem.as_ref(), GuestAddress(0), 16)
    }

    fn kick(&self, w: &mut PmemWorker, queue: &mut Queue) {
        w.process_queue(0, &mut [queue], self.mem.as_ref(), &self.irq)
            .unwrap();
    }
}

#[test]
fn a_flush_is_answered_ok_with_one_sync() {
    let r = Rig::new();
    let vq = r.vq();
    let mut w = r.worker(false, &api::RateLimit::default());
    add_flush(&r.mem, &vq, 0, BUFS);
    let mut q = vq.create_queue::<Queue>().unwrap();
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 1);
    assert_eq!(used_elem(&r.mem, &vq, 0), (0, 4));
    assert_eq!(status(&r.mem, BUFS), RESP_OK);
    assert_eq!(w.syncs(), 1);
    assert_eq!(r.irq.used_count(), 1);
    assert_eq!(r.metrics.queue_event_count.get(), 1);
    assert_eq!(r.metrics.event_fails.get(), 0);
    // A kick with nothing new serves nothing, syncs nothing.
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 1);
    assert_eq!(w.syncs(), 1);
}

#[test]
fn flushes_made_available_together_share_one_sync() {
    let r = Rig::new();
    let vq = r.vq();
    let mut w = r.worker(false, &api::RateLimit::default());
    for i in 0..4u16 {
        add_flush(&r.mem, &vq, i * 2, BUFS + u64::from(i) * 0x100);
    }
    let mut q = vq.create_queue::<Queue>().unwrap();
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 4);
    for i in 0..4u64 {
        assert_eq!(used_elem(&r.mem, &vq, i), (i as u32 * 2, 4));
        assert_eq!(status(&r.mem, BUFS + i * 0x100), RESP_OK);
    }
    assert_eq!(w.syncs(), 1, "one msync for the turn");
    assert_eq!(r.irq.used_count(), 1, "one interrupt for the turn");
    // The next turn syncs again.
    add_flush(&r.mem, &vq, 8, BUFS + 0x1000);
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 5);
    assert_eq!(w.syncs(), 2);
}

#[test]
fn a_read_only_device_answers_flushes_ok() {
    let r = Rig::new();
    let vq = r.vq();
    let mut w = r.worker(true, &api::RateLimit::default());
    add_flush(&r.mem, &vq, 0, BUFS);
    let mut q = vq.create_queue::<Queue>().unwrap();
    r.kick(&mut w, &mut q);
    assert_eq!(used_elem(&r.mem, &vq, 0), (0, 4));
    assert_eq!(status(&r.mem, BUFS), RESP_OK);
}

#[test]
fn requests_split_across_descriptors_are_taken() {
    let r = Rig::new();
    let vq = r.vq();
    let mut w = r.worker(false, &api::RateLimit::default());
    r.mem.write_obj(0u16, GuestAddress(BUFS)).unwrap();
    r.mem.write_obj(0u16, GuestAddress(BUFS + 0x40)).unwrap();
    r.mem
        .write_obj(0xdeadu32, GuestAddress(BUFS + 0x80))
        .unwrap();
    add_chain(
        &vq,
        0,
        &[(BUFS, 2, 0), (BUFS + 0x40, 2, 0), (BUFS + 0x80, 16, WRITE)],
    );
    let mut q = vq.create_queue::<Queue>().unwrap();
    r.kick(&mut w, &mut q);
    assert_eq!(used_elem(&r.mem, &vq, 0), (0, 4));
    let st: u32 = r.mem.read_obj(GuestAddress(BUFS + 0x80)).unwrap();
    assert_eq!(st, RESP_OK);
}

#[test]
fn bad_requests_get_eio_or_nothing_and_are_counted() {
    let r = Rig::new();
    let vq = r.vq();
    let mut w = r.worker(false, &api::RateLimit::default());
    let mem = &r.mem;
    // 0: an unknown type, with room for the status: EIO.
    mem.write_obj(7u32, GuestAddress(BUFS)).unwrap();
    mem.write_obj(0xdeadu32, GuestAddress(BUFS + 8)).unwrap();
    add_chain(&vq, 0, &[(BUFS, 4, 0), (BUFS + 8, 4, WRITE)]);
    // 2: a type shorter than 4 bytes: EIO.
    mem.write_obj(0xdeadu32, GuestAddress(BUFS + 0x108))
        .unwrap();
    add_chain(&vq, 2, &[(BUFS + 0x100, 3, 0), (BUFS + 0x108, 4, WRITE)]);
    // 4: no room for the status: nothing written.
    mem.write_obj(0xdeadu32, GuestAddress(BUFS + 0x208))
        .unwrap();
    add_chain(&vq, 4, &[(BUFS + 0x200, 4, 0), (BUFS + 0x208, 3, WRITE)]);
    // 6: only a readable buffer.
    add_chain(&vq, 6, &[(BUFS + 0x300, 4, 0)]);
    // 7: a status buffer outside guest memory.
    add_chain(
        &vq,
        7,
        &[(BUFS + 0x400, 4, 0), (MEM_SIZE as u64 + 0x1000, 4, WRITE)],
    );
    // 9: the request outside guest memory, the status inside: EIO.
    mem.write_obj(0xdeadu32, GuestAddress(BUFS + 0x508))
        .unwrap();
    add_chain(&vq, 9, &[(u64::MAX - 1, 4, 0), (BUFS + 0x508, 4, WRITE)]);
    // 11: a good one after them all.
    add_flush(mem, &vq, 11, BUFS + 0x600);
    let mut q = vq.create_queue::<Queue>().unwrap();
    r.kick(&mut w, &mut q);

    assert_eq!(used_idx(mem, &vq), 7, "every chain is given back");
    let lens: Vec<(u32, u32)> = (0..7).map(|i| used_elem(mem, &vq, i)).collect();
    assert_eq!(
        lens,
        [(0, 4), (2, 4), (4, 0), (6, 0), (7, 0), (9, 4), (11, 4)]
    );
    assert_eq!(status(mem, BUFS), RESP_EIO);
    assert_eq!(status(mem, BUFS + 0x100), RESP_EIO);
    let untouched: u32 = mem.read_obj(GuestAddress(BUFS + 0x208)).unwrap();
    assert_eq!(untouched, 0xdead);
    assert_eq!(status(mem, BUFS + 0x500), RESP_EIO);
    assert_eq!(status(mem, BUFS + 0x600), RESP_OK);
    assert_eq!(r.metrics.event_fails.get(), 6);
    assert_eq!(w.syncs(), 1, "only the good request synced");
}

#[test]
fn the_rate_limiter_holds_flushes_in_the_ring_until_its_timer() {
    let r = Rig::new();
    let vq = r.vq();
    // One flush a second, one at once.
    let limit = api::RateLimit {
        ops_per_sec: Some(1),
        ..Default::default()
    };
    let mut w = r.worker(false, &limit);
    let fds = w.extra_fds();
    assert_eq!(fds.len(), 1, "the limiter's timer");
    add_flush(&r.mem, &vq, 0, BUFS);
    let mut q = vq.create_queue::<Queue>().unwrap();
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 1, "the bucket's one flush");
    add_flush(&r.mem, &vq, 2, BUFS + 0x100);
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 1, "held back");
    assert_eq!(q.next_avail(), 1, "still in the ring");
    assert_eq!(status(&r.mem, BUFS + 0x100), 0xdead);
    assert_eq!(r.metrics.rate_limiter_throttled_events.get(), 1);
    // A kick while blocked serves nothing and is counted as throttled.
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 1);
    assert_eq!(r.metrics.rate_limiter_throttled_events.get(), 2);

    let start = Instant::now();
    let mut pfd = libc::pollfd {
        fd: fds[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack for the call's duration.
    let ready = unsafe { libc::poll(&mut pfd, 1, 3000) };
    assert_eq!(ready, 1, "the timer fired");
    assert!(start.elapsed() < Duration::from_millis(2500));
    w.process_extra(0, &mut [&mut q], r.mem.as_ref(), &r.irq)
        .unwrap();
    assert_eq!(used_idx(&r.mem, &vq), 2, "served at the timer");
    assert_eq!(status(&r.mem, BUFS + 0x100), RESP_OK);
    assert_eq!(r.metrics.rate_limiter_event_count.get(), 1);
    assert_eq!(w.syncs(), 2);
}

#[test]
fn the_bandwidth_bucket_charges_the_files_size_per_sync() {
    let r = Rig::new();
    let vq = r.vq();
    // 3 MiB file, 4 MiB a second: one sync passes, the next waits.
    let limit = api::RateLimit {
        bytes_per_sec: Some(4 << 20),
        ..Default::default()
    };
    let mut w = r.worker(false, &limit);
    add_flush(&r.mem, &vq, 0, BUFS);
    let mut q = vq.create_queue::<Queue>().unwrap();
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 1);
    add_flush(&r.mem, &vq, 2, BUFS + 0x100);
    r.kick(&mut w, &mut q);
    assert_eq!(used_idx(&r.mem, &vq), 1, "1 MiB left, 3 MiB needed");
    // New limits: unlimited. The held flush goes at the next turn.
    w.set_rate_limit(&api::RateLimit::default()).unwrap();
    assert!(!w.rate_limit().is_limited());
    w.process_extra(0, &mut [&mut q], r.mem.as_ref(), &r.irq)
        .unwrap();
    assert_eq!(used_idx(&r.mem, &vq), 2);
}

#[test]
fn a_corrupt_avail_ring_is_a_worker_error_not_a_panic() {
    let r = Rig::new();
    let vq = r.vq();
    let mut w = r.worker(false, &api::RateLimit::default());
    // avail.idx far ahead of what a 16-entry queue can hold.
    r.mem
        .write_obj(1000u16, vq.avail_addr().unchecked_add(2))
        .unwrap();
    let mut q = vq.create_queue::<Queue>().unwrap();
    let err = w.process_queue(0, &mut [&mut q], r.mem.as_ref(), &r.irq);
    assert!(err.is_err());
    assert_eq!(r.metrics.event_fails.get(), 1);
}

/// One raw descriptor of a random table.
#[derive(Debug, Clone)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn raw_desc() -> impl Strategy<Value = RawDesc> {
    let addr = prop_oneof![
        6 => (0..0x1000u64).prop_map(|o| BUFS + o),
        1 => Just(MEM_SIZE as u64 - 2),
        1 => Just(MEM_SIZE as u64 + 4096),
        1 => Just(u64::MAX - 3),
        1 => Just(0u64),
        1 => any::<u64>(),
    ];
    let len = prop_oneof![4 => 0u32..12, 1 => Just(u32::MAX), 1 => any::<u32>()];
    // NEXT, WRITE, INDIRECT in any combination.
    (addr, len, 0u16..8, 0u16..20).prop_map(|(addr, len, flags, next)| RawDesc {
        addr,
        len,
        flags,
        next,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Garbage descriptor tables and avail rings never panic the worker: it answers
    /// what it can, or stops with a worker error, and writes guest memory only in the
    /// used ring and the writable buffers it was given.
    #[test]
    fn garbage_descriptors_never_panic(
        table in prop::collection::vec(raw_desc(), 16),
        heads in prop::collection::vec(0u16..40, 0..20),
        avail_idx in any::<u16>(),
        payload in any::<[u8; 64]>(),
    ) {
        let r = Rig::new();
        let vq = r.vq();
        let mut w = r.worker(false, &api::RateLimit::default());
        r.mem.write_slice(&payload, GuestAddress(BUFS)).unwrap();
        let table_at = vq.desc_table_addr();
        for (i, d) in table.iter().enumerate() {
            let at = table_at.unchecked_add(16 * i as u64);
            r.mem.write_obj(d.addr, at).unwrap();
            r.mem.write_obj(d.len, at.unchecked_add(8)).unwrap();
            r.mem.write_obj(d.flags, at.unchecked_add(12)).unwrap();
            r.mem.write_obj(d.next, at.unchecked_add(14)).unwrap();
        }
        let ring = vq.avail_addr().unchecked_add(4);
        for (i, h) in heads.iter().enumerate().take(16) {
            r.mem.write_obj(*h, ring.unchecked_add(2 * i as u64)).unwrap();
        }
        r.mem.write_obj(avail_idx, vq.avail_addr().unchecked_add(2)).unwrap();
        let mut before = vec![0u8; MEM_SIZE];
        r.mem.read_slice(&mut before, GuestAddress(0)).unwrap();

        let mut q = vq.create_queue::<Queue>().unwrap();
        let _ = w.process_queue(0, &mut [&mut q], r.mem.as_ref(), &r.irq);

        let mut after = vec![0u8; MEM_SIZE];
        r.mem.read_slice(&mut after, GuestAddress(0)).unwrap();
        let used_ring = (vq.used_addr().0, 4 + 8 * 16 + 2);
        let writable: Vec<(u64, u64)> = table
            .iter()
            .filter(|d| d.flags & WRITE != 0)
            .map(|d| (d.addr, u64::from(d.len)))
            .collect();
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if b == a {
                continue;
            }
            let i = i as u64;
            let inside = |(s, l): (u64, u64)| i >= s && i - s < l;
            // An indirect table may name writable buffers of its own: only the
            // payload area can hold one, so a change there is allowed too.
            let in_payload = (BUFS..BUFS + 0x1000).contains(&i);
            prop_assert!(
                inside(used_ring) || writable.iter().any(|r| inside(*r)) || in_payload,
                "byte {i:#x} changed outside the writable buffers"
            );
        }
    }
}
