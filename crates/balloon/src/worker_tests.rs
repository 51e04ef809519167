//! Tests of the balloon's queue handling, driving [`BalloonWorker`] directly with queues
//! laid out in guest memory by virtio-queue's mock driver.

use std::time::SystemTime;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_devices::device::VmMemory;
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::Balloon;
use crate::device::feature_bits as fb;
use crate::stats::tag;

pub(crate) const MEM_SIZE: usize = 4 << 20;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const PAGE: u64 = 4096;
/// Guest pages the tests give to the balloon start here.
const PAGES_AT: u64 = 0x20_0000;
/// Buffers (page frame lists, statistics) live here.
const BUFS_AT: u64 = 0x10_0000;

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

/// Write `pfns` at `buf` and offer them as one readable descriptor.
pub(crate) fn add_pfns(
    mem: &VmMemory,
    vq: &MockSplitQueue<'_, VmMemory>,
    slot: u16,
    buf: u64,
    pfns: &[u32],
) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(buf)).unwrap();
    add_chain(vq, slot, &[(buf, bytes.len() as u32, 0)]);
}

pub(crate) fn used_idx(mem: &VmMemory, vq: &MockSplitQueue<'_, VmMemory>) -> u16 {
    mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap()
}

/// (head, len) of used element `i`.
fn used_elem(mem: &VmMemory, vq: &MockSplitQueue<'_, VmMemory>, i: u64) -> (u32, u32) {
    let at = vq.used_addr().unchecked_add(4 + 8 * i);
    (
        mem.read_obj(at).unwrap(),
        mem.read_obj(at.unchecked_add(4)).unwrap(),
    )
}

pub(crate) fn stat(t: u16, v: u64) -> Vec<u8> {
    let mut b = t.to_le_bytes().to_vec();
    b.extend_from_slice(&v.to_le_bytes());
    b
}

pub(crate) fn fill_page(mem: &VmMemory, pfn: u64, byte: u8) {
    mem.write_slice(&[byte; PAGE as usize], GuestAddress(pfn * PAGE))
        .unwrap();
}

/// Whether page `pfn` reads back as all `byte`.
pub(crate) fn page_is(mem: &VmMemory, pfn: u64, byte: u8) -> bool {
    let mut buf = [0u8; PAGE as usize];
    mem.read_slice(&mut buf, GuestAddress(pfn * PAGE)).unwrap();
    buf.iter().all(|b| *b == byte)
}

/// A balloon offering every feature, a worker for `acked` features, and one mock queue
/// per declared queue. The handle signals `irq`, as a running device's does.
struct Rig {
    mem: Arc<VmMemory>,
    handle: BalloonHandle,
    irq: Arc<TestInterrupt>,
}

impl Rig {
    fn new(stats_interval_ms: u64) -> Self {
        let cfg = api::BalloonConfig {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_interval_s: 1,
            free_page_hinting: true,
            free_page_reporting: true,
        };
        let (_dev, handle) = Balloon::new(&cfg, "balloon-test").unwrap();
        handle.set_stats_interval_ms(stats_interval_ms).unwrap();
        let irq = Arc::new(TestInterrupt::default());
        *handle.shared.interrupt.lock().unwrap() = Some(irq.clone());
        Self {
            mem: guest_memory(MEM_SIZE),
            handle,
            irq,
        }
    }

    fn worker(&self, acked: u64) -> BalloonWorker {
        BalloonWorker::new(&self.handle, acked).unwrap()
    }

    fn mocks(&self) -> Vec<MockSplitQueue<'_, VmMemory>> {
        (0..5u64)
            .map(|i| {
                MockSplitQueue::create(self.mem.as_ref(), GuestAddress(0x1_0000 * (i + 1)), 16)
            })
            .collect()
    }

    fn run(
        &self,
        w: &mut BalloonWorker,
        qs: &mut [Queue],
        index: usize,
    ) -> Result<(), WorkerError> {
        let mut refs: Vec<&mut Queue> = qs.iter_mut().collect();
        w.process_queue(index, &mut refs, self.mem.as_ref(), self.irq.as_ref())
    }

    fn extra(&self, w: &mut BalloonWorker, qs: &mut [Queue], index: usize) {
        let mut refs: Vec<&mut Queue> = qs.iter_mut().collect();
        w.process_extra(index, &mut refs, self.mem.as_ref(), self.irq.as_ref())
            .unwrap();
    }
}

