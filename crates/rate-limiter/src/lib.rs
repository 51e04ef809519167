//! Token-bucket rate limiting for device I/O: one bucket of operations per second and one
//! of bytes per second, and a timerfd that becomes readable when a blocked limiter may go
//! on.
//!
//! Each bucket holds one second's worth of tokens, or the `size` its [`api::Burst`] gives
//! (Firecracker's bucket: `size` tokens refilled over `refill_time`), and is refilled
//! continuously; a one-time burst (Firecracker's `one_time_burst`) is spent first and never
//! refilled. A request takes tokens from both buckets or from neither. A request larger
//! than a whole bucket is let through when the bucket is full, leaving it in debt, so it
//! is delayed by the time it would have taken rather than refused forever.
//!
//! A device worker asks [`RateLimiter::consume`] before serving a request; on `false` it
//! puts the request back, stops taking new ones, and waits for [`RateLimiter::timer_fd`]
//! (one of its `extra_fds`); when that fd is readable it calls [`RateLimiter::on_timer`]
//! and tries again.
//!
//! The limits of a live limiter can be replaced ([`RateLimiter::update`], the API's
//! `PATCH /drives` and `PATCH /network-interfaces`): the timerfd stays the same fd, so a
//! worker that registered it in its epoll goes on waiting on it.
//!
//! This module owns only time arithmetic and its timerfd; it touches no guest memory.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// One token bucket: `rate` tokens per second, holding at most its size (by default one
/// second's worth), plus a one-time burst.
///
/// Time is passed in explicitly (nanoseconds from any fixed origin), so the arithmetic can
/// be tested without a clock. Tokens are kept in units of 1e-9 token so that continuous
/// refilling is exact in integers.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    /// Tokens × 1e9; may be negative after an oversized request.
    tokens: i128,
    /// The bucket's size, tokens × 1e9.
    capacity: i128,
    /// What is left of the one-time burst, tokens × 1e9 (never refilled).
    one_time: i128,
    /// The size and burst it was made with.
    shape: api::Burst,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second (`rate` > 0), one second's worth, at time
    /// `now_ns`.
    pub fn new(rate: u64, now_ns: u64) -> Self {
        Self::shaped(rate, api::Burst::default(), now_ns)
    }

    /// A full bucket of `rate` tokens per second holding `shape.size` tokens (one
    /// second's worth if `None`; at least 1), with `shape.one_time` tokens more to spend
    /// once, at time `now_ns`.
    pub fn shaped(rate: u64, shape: api::Burst, now_ns: u64) -> Self {
        let rate = rate.max(1);
        let capacity = i128::from(shape.size.unwrap_or(rate).max(1)) * NANOS_PER_SEC;
        Self {
            rate,
            tokens: capacity,
            capacity,
            one_time: i128::from(shape.one_time.unwrap_or(0)) * NANOS_PER_SEC,
            shape,
            last_ns: now_ns,
        }
    }

    /// Tokens per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The size and one-time burst it was made with.
    pub fn shape(&self) -> api::Burst {
        self.shape
    }

    /// Whole tokens available now, the one-time burst's included (negative while in
    /// debt).
    pub fn available(&self) -> i128 {
        (self.tokens + self.one_time).div_euclid(NANOS_PER_SEC)
    }

    /// Add the tokens earned since the last update. Time going backwards earns nothing.
    pub fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        if self.tokens >= self.capacity {
            return;
        }
        // Past the time it takes to fill from empty (or from debt) the product could be
        // large; cap the elapsed time at what is needed to fill up, so the maths stays in
        // range whatever the gap.
        let missing = self.capacity - self.tokens;
        let fill_ns = div_ceil(missing, self.rate);
        let earned = i128::from(elapsed).min(fill_ns) * i128::from(self.rate);
        self.tokens = (self.tokens + earned).min(self.capacity);
    }

    /// Whether `n` tokens may be taken at `now_ns` (after refilling); if not, how many
    /// nanoseconds until they may. Takes nothing.
    pub fn check(&mut self, n: u64, now_ns: u64) -> Result<(), u64> {
        self.refill(now_ns);
        let need = i128::from(n) * NANOS_PER_SEC;
        if self.tokens + self.one_time >= need {
            return Ok(());
        }
        // What the bucket itself must hold once the burst is spent; an oversized request
        // waits for a full bucket, then goes into debt.
        let target = (need - self.one_time).min(self.capacity);
        if self.tokens >= target {
            return Ok(());
        }
        let wait = div_ceil(target - self.tokens, self.rate);
        Err(u64::try_from(wait).unwrap_or(u64::MAX).max(1))
    }

    /// Take `n` tokens (after a successful [`TokenBucket::check`]): from the one-time
    /// burst first, the rest from the bucket.
    pub fn take(&mut self, n: u64) {
        let need = i128::from(n) * NANOS_PER_SEC;
        let from_burst = need.min(self.one_time);
        self.one_time -= from_burst;
        self.tokens -= need - from_burst;
    }
}

