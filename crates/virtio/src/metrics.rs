//! Device counters, shared between a device, its worker thread and the VMM's metrics
//! writer.
//!
//! A [`Counter`] only grows; the writer takes what was added since its previous line
//! ([`Counter::take_delta`]), as Firecracker's metrics report, while [`Counter::get`]
//! stays cumulative for readers that want totals. A [`Latency`] keeps the least, the
//! most and the sum of the durations recorded since the last take.
//!
//! [`metrics_group!`](crate::metrics_group) declares a group: the struct of counters a
//! device updates and the plain struct one flush of it becomes, serialized under the
//! field names Firecracker's metrics use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub use serde;

/// A counter of events or bytes (relaxed atomics: a line is a sum, not a barrier).
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    flushed: AtomicU64,
}

impl Counter {
    /// Count one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Count `n`.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Everything counted so far.
    pub fn get(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// What was counted since the previous call (the metrics writer is the only caller).
    pub fn take_delta(&self) -> u64 {
        let now = self.total.load(Ordering::Relaxed);
        let before = self.flushed.swap(now, Ordering::Relaxed);
        now.wrapping_sub(before)
    }
}

/// Durations of one kind of operation, in microseconds.
#[derive(Debug)]
pub struct Latency {
    min: AtomicU64,
    max: AtomicU64,
    sum: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl Latency {
    /// Record one operation of `us` microseconds.
    pub fn record(&self, us: u64) {
        self.min.fetch_min(us, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
        self.sum.fetch_add(us, Ordering::Relaxed);
    }

    /// Record one operation that began at `start`.
    pub fn record_since(&self, start: Instant) {
        self.record(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    /// The figures since the previous take (all 0 if nothing was recorded).
    pub fn take(&self) -> LatencyValues {
        let min = self.min.swap(u64::MAX, Ordering::Relaxed);
        LatencyValues {
            min_us: if min == u64::MAX { 0 } else { min },
            max_us: self.max.swap(0, Ordering::Relaxed),
            sum_us: self.sum.swap(0, Ordering::Relaxed),
        }
    }
}

/// One flush of a [`Latency`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LatencyValues {
    /// The shortest, 0 if none.
    pub min_us: u64,
    /// The longest.
    pub max_us: u64,
    /// All of them together.
    pub sum_us: u64,
}

impl LatencyValues {
    /// Fold another device's figures into these (for a group's aggregate).
    pub fn merge(&mut self, other: &Self) {
        if other.sum_us == 0 && other.max_us == 0 {
            return;
        }
        self.min_us = if self.max_us == 0 && self.sum_us == 0 {
            other.min_us
        } else {
            self.min_us.min(other.min_us)
        };
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

/// Declare a group of counters: `metrics_group!(Shared => Values { counter, ... } latency
/// { name, ... })` makes `Shared` (public [`Counter`] and [`Latency`] fields, `Default`,
/// `take()` returning `Values`) and `Values` (the same fields as numbers, serialized in
/// declaration order, with `merge` adding another device's flush for an aggregate).
#[macro_export]
macro_rules! metrics_group {
    (
        $(#[$meta:meta])*
        $shared:ident => $values:ident {
            $($(#[$cmeta:meta])* $counter:ident),* $(,)?
        }
        $(latency { $($(#[$lmeta:meta])* $latency:ident),* $(,)? })?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $shared {
            $($(#[$cmeta])* pub $counter: $crate::metrics::Counter,)*
            $($($(#[$lmeta])* pub $latency: $crate::metrics::Latency,)*)?
        }

        #[doc = concat!("One flush of [`", stringify!($shared), "`]: what happened since the previous one.")]
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct $values {
            $(pub $counter: u64,)*
            $($(pub $latency: $crate::metrics::LatencyValues,)*)?
        }

        impl $shared {
            /// What was counted since the previous take.
            pub fn take(&self) -> $values {
                $values {
                    $($counter: self.$counter.take_delta(),)*
                    $($($latency: self.$latency.take(),)*)?
                }
            }
        }

        impl $values {
            /// Add another device's flush (for the group's aggregate).
            pub fn merge(&mut self, other: &Self) {
                $(self.$counter = self.$counter.wrapping_add(other.$counter);)*
                $($(self.$latency.merge(&other.$latency);)*)?
            }
        }

        impl $crate::metrics::serde::Serialize for $values {
            fn serialize<S: $crate::metrics::serde::Serializer>(
                &self,
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                use $crate::metrics::serde::ser::SerializeStruct;
                let fields = [$(stringify!($counter),)* $($(stringify!($latency),)*)?].len();
                let mut s = serializer.serialize_struct(stringify!($values), fields)?;
                $(s.serialize_field(stringify!($counter), &self.$counter)?;)*
                $($(s.serialize_field(stringify!($latency), &self.$latency)?;)*)?
                s.end()
            }
        }
    };
}

crate::metrics_group!(
    /// The entropy device's counters (Firecracker's `entropy` group).
    EntropyMetrics => EntropyValues {
        /// Activations that failed.
        activate_fails,
        /// Queue events the worker could not serve.
        entropy_event_fails,
        /// Queue events.
        entropy_event_count,
        /// Random bytes handed to the guest.
        entropy_bytes,
        /// Reads of the host's random pool that failed.
        host_rng_fails,
        /// Requests held back by the rate limiter.
        entropy_rate_limiter_throttled,
        /// Rate limiter timer events.
        rate_limiter_event_count,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    crate::metrics_group!(
        /// A group for the test.
        Shared => Values { a, b } latency { l }
    );

    #[test]
    fn a_take_reports_what_happened_since_the_previous_one() {
        let m = Shared::default();
        m.a.inc();
        m.a.add(4);
        m.l.record(7);
        m.l.record(3);
        let first = m.take();
        assert_eq!((first.a, first.b), (5, 0));
        assert_eq!(
            first.l,
            LatencyValues {
                min_us: 3,
                max_us: 7,
                sum_us: 10
            }
        );
        m.b.inc();
        let second = m.take();
        assert_eq!((second.a, second.b), (0, 1));
        assert_eq!(
            second.l,
            LatencyValues::default(),
            "nothing recorded: zeros"
        );
        assert_eq!(m.a.get(), 5, "the counter itself stays cumulative");
    }

    #[test]
    fn values_serialize_under_their_field_names_and_merge_into_an_aggregate() {
        let one = Shared::default();
        let two = Shared::default();
        one.a.add(2);
        one.l.record(10);
        two.a.add(3);
        two.b.add(1);
        two.l.record(4);
        let mut sum = Values::default();
        sum.merge(&one.take());
        sum.merge(&two.take());
        sum.merge(&Values::default());
        assert_eq!((sum.a, sum.b), (5, 1));
        assert_eq!(
            sum.l,
            LatencyValues {
                min_us: 4,
                max_us: 10,
                sum_us: 14
            }
        );
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"a": 5, "b": 1, "l": {"min_us": 4, "max_us": 10, "sum_us": 14}})
        );
    }
}