fn queues(mocks: &[MockSplitQueue<'_, VmMemory>]) -> Vec<Queue> {
    mocks.iter().map(|m| m.create_queue().unwrap()).collect()
}

/// Wait (at most 5 s) until `fd` is readable.
fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that outlives the call.
    let n = unsafe { libc::poll(&mut p, 1, 5000) };
    assert_eq!(n, 1, "fd {fd} did not become readable");
}

#[test]
fn inflate_really_releases_memory() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(0);
    let first = PAGES_AT / PAGE;
    for pfn in first..first + 4 {
        fill_page(&rig.mem, pfn, 0xa5);
    }
    let pfns: Vec<u32> = (first..first + 3).map(|p| p as u32).collect();
    add_pfns(&rig.mem, &mocks[0], 0, BUFS_AT, &pfns);
    rig.run(&mut w, &mut qs, 0).unwrap();

    for pfn in first..first + 3 {
        assert!(page_is(&rig.mem, pfn, 0), "page {pfn:#x} released");
    }
    assert!(page_is(&rig.mem, first + 3, 0xa5), "the next page is kept");
    assert_eq!(used_idx(&rig.mem, &mocks[0]), 1);
    assert_eq!(used_elem(&rig.mem, &mocks[0], 0), (0, 0));
    assert_eq!(rig.irq.used_count(), 1);
    let c = rig.handle.counters();
    assert_eq!(c.inflated_pages, 3);
    assert_eq!(c.released_bytes, 3 * PAGE);
    assert_eq!(c.ignored, 0);
}

#[test]
fn inflate_coalesces_consecutive_pages() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(0);
    let f = (PAGES_AT / PAGE) as u32;
    // Three runs: f..f+3, f+0x100..f+0x102, f+5.
    let pfns = [f, f + 1, f + 2, f + 0x100, f + 0x101, f + 5];
    for p in pfns {
        fill_page(&rig.mem, u64::from(p), 0x11);
    }
    add_pfns(&rig.mem, &mocks[0], 0, BUFS_AT, &pfns);
    rig.run(&mut w, &mut qs, 0).unwrap();
    let c = rig.handle.counters();
    assert_eq!(
        c.madvise_calls, 3,
        "one madvise per run of consecutive pages"
    );
    assert_eq!(c.released_bytes, 6 * PAGE);
    for p in pfns {
        assert!(page_is(&rig.mem, u64::from(p), 0));
    }
}

