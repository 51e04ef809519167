//! Rate limiting: a limited device stops popping requests when its bucket is empty,
//! leaves them in the avail ring, and serves them when the timer fires.

use std::time::{Duration, Instant};

use super::harness::*;
use crate::request::{req_type as t, status};
use virtio_devices::device::DeviceWorker;

fn limited(rate: api::RateLimit, engine: api::IoEngine) -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "l.raw", 4096);
    let mut cfg = disk_cfg(&path, engine);
    cfg.rate_limit = rate;
    (dir, Harness::open(&cfg))
}

#[test]
fn ops_limit_spreads_requests_over_time() {
    for engine in engines() {
        let rate = api::RateLimit {
            ops_per_sec: Some(20),
            bytes_per_sec: None,
            ..Default::default()
        };
        let (_d, mut h) = limited(rate, engine);
        assert_eq!(
            h.worker.extra_fds().len(),
            if engine == api::IoEngine::IoUring {
                2
            } else {
                1
            }
        );
        let reqs: Vec<_> = (0..30).map(|i| h.request(t::IN, i, &[512], 0)).collect();
        let start = Instant::now();
        h.kick().unwrap();
        // The first kick takes the bucket's 20 requests (plus any earned while serving
        // them), then stops with the rest left in the avail ring.
        let first = h.take_used().len() + h.worker.in_flight();
        assert!((20..30).contains(&first), "{engine:?}: {first}");
        assert!(h.worker.is_rate_limited());
        assert_eq!(
            h.status(&reqs[29]),
            0xff,
            "the last one waits in the avail ring"
        );
        // The rest come as tokens do: 30 requests at 20/s from a bucket of 20 take at
        // least half a second.
        while reqs.iter().any(|r| h.status(r) == 0xff) {
            assert!(h.wait_extra(), "the timer resumes the queue");
        }
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
        assert!(reqs.iter().all(|r| h.status(r) == status::OK));
    }
}

#[test]
fn bytes_limit_blocks_and_oversized_requests_still_pass() {
    let rate = api::RateLimit {
        ops_per_sec: None,
        bytes_per_sec: Some(100 << 10),
        ..Default::default()
    };
    let (_d, mut h) = limited(rate, api::IoEngine::Sync);
    // 1 MiB against a 100 KiB bucket: passes at once (the bucket is full)...
    let big = h.request(t::IN, 0, &[1 << 20], 0);
    let small = h.request(t::IN, 0, &[512], 0);
    h.kick().unwrap();
    assert_eq!(h.status(&big), status::OK);
    // ...and leaves the bucket in debt: the next request waits.
    assert_eq!(h.status(&small), 0xff);
    assert!(h.worker.is_rate_limited());
    assert_eq!(h.take_used().len(), 1);
    // A kick while blocked pops nothing.
    h.kick().unwrap();
    assert_eq!(h.take_used().len(), 0);
}

#[test]
fn invalid_requests_are_answered_even_when_limited() {
    let rate = api::RateLimit {
        ops_per_sec: Some(1),
        bytes_per_sec: None,
        ..Default::default()
    };
    let (_d, mut h) = limited(rate, api::IoEngine::Sync);
    let a = h.request(t::IN, 0, &[512], 0);
    let bad = h.request(t::IN, 0, &[100], 0);
    let b = h.request(t::IN, 0, &[512], 0);
    h.kick().unwrap();
    assert_eq!(h.status(&a), status::OK);
    assert_eq!(h.status(&bad), status::IOERR, "errors cost no tokens");
    assert_eq!(h.status(&b), 0xff);
    assert!(h.worker.is_rate_limited());
    // Reset forgets the wait (the queue is gone); the next request takes its turn
    // against the bucket again.
    h.worker.quiesce();
    assert!(!h.worker.is_rate_limited());
}
