//! Firecracker's rate limiter bodies: token buckets of operations and bytes, and their
//! conversion to Vireo's [`crate::RateLimit`].

use super::*;

/// Firecracker's token bucket: `size` tokens per `refill_time` milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens the bucket holds (its capacity; it starts full).
    pub size: u64,
    /// Tokens spent first, once, never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

impl TokenBucket {
    /// The rate in tokens per second; `None` (unlimited) for a zero size or refill time,
    /// as Firecracker treats those buckets.
    pub fn per_second(&self) -> Option<u64> {
        if self.size == 0 || self.refill_time == 0 {
            return None;
        }
        let rate = u128::from(self.size) * 1000 / u128::from(self.refill_time);
        Some(u64::try_from(rate).unwrap_or(u64::MAX).max(1))
    }

    /// Its size (when it is not one second's worth) and one-time burst, for Vireo's
    /// buckets.
    pub fn burst(&self) -> crate::Burst {
        let Some(rate) = self.per_second() else {
            return crate::Burst::default();
        };
        crate::Burst {
            size: (self.size != rate).then_some(self.size),
            one_time: self.one_time_burst.filter(|&n| n > 0),
        }
    }

    /// The bucket of `rate` tokens per second shaped `burst`: `size` tokens (one second's
    /// worth by default) refilled over the milliseconds that takes at that rate.
    pub fn from_rate(rate: u64, burst: crate::Burst) -> Self {
        let rate = rate.max(1);
        let size = burst.size.unwrap_or(rate).max(1);
        let refill_ms = (u128::from(size) * 1000).div_ceil(u128::from(rate));
        Self {
            size,
            one_time_burst: burst.one_time,
            refill_time: u64::try_from(refill_ms).unwrap_or(u64::MAX).max(1),
        }
    }
}

/// Firecracker's rate limiter: a bandwidth (bytes) bucket and an operations bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Requests or packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// The limits Vireo's devices apply: each bucket's rate, its size and its one-time
    /// burst, as Firecracker's.
    pub fn to_rate_limit(&self) -> RateLimit {
        RateLimit {
            ops_per_sec: self.ops.and_then(|b| b.per_second()),
            bytes_per_sec: self.bandwidth.and_then(|b| b.per_second()),
            ops_burst: self.ops.map(|b| b.burst()).unwrap_or_default(),
            bytes_burst: self.bandwidth.map(|b| b.burst()).unwrap_or_default(),
        }
    }
}