#[test]
fn inflate_ignores_out_of_range_and_garbage() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(0);
    let f = (PAGES_AT / PAGE) as u32;
    let last_pfn = (MEM_SIZE as u64 / PAGE) as u32; // first frame past guest memory
    fill_page(&rig.mem, u64::from(f), 0x22);
    fill_page(&rig.mem, u64::from(f) + 1, 0x22);
    add_pfns(
        &rig.mem,
        &mocks[0],
        0,
        BUFS_AT,
        &[f, u32::MAX, last_pfn, 0xdead_beef, f + 1],
    );
    // A chain whose buffer lies outside guest memory.
    add_chain(&mocks[0], 1, &[(0xffff_0000, 64, 0)]);
    // A chain of 6 bytes: one frame and two stray bytes.
    let mut odd = (f + 2).to_le_bytes().to_vec();
    odd.extend([0xff, 0xff]);
    rig.mem
        .write_slice(&odd, GuestAddress(BUFS_AT + 0x1000))
        .unwrap();
    fill_page(&rig.mem, u64::from(f) + 2, 0x22);
    add_chain(&mocks[0], 2, &[(BUFS_AT + 0x1000, 6, 0)]);
    // A chain of device-writable buffers only: no frames.
    add_chain(&mocks[0], 3, &[(BUFS_AT + 0x2000, 64, WRITE)]);
    // An empty buffer.
    add_chain(&mocks[0], 4, &[(BUFS_AT + 0x3000, 0, 0)]);

    rig.run(&mut w, &mut qs, 0).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[0]), 5, "every chain is returned");
    for p in f..f + 3 {
        assert!(
            page_is(&rig.mem, u64::from(p), 0),
            "valid page {p:#x} released"
        );
    }
    let c = rig.handle.counters();
    assert_eq!(c.inflated_pages, 6);
    assert_eq!(c.released_bytes, 3 * PAGE);
    assert_eq!(c.ignored, 4, "3 bad frames and 1 bad chain");
    assert!(!rig.irq.failed.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn deflate_returns_buffers_and_keeps_memory() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(fb::DEFLATE_ON_OOM);
    let f = PAGES_AT / PAGE;
    fill_page(&rig.mem, f, 0x33);
    add_pfns(&rig.mem, &mocks[1], 0, BUFS_AT, &[f as u32, f as u32 + 1]);
    add_pfns(&rig.mem, &mocks[1], 1, BUFS_AT + 0x100, &[f as u32 + 7]);
    rig.run(&mut w, &mut qs, 1).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[1]), 2);
    assert_eq!(used_elem(&rig.mem, &mocks[1], 1), (1, 0));
    assert!(
        page_is(&rig.mem, f, 0x33),
        "deflate does not touch the pages"
    );
    let c = rig.handle.counters();
    assert_eq!(c.deflated_pages, 3);
    assert_eq!(c.released_bytes, 0);
}

