//! Serving the balloon's queues once the driver has started it: inflate (release the
//! pages), deflate (nothing to do on the host), statistics (hold the driver's buffer,
//! give it back every polling interval, parse what comes back), free page hinting (follow
//! the guest's command ids, release the ranges it hints for the run the host asked for)
//! and free page reporting (release the reported ranges).
//!
//! Which queue index is which depends on the features the driver accepted
//! ([`QueueLayout`]). The worker's extra fds are the statistics timer and the control
//! eventfd its [`crate::BalloonHandle`] writes when the polling interval changes.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use virtio_devices::device::{
    DeviceWorker, Interrupt, WorkerError, notify_if_needed, pop_chain, serve_queue,
};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::timerfd::TimerFd;

use crate::device::{BalloonHandle, Shared, feature_bits, hint_cmd};
use crate::memory::{self, BALLOON_PAGE_SIZE, PFN_SHIFT, RunBuilder, in_guest_memory};
use crate::stats::{self, MAX_RECORDS, RECORD_SIZE};

/// Index of the statistics timer in [`BalloonWorker::extra_fds`].
pub const EXTRA_TIMER: usize = 0;
/// Index of the control eventfd in [`BalloonWorker::extra_fds`].
pub const EXTRA_CONTROL: usize = 1;

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Pages the guest gives up.
    Inflate,
    /// Pages the guest takes back.
    Deflate,
    /// The guest's memory statistics.
    Stats,
    /// Free page hinting.
    Hinting,
    /// Free page reporting.
    Reporting,
}

/// Queue numbering for a set of accepted features (virtio 1.2, 5.5.2): inflate 0,
/// deflate 1, then the statistics queue if `STATS_VQ` was accepted, the hinting queue if
/// `FREE_PAGE_HINT` was, the reporting queue if `REPORTING` was, each at the next free
/// index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    stats: Option<usize>,
    hinting: Option<usize>,
    reporting: Option<usize>,
}

impl QueueLayout {
    /// The layout for the features the driver accepted.
    pub fn new(acked_features: u64) -> Self {
        let mut next = 2;
        let mut take = |bit: u64| {
            (acked_features & bit != 0).then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(feature_bits::STATS_VQ);
        let hinting = take(feature_bits::FREE_PAGE_HINT);
        let reporting = take(feature_bits::REPORTING);
        Self {
            stats,
            hinting,
            reporting,
        }
    }

    /// What queue `index` is, if the layout has it.
    pub fn kind(&self, index: usize) -> Option<QueueKind> {
        match index {
            0 => Some(QueueKind::Inflate),
            1 => Some(QueueKind::Deflate),
            i if Some(i) == self.stats => Some(QueueKind::Stats),
            i if Some(i) == self.hinting => Some(QueueKind::Hinting),
            i if Some(i) == self.reporting => Some(QueueKind::Reporting),
            _ => None,
        }
    }

    /// Index of the statistics queue.
    pub fn stats(&self) -> Option<usize> {
        self.stats
    }

    /// Index of the hinting queue.
    pub fn hinting(&self) -> Option<usize> {
        self.hinting
    }

    /// Index of the reporting queue.
    pub fn reporting(&self) -> Option<usize> {
        self.reporting
    }

    /// Every queue index in use.
    pub fn indices(&self) -> impl Iterator<Item = usize> {
        [Some(0), Some(1), self.stats, self.hinting, self.reporting]
            .into_iter()
            .flatten()
    }
}

/// Serves the balloon's queues.
pub struct BalloonWorker {
    shared: Arc<Shared>,
    layout: QueueLayout,
    timer: TimerFd,
    /// Head of the statistics buffer the device keeps until the next poll.
    held_stats: Option<u16>,
}

impl BalloonWorker {
    /// A worker for the device behind `handle`, with the features the driver accepted.
    /// Arms the statistics timer if the statistics queue was accepted.
    pub fn new(handle: &BalloonHandle, acked_features: u64) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        set_nonblocking(timer.as_raw_fd())?;
        let mut w = Self {
            shared: handle.shared.clone(),
            layout: QueueLayout::new(acked_features),
            timer,
            held_stats: None,
        };
        w.arm_timer()?;
        Ok(w)
    }

    /// The queue numbering this worker serves.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Whether the device holds the driver's statistics buffer.
    pub fn holds_stats_buffer(&self) -> bool {
        self.held_stats.is_some()
    }

