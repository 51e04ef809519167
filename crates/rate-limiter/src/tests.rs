//! Tests of the bucket arithmetic (explicit times) and of the limiter with its timerfd
//! (real time, a few milliseconds).

use std::time::Duration;

use super::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

#[test]
fn bucket_starts_full_and_refills_continuously() {
    let mut b = TokenBucket::new(1000, 0);
    assert_eq!(b.available(), 1000);
    assert_eq!(b.check(1000, 0), Ok(()));
    b.take(1000);
    assert_eq!(b.available(), 0);
    // One token comes every millisecond.
    assert_eq!(b.check(1, 0), Err(MS));
    assert_eq!(b.check(1, MS / 2), Err(MS / 2));
    assert_eq!(b.check(1, MS), Ok(()));
    b.refill(SEC / 2);
    assert_eq!(b.available(), 500);
}

#[test]
fn bucket_never_holds_more_than_one_second() {
    let mut b = TokenBucket::new(10, 0);
    b.take(3);
    b.refill(100 * SEC);
    assert_eq!(b.available(), 10);
    assert_eq!(b.check(11, 100 * SEC), Ok(()), "oversized, bucket full");
    // A huge gap does not overflow.
    b.refill(u64::MAX);
    assert_eq!(b.available(), 10);
}

#[test]
fn oversized_request_passes_when_full_and_leaves_debt() {
    let mut b = TokenBucket::new(100, 0);
    assert_eq!(b.check(1000, 0), Ok(()));
    b.take(1000);
    assert_eq!(b.available(), -900);
    // One more token needs the debt paid plus one: 9.01 s at 100/s.
    assert_eq!(b.check(1, 0), Err(9 * SEC + 10 * MS));
    assert_eq!(b.check(1, 9 * SEC + 10 * MS), Ok(()));
}

#[test]
fn oversized_request_waits_for_a_full_bucket() {
    let mut b = TokenBucket::new(100, 0);
    b.take(50);
    assert_eq!(b.check(1000, 0), Err(SEC / 2));
    assert_eq!(b.check(1000, SEC / 2), Ok(()));
}

#[test]
fn time_going_backwards_earns_nothing() {
    let mut b = TokenBucket::new(100, 5 * SEC);
    b.take(100);
    b.refill(SEC);
    assert_eq!(b.available(), 0);
    b.refill(5 * SEC + SEC / 10);
    assert_eq!(b.available(), 10);
}

#[test]
fn limiter_takes_from_both_buckets_or_neither() {
    let limit = api::RateLimit {
        ops_per_sec: Some(10),
        bytes_per_sec: Some(1000),
        ..Default::default()
    };
    let mut rl = RateLimiter::new(&limit).unwrap();
    let t0 = rl.origin;
    assert!(rl.consume_at(1, 900, t0));
    // Bytes are short: the op is not taken either.
    assert!(!rl.consume_at(1, 200, t0));
    assert!(rl.is_blocked());
    assert_eq!(rl.ops.as_ref().unwrap().available(), 9);
    assert_eq!(rl.bytes.as_ref().unwrap().available(), 100);
    // Blocked until the timer fires, whatever the buckets say.
    assert!(!rl.consume_at(0, 0, t0 + Duration::from_secs(5)));
    rl.on_timer();
    assert!(!rl.is_blocked());
    // 100 ms later one op and 100 bytes came back; the request takes them.
    assert!(rl.consume_at(1, 200, t0 + Duration::from_millis(100)));
    assert_eq!(rl.ops.as_ref().unwrap().available(), 9);
    assert_eq!(rl.bytes.as_ref().unwrap().available(), 0);
}

#[test]
fn limiter_ops_bucket_alone() {
    let limit = api::RateLimit {
        ops_per_sec: Some(2),
        bytes_per_sec: None,
        ..Default::default()
    };
    let mut rl = RateLimiter::new(&limit).unwrap();
    let t0 = rl.origin;
    assert!(rl.consume_at(1, u64::MAX, t0));
    assert!(rl.consume_at(1, u64::MAX, t0));
    assert!(!rl.consume_at(1, 0, t0));
    rl.on_timer();
    assert!(rl.consume_at(1, 0, t0 + Duration::from_millis(500)));
}

#[test]
fn unlimited_lets_everything_through() {
    let mut rl = RateLimiter::unlimited();
    assert!(!rl.is_limited());
    assert_eq!(rl.timer_fd(), None);
    for _ in 0..1000 {
        assert!(rl.consume(u64::MAX, u64::MAX));
    }
    assert!(!rl.is_blocked());
    let rl = RateLimiter::new(&api::RateLimit::default()).unwrap();
    assert!(!rl.is_limited());
    assert!(
        rl.timer_fd().is_some(),
        "a timer even without a limit, for limits set later"
    );
}

