//! virtio-rng (virtio 1.2, section 5.4): one queue of device-writable buffers, filled
//! from the host's `getrandom(2)`, optionally rate limited (Firecracker's entropy
//! `rate_limiter`: one operation per request and its buffers' bytes; a request the
//! limiter refuses stays in the ring until the limiter's timer fires).

use std::os::fd::RawFd;

use rate_limiter::RateLimiter;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemory;

use crate::device::{
    ActivateContext, ActivateError, DeviceWorker, Interrupt, VirtioDevice, WorkerError,
    device_type, features, notify_if_needed, pop_chain, serve_queue,
};
use crate::metrics::EntropyMetrics;
use crate::worker::WorkerThread;
use std::sync::Arc;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes given for one request, so one request cannot keep the worker busy.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The entropy device.
pub struct Rng {
    worker: Option<WorkerThread<RngWorker>>,
    /// The limiter while no worker runs.
    limiter: Option<RateLimiter>,
    id: String,
    metrics: Arc<EntropyMetrics>,
}

impl Rng {
    /// A new entropy device without limits; `id` names its worker thread.
    pub fn new(id: &str) -> Self {
        Self::with_limiter(id, RateLimiter::unlimited())
    }

    /// A new entropy device whose requests go through `limiter`.
    pub fn with_limiter(id: &str, limiter: RateLimiter) -> Self {
        Self {
            worker: None,
            limiter: Some(limiter),
            id: id.to_string(),
            metrics: Arc::default(),
        }
    }

    /// Its counters.
    pub fn metrics(&self) -> Arc<EntropyMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::COMMON
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let worker = RngWorker {
            metrics: self.metrics.clone(),
            limiter: self.limiter.take().unwrap_or_else(RateLimiter::unlimited),
        };
        let thread = WorkerThread::spawn(&self.id, worker, ctx).map_err(|e| {
            self.metrics.activate_fails.inc();
            ActivateError::Worker(e)
        })?;
        self.worker = Some(thread);
        Ok(())
    }

    fn pause(&mut self) {
        if let Some(w) = &self.worker {
            w.pause();
        }
    }

    fn resume(&mut self) {
        if let Some(w) = &self.worker {
            w.resume();
        }
    }

    fn snapshot_queues(&mut self) -> Result<Option<Vec<crate::device::QueueSnapshot>>, String> {
        self.worker.as_ref().map(|w| w.snapshot()).transpose()
    }

    fn reset(&mut self) -> bool {
        if let Some(w) = self.worker.take()
            && let Some((worker, _)) = w.stop()
        {
            self.limiter = Some(worker.limiter);
        }
        true
    }

    fn name(&self) -> &str {
        "virtio-rng"
    }
}

/// Serves the request queue: fills each chain's writable buffers with random bytes.
pub struct RngWorker {
    metrics: Arc<EntropyMetrics>,
    limiter: RateLimiter,
}

impl Default for RngWorker {
    fn default() -> Self {
        Self {
            metrics: Arc::default(),
            limiter: RateLimiter::unlimited(),
        }
    }
}

impl RngWorker {
    /// Fill one chain; returns the number of bytes written (0 for a chain whose buffers
    /// are outside guest memory: the driver gets nothing, the device goes on).
    pub fn fill<M: GuestMemory>(&self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        let Ok(mut writer) = Writer::new(mem, chain) else {
            log::debug!("virtio-rng: chain with bad buffers answered empty");
            return 0;
        };
        let mut left = writer.available_bytes().min(MAX_REQUEST_BYTES);
        let mut buf = [0u8; 4096];
        while left > 0 {
            let n = left.min(buf.len());
            if getrandom(&mut buf[..n]).is_err() {
                self.metrics.host_rng_fails.inc();
                break;
            }
            if std::io::Write::write_all(&mut writer, &buf[..n]).is_err() {
                break;
            }
            left -= n;
        }
        let n = writer.bytes_written();
        self.metrics.entropy_bytes.add(n as u64);
        n as u32
    }
}

/// Fill `buf` from the kernel's random pool (never blocks once the pool is initialised).
pub fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we
        // own mutably for the duration of the call.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            done += n as usize;
        }
    }
    Ok(())
}