    /// Hold the statistics buffer with head `head` (taken before a snapshot this worker
    /// was restored from) and give it back at the next poll, as if this worker had taken
    /// it. The caller checks that `head` is within the statistics queue.
    pub fn hold_stats_buffer(&mut self, head: u16) {
        self.held_stats = Some(head);
    }

    fn arm_timer(&mut self) -> io::Result<()> {
        let interval = self.shared.stats_interval();
        if self.layout.stats.is_none() || interval.is_zero() {
            self.timer.clear()?;
        } else {
            self.timer.reset(interval, Some(interval))?;
        }
        Ok(())
    }

    /// Count an ignored page or range; the first one per device is a warning.
    fn ignore(&self, what: impl std::fmt::Display) {
        self.shared.counters.ignored.fetch_add(1, Ordering::Relaxed);
        if self.shared.warned_ignored.swap(true, Ordering::Relaxed) {
            log::debug!("virtio-balloon: {what}: ignored");
        } else {
            log::warn!("virtio-balloon: {what}: ignored (further ones are logged at debug level)");
        }
    }

    /// Give `len` bytes at `addr` back to the host; whether it was done.
    fn release<M: GuestMemory>(&self, mem: &M, addr: GuestAddress, len: u64) -> bool {
        match memory::release(mem, addr, len) {
            Ok(calls) => {
                let c = &self.shared.counters;
                c.released_bytes.fetch_add(len, Ordering::Relaxed);
                c.madvise_calls.fetch_add(calls as u64, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.ignore(e);
                false
            }
        }
    }

    /// Release the pages listed in one inflate chain (le32 page frame numbers).
    fn inflate<M: GuestMemory>(&self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        self.shared.metrics.inflate_count.inc();
        let Ok(mut reader) = Reader::new(mem, chain) else {
            self.ignore("inflate chain with buffers outside guest memory");
            return 0;
        };
        let mut runs = RunBuilder::default();
        let mut pages = 0u64;
        while reader.available_bytes() >= 4 {
            let Ok(raw) = reader.read_obj::<u32>() else {
                break;
            };
            pages += 1;
            let pfn = u64::from(u32::from_le(raw));
            if !in_guest_memory(mem, GuestAddress(pfn << PFN_SHIFT), BALLOON_PAGE_SIZE) {
                self.ignore(format_args!(
                    "inflated page frame {pfn:#x} outside guest memory"
                ));
                continue;
            }
            if let Some(run) = runs.push(pfn) {
                self.release(mem, run.addr(), run.len_bytes());
            }
        }
        if let Some(run) = runs.finish() {
            self.release(mem, run.addr(), run.len_bytes());
        }
        self.shared
            .counters
            .inflated_pages
            .fetch_add(pages, Ordering::Relaxed);
        0
    }

    /// Count the pages of one deflate chain: the host has nothing to do, a page the
    /// guest touches again is faulted in.
    fn deflate<M: GuestMemory>(&self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        self.shared.metrics.deflate_count.inc();
        match Reader::new(mem, chain) {
            Ok(reader) => {
                let pages = (reader.available_bytes() / 4) as u64;
                self.shared
                    .counters
                    .deflated_pages
                    .fetch_add(pages, Ordering::Relaxed);
            }
            Err(_) => self.ignore("deflate chain with buffers outside guest memory"),
        }
        0
    }

    /// Release the free ranges of one reporting chain, each descriptor one range
    /// (shrunk to whole 4 KiB pages).
    fn report<M: GuestMemory>(&self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        self.shared.metrics.free_page_report_count.inc();
        for desc in chain {
            let addr = desc.addr().0;
            let Some((start, len)) = whole_pages(addr, desc.len()) else {
                self.ignore(format_args!("reported range at {addr:#x} overflows"));
                self.shared.metrics.free_page_report_fails.inc();
                continue;
            };
            if len > 0 {
                if self.release(mem, start, len) {
                    self.shared.metrics.free_page_report_freed.add(len);
                } else {
                    self.shared.metrics.free_page_report_fails.inc();
                }
            }
        }
        0
    }

    /// Serve one hinting chain (virtio 1.2, 5.5.6.7). A device-readable descriptor
    /// carries a command id (le32): the id of the run the driver starts, or STOP when it
    /// has finished. A device-writable descriptor is a free range the driver hints: it is
    /// released (whole 4 KiB pages) if it belongs to the run the host asked for, that is
    /// the host's command id is a run's and the guest last sent that id; otherwise it is
    /// stale and dropped. When the guest ends the host's run and the run acknowledges on
    /// stop, the host's id becomes DONE; `*acked` says the driver must be told.
    ///
    /// The state stays locked from a range's check to the end of its release, so a stop
    /// from the API (DONE) never reaches the driver while a hinted page is discarded.
    fn hint<M: GuestMemory>(&self, mem: &M, chain: DescriptorChain<&M>, acked: &mut bool) -> u32 {
        for desc in chain {
            let addr = desc.addr().0;
            let mut state = self.shared.hinting();
            if !desc.is_write_only() {
                // A command id; Linux sends exactly 4 bytes.
                let cmd = match mem.read_obj::<u32>(desc.addr()) {
                    Ok(raw) if desc.len() >= 4 => u32::from_le(raw),
                    _ => {
                        self.ignore(format_args!(
                            "hinting command id at {addr:#x} ({} bytes) unreadable",
                            desc.len()
                        ));
                        continue;
                    }
                };
                let previous = state.guest_cmd.replace(cmd);
                let host = state.host_cmd;
                let ends_host_run = host >= hint_cmd::FIRST_RUN && previous == Some(host);
                match cmd {
                    hint_cmd::STOP | hint_cmd::DONE => {
                        if cmd == hint_cmd::DONE {
                            log::debug!(
                                "virtio-balloon: the driver sent the hinting command id DONE, taken as STOP"
                            );
                        }
                        if ends_host_run && state.acknowledge_on_stop {
                            self.shared.set_host_cmd(&mut state, hint_cmd::DONE);
                            *acked = true;
                        }
                    }
                    id if id != host => log::debug!(
                        "virtio-balloon: the driver starts hinting run {id}, the host asks for {host}"
                    ),
                    _ => {}
                }
                continue;
            }
            let host = state.host_cmd;
            if host < hint_cmd::FIRST_RUN || state.guest_cmd != Some(host) {
                self.shared
                    .counters
                    .stale_hints
                    .fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "virtio-balloon: hinted range at {addr:#x} belongs to no current run (host {host}, guest {:?}): dropped",
                    state.guest_cmd
                );
                continue;
            }
            self.shared.metrics.free_page_hint_count.inc();
            let released = match whole_pages(addr, desc.len()) {
                Some((start, len)) if len > 0 => self.release(mem, start, len).then_some(len),
                Some(_) => Some(0),
                None => {
                    self.ignore(format_args!("hinted range at {addr:#x} overflows"));
                    None
                }
            };
            drop(state);
            match released {
                Some(len) => {
                    self.shared.metrics.free_page_hint_freed.add(len);
                    self.shared
                        .counters
                        .hinted_bytes
                        .fetch_add(len, Ordering::Relaxed);
                }
                None => self.shared.metrics.free_page_hint_fails.inc(),
            }
        }
        0
    }

