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
        free_page_hinting: false,
        free_page_reporting: reporting,
    }
}

/// `c` with free page hinting.
fn hinting(c: api::BalloonConfig) -> api::BalloonConfig {
    api::BalloonConfig {
        free_page_hinting: true,
        ..c
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
    assert!(!h.hinting_enabled());

    let (dev, h) = Balloon::new(&hinting(cfg(0, 1, false, true)), "b").unwrap();
    assert_eq!(
        dev.features(),
        features::COMMON
            | feature_bits::STATS_VQ
            | feature_bits::FREE_PAGE_HINT
            | feature_bits::REPORTING
    );
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE; 5]);
    assert!(h.hinting_enabled());
}

/// The handle's hinting requests: refused on a device without hinting, and before the
/// driver started the device (status excepted); once it runs, each start writes the
/// next run id into `free_page_hint_cmd_id` (read-only to the driver) and signals a
/// configuration change, stop writes DONE; ids skip STOP and DONE when they wrap; a
/// reset forgets everything.
#[test]
fn hinting_command_ids_in_the_config_space() {
    let mem = guest_memory(MEM_SIZE);
    let (_d, plain) = Balloon::new(&cfg(0, 0, false, false), "b").unwrap();
    for r in [
        plain.start_hinting(true).map(|_| ()),
        plain.stop_hinting(),
        plain.hinting_status().map(|_| ()),
    ] {
        assert!(matches!(r, Err(BalloonError::HintingDisabled)), "{r:?}");
    }

    let (mut dev, h) = Balloon::new(&hinting(cfg(0, 0, false, false)), "balloon-hint").unwrap();
    assert!(matches!(
        h.start_hinting(true),
        Err(BalloonError::NotActive)
    ));
    assert!(matches!(h.stop_hinting(), Err(BalloonError::NotActive)));
    assert_eq!(
        h.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: hint_cmd::STOP,
            guest_cmd: None
        }
    );
    assert_eq!(read_u32(&dev, 8), hint_cmd::STOP);

    let run = activate(
        &mut dev,
        &mem,
        features::VERSION_1 | feature_bits::FREE_PAGE_HINT,
    );
    assert_eq!(h.start_hinting(true).unwrap(), 2);
    assert_eq!(read_u32(&dev, 8), 2);
    assert_eq!(run.irq.config.load(Ordering::SeqCst), 1);
    assert_eq!(h.start_hinting(false).unwrap(), 3);
    assert_eq!(read_u32(&dev, 8), 3);
    dev.write_config(8, &7u32.to_le_bytes());
    assert_eq!(
        read_u32(&dev, 8),
        3,
        "the driver cannot write the command id"
    );
    h.stop_hinting().unwrap();
    assert_eq!(read_u32(&dev, 8), hint_cmd::DONE);
    assert_eq!(run.irq.config.load(Ordering::SeqCst), 3);
    assert_eq!(h.hinting_status().unwrap().host_cmd, hint_cmd::DONE);

    dev.shared.hinting().last_run_id = u32::MAX;
    assert_eq!(h.start_hinting(true).unwrap(), 2, "0 and 1 are skipped");
    assert_eq!(h.start_hinting(true).unwrap(), 3);

    assert!(dev.reset());
    assert_eq!(read_u32(&dev, 8), hint_cmd::STOP);
    assert_eq!(*dev.shared.hinting(), HintingState::default());
    assert!(matches!(
        h.start_hinting(true),
        Err(BalloonError::NotActive)
    ));
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