#[test]
fn queue_layout_follows_the_accepted_features() {
    let l = QueueLayout::new(0);
    assert_eq!((l.stats(), l.hinting(), l.reporting()), (None, None, None));
    assert_eq!(l.indices().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(l.kind(2), None);
    let l = QueueLayout::new(fb::STATS_VQ);
    assert_eq!((l.stats(), l.reporting()), (Some(2), None));
    let l = QueueLayout::new(fb::REPORTING | fb::DEFLATE_ON_OOM);
    assert_eq!((l.stats(), l.reporting()), (None, Some(2)));
    assert_eq!(l.kind(2), Some(QueueKind::Reporting));
    let l = QueueLayout::new(fb::STATS_VQ | fb::REPORTING);
    assert_eq!(l.indices().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(
        (0..5).map(|i| l.kind(i)).collect::<Vec<_>>(),
        [
            Some(QueueKind::Inflate),
            Some(QueueKind::Deflate),
            Some(QueueKind::Stats),
            Some(QueueKind::Reporting),
            None
        ]
    );
    // Hinting comes between statistics and reporting, each at the next free index.
    let l = QueueLayout::new(fb::STATS_VQ | fb::FREE_PAGE_HINT | fb::REPORTING);
    assert_eq!(
        (l.stats(), l.hinting(), l.reporting()),
        (Some(2), Some(3), Some(4))
    );
    assert_eq!(l.indices().collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(l.kind(3), Some(QueueKind::Hinting));
    let l = QueueLayout::new(fb::FREE_PAGE_HINT);
    assert_eq!(
        (l.stats(), l.hinting(), l.reporting()),
        (None, Some(2), None)
    );
    let l = QueueLayout::new(fb::FREE_PAGE_HINT | fb::REPORTING);
    assert_eq!(
        (l.stats(), l.hinting(), l.reporting()),
        (None, Some(2), Some(3))
    );
    assert_eq!(l.kind(4), None);
}

/// Every feature accepted: hinting is queue 3.
const ALL: u64 = fb::STATS_VQ | fb::FREE_PAGE_HINT | fb::REPORTING;
const HINTQ: usize = 3;

/// Offer the command id `cmd` as one device-readable le32 at `buf`.
fn add_cmd(mem: &VmMemory, vq: &MockSplitQueue<'_, VmMemory>, slot: u16, buf: u64, cmd: u32) {
    mem.write_slice(&cmd.to_le_bytes(), GuestAddress(buf))
        .unwrap();
    add_chain(vq, slot, &[(buf, 4, 0)]);
}

/// Offer `pages` pages from frame `pfn` as one hinted (device-writable) range.
fn add_hint(vq: &MockSplitQueue<'_, VmMemory>, slot: u16, pfn: u64, pages: u32) {
    add_chain(vq, slot, &[(pfn * PAGE, pages * PAGE as u32, WRITE)]);
}

fn status(rig: &Rig) -> (u32, Option<u32>) {
    let s = rig.handle.hinting_status().unwrap();
    (s.host_cmd, s.guest_cmd)
}

fn config_signals(rig: &Rig) -> usize {
    rig.irq.config.load(std::sync::atomic::Ordering::SeqCst)
}

/// A run as Linux makes one: the host writes a run id, the driver answers with it,
/// hints free ranges (released, whole pages only), then sends STOP, and the host, asked
/// to acknowledge, writes DONE and tells the driver. Hints outside a run are dropped.
#[test]
fn hinting_run_releases_hinted_pages_and_acknowledges_the_stop() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(ALL);
    let q = &mocks[HINTQ];
    let f = PAGES_AT / PAGE;
    for p in f..f + 16 {
        fill_page(&rig.mem, p, 0x6b);
    }
    assert_eq!(status(&rig), (hint_cmd::STOP, None));

    // Before any run: a hint is dropped.
    add_hint(q, 0, f + 12, 1);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f + 12, 0x6b));
    assert_eq!(rig.handle.counters().stale_hints, 1);

    assert_eq!(rig.handle.start_hinting(true).unwrap(), 2);
    assert_eq!(config_signals(&rig), 1, "the driver is told of the run");
    assert_eq!(status(&rig), (2, None));
    add_cmd(&rig.mem, q, 1, BUFS_AT, 2);
    add_hint(q, 2, f, 4);
    // f+8 partly, f+9 whole, f+10 partly: only f+9 goes.
    add_chain(
        q,
        3,
        &[(PAGES_AT + 8 * PAGE + 0x800, 2 * PAGE as u32, WRITE)],
    );
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert_eq!(status(&rig), (2, Some(2)));
    for p in f..f + 4 {
        assert!(page_is(&rig.mem, p, 0), "hinted page {p:#x} released");
    }
    assert!(page_is(&rig.mem, f + 4, 0x6b));
    assert!(page_is(&rig.mem, f + 8, 0x6b));
    assert!(page_is(&rig.mem, f + 9, 0));
    assert!(page_is(&rig.mem, f + 10, 0x6b));
    assert_eq!(config_signals(&rig), 1, "no DONE yet");

    add_cmd(&rig.mem, q, 4, BUFS_AT + 4, hint_cmd::STOP);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert_eq!(status(&rig), (hint_cmd::DONE, Some(hint_cmd::STOP)));
    assert_eq!(config_signals(&rig), 2, "DONE is signalled");
    assert_eq!(used_idx(&rig.mem, q), 5, "every chain is returned");
    assert_eq!(used_elem(&rig.mem, q, 2), (2, 0), "nothing written");

    // A hint arriving after DONE is dropped: the guest may be using the page again.
    add_hint(q, 5, f + 13, 1);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f + 13, 0x6b));

    let c = rig.handle.counters();
    assert_eq!(c.hinted_bytes, 5 * PAGE);
    assert_eq!(c.released_bytes, 5 * PAGE);
    assert_eq!(c.stale_hints, 2);
    assert_eq!(c.ignored, 0);
    let m = rig.handle.metrics().take();
    assert_eq!(m.free_page_hint_count, 2, "two ranges of the run");
    assert_eq!(m.free_page_hint_freed, 5 * PAGE);
    assert_eq!(m.free_page_hint_fails, 0);
    assert!(!rig.irq.failed.load(std::sync::atomic::Ordering::SeqCst));
}