    /// Serve the hinting queue; tell the driver if its run was acknowledged (DONE).
    fn serve_hints<M: GuestMemory>(
        &self,
        queue: &mut Queue,
        index: usize,
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let mut acked = false;
        let served = serve_queue(queue, index, mem, interrupt, |c| {
            self.hint(mem, c, &mut acked)
        });
        if acked {
            interrupt
                .signal_config_change()
                .map_err(|e| WorkerError::new(format!("cannot signal hinting DONE: {e}")))?;
        }
        served
    }

    /// Parse the statistics in one chain into the handle's state.
    fn read_stats<M: GuestMemory>(&self, mem: &M, chain: DescriptorChain<&M>) {
        let Ok(mut reader) = Reader::new(mem, chain) else {
            self.ignore("statistics buffer outside guest memory");
            self.shared.metrics.stats_update_fails.inc();
            return;
        };
        let mut buf = vec![0u8; reader.available_bytes().min(MAX_RECORDS * RECORD_SIZE)];
        if io::Read::read_exact(&mut reader, &mut buf).is_err() {
            self.ignore("unreadable statistics buffer");
            self.shared.metrics.stats_update_fails.inc();
            return;
        }
        let parsed = stats::parse(&buf, SystemTime::now());
        if parsed.unknown_tags > 0 || parsed.trailing_bytes > 0 {
            log::debug!(
                "virtio-balloon: statistics with {} unknown tags and {} trailing bytes",
                parsed.unknown_tags,
                parsed.trailing_bytes
            );
        }
        if parsed.records > 0 {
            self.shared.set_stats(parsed.stats);
            self.shared
                .counters
                .stats_updates
                .fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.stats_updates_count.inc();
        }
    }