/// `a / b` rounded up, for a positive `a` (`b` is at least 1).
fn div_ceil(a: i128, b: u64) -> i128 {
    let b = i128::from(b.max(1));
    (a + b - 1) / b
}

/// A one-shot timerfd on the monotonic clock, non-blocking: readable once armed time
/// has passed, until drained (also used by devices for timers of their own).
#[derive(Debug)]
pub struct Timer(OwnedFd);

impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl Timer {
    /// A disarmed timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fire once after `ns` nanoseconds (at least 1: zero would disarm the timer).
    pub fn arm(&self, ns: u64) -> io::Result<()> {
        let ns = ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec on the stack; a null old value is allowed.
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read the expiration count if any (non-blocking).
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading at most 8 bytes into an 8-byte buffer we own; the fd is
        // non-blocking, so this returns at once with EAGAIN when nothing expired.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

/// Limits on operations and bytes per second for one device queue.
#[derive(Debug)]
pub struct RateLimiter {
    ops: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    origin: Instant,
    timer: Option<Timer>,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter for `limit`; `None` fields are unlimited. A zero rate is refused.
    /// It has a timerfd even when nothing is limited yet, so that limits set later
    /// ([`RateLimiter::update`]) wake a worker that registered the fd at its start.
    pub fn new(limit: &api::RateLimit) -> io::Result<Self> {
        check_positive(limit)?;
        Ok(Self {
            ops: limit
                .ops_per_sec
                .map(|r| TokenBucket::shaped(r, limit.ops_burst, 0)),
            bytes: limit
                .bytes_per_sec
                .map(|r| TokenBucket::shaped(r, limit.bytes_burst, 0)),
            origin: Instant::now(),
            timer: Some(Timer::new()?),
            blocked: false,
        })
    }

    /// A limiter that lets everything through and has no timerfd: it can never be
    /// limited ([`RateLimiter::update`] to a limit is refused).
    pub fn unlimited() -> Self {
        Self {
            ops: None,
            bytes: None,
            origin: Instant::now(),
            timer: None,
            blocked: false,
        }
    }

    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        self.ops.is_some() || self.bytes.is_some()
    }

    /// The limits in force: the rates and the buckets' shapes.
    pub fn limit(&self) -> api::RateLimit {
        api::RateLimit {
            ops_per_sec: self.ops.as_ref().map(TokenBucket::rate),
            bytes_per_sec: self.bytes.as_ref().map(TokenBucket::rate),
            ops_burst: self
                .ops
                .as_ref()
                .map(TokenBucket::shape)
                .unwrap_or_default(),
            bytes_burst: self
                .bytes
                .as_ref()
                .map(TokenBucket::shape)
                .unwrap_or_default(),
        }
    }

    /// Replace the limits with `limit`, keeping the timerfd. A bucket whose rate and shape
    /// do not change keeps its tokens (or its debt); a changed bucket starts full (its
    /// one-time burst whole again, as Firecracker's updated bucket);
    /// a `None` rate removes its bucket. A limiter that was blocked is woken at once
    /// (its timer fires), so its device looks at the new buckets on its next turn.
    ///
    /// Refused, changing nothing: a zero rate, or a limit on a limiter made with
    /// [`RateLimiter::unlimited`] (it has no timer to wake its device).
    pub fn update(&mut self, limit: &api::RateLimit) -> io::Result<()> {
        self.check_update(limit)?;
        let now_ns = self.now_ns(Instant::now());
        replace_bucket(&mut self.ops, limit.ops_per_sec, limit.ops_burst, now_ns);
        replace_bucket(
            &mut self.bytes,
            limit.bytes_per_sec,
            limit.bytes_burst,
            now_ns,
        );
        if self.blocked {
            match &self.timer {
                // Stay blocked until the worker sees the timer fire and calls
                // `on_timer`: the worker's own wake-up path, on its own thread.
                Some(t) if t.arm(1).is_ok() => {}
                // No way to wake the worker: unblock, the next kick serves.
                _ => self.blocked = false,
            }
        }
        Ok(())
    }

    /// Whether [`RateLimiter::update`] would take `limit` (so that a caller changing
    /// several limiters can change all or none).
    pub fn check_update(&self, limit: &api::RateLimit) -> io::Result<()> {
        check_positive(limit)?;
        if limit.is_limited() && self.timer.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this limiter was made unlimited for good (it has no timer)",
            ));
        }
        Ok(())
    }

    /// Nanoseconds from the limiter's origin to `now` (0 before it).
    fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Take `ops` operations and `bytes` bytes, from both buckets or neither. `false`
    /// means blocked: nothing was taken and the timer is armed for when enough tokens
    /// will be there. While blocked, every call returns `false` until
    /// [`RateLimiter::on_timer`].
    pub fn consume(&mut self, ops: u64, bytes: u64) -> bool {
        self.consume_at(ops, bytes, Instant::now())
    }

    /// [`RateLimiter::consume`] at a given time (for tests and callers with their own
    /// clock). Times before the limiter's creation count as its creation.
    pub fn consume_at(&mut self, ops: u64, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let now_ns = self.now_ns(now);
        let mut wait = 0u64;
        for (bucket, n) in [(&mut self.ops, ops), (&mut self.bytes, bytes)] {
            if let Some(b) = bucket
                && let Err(w) = b.check(n, now_ns)
            {
                wait = wait.max(w);
            }
        }
        if wait == 0 {
            if let Some(b) = &mut self.ops {
                b.take(ops);
            }
            if let Some(b) = &mut self.bytes {
                b.take(bytes);
            }
            return true;
        }
        self.blocked = true;
        if let Some(t) = &self.timer
            && t.arm(wait).is_err()
        {
            // Without a timer nobody would wake the device: let this request through
            // unlimited rather than stall the queue forever.
            self.blocked = false;
            return true;
        }
        false
    }

    /// Whether the last [`RateLimiter::consume`] was refused and the timer has not fired.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd to wait on while blocked (`None` when unlimited).
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(|t| t.0.as_raw_fd())
    }

    /// The timerfd fired (or might have): drain it and stop being blocked, so the next
    /// [`RateLimiter::consume`] looks at the buckets again.
    pub fn on_timer(&mut self) {
        if let Some(t) = &self.timer {
            t.drain();
        }
        self.blocked = false;
    }
}

/// A zero rate would never refill: refused.
fn check_positive(limit: &api::RateLimit) -> io::Result<()> {
    if limit.ops_per_sec == Some(0) || limit.bytes_per_sec == Some(0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a rate limit must be positive",
        ));
    }
    Ok(())
}

/// Set `bucket` to `rate` per second shaped `shape` at `now_ns`: kept as it is if both
/// are the same, a full new bucket if either differs, removed if `rate` is `None`.
fn replace_bucket(
    bucket: &mut Option<TokenBucket>,
    rate: Option<u64>,
    shape: api::Burst,
    now_ns: u64,
) {
    match rate {
        None => *bucket = None,
        Some(r)
            if bucket
                .as_ref()
                .is_some_and(|b| b.rate() == r && b.shape() == shape) => {}
        Some(r) => *bucket = Some(TokenBucket::shaped(r, shape, now_ns)),
    }
}

#[cfg(test)]
mod tests;