/// Without acknowledge_on_stop the run's end waits for the host's stop. A newer run
/// drops the hints of an older one, and the guest's STOP for an older run does not
/// acknowledge the newer one. (A chain may carry a command id and ranges together; the
/// mock queue takes at most 8 chains.)
#[test]
fn hinting_stop_from_the_host_and_runs_that_overlap() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(ALL);
    let q = &mocks[HINTQ];
    let f = PAGES_AT / PAGE;
    for p in f..f + 8 {
        fill_page(&rig.mem, p, 0x3c);
    }
    let cmd_at = |i: u64, cmd: u32| {
        let at = BUFS_AT + 4 * i;
        rig.mem
            .write_slice(&cmd.to_le_bytes(), GuestAddress(at))
            .unwrap();
        (at, 4, 0)
    };
    let page = |pfn: u64| (pfn * PAGE, PAGE as u32, WRITE);

    assert_eq!(rig.handle.start_hinting(false).unwrap(), 2);
    add_chain(q, 0, &[cmd_at(0, 2), page(f), cmd_at(1, hint_cmd::STOP)]);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f, 0));
    assert_eq!(status(&rig), (2, Some(hint_cmd::STOP)), "the guest holds");
    assert_eq!(config_signals(&rig), 1, "not acknowledged");
    rig.handle.stop_hinting().unwrap();
    assert_eq!(status(&rig), (hint_cmd::DONE, Some(hint_cmd::STOP)));
    assert_eq!(config_signals(&rig), 2);

    // Run 3 starts; the guest, still on run 3 when the host starts run 4, sends a hint
    // of run 3 (dropped) and ends run 3: run 4 is not acknowledged by that STOP.
    assert_eq!(rig.handle.start_hinting(true).unwrap(), 3);
    add_chain(q, 3, &[cmd_at(2, 3)]);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert_eq!(rig.handle.start_hinting(true).unwrap(), 4);
    add_chain(q, 4, &[page(f + 1), cmd_at(3, hint_cmd::STOP)]);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f + 1, 0x3c), "a hint of run 3 is stale");
    assert_eq!(status(&rig), (4, Some(hint_cmd::STOP)));
    assert_eq!(config_signals(&rig), 4, "two starts, no DONE");

    // The driver then runs 4: its hint goes, its STOP is acknowledged.
    add_chain(
        q,
        6,
        &[cmd_at(4, 4), page(f + 2), cmd_at(5, hint_cmd::STOP)],
    );
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f + 2, 0));
    assert_eq!(status(&rig), (hint_cmd::DONE, Some(hint_cmd::STOP)));
    assert_eq!(config_signals(&rig), 5);

    // The host stops a run mid-way: hints in flight after DONE are dropped, and the
    // guest's STOP changes nothing.
    assert_eq!(rig.handle.start_hinting(true).unwrap(), 5);
    add_chain(q, 9, &[cmd_at(6, 5)]);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    rig.handle.stop_hinting().unwrap();
    add_chain(q, 10, &[page(f + 3), cmd_at(7, hint_cmd::STOP)]);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f + 3, 0x3c));
    assert_eq!(status(&rig), (hint_cmd::DONE, Some(hint_cmd::STOP)));
    assert_eq!(config_signals(&rig), 7, "start and stop only");
    assert_eq!(used_idx(&rig.mem, q), 6);
    let c = rig.handle.counters();
    assert_eq!((c.hinted_bytes, c.stale_hints), (2 * PAGE, 2));
}