#[test]
fn zero_rate_is_refused() {
    let limit = api::RateLimit {
        ops_per_sec: Some(0),
        bytes_per_sec: None,
        ..Default::default()
    };
    assert!(RateLimiter::new(&limit).is_err());
}

fn readable_within(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[test]
fn timer_fires_when_tokens_are_back() {
    // 1000 ops/s: after the bucket is emptied the next op is 1 ms away.
    let limit = api::RateLimit {
        ops_per_sec: Some(1000),
        bytes_per_sec: None,
        ..Default::default()
    };
    let mut rl = RateLimiter::new(&limit).unwrap();
    let fd = rl.timer_fd().unwrap();
    assert!(rl.consume(1000, 0));
    assert!(!readable_within(fd, 0), "not armed before blocking");
    let start = Instant::now();
    assert!(!rl.consume(1, 0));
    assert!(readable_within(fd, 2000), "the timer fires");
    assert!(start.elapsed() >= Duration::from_micros(500));
    rl.on_timer();
    assert!(!readable_within(fd, 0), "drained");
    assert!(rl.consume(1, 0));
    // Draining when nothing fired does not block.
    rl.on_timer();
}

#[test]
fn limited_rate_spreads_requests_over_time() {
    // 200 ops/s, a bucket of 200: 210 requests need about 50 ms more than the bucket.
    let limit = api::RateLimit {
        ops_per_sec: Some(200),
        bytes_per_sec: None,
        ..Default::default()
    };
    let mut rl = RateLimiter::new(&limit).unwrap();
    let fd = rl.timer_fd().unwrap();
    let start = Instant::now();
    let mut served = 0;
    let mut blocks = 0;
    while served < 210 {
        if rl.consume(1, 0) {
            served += 1;
        } else {
            blocks += 1;
            assert!(readable_within(fd, 2000));
            rl.on_timer();
        }
    }
    assert!(blocks >= 1, "the bucket ran out at least once");
    assert!(start.elapsed() >= Duration::from_millis(40));
}

#[test]
fn update_replaces_changed_buckets_and_keeps_the_others() {
    let limit = api::RateLimit {
        ops_per_sec: Some(10),
        bytes_per_sec: Some(1000),
        ..Default::default()
    };
    let mut rl = RateLimiter::new(&limit).unwrap();
    let fd = rl.timer_fd();
    let t0 = rl.origin;
    assert!(rl.consume_at(10, 500, t0));
    // Same ops rate: its (empty) bucket is kept; a new bytes rate starts full.
    rl.update(&api::RateLimit {
        ops_per_sec: Some(10),
        bytes_per_sec: Some(5000),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(rl.timer_fd(), fd, "the same timerfd");
    assert_eq!(
        rl.limit(),
        api::RateLimit {
            ops_per_sec: Some(10),
            bytes_per_sec: Some(5000),
            ..Default::default()
        }
    );
    assert!(!rl.consume_at(1, 0, t0), "the ops bucket was kept empty");
    rl.on_timer();
    // A new ops rate: a full bucket of 100.
    rl.update(&api::RateLimit {
        ops_per_sec: Some(100),
        bytes_per_sec: Some(5000),
        ..Default::default()
    })
    .unwrap();
    assert!(rl.consume(100, 5000));
    assert!(!rl.consume(1, 0));
}

#[test]
fn update_to_none_removes_the_limit_and_back() {
    let mut rl = RateLimiter::new(&api::RateLimit::default()).unwrap();
    let fd = rl.timer_fd();
    rl.update(&api::RateLimit {
        ops_per_sec: Some(5),
        bytes_per_sec: None,
        ..Default::default()
    })
    .unwrap();
    assert!(rl.is_limited());
    assert!(rl.consume(5, 0));
    assert!(!rl.consume(1, 0));
    rl.on_timer();
    rl.update(&api::RateLimit::default()).unwrap();
    assert!(!rl.is_limited());
    assert_eq!(rl.timer_fd(), fd);
    for _ in 0..100 {
        assert!(rl.consume(1, u64::MAX));
    }
}

#[test]
fn update_wakes_a_blocked_limiter_through_its_timer() {
    // 1 op/s: once blocked, the timer is a second away.
    let mut rl = RateLimiter::new(&api::RateLimit {
        ops_per_sec: Some(1),
        bytes_per_sec: None,
        ..Default::default()
    })
    .unwrap();
    let fd = rl.timer_fd().unwrap();
    assert!(rl.consume(1, 0));
    assert!(!rl.consume(1, 0));
    assert!(rl.is_blocked());
    assert!(!readable_within(fd, 0));
    rl.update(&api::RateLimit::default()).unwrap();
    assert!(
        rl.is_blocked(),
        "the worker unblocks it when the timer fires"
    );
    assert!(readable_within(fd, 200), "the timer fires at once");
    rl.on_timer();
    assert!(rl.consume(1000, 0));
}

#[test]
fn update_refuses_zero_rates_and_limits_without_a_timer() {
    let mut rl = RateLimiter::new(&api::RateLimit {
        ops_per_sec: Some(7),
        bytes_per_sec: None,
        ..Default::default()
    })
    .unwrap();
    let zero = api::RateLimit {
        ops_per_sec: None,
        bytes_per_sec: Some(0),
        ..Default::default()
    };
    assert!(rl.check_update(&zero).is_err());
    assert!(rl.update(&zero).is_err());
    assert_eq!(rl.limit().ops_per_sec, Some(7), "unchanged");
    let mut un = RateLimiter::unlimited();
    assert!(un.check_update(&api::RateLimit::default()).is_ok());
    assert!(
        un.update(&api::RateLimit {
            ops_per_sec: Some(1),
            bytes_per_sec: None,
            ..Default::default()
        })
        .is_err()
    );
    assert!(!un.is_limited());
    un.update(&api::RateLimit::default()).unwrap();
}

#[test]
fn a_bucket_holds_its_size_not_one_seconds_worth() {
    // Firecracker's 100 tokens per 100 ms: 1000/s, but at most 100 at a time.
    let shape = api::Burst {
        size: Some(100),
        one_time: None,
    };
    let mut b = TokenBucket::shaped(1000, shape, 0);
    assert_eq!(b.available(), 100);
    b.refill(10 * SEC);
    assert_eq!(b.available(), 100, "never more than its size");
    b.take(100);
    let t = 10 * SEC;
    assert_eq!(b.check(100, t), Err(100 * MS), "refilled in 100 ms");
    assert_eq!(b.check(100, t + 100 * MS), Ok(()));
    // Larger than the bucket: waits for it to be full, then goes into debt.
    assert_eq!(b.check(1000, t + 100 * MS), Ok(()));
    b.take(1000);
    assert_eq!(b.available(), -900);
}

#[test]
fn the_one_time_burst_is_spent_first_and_never_refilled() {
    let shape = api::Burst {
        size: None,
        one_time: Some(500),
    };
    let mut b = TokenBucket::shaped(100, shape, 0);
    assert_eq!(b.available(), 600);
    assert_eq!(b.check(600, 0), Ok(()));
    b.take(450);
    assert_eq!(
        b.available(),
        150,
        "from the burst first: 50 of it and the 100 left"
    );
    b.take(100);
    assert_eq!(b.available(), 50);
    b.refill(100 * SEC);
    assert_eq!(
        b.available(),
        100,
        "the bucket refills; the burst is gone for good"
    );
    // A request larger than the bucket but within bucket + burst needs no wait.
    let mut b = TokenBucket::shaped(100, shape, 0);
    assert_eq!(b.check(550, 0), Ok(()));
    b.take(550);
    assert_eq!(b.available(), 50);
    // Past the burst, only the bucket's rate is left: 50 more take 0.5 s... after the
    // 50 it still holds.
    assert_eq!(b.check(100, 0), Err(SEC / 2));
}

#[test]
fn a_limiter_reports_and_keeps_its_shapes() {
    let limit = api::RateLimit {
        ops_per_sec: Some(10),
        bytes_per_sec: Some(1000),
        ops_burst: api::Burst {
            size: Some(5),
            one_time: Some(20),
        },
        bytes_burst: api::Burst::default(),
    };
    let mut l = RateLimiter::new(&limit).unwrap();
    assert_eq!(l.limit(), limit);
    let t0 = l.origin;
    // 5 in the bucket and 20 once: 25 operations at once, the 26th waits.
    for _ in 0..25 {
        assert!(l.consume_at(1, 1, t0));
    }
    assert!(!l.consume_at(1, 1, t0));
    l.on_timer();
    // The same limits again change nothing (the burst is not given back) ...
    l.update(&limit).unwrap();
    assert!(!l.consume_at(1, 1, t0));
    l.on_timer();
    // ... a new shape is a new, full bucket with its burst.
    let bigger = api::RateLimit {
        ops_burst: api::Burst {
            size: Some(5),
            one_time: Some(30),
        },
        ..limit
    };
    l.update(&bigger).unwrap();
    l.on_timer();
    for _ in 0..35 {
        assert!(l.consume_at(1, 1, t0));
    }
    assert!(!l.consume_at(1, 1, t0));
}
