//! The pmem device as the transport sees it: one request queue, and a configuration
//! space of two `le64`: `start`, the guest physical address of the region, and `size`,
//! its length (virtio 1.2, 5.19.4). The region itself (the [`Backing`] mapped into guest
//! memory) is the VMM's to place and to register with KVM; the device only tells the
//! driver where it is and serves its flushes.
//!
//! Snapshots: the worker answers every request as it takes it, so none is in flight; the
//! queue is saved by the transport. The device's own state is where its region was
//! ([`PmemState`]): a restored device, rebuilt from the same configuration, must find
//! its region at the same place and of the same size (a backing file that grew or
//! shrank past a 2 MiB boundary since the snapshot is refused, as Firecracker refuses
//! it). The region's contents are the file's, not the snapshot's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rate_limiter::RateLimiter;
use virtio_devices::device::{
    ActivateContext, ActivateError, QueueSnapshot, VirtioDevice, device_type, features,
    read_config_bytes,
};
use virtio_devices::worker::WorkerThread;

use crate::backing::{ALIGNMENT, Backing};
use crate::metrics::PmemMetrics;
use crate::worker::PmemWorker;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the configuration space: `start` and `size`.
pub const CONFIG_SIZE: usize = 16;

/// Why a pmem device could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    /// The guest address is not 2 MiB aligned.
    #[error("{id}: the region's address {addr:#x} is not a multiple of 2 MiB")]
    Unaligned {
        /// The device.
        id: String,
        /// The address.
        addr: u64,
    },
    /// The region would end past the 64-bit address space.
    #[error("{id}: a region of {size} bytes does not fit at {addr:#x}")]
    Overflow {
        /// The device.
        id: String,
        /// The address.
        addr: u64,
        /// The size.
        size: u64,
    },
    /// The rate limiter could not be made (its timerfd) or refused the limits.
    #[error("{id}: rate limiter: {source}")]
    RateLimiter {
        /// The device.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker thread has ended.
    #[error("{0}: the worker thread has ended")]
    WorkerGone(String),
}

/// What a snapshot keeps of a pmem device beyond its queue: where its region was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemState {
    /// `start` of the configuration space.
    pub start: u64,
    /// `size` of the configuration space.
    pub size: u64,
}

/// A virtio-pmem device.
pub struct Pmem {
    id: String,
    backing: Arc<Backing>,
    start: u64,
    config: [u8; CONFIG_SIZE],
    /// The flushes' limits; each activation's worker starts with them.
    limit: api::RateLimit,
    running: Option<WorkerThread<PmemWorker>>,
    metrics: Arc<PmemMetrics>,
    /// Whether a configuration write has been logged (once per device).
    warned_config: AtomicBool,
}

impl Pmem {
    /// A device named `id` whose region is `backing`, at guest physical address `start`
    /// (a multiple of 2 MiB), its flushes limited by `limit`.
    pub fn new(
        id: &str,
        backing: Arc<Backing>,
        start: u64,
        limit: &api::RateLimit,
    ) -> Result<Self, PmemError> {
        if !start.is_multiple_of(ALIGNMENT) {
            return Err(PmemError::Unaligned {
                id: id.to_string(),
                addr: start,
            });
        }
        if start.checked_add(backing.len()).is_none() {
            return Err(PmemError::Overflow {
                id: id.to_string(),
                addr: start,
                size: backing.len(),
            });
        }
        // Made once here so that a refused limit is reported now, not at activation.
        RateLimiter::new(limit).map_err(|source| PmemError::RateLimiter {
            id: id.to_string(),
            source,
        })?;
        let mut config = [0u8; CONFIG_SIZE];
        config[..8].copy_from_slice(&start.to_le_bytes());
        config[8..].copy_from_slice(&backing.len().to_le_bytes());
        Ok(Self {
            id: id.to_string(),
            backing,
            start,
            config,
            limit: *limit,
            running: None,
            metrics: Arc::default(),
            warned_config: AtomicBool::new(false),
        })
    }