/// A hinting run through the MMIO transport: the driver accepts statistics, hinting and
/// reporting (queues 2, 3, 4), reads the run id in the configuration space, answers
/// with it, hints a range and stops; the range is released, the host acknowledges with
/// DONE. Then a snapshot: the state carries the hinting state, and the restored running
/// device ends the run with DONE and a configuration interrupt, as Firecracker does.
#[test]
fn hinting_through_the_mmio_transport_and_a_snapshot() {
    let mem = guest_memory(MEM_SIZE);
    let config = hinting(cfg(0, 1, false, true));
    let (dev, h) = Balloon::new(&config, "balloon-hint-mmio").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let mocks: Vec<_> = (0..5u64)
        .map(|i| MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000 * (i + 1)), 16))
        .collect();
    let mut d = MmioDriver(&mut t);
    assert_ne!(d.device_features() & feature_bits::FREE_PAGE_HINT, 0);
    assert!(d.negotiate(
        features::VERSION_1
            | feature_bits::STATS_VQ
            | feature_bits::FREE_PAGE_HINT
            | feature_bits::REPORTING
    ));
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

    assert_eq!(h.start_hinting(true).unwrap(), 2);
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0x108), 2, "free_page_hint_cmd_id");
    let pfn = 0x30_0000 / 4096;
    fill_page(&mem, pfn, 0x5a);
    fill_page(&mem, pfn + 1, 0x5a);
    mem.write_slice(&2u32.to_le_bytes(), GuestAddress(0x11_0000))
        .unwrap();
    add_chain(&mocks[3], 0, &[(0x11_0000, 4, 0)]);
    add_chain(&mocks[3], 1, &[(0x30_0000, 4096, WRITE)]);
    d.write(0x50, 3);
    wait_for("the hint back", || used_idx(&mem, &mocks[3]) == 2);
    assert!(page_is(&mem, pfn, 0));
    assert!(page_is(&mem, pfn + 1, 0x5a));
    mem.write_slice(&0u32.to_le_bytes(), GuestAddress(0x11_0004))
        .unwrap();
    add_chain(&mocks[3], 2, &[(0x11_0004, 4, 0)]);
    d.write(0x50, 3);
    wait_for("DONE", || {
        h.hinting_status().unwrap().host_cmd == hint_cmd::DONE
    });
    assert_eq!(MmioDriver(&mut t).read(0x108), hint_cmd::DONE);
    assert_eq!(h.counters().hinted_bytes, 4096);

    // A second run, left going (the guest answered, no STOP yet) at the snapshot.
    assert_eq!(h.start_hinting(false).unwrap(), 3);
    mem.write_slice(&3u32.to_le_bytes(), GuestAddress(0x11_0008))
        .unwrap();
    add_chain(&mocks[3], 3, &[(0x11_0008, 4, 0)]);
    MmioDriver(&mut t).write(0x50, 3);
    wait_for("the run's id back", || used_idx(&mem, &mocks[3]) == 4);
    t.pause();
    let state = t.state().unwrap();
    let saved: BalloonState =
        serde_json::from_value(state.device_state.clone().expect("balloon state")).unwrap();
    assert_eq!(
        saved.hinting,
        Some(HintingState {
            host_cmd: 3,
            last_run_id: 3,
            guest_cmd: Some(3),
            acknowledge_on_stop: false,
        })
    );
    drop(t);

    let (dev, h2) = Balloon::new(&config, "balloon-hint-restored").unwrap();
    let mut restored = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    restored.restore(&state).unwrap();
    assert!(restored.is_activated());
    assert_eq!(
        h2.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: hint_cmd::DONE,
            guest_cmd: Some(3)
        }
    );
    let mut d = MmioDriver(&mut restored);
    assert_eq!(d.read(0x108), hint_cmd::DONE);
    assert_eq!(d.read(0x60) & 2, 2, "a configuration interrupt is pending");
    // The next run gets the next id.
    assert_eq!(h2.start_hinting(true).unwrap(), 4);
    d.write(0x70, 0);

    // The same state on a device without hinting is refused; one without the hinting
    // field (an older snapshot) is taken, the device starts from STOP.
    let (mut plain, _) = Balloon::new(&cfg(0, 1, false, true), "b").unwrap();
    let e = plain
        .restore_state(state.device_state.as_ref())
        .unwrap_err();
    assert!(e.contains("does not offer it"), "{e}");
    let (mut dev, h3) = Balloon::new(&config, "b").unwrap();
    let old = serde_json::json!({
        "target_pages": 0,
        "actual_pages": 0,
        "stats_interval_ms": 1000,
        "held_stats_head": null,
    });
    dev.restore_state(Some(&old)).unwrap();
    assert_eq!(h3.hinting_status().unwrap().host_cmd, hint_cmd::STOP);
    assert_eq!(read_u32(&dev, 8), hint_cmd::STOP);
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
            hinting: None,
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
        hinting: None,
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
        hinting: None,
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
