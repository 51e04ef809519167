//! The disk's counters: what the guest read and wrote, on both engines, and what it got
//! wrong.

use super::harness::*;
use crate::request::{req_type as t, status};

#[test]
fn reads_writes_and_flushes_are_counted_with_their_bytes_and_times() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_image(dir.path(), "disk.raw", 64);
        let mut h = Harness::open(&disk_cfg(&path, engine));
        let metrics = h.worker.metrics().clone();
        h.request(t::IN, 0, &[512, 1024], 0);
        h.request(t::OUT, 8, &[4096], 0x11);
        h.request(t::OUT, 16, &[512], 0x22);
        h.request(t::FLUSH, 0, &[], 0);
        assert_eq!(h.run().len(), 4, "{engine:?}");
        let v = metrics.take();
        assert_eq!((v.read_count, v.read_bytes), (1, 1536), "{engine:?}");
        assert_eq!((v.write_count, v.write_bytes), (2, 4608), "{engine:?}");
        assert_eq!(v.flush_count, 1);
        assert!(v.queue_event_count >= 1);
        assert_eq!((v.execute_fails, v.invalid_reqs_count), (0, 0));
        assert!(v.write_agg.max_us >= v.write_agg.min_us);
        assert!(v.write_agg.sum_us >= v.write_agg.max_us);
        let again = metrics.take();
        assert_eq!(
            (again.read_count, again.write_bytes),
            (0, 0),
            "a second take reports only what happened since"
        );
        assert_eq!(metrics.read_bytes.get(), 1536, "the total stays");
    }
}

#[test]
fn malformed_requests_and_writes_to_a_read_only_disk_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "disk.raw", 64);
    let mut cfg = disk_cfg(&path, api::IoEngine::Sync);
    cfg.readonly = true;
    let mut h = Harness::open(&cfg);
    let metrics = h.worker.metrics().clone();
    let w = h.request(t::OUT, 0, &[512], 0x33);
    // Past the end of the disk.
    let r = h.request(t::IN, 64, &[512], 0);
    h.run();
    assert_eq!((h.status(&w), h.status(&r)), (status::IOERR, status::IOERR));
    let v = metrics.take();
    assert_eq!(v.invalid_reqs_count, 2);
    assert_eq!((v.read_count, v.write_count), (0, 0));
    h.kick().unwrap();
    assert_eq!(
        metrics.take().no_avail_buffer,
        1,
        "a notification with nothing to serve"
    );
}
