//! Tests of the device's register side (type, features, configuration space), its
//! snapshot state, and the running device behind the MMIO transport.

use std::time::{Duration, Instant};

use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::{MmioDriver, guest_memory};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::worker::RESP_OK;
use crate::worker::tests::{MEM_SIZE, add_flush, backing, status, used_elem, used_idx};

const GIB4: u64 = 4 << 30;

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

fn read_u64(dev: &Pmem, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    dev.read_config(offset, &mut b);
    u64::from_le_bytes(b)
}

#[test]
fn type_features_queue_and_configuration_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Pmem::new("p0", backing(dir.path(), false), GIB4, &Default::default()).unwrap();
    assert_eq!(dev.device_type(), 27);
    assert_eq!(dev.features(), features::COMMON);
    assert_eq!(dev.queue_max_sizes(), [QUEUE_SIZE]);
    assert_eq!(dev.name(), "virtio-pmem");
    assert_eq!(dev.id(), "p0");
    // start, then size: the 3 MiB file's region is 4 MiB.
    assert_eq!(read_u64(&dev, 0), GIB4);
    assert_eq!(read_u64(&dev, 8), 4 << 20);
    assert_eq!(dev.backing().file_len(), 3 << 20);
    let mut all = [0xffu8; 24];
    dev.read_config(0, &mut all);
    assert_eq!(&all[..8], &GIB4.to_le_bytes());
    assert_eq!(&all[16..], &[0; 8], "past the end: zeros");
    let mut odd = [0u8; 4];
    dev.read_config(4, &mut odd);
    assert_eq!(odd, [1, 0, 0, 0], "the high half of start");
    // Writes are ignored and counted.
    dev.write_config(0, &[0; 8]);
    dev.write_config(u64::MAX, &[1]);
    assert_eq!(read_u64(&dev, 0), GIB4);
    assert_eq!(dev.metrics().cfg_fails.get(), 2);
}

#[test]
fn a_region_must_be_2_mib_aligned_and_fit_and_its_limits_positive() {
    let dir = tempfile::tempdir().unwrap();
    let b = backing(dir.path(), false);
    let err = Pmem::new("p0", b.clone(), GIB4 + 4096, &Default::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a multiple of 2 MiB"), "{err}");
    let err = Pmem::new(
        "p0",
        b.clone(),
        u64::MAX - (2 << 20) + 1,
        &Default::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let zero = api::RateLimit {
        ops_per_sec: Some(0),
        ..Default::default()
    };
    assert!(Pmem::new("p0", b.clone(), GIB4, &zero).is_err());
    let mut dev = Pmem::new("p0", b, GIB4, &Default::default()).unwrap();
    assert!(dev.set_rate_limit(&zero).is_err());
    let one = api::RateLimit {
        ops_per_sec: Some(1),
        ..Default::default()
    };
    dev.set_rate_limit(&one).unwrap();
    assert_eq!(dev.rate_limit(), one);
}

#[test]
fn the_snapshot_state_is_the_region_and_a_moved_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = backing(dir.path(), true);
    let mut dev = Pmem::new("p0", b.clone(), GIB4, &Default::default()).unwrap();
    let state = dev.snapshot_state().unwrap().unwrap();
    assert_eq!(
        state,
        serde_json::json!({"start": GIB4, "size": 4u64 << 20})
    );
    let mut same = Pmem::new("p0", b.clone(), GIB4, &Default::default()).unwrap();
    same.restore_state(Some(&state)).unwrap();
    let mut moved = Pmem::new("p0", b.clone(), GIB4 + (2 << 20), &Default::default()).unwrap();
    let err = moved.restore_state(Some(&state)).unwrap_err();
    assert!(
        err.contains("the snapshot's region was 0x400000 bytes at 0x100000000"),
        "{err}"
    );
    // A grown file (past a 2 MiB boundary) is refused too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(b.path())
        .unwrap()
        .set_len(5 << 20)
        .unwrap();
    let grown = Arc::new(Backing::open(b.path(), true).unwrap());
    let mut grown = Pmem::new("p0", grown, GIB4, &Default::default()).unwrap();
    assert!(grown.restore_state(Some(&state)).is_err());
    assert!(same.restore_state(None).is_err(), "a pmem device has state");
    assert!(
        same.restore_state(Some(&serde_json::json!({"start": 1})))
            .is_err()
    );
    // Not running: no queues to save.
    assert_eq!(same.snapshot_queues().unwrap(), None);
}

/// The driver's side through the MMIO transport: device ID, the configuration space at
/// 0x100, features, a flush served by the worker thread, a rate limit changed while it
/// runs, a queue saved for a snapshot, and a reset.
#[test]
fn a_flush_through_the_mmio_transport() {
    let dir = tempfile::tempdir().unwrap();
    let mem = guest_memory(MEM_SIZE);
    let dev = Pmem::new(
        "pmem-mmio",
        backing(dir.path(), false),
        GIB4,
        &Default::default(),
    )
    .unwrap();
    let metrics = dev.metrics();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0x08), 27, "device ID");
    assert_eq!(d.read(0x100), 0, "start, low");
    assert_eq!(d.read(0x104), 1, "start, high: 4 GiB");
    assert_eq!(d.read(0x108), 4 << 20, "size, low");
    assert_eq!(d.read(0x10c), 0, "size, high");
    assert!(d.device_features() & features::VERSION_1 != 0);
    assert!(d.negotiate(features::VERSION_1 | features::EVENT_IDX));
    d.setup_queue(
        0,
        16,
        vq.desc_table_addr().0,
        vq.avail_addr().0,
        vq.used_addr().0,
    );
    d.driver_ok();
    assert!(t.is_activated());

    let at = 0x8_0000;
    add_flush(&mem, &vq, 0, at);
    let mut d = MmioDriver(&mut t);
    d.write(0x50, 0);
    wait_for("the flush's answer", || used_idx(&mem, &vq) == 1);
    assert_eq!(used_elem(&mem, &vq, 0), (0, 4));
    assert_eq!(status(&mem, at), RESP_OK);
    assert_eq!(metrics.queue_event_count.get(), 1);

    // Limits change on the running worker.
    let limited = api::RateLimit {
        ops_per_sec: Some(5),
        ..Default::default()
    };
    let dev: &mut dyn std::any::Any = t.device_mut();
    let dev = dev.downcast_mut::<Pmem>().unwrap();
    dev.set_rate_limit(&limited).unwrap();
    assert_eq!(dev.rate_limit(), limited);

    // Paused, the queue is saved with its progress; the device's state is its region.
    t.pause();
    let state = t.state().unwrap();
    t.resume();
    let json = serde_json::to_value(&state).unwrap();
    assert!(json.to_string().contains("\"start\":4294967296"), "{json}");

    let mut d = MmioDriver(&mut t);
    d.write(0x70, 0);
    assert!(!t.is_activated());
}
