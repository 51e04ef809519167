//! Tests of the balloon's register side and control handle, and of the running device
//! (worker thread, MMIO transport).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_devices::device::VmMemory;
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::{MmioDriver, TestInterrupt, guest_memory};
use virtio_queue::Queue;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
use crate::stats::tag;
use crate::worker::tests::{MEM_SIZE, add_chain, add_pfns, fill_page, page_is, stat, used_idx};

fn cfg(amount_mib: u64, stats_s: u64, oom: bool, reporting: bool) -> api::BalloonConfig {
    api::BalloonConfig {
        amount_mib,
        deflate_on_oom: oom,
        stats_interval_s: stats_s,
        free_page_reporting: reporting,
    }
}

fn read_u32(dev: &Balloon, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn features_and_queues_follow_the_config() {
    let (dev, _) = Balloon::new(&cfg(0, 0, false, false), "b").unwrap();
    assert_eq!(dev.device_type(), device_type::BALLOON);
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.features(), features::COMMON);
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE; 2]);
    assert_eq!(dev.name(), "virtio-balloon");

    let (dev, h) = Balloon::new(&cfg(0, 5, true, true), "b").unwrap();
    assert_eq!(
        dev.features(),
        features::COMMON
            | feature_bits::STATS_VQ
            | feature_bits::DEFLATE_ON_OOM
            | feature_bits::REPORTING
    );
    assert_eq!(dev.queue_max_sizes().len(), 4);
    assert!(h.stats_enabled());
    assert_eq!(h.stats_interval_s(), 5);

    let (dev, h) = Balloon::new(&cfg(0, 0, false, true), "b").unwrap();
    assert_eq!(dev.features(), features::COMMON | feature_bits::REPORTING);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert!(!h.stats_enabled());
}

#[test]
fn config_space_has_the_target_and_takes_actual_from_the_driver() {
    let (mut dev, h) = Balloon::new(&cfg(64, 0, false, false), "b").unwrap();
    assert_eq!(read_u32(&dev, 0), 64 * 256);
    assert_eq!(h.target_mib(), 64);
    h.set_target_mib(10).unwrap();
    assert_eq!(read_u32(&dev, 0), 2560, "num_pages follows set_target_mib");
    assert_eq!(h.target_pages(), 2560);

    assert_eq!(read_u32(&dev, 4), 0);
    dev.write_config(4, &512u32.to_le_bytes());
    assert_eq!(read_u32(&dev, 4), 512);
    assert_eq!(h.actual_pages(), 512);
    assert_eq!(h.actual_mib(), 2);
    // A one-byte write updates that byte of `actual` only.
    dev.write_config(5, &[0x10]);
    assert_eq!(h.actual_pages(), 0x1000);
    // A write straddling num_pages and actual changes actual's low bytes only.
    dev.write_config(2, &[9, 9, 1, 0]);
    assert_eq!(h.actual_pages(), 1);
    assert_eq!(read_u32(&dev, 0), 2560, "num_pages is read-only");
    // Writes elsewhere are ignored.
    dev.write_config(8, &[1, 2, 3, 4]);
    dev.write_config(u64::MAX, &[1, 2]);
    assert_eq!(read_u32(&dev, 8), 0, "free_page_hint_cmd_id");
    assert_eq!(read_u32(&dev, 12), 0, "poison_val");
    assert_eq!(read_u32(&dev, 16), 0, "past the end");
    let mut all = [0xffu8; 16];
    dev.read_config(0, &mut all);
    assert_eq!(&all[0..8], &[0x00, 0x0a, 0, 0, 0x01, 0, 0, 0]);
}

#[test]
fn targets_beyond_the_config_field_are_refused() {
    let max = u64::from(u32::MAX) / PAGES_PER_MIB;
    assert!(matches!(
        Balloon::new(&cfg(u64::MAX, 0, false, false), "b"),
        Err(BalloonError::TargetTooLarge(u64::MAX))
    ));
    let (dev, h) = Balloon::new(&cfg(max, 0, false, false), "b").unwrap();
    assert!(matches!(
        h.set_target_mib(max + 1),
        Err(BalloonError::TargetTooLarge(_))
    ));
    assert_eq!(read_u32(&dev, 0), (max * PAGES_PER_MIB) as u32, "unchanged");
}