/// What a guest can put on the hinting queue that is not a run: short or unreadable
/// command ids, ranges outside guest memory, across its end or around the address
/// space, empty ranges, a command id and a range in one chain, DONE from the driver.
/// Every chain goes back, nothing outside the valid ranges is released, the worker
/// goes on.
#[test]
fn hinting_garbage_is_survived() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(ALL);
    let q = &mocks[HINTQ];
    let f = PAGES_AT / PAGE;
    for p in f..f + 4 {
        fill_page(&rig.mem, p, 0x71);
    }
    let last = MEM_SIZE as u64 - PAGE;
    fill_page(&rig.mem, last / PAGE, 0x71);
    assert_eq!(rig.handle.start_hinting(true).unwrap(), 2);

    // A 2-byte command id, and one outside guest memory: ignored, the guest's command
    // stays unknown, so the range after them is stale.
    rig.mem.write_slice(&[2, 0], GuestAddress(BUFS_AT)).unwrap();
    add_chain(q, 0, &[(BUFS_AT, 2, 0)]);
    add_chain(q, 1, &[(0xffff_fff0, 4, 0)]);
    add_chain(q, 2, &[(u64::MAX - 1, 4, 0)]);
    add_hint(q, 3, f, 1);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f, 0x71));
    assert_eq!(status(&rig), (2, None));

    // One chain with the command id and a range; then bad ranges.
    rig.mem
        .write_slice(&2u32.to_le_bytes(), GuestAddress(BUFS_AT + 0x100))
        .unwrap();
    add_chain(
        q,
        4,
        &[
            (BUFS_AT + 0x100, 4, 0),
            (PAGES_AT + PAGE, PAGE as u32, WRITE),
        ],
    );
    add_chain(
        q,
        6,
        &[
            // Outside guest memory.
            (MEM_SIZE as u64, 4 * PAGE as u32, WRITE),
            // Across its end: refused whole.
            (last, 2 * PAGE as u32, WRITE),
            // Around the address space.
            (u64::MAX - 0x800, PAGE as u32, WRITE),
            // Empty, and smaller than a page.
            (PAGES_AT + 2 * PAGE, 0, WRITE),
            (PAGES_AT + 2 * PAGE + 1, 100, WRITE),
        ],
    );
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert!(page_is(&rig.mem, f + 1, 0), "the chain's own range");
    assert!(page_is(&rig.mem, f + 2, 0x71));
    assert!(page_is(&rig.mem, last / PAGE, 0x71));
    // DONE from the driver ends its run like STOP.
    add_cmd(&rig.mem, q, 11, BUFS_AT + 0x200, hint_cmd::DONE);
    rig.run(&mut w, &mut qs, HINTQ).unwrap();
    assert_eq!(status(&rig), (hint_cmd::DONE, Some(hint_cmd::DONE)));
    assert_eq!(used_idx(&rig.mem, q), 7, "every chain is returned");

    let c = rig.handle.counters();
    assert_eq!(c.hinted_bytes, PAGE);
    assert_eq!(c.ignored, 6, "3 command ids, 3 ranges");
    let m = rig.handle.metrics().take();
    assert_eq!(m.free_page_hint_count, 6, "the ranges of the run");
    assert_eq!(m.free_page_hint_fails, 3);
    assert_eq!(c.stale_hints, 1);
    assert!(!rig.irq.failed.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn reporting_queue_moves_down_without_stats() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    // The device declared 4 queues, the driver accepted reporting only: queue 2 reports.
    let mut w = rig.worker(fb::REPORTING);
    let f = PAGES_AT / PAGE;
    fill_page(&rig.mem, f, 0x44);
    add_chain(&mocks[2], 0, &[(PAGES_AT, PAGE as u32, WRITE)]);
    rig.run(&mut w, &mut qs, 2).unwrap();
    assert!(page_is(&rig.mem, f, 0));
    assert_eq!(used_idx(&rig.mem, &mocks[2]), 1);
    assert!(!w.holds_stats_buffer());

    // Queue 3 is not in use: a kick there is ignored.
    add_chain(&mocks[3], 0, &[(PAGES_AT, PAGE as u32, WRITE)]);
    rig.run(&mut w, &mut qs, 3).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[3]), 0);
    // So is an index past the queues.
    rig.run(&mut w, &mut qs, 9).unwrap();

    // With statistics accepted too, reporting is queue 3.
    let mut w = rig.worker(fb::STATS_VQ | fb::REPORTING);
    fill_page(&rig.mem, f + 1, 0x44);
    add_chain(&mocks[3], 1, &[(PAGES_AT + PAGE, PAGE as u32, WRITE)]);
    rig.run(&mut w, &mut qs, 3).unwrap();
    assert!(page_is(&rig.mem, f + 1, 0));
    assert_eq!(used_idx(&rig.mem, &mocks[3]), 2);
}

