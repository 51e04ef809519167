//! The virtio-blk worker: pops request chains, parses them ([`crate::request`]), checks
//! the rate limiter, runs them on the disk image ([`crate::disk`]) synchronously or
//! through io_uring ([`crate::uring`]), writes the status byte and fills the used ring.
//!
//! Its extra fds (in this order, each if present): the io_uring completion eventfd and
//! the rate limiter's timerfd. While the limiter is blocked or the ring is full, no chain
//! is popped; the timer or the completions resume serving.
//!
//! A running worker can be given another image ([`BlockWorker::replace_disk`]: the
//! requests in flight on the old one finish and are answered first) and other limits
//! ([`BlockWorker::set_rate_limit`]); neither changes its extra fds.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rate_limiter::RateLimiter;
use virtio_devices::device::{DeviceWorker, Interrupt, WorkerError, notify_if_needed, pop_chain};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use crate::disk::{self, BlockError, Image};
use crate::metrics::BlockMetrics;
use crate::request::{Buffer, ID_BYTES, Request, RequestKind, SECTOR_SHIFT, parse_request, status};
use crate::uring::{Completion, Meta, Op, Uring};

/// How requests reach the host kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Blocking `preadv`/`pwritev` (or imago) on the worker thread.
    Sync,
    /// io_uring, several requests in flight.
    IoUring,
}

/// What an extra fd is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    Completions,
    Timer,
}

/// Depth of the io_uring: as many requests as the queue can hold.
const URING_DEPTH: u32 = crate::device::QUEUE_SIZE as u32;

/// Serves the request queue of one disk.
pub struct BlockWorker {
    image: Image,
    capacity: u64,
    readonly: bool,
    serial: [u8; ID_BYTES],
    uring: Option<Uring>,
    limiter: RateLimiter,
    metrics: Arc<BlockMetrics>,
}

/// An image opened for a device that already runs, to hand to its worker
/// ([`BlockWorker::replace_disk`]). Opening it is what can fail, so it is done first,
/// on the caller's thread, and the device keeps its old image if it does.
pub struct OpenedDisk {
    image: Image,
    capacity: u64,
}

impl OpenedDisk {
    /// Open `path` as a `format` image, read-only or not.
    pub fn open(path: &Path, format: api::DiskFormat, readonly: bool) -> Result<Self, BlockError> {
        let (image, capacity) = disk::open(path, format, readonly)?;
        Ok(Self { image, capacity })
    }

    /// Its size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Whether `engine` can serve it (io_uring serves raw images only).
    pub fn fits(&self, engine: Engine) -> bool {
        engine == Engine::Sync || self.image.raw_fd().is_some()
    }
}

fn ring_err(e: virtio_queue::Error) -> WorkerError {
    WorkerError::new(format!("virtio-blk queue: {e}"))
}