#[test]
fn stats_polling_needs_the_stats_queue() {
    let (_d, h) = Balloon::new(&cfg(0, 0, false, false), "b").unwrap();
    assert!(matches!(
        h.set_stats_interval(1),
        Err(BalloonError::StatsDisabled)
    ));
    h.set_stats_interval(0).unwrap();
    let (_d, h) = Balloon::new(&cfg(0, 3, false, false), "b").unwrap();
    h.set_stats_interval(7).unwrap();
    assert_eq!(h.stats_interval_s(), 7);
    h.set_stats_interval(0).unwrap();
    assert_eq!(h.stats_interval_s(), 0);
    assert!(h.statistics().is_none());
}

struct Running<'m> {
    mocks: Vec<MockSplitQueue<'m, VmMemory>>,
    kicks: Vec<EventFd>,
    irq: Arc<TestInterrupt>,
}

/// Activate `dev` with one ready mock queue per declared queue.
fn activate<'m>(dev: &mut Balloon, mem: &'m Arc<VmMemory>, acked: u64) -> Running<'m> {
    let n = dev.queue_max_sizes().len() as u64;
    let mocks: Vec<_> = (0..n)
        .map(|i| MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000 * (i + 1)), 16))
        .collect();
    let queues: Vec<Queue> = mocks.iter().map(|m| m.create_queue().unwrap()).collect();
    let kicks: Vec<EventFd> = (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(TestInterrupt::default());
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues,
        queue_evts: kicks.iter().map(|e| e.try_clone().unwrap()).collect(),
        interrupt: irq.clone(),
        acked_features: acked,
    })
    .unwrap();
    Running { mocks, kicks, irq }
}

#[test]
fn new_target_signals_a_config_change_while_running() {
    let mem = guest_memory(MEM_SIZE);
    let (mut dev, h) = Balloon::new(&cfg(0, 0, true, false), "balloon-cfg").unwrap();
    h.set_target_mib(4).unwrap(); // not running: nobody to tell
    let run = activate(&mut dev, &mem, features::VERSION_1);
    assert!(dev.is_running());
    assert_eq!(run.irq.config.load(Ordering::SeqCst), 0);
    h.set_target_mib(8).unwrap();
    assert_eq!(run.irq.config.load(Ordering::SeqCst), 1);
    assert_eq!(read_u32(&dev, 0), 8 * 256);
    dev.write_config(4, &(8u32 * 256).to_le_bytes());
    assert_eq!(h.actual_mib(), 8);

    assert!(dev.reset());
    assert!(!dev.is_running());
    assert_eq!(h.actual_mib(), 0, "a reset driver's balloon is empty");
    h.set_target_mib(2).unwrap();
    assert_eq!(
        run.irq.config.load(Ordering::SeqCst),
        1,
        "stopped: no signal"
    );
    assert_eq!(h.target_mib(), 2);
}

#[test]
fn activation_needs_every_accepted_queue() {
    let mem = guest_memory(MEM_SIZE);
    let (mut dev, _h) = Balloon::new(&cfg(0, 1, false, true), "b").unwrap();
    let mock = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
    let mut queues: Vec<Queue> = (0..3).map(|_| mock.create_queue().unwrap()).collect();
    queues.push(Queue::new(16).unwrap()); // not ready
    let ctx = |queues| ActivateContext {
        mem: mem.clone(),
        queues,
        queue_evts: (0..4)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: Arc::new(TestInterrupt::default()),
        acked_features: features::VERSION_1 | feature_bits::STATS_VQ | feature_bits::REPORTING,
    };
    let r = dev.activate(ctx(queues));
    assert!(matches!(r, Err(ActivateError::QueueNotReady(3))), "{r:?}");
    assert!(!dev.is_running());
}

/// The whole device on its worker thread: inflate, then statistics polled on a short
/// interval.
#[test]
fn running_device_inflates_and_polls_statistics() {
    let mem = guest_memory(MEM_SIZE);
    let (mut dev, h) = Balloon::new(&cfg(0, 1, false, false), "balloon-run").unwrap();
    h.set_stats_interval_ms(30).unwrap();
    let run = activate(
        &mut dev,
        &mem,
        features::VERSION_1 | features::EVENT_IDX | feature_bits::STATS_VQ,
    );

    let pfn = 0x20_0000 / 4096;
    fill_page(&mem, pfn, 0x99);
    add_pfns(&mem, &run.mocks[0], 0, 0x10_0000, &[pfn as u32]);
    run.kicks[0].write(1).unwrap();
    wait_for("the inflate buffer", || used_idx(&mem, &run.mocks[0]) == 1);
    assert!(page_is(&mem, pfn, 0));

    let bytes = stat(tag::MEMTOT, 1 << 30);
    mem.write_slice(&bytes, GuestAddress(0x11_0000)).unwrap();
    add_chain(&run.mocks[2], 0, &[(0x11_0000, bytes.len() as u32, 0)]);
    run.kicks[2].write(1).unwrap();
    wait_for("statistics", || h.statistics().is_some());
    assert_eq!(h.statistics().unwrap().total_memory, Some(1 << 30));
    wait_for("the stats buffer back", || {
        used_idx(&mem, &run.mocks[2]) == 1
    });
    assert!(dev.reset());
    assert!(!run.irq.failed.load(Ordering::SeqCst));
}