#[test]
fn free_page_reporting_releases_whole_pages_of_each_range() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(fb::STATS_VQ | fb::REPORTING);
    let f = PAGES_AT / PAGE;
    for p in f..f + 16 {
        fill_page(&rig.mem, p, 0x66);
    }
    add_chain(
        &mocks[3],
        0,
        &[
            // Pages f..f+4.
            (PAGES_AT, 4 * PAGE as u32, WRITE),
            // f+8 partly, f+9 whole, f+10 partly: only f+9 goes.
            (PAGES_AT + 8 * PAGE + 0x800, 2 * PAGE as u32, WRITE),
            // Outside guest memory.
            (MEM_SIZE as u64, 4 * PAGE as u32, WRITE),
            // Straddling the end of guest memory: refused whole.
            (MEM_SIZE as u64 - PAGE, 2 * PAGE as u32, WRITE),
            // Wrapping around the address space.
            (u64::MAX - 0x800, PAGE as u32, WRITE),
        ],
    );
    rig.run(&mut w, &mut qs, 3).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[3]), 1);
    for p in f..f + 4 {
        assert!(page_is(&rig.mem, p, 0), "page {p:#x} reported free");
    }
    assert!(page_is(&rig.mem, f + 4, 0x66));
    assert!(page_is(&rig.mem, f + 8, 0x66));
    assert!(page_is(&rig.mem, f + 9, 0));
    assert!(page_is(&rig.mem, f + 10, 0x66));
    let c = rig.handle.counters();
    assert_eq!(c.released_bytes, 5 * PAGE);
    assert_eq!(c.ignored, 3);
}

fn sample_stats() -> Vec<u8> {
    let mut b = stat(tag::MEMFREE, 100 << 20);
    b.extend(stat(tag::MEMTOT, 512 << 20));
    b.extend(stat(tag::MAJFLT, 7));
    b.extend(stat(tag::AVAIL, 300 << 20));
    b
}

#[test]
fn stats_buffer_is_held_returned_on_the_timer_and_parsed() {
    let rig = Rig::new(20);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(fb::STATS_VQ);
    let timer = w.extra_fds()[EXTRA_TIMER];

    // Nothing held yet: the timer has nothing to return.
    wait_readable(timer);
    rig.extra(&mut w, &mut qs, EXTRA_TIMER);
    assert_eq!(used_idx(&rig.mem, &mocks[2]), 0);

    // The driver's first buffer, filled at probe time.
    let before = SystemTime::now();
    let bytes = sample_stats();
    rig.mem.write_slice(&bytes, GuestAddress(BUFS_AT)).unwrap();
    add_chain(&mocks[2], 0, &[(BUFS_AT, bytes.len() as u32, 0)]);
    rig.run(&mut w, &mut qs, 2).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[2]), 0, "the buffer is held");
    assert!(w.holds_stats_buffer());
    assert_eq!(rig.irq.used_count(), 0);
    let s = rig.handle.statistics().expect("statistics parsed");
    assert_eq!(s.free_memory, Some(100 << 20));
    assert_eq!(s.total_memory, Some(512 << 20));
    assert_eq!(s.major_faults, Some(7));
    assert_eq!(s.available_memory, Some(300 << 20));
    assert_eq!(s.swap_in, None);
    assert!(s.received_at >= before);

    // The interval elapses: the buffer goes back to ask for fresh numbers.
    wait_readable(timer);
    rig.extra(&mut w, &mut qs, EXTRA_TIMER);
    assert_eq!(used_idx(&rig.mem, &mocks[2]), 1);
    assert_eq!(used_elem(&rig.mem, &mocks[2], 0), (0, 0));
    assert_eq!(rig.irq.used_count(), 1);
    assert!(!w.holds_stats_buffer());

    // The driver refills it and gives it back.
    let fresh = stat(tag::MEMFREE, 42);
    rig.mem.write_slice(&fresh, GuestAddress(BUFS_AT)).unwrap();
    add_chain(&mocks[2], 0, &[(BUFS_AT, fresh.len() as u32, 0)]);
    rig.run(&mut w, &mut qs, 2).unwrap();
    assert!(w.holds_stats_buffer());
    let s = rig.handle.statistics().unwrap();
    assert_eq!(s.free_memory, Some(42));
    assert_eq!(s.total_memory, None, "a snapshot holds only what was sent");
    assert_eq!(rig.handle.counters().stats_updates, 2);
}

