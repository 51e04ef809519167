//! virtio-rng (virtio 1.2, section 5.4): one queue of device-writable buffers, filled
//! from the host's `getrandom(2)`.

use virtio_queue::{DescriptorChain, Queue, Writer};
use vm_memory::GuestMemory;

use crate::device::{
    ActivateContext, ActivateError, DeviceWorker, Interrupt, VirtioDevice, WorkerError,
    device_type, features, serve_queue,
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
    id: String,
    metrics: Arc<EntropyMetrics>,
}

impl Rng {
    /// A new entropy device; `id` names its worker thread.
    pub fn new(id: &str) -> Self {
        Self {
            worker: None,
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
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        true
    }

    fn name(&self) -> &str {
        "virtio-rng"
    }
}

/// Serves the request queue: fills each chain's writable buffers with random bytes.
#[derive(Default)]
pub struct RngWorker {
    metrics: Arc<EntropyMetrics>,
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

impl DeviceWorker for RngWorker {
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let Some(queue) = queues.get_mut(index) else {
            return Ok(());
        };
        self.metrics.entropy_event_count.inc();
        let metrics = self.metrics.clone();
        serve_queue(queue, index, mem, interrupt, |chain| self.fill(mem, chain))
            .inspect_err(|_| metrics.entropy_event_fails.inc())
    }
}