impl RngWorker {
    /// Serve the queue through the limiter: each request takes one operation and its
    /// buffers' bytes; a refused one goes back to the ring and serving stops until the
    /// timer.
    fn serve_limited<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        index: usize,
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let ring_err = |e: virtio_queue::Error| WorkerError::new(format!("queue {index}: {e}"));
        let mut used = 0usize;
        'serve: loop {
            queue.disable_notification(mem).map_err(ring_err)?;
            while !self.limiter.is_blocked() {
                let Some(chain) = pop_chain(queue, mem)? else {
                    break;
                };
                let head = chain.head_index();
                let wanted = Writer::new(mem, chain.clone())
                    .map_or(0, |w| w.available_bytes().min(MAX_REQUEST_BYTES));
                if !self.limiter.consume(1, wanted as u64) {
                    queue.go_to_previous_position();
                    self.metrics.entropy_rate_limiter_throttled.inc();
                    break 'serve;
                }
                let len = self.fill(mem, chain);
                queue.add_used(mem, head, len).map_err(ring_err)?;
                used += 1;
            }
            if self.limiter.is_blocked() || !queue.enable_notification(mem).map_err(ring_err)? {
                break;
            }
        }
        if used > 0 {
            notify_if_needed(queue, index, mem, interrupt)?;
        }
        Ok(())
    }

    fn serve<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let Some(queue) = queues.get_mut(index) else {
            return Ok(());
        };
        let metrics = self.metrics.clone();
        let result = if self.limiter.is_limited() {
            self.serve_limited(queue, index, mem, interrupt)
        } else {
            serve_queue(queue, index, mem, interrupt, |chain| self.fill(mem, chain))
        };
        result.inspect_err(|_| metrics.entropy_event_fails.inc())
    }
}

impl DeviceWorker for RngWorker {
    fn extra_fds(&self) -> Vec<RawFd> {
        self.limiter.timer_fd().into_iter().collect()
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        self.metrics.entropy_event_count.inc();
        self.serve(index, queues, mem, interrupt)
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        _index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        // The limiter's timer, its only extra fd.
        self.metrics.rate_limiter_event_count.inc();
        self.limiter.on_timer();
        self.serve(0, queues, mem, interrupt)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::testing::{TestInterrupt, guest_memory};

    fn used_idx(
        mem: &crate::device::VmMemory,
        vq: &MockSplitQueue<'_, crate::device::VmMemory>,
    ) -> u16 {
        mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap()
    }

    #[test]
    fn a_rate_limited_device_serves_what_the_limiter_allows_then_waits_for_its_timer() {
        let mem = guest_memory(1 << 20);
        let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0), 16);
        let descs: Vec<RawDescriptor> = (0..6u64)
            .map(|i| {
                let d = SplitDescriptor::new(0x8_0000 + i * 64, 64, VRING_DESC_F_WRITE as u16, 0);
                RawDescriptor::from(d)
            })
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut queue = vq.create_queue::<Queue>().unwrap();
        // Two requests a second, two at once.
        let limit = api::RateLimit {
            ops_per_sec: Some(2),
            ops_burst: api::Burst {
                size: Some(2),
                one_time: None,
            },
            ..Default::default()
        };
        let metrics = Arc::new(EntropyMetrics::default());
        let mut worker = RngWorker {
            metrics: metrics.clone(),
            limiter: RateLimiter::new(&limit).unwrap(),
        };
        let irq = TestInterrupt::default();
        let fds = worker.extra_fds();
        assert_eq!(fds.len(), 1, "the limiter's timer");
        worker
            .process_queue(0, &mut [&mut queue], mem.as_ref(), &irq)
            .unwrap();
        assert_eq!(used_idx(&mem, &vq), 2, "the bucket's two requests");
        assert_eq!(metrics.entropy_rate_limiter_throttled.get(), 1);
        assert_eq!(
            queue.next_avail(),
            2,
            "the refused request is back in the ring"
        );
        assert_eq!(metrics.entropy_bytes.get(), 128);
        // A kick while blocked serves nothing more.
        worker
            .process_queue(0, &mut [&mut queue], mem.as_ref(), &irq)
            .unwrap();
        assert_eq!(used_idx(&mem, &vq), 2);
        // The timer fires within the half second a token takes.
        let start = Instant::now();
        let mut pfd = libc::pollfd {
            fd: fds[0],
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack for the call's duration.
        let ready = unsafe { libc::poll(&mut pfd, 1, 2000) };
        assert_eq!(ready, 1, "the timer fired");
        assert!(start.elapsed() < Duration::from_millis(1500));
        worker
            .process_extra(0, &mut [&mut queue], mem.as_ref(), &irq)
            .unwrap();
        assert_eq!(used_idx(&mem, &vq), 3, "one more token, one more request");
        assert_eq!(metrics.rate_limiter_event_count.get(), 1);
    }

    #[test]
    fn an_unlimited_device_serves_everything_at_once() {
        let mem = guest_memory(1 << 20);
        let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0), 16);
        let descs: Vec<RawDescriptor> = (0..6u64)
            .map(|i| {
                RawDescriptor::from(SplitDescriptor::new(
                    0x8_0000 + i * 64,
                    64,
                    VRING_DESC_F_WRITE as u16,
                    0,
                ))
            })
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut queue = vq.create_queue::<Queue>().unwrap();
        let mut worker = RngWorker::default();
        assert!(worker.extra_fds().is_empty());
        worker
            .process_queue(
                0,
                &mut [&mut queue],
                mem.as_ref(),
                &TestInterrupt::default(),
            )
            .unwrap();
        assert_eq!(used_idx(&mem, &vq), 6);
    }
}