impl BlockWorker {
    /// Open the disk described by `cfg` and choose its engine.
    pub fn new(cfg: &api::DiskConfig) -> Result<Self, BlockError> {
        let (image, capacity) = disk::open(&cfg.path, cfg.format, cfg.readonly)?;
        let raw = image.raw_fd().is_some();
        let uring = match (cfg.io_engine, raw) {
            (api::IoEngine::Sync, _) | (api::IoEngine::Auto, false) => None,
            (api::IoEngine::IoUring, false) => return Err(BlockError::IoUringNeedsRaw),
            (api::IoEngine::Auto, true) => match Uring::new(URING_DEPTH) {
                Ok(u) => Some(u),
                Err(e) => {
                    log::info!("virtio-blk: io_uring unavailable ({e}), using synchronous I/O");
                    None
                }
            },
            (api::IoEngine::IoUring, true) => {
                Some(Uring::new(URING_DEPTH).map_err(BlockError::IoUringUnavailable)?)
            }
        };
        let limiter = RateLimiter::new(&cfg.rate_limit).map_err(BlockError::RateLimiter)?;
        let mut serial = [0u8; ID_BYTES];
        if let Some(s) = &cfg.serial {
            let n = s.len().min(ID_BYTES);
            serial[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        Ok(Self {
            image,
            capacity,
            readonly: cfg.readonly,
            serial,
            uring,
            limiter,
            metrics: Arc::default(),
        })
    }

    /// The disk's counters.
    pub fn metrics(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Whether the guest may only read.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The engine serving reads, writes and flushes.
    pub fn engine(&self) -> Engine {
        if self.uring.is_some() {
            Engine::IoUring
        } else {
            Engine::Sync
        }
    }

    /// Requests submitted to io_uring and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.uring.as_ref().map_or(0, Uring::in_flight)
    }

    /// Whether the rate limiter holds the queue back.
    pub fn is_rate_limited(&self) -> bool {
        self.limiter.is_blocked()
    }

    /// Wait for every request in flight to finish without answering them (the queues
    /// are being dropped: reset, or the device stops), and forget a pending rate-limit
    /// wait. After this the worker may serve fresh queues.
    pub fn quiesce(&mut self) {
        if let Some(u) = &mut self.uring {
            let dropped = u.wait_idle().len();
            if dropped > 0 {
                log::debug!("virtio-blk: {dropped} requests finished during reset");
            }
        }
        self.limiter.on_timer();
    }

    /// The limits in force.
    pub fn rate_limit(&self) -> api::RateLimit {
        self.limiter.limit()
    }

    /// Replace the rate limits ([`RateLimiter::update`]); a request held back by the old
    /// limits is looked at again at once.
    pub fn set_rate_limit(&mut self, limit: &api::RateLimit) -> std::io::Result<()> {
        self.limiter.update(limit)
    }

    /// Serve from `disk` from now on, on a running device; the capacity becomes the
    /// new image's. The requests in flight on the old image (io_uring) finish first and
    /// are answered into `queue`, and the old image is closed (a qcow2 image's metadata
    /// flushed). Requests still in the avail ring are served from the new image.
    ///
    /// The image must fit the worker's engine ([`OpenedDisk::fits`]); if not, it is
    /// refused and the worker keeps its image. A ring error while answering is returned
    /// after the swap, which stands.
    pub fn replace_disk<M: GuestMemory>(
        &mut self,
        disk: OpenedDisk,
        queue: &mut Queue,
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let done = self.swap_image(disk).map_err(WorkerError::new)?;
        let answered = if done.is_empty() {
            Ok(())
        } else {
            self.complete(done, queue, mem)
                .and_then(|_| notify_if_needed(queue, 0, mem, interrupt))
        };
        // A queue held back by a full ring waited for a completion event, and the
        // completions were taken here: wake the worker so it serves again.
        if let Some(u) = &self.uring
            && let Err(e) = u.wake()
        {
            log::warn!("virtio-blk: cannot wake the worker after a disk swap: {e}");
        }
        answered
    }

    /// [`BlockWorker::replace_disk`] for a worker that serves no queue (the device is
    /// not running, so nothing is in flight).
    pub fn replace_idle_disk(&mut self, disk: OpenedDisk) -> Result<(), BlockError> {
        let dropped = self.swap_image(disk)?.len();
        if dropped > 0 {
            log::debug!("virtio-blk: {dropped} requests finished with no queue to answer");
        }
        Ok(())
    }

    /// Wait for what is in flight, put `disk` in place of the image and close the old
    /// one; the completions of the old image's requests are returned, not answered.
    fn swap_image(&mut self, disk: OpenedDisk) -> Result<Vec<Completion>, BlockError> {
        if !disk.fits(self.engine()) {
            return Err(BlockError::IoUringNeedsRaw);
        }
        let done = self
            .uring
            .as_mut()
            .map(Uring::wait_idle)
            .unwrap_or_default();
        let old = std::mem::replace(&mut self.image, disk.image);
        self.capacity = disk.capacity;
        if old.is_qcow2()
            && let Err(e) = old.flush()
        {
            log::warn!("virtio-blk: flushing the replaced qcow2 image: {e}");
        }
        Ok(done)
    }

    fn extras(&self) -> Vec<(Extra, RawFd)> {
        let mut v = Vec::new();
        if let Some(u) = &self.uring {
            v.push((Extra::Completions, u.eventfd()));
        }
        if let Some(fd) = self.limiter.timer_fd() {
            v.push((Extra::Timer, fd));
        }
        v
    }

    /// Serve the queue until it is empty, the limiter blocks or the ring is full.
    fn serve<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        interrupt: &dyn Interrupt,
        mut used: usize,
    ) -> Result<(), WorkerError> {
        loop {
            queue.disable_notification(mem).map_err(ring_err)?;
            let stalled = self.pop_requests(queue, mem, &mut used)?;
            if let Some(u) = &mut self.uring {
                u.submit()
                    .map_err(|e| WorkerError::new(format!("io_uring submit: {e}")))?;
            }
            // Stalled: the timer or a completion calls back; leave notifications off.
            if stalled || !queue.enable_notification(mem).map_err(ring_err)? {
                break;
            }
        }
        if used > 0 {
            notify_if_needed(queue, 0, mem, interrupt)?;
        }
        Ok(())
    }

    /// Pop and start requests; `Ok(true)` if stopped by the limiter or a full ring.
    fn pop_requests<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        used: &mut usize,
    ) -> Result<bool, WorkerError> {
        loop {
            if self.limiter.is_blocked() {
                self.count_remaining(queue, mem);
                return Ok(true);
            }
            if self.uring.as_ref().is_some_and(|u| !u.has_room()) {
                self.metrics.io_engine_throttled_events.inc();
                self.count_remaining(queue, mem);
                return Ok(true);
            }
            let Some(chain) = pop_chain(queue, mem)? else {
                return Ok(false);
            };
            let head = chain.head_index();
            let req = match parse_request(mem, chain, self.capacity) {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("virtio-blk: request {head}: {e}");
                    self.metrics.invalid_reqs_count.inc();
                    let len = match e.status() {
                        Some((addr, code)) => u32::from(mem.write_obj(code, addr).is_ok()),
                        None => 0,
                    };
                    queue.add_used(mem, head, len).map_err(ring_err)?;
                    *used += 1;
                    continue;
                }
            };
            if !self.limiter.consume(1, req.data_len()) {
                queue.go_to_previous_position();
                self.metrics.rate_limiter_throttled_events.inc();
                self.count_remaining(queue, mem);
                return Ok(true);
            }
            if let Some(len) = self.execute(mem, head, req) {
                queue.add_used(mem, head, len).map_err(ring_err)?;
                *used += 1;
            }
        }
    }

    /// Count the requests the driver made available that wait (serving stopped).
    fn count_remaining<M: GuestMemory>(&self, queue: &Queue, mem: &M) {
        if let Some(n) = waiting(queue, mem) {
            self.metrics.remaining_reqs_count.add(u64::from(n));
        }
    }

    /// Count a finished read, write or flush.
    fn count(&self, op: Op, ok: bool, started: Instant) {
        let m = &self.metrics;
        if !ok {
            m.execute_fails.inc();
            return;
        }
        match op {
            Op::Read(bytes) => {
                m.read_count.inc();
                m.read_bytes.add(bytes);
                m.read_agg.record_since(started);
            }
            Op::Write(bytes) => {
                m.write_count.inc();
                m.write_bytes.add(bytes);
                m.write_agg.record_since(started);
            }
            Op::Flush => {}
        }
    }

    /// Run one request. `Some(used_len)` when answered already (status written),
    /// `None` when submitted to io_uring.
    fn execute<M: GuestMemory>(&mut self, mem: &M, head: u16, req: Request) -> Option<u32> {
        let Request {
            kind,
            status: status_addr,
        } = req;
        let write_kind = matches!(
            kind,
            RequestKind::Write { .. } | RequestKind::Discard(_) | RequestKind::WriteZeroes(_)
        );
        let started = Instant::now();
        let (code, len) = if write_kind && self.readonly {
            self.metrics.invalid_reqs_count.inc();
            (status::IOERR, 1)
        } else {
            match kind {
                RequestKind::Read { sector, buffers } => {
                    let data = buffers.iter().map(|b| u64::from(b.len)).sum::<u64>();
                    let len = u32::try_from(data + 1).unwrap_or(u32::MAX);
                    if self.uring.is_some() {
                        return self.submit_rw(mem, head, status_addr, sector, buffers, len, false);
                    }
                    let r = disk::guest_slices(mem, &buffers, Permissions::Write)
                        .and_then(|s| self.image.read(&s, sector << SECTOR_SHIFT));
                    self.count(Op::Read(data), r.is_ok(), started);
                    answer(r, len)
                }
                RequestKind::Write { sector, buffers } => {
                    let data = buffers.iter().map(|b| u64::from(b.len)).sum::<u64>();
                    if self.uring.is_some() {
                        return self.submit_rw(mem, head, status_addr, sector, buffers, 1, true);
                    }
                    let r = disk::guest_slices(mem, &buffers, Permissions::Read)
                        .and_then(|s| self.image.write(&s, sector << SECTOR_SHIFT));
                    self.count(Op::Write(data), r.is_ok(), started);
                    answer(r, 1)
                }
                RequestKind::Flush => {
                    self.metrics.flush_count.inc();
                    if let (Some(u), Some(fd)) = (&mut self.uring, self.image.raw_fd()) {
                        let meta = Meta {
                            head,
                            status: status_addr,
                            used_len: 1,
                            dirty: Vec::new(),
                            op: Op::Flush,
                            started,
                        };
                        match u.flush(fd, meta) {
                            Ok(()) => return None,
                            Err(e) => {
                                self.metrics.execute_fails.inc();
                                answer(Err(e), 1)
                            }
                        }
                    } else {
                        let r = self.image.flush();
                        self.count(Op::Flush, r.is_ok(), started);
                        answer(r, 1)
                    }
                }
                RequestKind::GetId { buffers } => {
                    let n = write_id(mem, &buffers, &self.serial);
                    (status::OK, n + 1)
                }
                RequestKind::Discard(ranges) => {
                    let r = ranges.iter().try_for_each(|r| self.image.discard(r));
                    self.count(Op::Flush, r.is_ok(), started);
                    answer(r, 1)
                }
                RequestKind::WriteZeroes(ranges) => {
                    let r = ranges.iter().try_for_each(|r| self.image.write_zeroes(r));
                    self.count(Op::Flush, r.is_ok(), started);
                    answer(r, 1)
                }
            }
        };
        // The parser checked the status byte lies in guest memory.
        let _ = mem.write_obj(code, status_addr);
        Some(if code == status::OK { len } else { 1 })
    }

    /// Submit a read or write to io_uring; answers at once (IOERR) if it cannot.
    #[allow(clippy::too_many_arguments)]
    fn submit_rw<M: GuestMemory>(
        &mut self,
        mem: &M,
        head: u16,
        status_addr: GuestAddress,
        sector: u64,
        buffers: Vec<Buffer>,
        used_len: u32,
        write: bool,
    ) -> Option<u32> {
        let (Some(u), Some(fd)) = (&mut self.uring, self.image.raw_fd()) else {
            return None;
        };
        let access = if write {
            Permissions::Read
        } else {
            Permissions::Write
        };
        let r = disk::guest_slices(mem, &buffers, access).and_then(|slices| {
            if !write {
                // The kernel writes these pages from their host addresses, which the
                // dirty bitmap does not see: mark them now (a request a reset or drop
                // waits out is never answered) and again when it completes.
                disk::mark_dirty(&slices);
            }
            let (iovs, _guards) = disk::iovecs(&slices);
            let bytes = buffers.iter().map(|b| u64::from(b.len)).sum::<u64>();
            let meta = Meta {
                head,
                status: status_addr,
                used_len,
                dirty: if write { Vec::new() } else { buffers },
                op: if write {
                    Op::Write(bytes)
                } else {
                    Op::Read(bytes)
                },
                started: Instant::now(),
            };
            // SAFETY: the iovecs point into guest memory, which stays mapped while this
            // worker exists: `quiesce` (reset) and `Uring`'s drop wait for every request
            // in flight before the worker lets go of the memory.
            unsafe { u.rw(fd, write, sector << SECTOR_SHIFT, iovs, meta) }
        });
        match r {
            Ok(()) => None,
            Err(e) => {
                log::warn!("virtio-blk: cannot submit request {head}: {e}");
                self.metrics.execute_fails.inc();
                let _ = mem.write_obj(status::IOERR, status_addr);
                Some(1)
            }
        }
    }

    /// Answer io_uring completions; returns how many went to the used ring.
    fn complete<M: GuestMemory>(
        &mut self,
        done: Vec<Completion>,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<usize, WorkerError> {
        let n = done.len();
        for c in done {
            // A failed or short read may have written part of the buffers too.
            if let Ok(slices) = disk::guest_slices(mem, &c.meta.dirty, Permissions::Write) {
                disk::mark_dirty(&slices);
            }
            let _ = mem.write_obj(c.status, c.meta.status);
            self.count(c.meta.op, c.status == status::OK, c.meta.started);
            let len = if c.status == status::OK {
                c.meta.used_len
            } else {
                1
            };
            queue.add_used(mem, c.meta.head, len).map_err(ring_err)?;
        }
        Ok(n)
    }
}