/// Through the MMIO transport, as a driver sees it: the device offers statistics and
/// reporting, the driver accepts reporting only, so reporting is queue 2.
#[test]
fn reporting_through_the_mmio_transport() {
    let mem = guest_memory(MEM_SIZE);
    let (dev, h) = Balloon::new(&cfg(16, 5, true, true), "balloon-mmio").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let mocks: Vec<_> = (0..3u64)
        .map(|i| MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000 * (i + 1)), 16))
        .collect();
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0x08), device_type::BALLOON);
    let offered = d.device_features();
    assert_eq!(
        offered & (feature_bits::STATS_VQ | feature_bits::REPORTING),
        feature_bits::STATS_VQ | feature_bits::REPORTING
    );
    assert_eq!(d.read(0x100), 16 * 256, "num_pages in the config space");
    assert!(d.negotiate(features::VERSION_1 | feature_bits::REPORTING));
    for (i, m) in mocks.iter().enumerate() {
        d.setup_queue(
            i as u32,
            16,
            m.desc_table_addr().0,
            m.avail_addr().0,
            m.used_addr().0,
        );
    }
    d.driver_ok();
    assert!(t.is_activated());

    let pfn = 0x30_0000 / 4096;
    fill_page(&mem, pfn, 0x5a);
    add_chain(&mocks[2], 0, &[(0x30_0000, 4096, WRITE)]);
    let mut d = MmioDriver(&mut t);
    d.write(0x50, 2);
    wait_for("the reported range back", || used_idx(&mem, &mocks[2]) == 1);
    assert!(page_is(&mem, pfn, 0));
    d.write(0x104, 4096);
    assert_eq!(h.actual_mib(), 16);
    d.write(0x70, 0);
    assert!(!t.is_activated());
}

/// Head and length of used element `i` of `vq`.
fn used_elem(mem: &VmMemory, vq: &MockSplitQueue<'_, VmMemory>, i: u64) -> (u32, u32) {
    let at = vq.used_addr().0 + 4 + 8 * i;
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

/// A running balloon moves to a new device over the same memory: the target, `actual`
/// and the polling interval survive (the new handle reports them), and the statistics
/// buffer the device held at the snapshot is held by the restored device, given back
/// once at its first poll, and the fresh statistics the guest puts in it are read.
#[test]
fn state_and_the_held_stats_buffer_move_to_a_restored_device() {
    let mem = guest_memory(MEM_SIZE);
    let config = cfg(16, 1, false, false);
    let (dev, h) = Balloon::new(&config, "balloon-snap").unwrap();
    // A long interval: the buffer is still held at the snapshot.
    h.set_stats_interval_ms(60_000).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let mocks: Vec<_> = (0..3u64)
        .map(|i| MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000 * (i + 1)), 16))
        .collect();
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(features::VERSION_1 | features::EVENT_IDX | feature_bits::STATS_VQ));
    for (i, m) in mocks.iter().enumerate() {
        d.setup_queue(
            i as u32,
            16,
            m.desc_table_addr().0,
            m.avail_addr().0,
            m.used_addr().0,
        );
    }
    d.driver_ok();
    assert!(t.is_activated());
    h.set_target_mib(32).unwrap();
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0x100), 32 * 256);
    d.write(0x104, 32 * 256);
    assert_eq!(h.actual_mib(), 32);

    // The driver's statistics buffer: read, then held by the device.
    let stats_buf = 0x11_0000;
    let bytes = stat(tag::MEMTOT, 1 << 30);
    mem.write_slice(&bytes, GuestAddress(stats_buf)).unwrap();
    add_chain(&mocks[2], 0, &[(stats_buf, bytes.len() as u32, 0)]);
    d.write(0x50, 2);
    wait_for("the first statistics", || h.statistics().is_some());
    assert_eq!(used_idx(&mem, &mocks[2]), 0, "held until the next poll");

    t.pause();
    let state = t.state().unwrap();
    let saved: BalloonState =
        serde_json::from_value(state.device_state.clone().expect("balloon state")).unwrap();
    assert_eq!(
        saved,
        BalloonState {
            target_pages: 32 * 256,
            actual_pages: 32 * 256,
            stats_interval_ms: 60_000,
            held_stats_head: Some(0),
        }
    );
    assert_eq!(
        (state.queues[2].next_avail, state.queues[2].next_used),
        (1, 0)
    );
    drop(t);

    // A new device, built from the same configuration, then given the state.
    let (dev, h2) = Balloon::new(&config, "balloon-restored").unwrap();
    assert_eq!(h2.target_mib(), 16);
    let mut restored = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    restored.restore(&state).unwrap();
    assert!(restored.is_activated());
    assert_eq!((h2.target_mib(), h2.actual_mib()), (32, 32));
    assert_eq!(h2.stats_interval_s(), 60);
    let mut d = MmioDriver(&mut restored);
    assert_eq!(d.read(0x100), 32 * 256, "num_pages");
    assert_eq!(d.read(0x104), 32 * 256, "actual");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used_idx(&mem, &mocks[2]), 0, "still held after restore");

    // The first poll of the restored device gives the buffer back, once.
    h2.set_stats_interval_ms(20).unwrap();
    wait_for("the statistics buffer back", || {
        used_idx(&mem, &mocks[2]) == 1
    });
    assert_eq!(used_elem(&mem, &mocks[2], 0), (0, 0));
    // The guest answers with fresh numbers in the same buffer.
    let fresh = stat(tag::MEMTOT, 2 << 30);
    mem.write_slice(&fresh, GuestAddress(stats_buf)).unwrap();
    add_chain(&mocks[2], 0, &[(stats_buf, fresh.len() as u32, 0)]);
    h2.set_stats_interval_ms(60_000).unwrap();
    MmioDriver(&mut restored).write(0x50, 2);
    wait_for("the fresh statistics", || {
        h2.statistics().and_then(|s| s.total_memory) == Some(2 << 30)
    });
    assert_eq!(
        h2.counters().stats_updates,
        1,
        "the old buffer is not read again"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used_idx(&mem, &mocks[2]), 1, "the buffer was used once");
    MmioDriver(&mut restored).write(0x70, 0);
}

