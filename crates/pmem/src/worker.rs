//! Serving the request queue (virtio 1.2, 5.19.6-7): each request is a device-readable
//! `le32 type` followed by a device-writable `le32 ret`. The only type is
//! `VIRTIO_PMEM_REQ_TYPE_FLUSH` (0): the device writes the guest's changes back to the
//! backing file and answers `VIRTIO_PMEM_RESP_TYPE_OK` (0) or `..._EIO` (1).
//!
//! One flush serves every request taken in one turn (they were all made before it):
//! the chains the driver made available are taken together, the file is synced once
//! (`msync`), and each gets that result. A rate limiter, as Firecracker's, charges one
//! operation and the file's size in bytes per sync; while it holds the flushes back the
//! requests stay in the ring until its timer fires.
//!
//! A chain that is not a request (no 4 readable bytes, an unknown type, buffers outside
//! guest memory) is answered with `EIO` if it has room for the status, else with nothing
//! (used length 0), and counted in `event_fails`; the device goes on.

use std::os::fd::RawFd;
use std::sync::Arc;

use rate_limiter::RateLimiter;
use virtio_devices::device::{DeviceWorker, Interrupt, WorkerError, notify_if_needed, pop_chain};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemory;

use crate::backing::Backing;
use crate::metrics::PmemMetrics;

/// `VIRTIO_PMEM_REQ_TYPE_FLUSH`.
pub const REQ_TYPE_FLUSH: u32 = 0;
/// `VIRTIO_PMEM_RESP_TYPE_OK`.
pub const RESP_OK: u32 = 0;
/// `VIRTIO_PMEM_RESP_TYPE_EIO`.
pub const RESP_EIO: u32 = 1;

/// Serves a pmem device's one queue.
pub struct PmemWorker {
    backing: Arc<Backing>,
    limiter: RateLimiter,
    metrics: Arc<PmemMetrics>,
    name: String,
    /// `msync` calls made (each serving one or more flush requests).
    syncs: u64,
    /// Whether a failed sync has been logged (once per worker).
    warned: bool,
}

impl PmemWorker {
    /// A worker flushing `backing`, its flushes limited by `limiter`.
    pub fn new(
        backing: Arc<Backing>,
        limiter: RateLimiter,
        metrics: Arc<PmemMetrics>,
        name: &str,
    ) -> Self {
        Self {
            backing,
            limiter,
            metrics,
            name: name.to_string(),
            syncs: 0,
            warned: false,
        }
    }

    /// `msync` calls made so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Replace the flushes' limits (`PATCH /pmem`).
    pub fn set_rate_limit(&mut self, limit: &api::RateLimit) -> std::io::Result<()> {
        self.limiter.update(limit)
    }

    /// The limits in force.
    pub fn rate_limit(&self) -> api::RateLimit {
        self.limiter.limit()
    }

    /// The sync every request of this turn shares: `OK`, or `EIO` if `msync` failed.
    fn sync(&mut self) -> u32 {
        self.syncs += 1;
        match self.backing.sync() {
            Ok(()) => RESP_OK,
            Err(e) => {
                if !self.warned {
                    self.warned = true;
                    log::error!(
                        "{}: cannot write the guest's changes back to {}: {e}",
                        self.name,
                        self.backing.path().display()
                    );
                }
                RESP_EIO
            }
        }
    }

    /// Answer one chain; `synced` is this turn's sync result once made. Returns the
    /// bytes written into the chain (4, or 0 when it has no room for a status).
    fn answer<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: DescriptorChain<&M>,
        synced: &mut Option<u32>,
    ) -> u32 {
        let request = Reader::new(mem, chain.clone())
            .ok()
            .and_then(|mut r| r.read_obj::<u32>().ok())
            .map(u32::from_le);
        let Ok(mut writer) = Writer::new(mem, chain) else {
            self.metrics.event_fails.inc();
            return 0;
        };
        if writer.available_bytes() < 4 {
            self.metrics.event_fails.inc();
            return 0;
        }
        let status = match request {
            Some(REQ_TYPE_FLUSH) => match *synced {
                Some(s) => s,
                None => {
                    let s = self.sync();
                    *synced = Some(s);
                    s
                }
            },
            _ => {
                self.metrics.event_fails.inc();
                RESP_EIO
            }
        };
        match writer.write_obj(status.to_le()) {
            Ok(()) => 4,
            Err(_) => {
                self.metrics.event_fails.inc();
                0
            }
        }
    }

    /// Serve what the driver made available, a turn at a time, as the limiter allows.
    fn serve<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let Some(queue) = queues.get_mut(0) else {
            return Ok(());
        };
        let ring_err = |e: virtio_queue::Error| WorkerError::new(format!("queue 0: {e}"));
        let mut used = 0usize;
        loop {
            queue.disable_notification(mem).map_err(ring_err)?;
            if self.limiter.is_blocked() {
                break;
            }
            let Some(first) = pop_chain(queue, mem)? else {
                if queue.enable_notification(mem).map_err(ring_err)? {
                    continue;
                }
                break;
            };
            // One sync for the turn: charged once, before anything is answered.
            if !self.limiter.consume(1, self.backing.file_len()) {
                queue.go_to_previous_position();
                self.metrics.rate_limiter_throttled_events.inc();
                break;
            }
            let mut synced = None;
            let mut next = Some(first);
            while let Some(chain) = next {
                let head = chain.head_index();
                let len = self.answer(mem, chain, &mut synced);
                queue.add_used(mem, head, len).map_err(ring_err)?;
                used += 1;
                next = pop_chain(queue, mem)?;
            }
            if !queue.enable_notification(mem).map_err(ring_err)? {
                break;
            }
        }
        if used > 0 {
            notify_if_needed(queue, 0, mem, interrupt)?;
        }
        Ok(())
    }
}

impl DeviceWorker for PmemWorker {
    fn extra_fds(&self) -> Vec<RawFd> {
        self.limiter.timer_fd().into_iter().collect()
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        _index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        self.metrics.queue_event_count.inc();
        if self.limiter.is_blocked() {
            self.metrics.rate_limiter_throttled_events.inc();
            return Ok(());
        }
        self.serve(queues, mem, interrupt)
            .inspect_err(|_| self.metrics.event_fails.inc())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        _index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        // The limiter's timer, the only extra fd.
        self.metrics.rate_limiter_event_count.inc();
        self.limiter.on_timer();
        self.serve(queues, mem, interrupt)
            .inspect_err(|_| self.metrics.event_fails.inc())
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
pub(crate) mod tests;