    /// Take the statistics buffers the driver offers: parse each, keep the newest (an
    /// older one still held goes back to the driver).
    fn take_stats<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        index: usize,
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let ring_err = |e: virtio_queue::Error| WorkerError::new(format!("queue {index}: {e}"));
        let mut returned = 0;
        loop {
            queue.disable_notification(mem).map_err(ring_err)?;
            while let Some(chain) = pop_chain(queue, mem)? {
                let head = chain.head_index();
                self.read_stats(mem, chain);
                if let Some(old) = self.held_stats.replace(head) {
                    queue.add_used(mem, old, 0).map_err(ring_err)?;
                    returned += 1;
                }
            }
            if !queue.enable_notification(mem).map_err(ring_err)? {
                break;
            }
        }
        if returned > 0 {
            notify_if_needed(queue, index, mem, interrupt)?;
        }
        Ok(())
    }

    /// The polling interval elapsed: hand the statistics buffer back, asking for fresh
    /// numbers. Nothing to do if the driver has not returned it yet.
    fn poll_stats<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        // Drain the expirations; EAGAIN when the timer was re-armed meanwhile.
        let _ = self.timer.wait();
        let Some(index) = self.layout.stats else {
            return Ok(());
        };
        let Some(queue) = queues.get_mut(index) else {
            return Ok(());
        };
        let Some(head) = self.held_stats.take() else {
            return Ok(());
        };
        queue
            .add_used(mem, head, 0)
            .map_err(|e| WorkerError::new(format!("queue {index}: {e}")))?;
        notify_if_needed(queue, index, mem, interrupt)
    }
}

impl DeviceWorker for BalloonWorker {
    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.timer.as_raw_fd(), self.shared.control.as_raw_fd()]
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let Some(kind) = self.layout.kind(index) else {
            log::debug!("virtio-balloon: kick on unused queue {index} ignored");
            return Ok(());
        };
        let Some(queue) = queues.get_mut(index) else {
            return Ok(());
        };
        let metrics = self.shared.metrics.clone();
        let result = match kind {
            // Served as they are taken: nothing is left in flight for a snapshot.
            QueueKind::Inflate => {
                serve_queue(queue, index, mem, interrupt, |c| self.inflate(mem, c))
            }
            QueueKind::Deflate => {
                serve_queue(queue, index, mem, interrupt, |c| self.deflate(mem, c))
            }
            QueueKind::Hinting => self.serve_hints(queue, index, mem, interrupt),
            QueueKind::Reporting => {
                serve_queue(queue, index, mem, interrupt, |c| self.report(mem, c))
            }
            QueueKind::Stats => self.take_stats(queue, index, mem, interrupt),
        };
        result.inspect_err(|_| metrics.event_fails.inc())
    }

    /// Inflate, deflate, hinting and reporting chains are finished as they are taken; the
    /// held statistics buffer stays held (it is answered at the next poll, by this worker
    /// or by a restored one) and is recorded for the snapshot.
    fn prepare_snapshot<M: GuestMemory>(
        &mut self,
        _queues: &mut [&mut Queue],
        _mem: &M,
        _interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        *self.shared.held_at_snapshot() = self.held_stats;
        Ok(())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        match index {
            EXTRA_TIMER => self.poll_stats(queues, mem, interrupt),
            EXTRA_CONTROL => {
                let _ = self.shared.control.read();
                if let Err(e) = self.arm_timer() {
                    log::error!("virtio-balloon: cannot re-arm the statistics timer: {e}");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The whole 4 KiB pages inside `len` bytes at `addr`: their first address and length
/// (0 when there is none); `None` when the range wraps around the address space.
fn whole_pages(addr: u64, len: u32) -> Option<(GuestAddress, u64)> {
    let mask = BALLOON_PAGE_SIZE - 1;
    let start = addr.checked_add(mask)? & !mask;
    let end = addr.checked_add(u64::from(len))? & !mask;
    Some((GuestAddress(start), end.saturating_sub(start)))
}

/// Make `fd` non-blocking, so draining the timer never waits.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we own reads its flags; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[path = "worker_tests.rs"]
pub(crate) mod tests;