/// Requests in the avail ring not taken yet (`None` if the ring cannot be read).
fn waiting<M: GuestMemory>(queue: &Queue, mem: &M) -> Option<u16> {
    let avail = queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .ok()?;
    Some(avail.0.wrapping_sub(queue.next_avail()))
}

/// Status and used length for a finished synchronous operation.
fn answer(r: std::io::Result<()>, len: u32) -> (u8, u32) {
    match r {
        Ok(()) => (status::OK, len),
        Err(e) => {
            log::warn!("virtio-blk: I/O error: {e}");
            (status::IOERR, 1)
        }
    }
}

/// Write the serial into the buffers (as much of its 20 bytes as fits); returns bytes
/// written.
fn write_id<M: GuestMemory>(mem: &M, buffers: &[Buffer], id: &[u8; ID_BYTES]) -> u32 {
    let mut done = 0usize;
    for b in buffers {
        let n = (b.len as usize).min(ID_BYTES - done);
        if n == 0 || mem.write_slice(&id[done..done + n], b.addr).is_err() {
            break;
        }
        done += n;
    }
    done as u32
}

impl DeviceWorker for BlockWorker {
    fn extra_fds(&self) -> Vec<RawFd> {
        self.extras().into_iter().map(|(_, fd)| fd).collect()
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        match queues.get_mut(index) {
            Some(q) if index == 0 => {
                self.metrics.queue_event_count.inc();
                if waiting(q, mem) == Some(0) {
                    self.metrics.no_avail_buffer.inc();
                }
                self.serve(q, mem, interrupt, 0)
                    .inspect_err(|_| self.metrics.event_fails.inc())
            }
            _ => Ok(()),
        }
    }

    fn prepare_snapshot<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        // Requests submitted to io_uring finish and are answered; throttled requests
        // were never taken from the avail ring and stay there.
        let Some(queue) = queues.get_mut(0) else {
            return Ok(());
        };
        let done = self
            .uring
            .as_mut()
            .map(Uring::wait_idle)
            .unwrap_or_default();
        if done.is_empty() {
            return Ok(());
        }
        self.complete(done, queue, mem)?;
        notify_if_needed(queue, 0, mem, interrupt)
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let Some(queue) = queues.get_mut(0) else {
            return Ok(());
        };
        let result = match self.extras().get(index).map(|(e, _)| *e) {
            Some(Extra::Completions) => {
                let done = self.uring.as_mut().map(Uring::reap).unwrap_or_default();
                self.complete(done, queue, mem)
                    .and_then(|used| self.serve(queue, mem, interrupt, used))
            }
            Some(Extra::Timer) => {
                self.metrics.rate_limiter_event_count.inc();
                self.limiter.on_timer();
                self.serve(queue, mem, interrupt, 0)
            }
            None => Ok(()),
        };
        result.inspect_err(|_| self.metrics.event_fails.inc())
    }
}