#[test]
fn malformed_stats_are_survived() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(fb::STATS_VQ);

    // 3 bytes: no whole record, statistics stay unknown.
    rig.mem
        .write_slice(&[1, 2, 3], GuestAddress(BUFS_AT))
        .unwrap();
    add_chain(&mocks[2], 0, &[(BUFS_AT, 3, 0)]);
    rig.run(&mut w, &mut qs, 2).unwrap();
    assert!(rig.handle.statistics().is_none());
    assert!(w.holds_stats_buffer());

    // A second buffer while one is held: the older goes back, the newer is kept.
    // Unknown tags and a stray byte, split over two descriptors.
    let mut bytes = stat(0x7777, 1);
    bytes.extend(stat(tag::SWAP_OUT, 9));
    bytes.push(0xee);
    rig.mem
        .write_slice(&bytes, GuestAddress(BUFS_AT + 0x100))
        .unwrap();
    add_chain(
        &mocks[2],
        1,
        &[
            (BUFS_AT + 0x100, 13, 0),
            (BUFS_AT + 0x100 + 13, bytes.len() as u32 - 13, 0),
        ],
    );
    rig.run(&mut w, &mut qs, 2).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[2]), 1);
    assert_eq!(used_elem(&rig.mem, &mocks[2], 0).0, 0, "the first buffer");
    let s = rig.handle.statistics().unwrap();
    assert_eq!(s.swap_out, Some(9));
    assert_eq!(s.swap_in, None);

    // A buffer outside guest memory: ignored, still held, the old one returned.
    add_chain(&mocks[2], 3, &[(0xffff_0000, 40, 0)]);
    rig.run(&mut w, &mut qs, 2).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[2]), 2);
    assert_eq!(rig.handle.statistics().unwrap().swap_out, Some(9));
    // A huge buffer: only the first records are read.
    add_chain(&mocks[2], 4, &[(BUFS_AT, 0x10_0000, 0)]);
    rig.run(&mut w, &mut qs, 2).unwrap();
    assert_eq!(used_idx(&rig.mem, &mocks[2]), 3);
    assert!(!rig.irq.failed.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn control_eventfd_rearms_the_stats_timer() {
    let rig = Rig::new(0);
    let mocks = rig.mocks();
    let mut qs = queues(&mocks);
    let mut w = rig.worker(fb::STATS_VQ);
    assert!(!w.timer.is_armed().unwrap(), "interval 0: no polling");
    rig.handle.set_stats_interval_ms(10).unwrap();
    wait_readable(w.extra_fds()[EXTRA_CONTROL]);
    rig.extra(&mut w, &mut qs, EXTRA_CONTROL);
    assert!(w.timer.is_armed().unwrap());
    rig.handle.set_stats_interval(0).unwrap();
    rig.extra(&mut w, &mut qs, EXTRA_CONTROL);
    assert!(!w.timer.is_armed().unwrap());

    // Without the statistics queue the timer never runs.
    rig.handle.set_stats_interval_ms(10).unwrap();
    let w = rig.worker(0);
    assert!(!w.timer.is_armed().unwrap());
}