/// A target set before the driver started the device survives too; a state that does
/// not fit the device is refused.
#[test]
fn state_of_a_stopped_balloon_and_refused_states() {
    let mem = guest_memory(MEM_SIZE);
    let (dev, h) = Balloon::new(&cfg(16, 0, false, false), "balloon-snap").unwrap();
    h.set_target_mib(48).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let state = t.state().unwrap();
    drop(t);
    let (dev, h2) = Balloon::new(&cfg(16, 0, false, false), "balloon-restored").unwrap();
    let mut restored = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    restored.restore(&state).unwrap();
    assert!(!restored.is_activated());
    assert_eq!(h2.target_mib(), 48);

    let (mut dev, h3) = Balloon::new(&cfg(16, 0, false, false), "b").unwrap();
    let polling = serde_json::to_value(BalloonState {
        target_pages: 0,
        actual_pages: 0,
        stats_interval_ms: 1000,
        held_stats_head: None,
    })
    .unwrap();
    let e = dev.restore_state(Some(&polling)).unwrap_err();
    assert!(e.contains("no statistics queue"), "{e}");
    let e = dev
        .restore_state(Some(&serde_json::json!({ "transport_reset": true })))
        .unwrap_err();
    assert!(e.contains("device state refused"), "{e}");
    assert_eq!(h3.target_mib(), 16, "a refused state changes nothing");
    dev.restore_state(None).unwrap();
    assert_eq!(h3.target_mib(), 16, "no state: the configuration stands");
}

/// A held statistics head the restored queue cannot have is dropped, not used.
#[test]
fn a_held_stats_head_outside_the_queue_is_dropped() {
    let mem = guest_memory(MEM_SIZE);
    let (mut dev, h) = Balloon::new(&cfg(0, 1, false, false), "balloon-bad-head").unwrap();
    let state = serde_json::to_value(BalloonState {
        target_pages: 0,
        actual_pages: 0,
        stats_interval_ms: 20,
        held_stats_head: Some(16),
    })
    .unwrap();
    dev.restore_state(Some(&state)).unwrap();
    let run = activate(&mut dev, &mem, features::VERSION_1 | feature_bits::STATS_VQ);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(used_idx(&mem, &run.mocks[2]), 0);
    assert!(!run.irq.failed.load(Ordering::SeqCst), "the device goes on");
    assert_eq!(h.stats_interval_s(), 0, "20 ms");
    assert!(dev.reset());
}