    /// The device's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The region's guest physical address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The mapped backing file.
    pub fn backing(&self) -> &Arc<Backing> {
        &self.backing
    }

    /// Its counters.
    pub fn metrics(&self) -> Arc<PmemMetrics> {
        self.metrics.clone()
    }

    /// The flushes' limits.
    pub fn rate_limit(&self) -> api::RateLimit {
        self.limit
    }

    /// Give the flushes new limits (the whole new limit; `None` rates are unlimited),
    /// on the running worker if there is one. Refused, changing nothing: a zero rate.
    pub fn set_rate_limit(&mut self, limit: &api::RateLimit) -> Result<(), PmemError> {
        let limiter_err = |source| PmemError::RateLimiter {
            id: self.id.clone(),
            source,
        };
        RateLimiter::new(limit).map_err(limiter_err)?;
        if let Some(thread) = &self.running {
            let l = *limit;
            thread
                .run(move |worker, _| worker.set_rate_limit(&l))
                .ok_or_else(|| PmemError::WorkerGone(self.id.clone()))?
                .map_err(limiter_err)?;
        }
        self.limit = *limit;
        Ok(())
    }

    /// Write the guest's changes back to the file (for a snapshot: the file then holds
    /// what the guest had written when it was taken).
    pub fn sync(&self) -> std::io::Result<()> {
        self.backing.sync()
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        device_type::PMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::COMMON
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.metrics.cfg_fails.inc();
        if !self.warned_config.swap(true, Ordering::Relaxed) {
            log::warn!(
                "{}: the driver wrote {} bytes at {offset:#x} of the read-only configuration \
                 space: ignored",
                self.id,
                data.len()
            );
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let fail = |metrics: &PmemMetrics, e: ActivateError| {
            metrics.activate_fails.inc();
            e
        };
        if !ctx.queues.first().is_some_and(|q| {
            use virtio_queue::QueueT;
            q.ready()
        }) {
            return Err(fail(&self.metrics, ActivateError::QueueNotReady(0)));
        }
        let limiter = RateLimiter::new(&self.limit)
            .map_err(|e| fail(&self.metrics, ActivateError::Backend(e.to_string())))?;
        let worker = PmemWorker::new(
            self.backing.clone(),
            limiter,
            self.metrics.clone(),
            &self.id,
        );
        let thread = WorkerThread::spawn(&self.id, worker, ctx)
            .map_err(|e| fail(&self.metrics, ActivateError::Worker(e)))?;
        self.running = Some(thread);
        Ok(())
    }

    fn pause(&mut self) {
        if let Some(w) = &self.running {
            w.pause();
        }
    }

    fn resume(&mut self) {
        if let Some(w) = &self.running {
            w.resume();
        }
    }

    fn snapshot_queues(&mut self) -> Result<Option<Vec<QueueSnapshot>>, String> {
        self.running.as_ref().map(|w| w.snapshot()).transpose()
    }

    fn snapshot_state(&mut self) -> Result<Option<serde_json::Value>, String> {
        let state = PmemState {
            start: self.start,
            size: self.backing.len(),
        };
        serde_json::to_value(state)
            .map(Some)
            .map_err(|e| format!("{}: {e}", self.id))
    }

    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let Some(state) = state else {
            return Err(format!("{}: the snapshot has no pmem state", self.id));
        };
        let saved: PmemState = serde_json::from_value(state.clone())
            .map_err(|e| format!("{}: the snapshot's pmem state: {e}", self.id))?;
        let now = PmemState {
            start: self.start,
            size: self.backing.len(),
        };
        if saved != now {
            return Err(format!(
                "{}: the snapshot's region was {:#x} bytes at {:#x}; {} now maps to {:#x} \
                 bytes at {:#x} (a backing file must keep its size, rounded up to 2 MiB)",
                self.id,
                saved.size,
                saved.start,
                self.backing.path().display(),
                now.size,
                now.start
            ));
        }
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(w) = self.running.take() {
            w.stop();
        }
        true
    }

    fn name(&self) -> &str {
        "virtio-pmem"
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
