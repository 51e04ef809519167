//! The balloon as the transport and the VMM see it: [`Balloon`] (feature bits, queues,
//! configuration space, activation and reset) and [`BalloonHandle`], the VMM's control
//! side (target size, the guest's answer, statistics, polling interval, free page
//! hinting runs).
//!
//! Both share one [`Shared`] state; the worker thread ([`crate::worker`]) reads it too.
//!
//! Free page hinting (virtio 1.2, 5.5.6.7): the host starts a run by writing a new
//! command id (2 and up) into `free_page_hint_cmd_id` and raising a configuration
//! interrupt; the driver answers on the hinting queue with that id, then hints its free
//! pages, then sends STOP (0). The worker discards the hinted pages (`madvise`), as
//! Firecracker does. The guest keeps the hinted pages allocated until the host writes
//! DONE (1): at once when the run was started with `acknowledge_on_stop`, else at
//! [`BalloonHandle::stop_hinting`]. The command id lives in [`HintingState`] behind a
//! mutex that the worker holds from checking a hint's run to the end of its `madvise`,
//! so a stop never tells the guest DONE while one of its hinted pages is still being
//! discarded.
//!
//! Snapshots: what the guest can observe beyond the rings is kept as a [`BalloonState`]
//! (the target in the configuration space, the `actual` the driver wrote, the polling
//! interval, the statistics buffer the device holds until its next poll, and the hinting
//! state). The worker serves inflate, deflate, hinting and reporting chains as it takes
//! them, so none is in flight at a snapshot; the statistics buffer is the only one it
//! keeps, and the restored device keeps it again (same head), answering it at its first
//! poll. A restored running device that offers hinting sets DONE and tells the driver,
//! as Firecracker does: whatever run was going on ends and the guest takes its hinted
//! pages back (a device its driver had not started keeps the snapshot's id until then).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use virtio_devices::device::{
    ActivateContext, ActivateError, Interrupt, VirtioDevice, device_type, features,
    read_config_bytes,
};
use virtio_devices::worker::WorkerThread;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::stats::BalloonStats;
use crate::worker::{BalloonWorker, QueueLayout};

/// Size of every queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Balloon pages (4 KiB) per MiB.
pub const PAGES_PER_MIB: u64 = 256;
/// Size of the configuration space: num_pages, actual, free_page_hint_cmd_id, poison_val.
pub const CONFIG_SIZE: usize = 16;
/// Offset of `actual`, the only field the driver writes.
const ACTUAL_OFFSET: u64 = 4;
/// Offset of `free_page_hint_cmd_id`.
const HINT_CMD_OFFSET: usize = 8;

/// The reserved free page hinting command ids (virtio 1.2, 5.5.6.7); a run's id is any
/// other value.
pub mod hint_cmd {
    /// The host: no run asked for. The driver: its run is over.
    pub const STOP: u32 = 0;
    /// The host: the run is over, the guest may use the hinted pages again.
    pub const DONE: u32 = 1;
    /// The first id a run gets.
    pub const FIRST_RUN: u32 = 2;
}

/// Balloon feature bits (virtio 1.2, section 5.5.3).
pub mod feature_bits {
    /// The driver must tell the device before using deflated pages (not offered).
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    /// A statistics queue exists.
    pub const STATS_VQ: u64 = 1 << 1;
    /// The driver deflates the balloon when the guest runs out of memory.
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    /// A free page hinting queue exists and the host starts hinting runs
    /// (`free_page_hint_cmd_id`).
    pub const FREE_PAGE_HINT: u64 = 1 << 3;
    /// Page poisoning (not offered).
    pub const PAGE_POISON: u64 = 1 << 4;
    /// A free page reporting queue exists.
    pub const REPORTING: u64 = 1 << 5;
}

/// Errors of the balloon's control side.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The target does not fit the 32-bit page count of the configuration space.
    #[error("balloon target of {0} MiB is too large (at most {max} MiB)", max = u64::from(u32::MAX) / PAGES_PER_MIB)]
    TargetTooLarge(u64),
    /// Statistics polling was asked for on a device created without the statistics queue.
    #[error("balloon statistics are disabled: the device was created with stats_interval_s = 0")]
    StatsDisabled,
    /// An eventfd could not be created or written.
    #[error("balloon eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// The driver could not be told about the new target (it is still set).
    #[error("cannot signal the configuration change: {0}")]
    Notify(#[source] io::Error),
    /// A hinting request on a device created without free page hinting.
    #[error(
        "free page hinting is not enabled: the balloon was configured without free_page_hinting"
    )]
    HintingDisabled,
    /// A hinting run asked for before the guest's driver started the device.
    #[error("the balloon device is not activated yet: the guest's driver has not started it")]
    NotActive,
}

/// What the balloon has done so far, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Page frame numbers received on the inflate queue.
    pub inflated_pages: u64,
    /// Page frame numbers received on the deflate queue.
    pub deflated_pages: u64,
    /// Bytes given back to the host (inflate, free page hinting and reporting).
    pub released_bytes: u64,
    /// Of those, bytes given back by free page hinting.
    pub hinted_bytes: u64,
    /// Hinted ranges dropped because they belong to no current run (the host already
    /// stopped it, or a newer one started).
    pub stale_hints: u64,
    /// `madvise` calls made.
    pub madvise_calls: u64,
    /// Page frame numbers or reported ranges ignored (outside guest memory, misaligned,
    /// refused by the kernel).
    pub ignored: u64,
    /// Statistics buffers parsed.
    pub stats_updates: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub inflated_pages: AtomicU64,
    pub deflated_pages: AtomicU64,
    pub released_bytes: AtomicU64,
    pub hinted_bytes: AtomicU64,
    pub stale_hints: AtomicU64,
    pub madvise_calls: AtomicU64,
    pub ignored: AtomicU64,
    pub stats_updates: AtomicU64,
}

/// State shared by the device, its handle and its worker.
pub(crate) struct Shared {
    pub target_pages: AtomicU32,
    pub actual_pages: AtomicU32,
    pub stats: Mutex<Option<BalloonStats>>,
    /// Statistics polling interval in milliseconds (0: do not poll).
    pub stats_interval_ms: AtomicU64,
    /// Whether the statistics queue is offered at all.
    pub stats_offered: bool,
    /// The running device's interrupt line, for configuration changes.
    pub interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
    /// Written when the polling interval changes; a running worker re-arms its timer.
    pub control: EventFd,
    /// Whether an ignored page has been logged already (logged once per device).
    pub warned_ignored: AtomicBool,
    /// The statistics buffer the worker held when it prepared the last snapshot.
    pub held_stats_at_snapshot: Mutex<Option<u16>>,
    /// Whether the device offers free page hinting.
    pub hinting_offered: bool,
    /// The hinting run's state; `hint_cmd_id` mirrors its `host_cmd`.
    pub hinting: Mutex<HintingState>,
    /// `free_page_hint_cmd_id` as the driver reads it; written only with `hinting` held,
    /// read without it (a vCPU's configuration read never waits for a `madvise`).
    pub hint_cmd_id: AtomicU32,
    pub counters: Counters,
    pub metrics: Arc<crate::metrics::BalloonMetrics>,
}

impl Shared {
    pub fn stats_interval(&self) -> Duration {
        Duration::from_millis(self.stats_interval_ms.load(Ordering::SeqCst))
    }

    fn interrupt(&self) -> MutexGuard<'_, Option<Arc<dyn Interrupt>>> {
        self.interrupt.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_stats(&self, stats: BalloonStats) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    pub fn held_at_snapshot(&self) -> MutexGuard<'_, Option<u16>> {
        self.held_stats_at_snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn hinting(&self) -> MutexGuard<'_, HintingState> {
        self.hinting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the host's command id (the caller holds `hinting`, given as `state`).
    pub fn set_host_cmd(&self, state: &mut HintingState, cmd: u32) {
        state.host_cmd = cmd;
        self.hint_cmd_id.store(cmd, Ordering::SeqCst);
    }
}

/// Where free page hinting stands (Firecracker keeps the same four values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintingState {
    /// The command id the host last set ([`hint_cmd`]: STOP, DONE or a run's id).
    pub host_cmd: u32,
    /// The id the last run got (the next one gets the one after, skipping STOP and DONE).
    pub last_run_id: u32,
    /// The command id the guest last sent, if it sent any.
    pub guest_cmd: Option<u32>,
    /// Set DONE as soon as the guest ends the run (STOP) the host asked for.
    pub acknowledge_on_stop: bool,
}

/// What `GET /balloon/hinting/status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintingStatus {
    /// The command id the host last set.
    pub host_cmd: u32,
    /// The command id the guest last sent, if it sent any.
    pub guest_cmd: Option<u32>,
}

/// The balloon's own state in a snapshot: what the guest can observe beyond the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonState {
    /// `num_pages` in the configuration space: the target, in 4 KiB pages.
    pub target_pages: u32,
    /// `actual`, as the driver last wrote it.
    pub actual_pages: u32,
    /// The statistics polling interval in milliseconds (0: not polling).
    pub stats_interval_ms: u64,
    /// Head of the statistics buffer the device held (the driver's buffer, given back at
    /// the next poll), if any.
    pub held_stats_head: Option<u16>,
    /// Free page hinting's state, for a device that offers it (absent in snapshots from
    /// before Vireo had hinting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hinting: Option<HintingState>,
}

fn mib_to_pages(mib: u64) -> Result<u32, BalloonError> {
    mib.checked_mul(PAGES_PER_MIB)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or(BalloonError::TargetTooLarge(mib))
}

/// The virtio memory balloon.
pub struct Balloon {
    shared: Arc<Shared>,
    features: u64,
    queue_sizes: Vec<u16>,
    worker: Option<WorkerThread<BalloonWorker>>,
    name: String,
    /// From a restored snapshot: the statistics buffer the next worker holds again.
    restored_held_stats: Option<u16>,
    /// From a restored snapshot: tell the driver, once started again, that the hinting
    /// command id is DONE.
    restored_hinting: bool,
}

impl Balloon {
    /// A balloon built from the user's configuration; `name` names its worker thread.
    /// Returns the device (for the transport) and its control handle (for the VMM's API).
    pub fn new(
        cfg: &api::BalloonConfig,
        name: &str,
    ) -> Result<(Balloon, BalloonHandle), BalloonError> {
        let target = mib_to_pages(cfg.amount_mib)?;
        let mut avail = features::COMMON;
        let mut queue_sizes = vec![QUEUE_SIZE, QUEUE_SIZE];
        let stats_offered = cfg.stats_interval_s > 0;
        if stats_offered {
            avail |= feature_bits::STATS_VQ;
            queue_sizes.push(QUEUE_SIZE);
        }
        if cfg.deflate_on_oom {
            avail |= feature_bits::DEFLATE_ON_OOM;
        }
        // Queue order (virtio 1.2, 5.5.2): statistics, hinting, reporting.
        if cfg.free_page_hinting {
            avail |= feature_bits::FREE_PAGE_HINT;
            queue_sizes.push(QUEUE_SIZE);
        }
        if cfg.free_page_reporting {
            avail |= feature_bits::REPORTING;
            queue_sizes.push(QUEUE_SIZE);
        }
        let shared = Arc::new(Shared {
            target_pages: AtomicU32::new(target),
            actual_pages: AtomicU32::new(0),
            stats: Mutex::new(None),
            stats_interval_ms: AtomicU64::new(cfg.stats_interval_s.saturating_mul(1000)),
            stats_offered,
            interrupt: Mutex::new(None),
            control: EventFd::new(EFD_NONBLOCK).map_err(BalloonError::EventFd)?,
            warned_ignored: AtomicBool::new(false),
            held_stats_at_snapshot: Mutex::new(None),
            hinting_offered: cfg.free_page_hinting,
            hinting: Mutex::new(HintingState::default()),
            hint_cmd_id: AtomicU32::new(hint_cmd::STOP),
            counters: Counters::default(),
            metrics: Arc::default(),
        });
        let handle = BalloonHandle {
            shared: shared.clone(),
        };
        let dev = Balloon {
            shared,
            features: avail,
            queue_sizes,
            worker: None,
            name: name.to_string(),
            restored_held_stats: None,
            restored_hinting: false,
        };
        Ok((dev, handle))
    }

    /// A control handle (the same state as the one [`Balloon::new`] returned).
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle {
            shared: self.shared.clone(),
        }
    }

    /// Whether the worker is running.
    pub fn is_running(&self) -> bool {
        self.worker.is_some()
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        let target = self.shared.target_pages.load(Ordering::SeqCst);
        let actual = self.shared.actual_pages.load(Ordering::SeqCst);
        c[0..4].copy_from_slice(&target.to_le_bytes());
        c[4..8].copy_from_slice(&actual.to_le_bytes());
        let cmd = self.shared.hint_cmd_id.load(Ordering::SeqCst);
        c[HINT_CMD_OFFSET..HINT_CMD_OFFSET + 4].copy_from_slice(&cmd.to_le_bytes());
        c
    }

    /// As Firecracker does for a restored device: DONE, so that whatever run was going on
    /// ends and the guest takes back the pages it hinted.
    fn end_restored_hinting(&self, interrupt: &dyn Interrupt) {
        {
            let mut hinting = self.shared.hinting();
            self.shared.set_host_cmd(&mut hinting, hint_cmd::DONE);
        }
        if let Err(e) = interrupt.signal_config_change() {
            log::warn!(
                "{}: cannot tell the driver that hinting is DONE: {e}",
                self.name
            );
        }
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        *self.shared.interrupt() = None;
    }
}

impl Balloon {
    fn start(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_worker();
        let acked = ctx.acked_features & self.features;
        let layout = QueueLayout::new(acked);
        for index in layout.indices() {
            if !ctx.queues.get(index).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(index));
            }
        }
        let mut worker =
            BalloonWorker::new(&self.handle(), acked).map_err(ActivateError::Worker)?;
        if let Some(head) = self.restored_held_stats.take() {
            let size = layout
                .stats()
                .and_then(|i| ctx.queues.get(i))
                .map(|q| q.size());
            match size {
                Some(size) if head < size => worker.hold_stats_buffer(head),
                _ => log::warn!(
                    "{}: the snapshot's statistics buffer {head} does not fit the statistics queue; dropped",
                    self.name
                ),
            }
        }
        *self.shared.interrupt() = Some(ctx.interrupt.clone());
        let interrupt = ctx.interrupt.clone();
        match WorkerThread::spawn(&self.name, worker, ctx) {
            Ok(t) => {
                self.worker = Some(t);
                if std::mem::take(&mut self.restored_hinting) {
                    self.end_restored_hinting(interrupt.as_ref());
                }
                Ok(())
            }
            Err(e) => {
                *self.shared.interrupt() = None;
                Err(ActivateError::Worker(e))
            }
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// Only `actual` (bytes 4..8) is writable; a partial write updates its bytes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self
            .shared
            .actual_pages
            .load(Ordering::SeqCst)
            .to_le_bytes();
        let mut touched = false;
        for (i, b) in data.iter().enumerate() {
            let Some(pos) = offset.checked_add(i as u64) else {
                break;
            };
            if let Some(byte) = pos
                .checked_sub(ACTUAL_OFFSET)
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| actual.get_mut(p))
            {
                *byte = *b;
                touched = true;
            }
        }
        if touched {
            self.shared
                .actual_pages
                .store(u32::from_le_bytes(actual), Ordering::SeqCst);
        } else {
            log::debug!(
                "{}: driver write to read-only config offset {offset:#x} ignored",
                self.name
            );
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let metrics = self.shared.metrics.clone();
        self.start(ctx)
            .inspect_err(|_| metrics.activate_fails.inc())
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

    fn snapshot_queues(
        &mut self,
    ) -> Result<Option<Vec<virtio_devices::device::QueueSnapshot>>, String> {
        // The worker records the statistics buffer it holds (prepare_snapshot).
        *self.shared.held_at_snapshot() = None;
        self.worker.as_ref().map(|w| w.snapshot()).transpose()
    }

    fn snapshot_state(&mut self) -> Result<Option<serde_json::Value>, String> {
        let held_stats_head = match self.worker {
            Some(_) => self.shared.held_at_snapshot().take(),
            None => None,
        };
        let state = BalloonState {
            target_pages: self.shared.target_pages.load(Ordering::SeqCst),
            actual_pages: self.shared.actual_pages.load(Ordering::SeqCst),
            stats_interval_ms: self.shared.stats_interval_ms.load(Ordering::SeqCst),
            held_stats_head,
            hinting: self.shared.hinting_offered.then(|| *self.shared.hinting()),
        };
        serde_json::to_value(state)
            .map(Some)
            .map_err(|e| format!("{}: {e}", self.name()))
    }

    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let name = self.name().to_string();
        // A snapshot from before the balloon kept state (its driver had not started the
        // device): the configuration's values stand.
        let Some(state) = state else {
            return Ok(());
        };
        let state: BalloonState = serde_json::from_value(state.clone())
            .map_err(|e| format!("{name}: device state refused: {e}"))?;
        if !self.shared.stats_offered
            && (state.stats_interval_ms > 0 || state.held_stats_head.is_some())
        {
            return Err(format!(
                "{name}: the snapshot polls statistics, this device has no statistics queue"
            ));
        }
        if state.hinting.is_some() && !self.shared.hinting_offered {
            return Err(format!(
                "{name}: the snapshot has free page hinting, this device does not offer it"
            ));
        }
        self.shared
            .target_pages
            .store(state.target_pages, Ordering::SeqCst);
        self.shared
            .actual_pages
            .store(state.actual_pages, Ordering::SeqCst);
        self.shared
            .stats_interval_ms
            .store(state.stats_interval_ms, Ordering::SeqCst);
        self.restored_held_stats = state.held_stats_head;
        if self.shared.hinting_offered {
            let restored = state.hinting.unwrap_or_default();
            let mut hinting = self.shared.hinting();
            *hinting = restored;
            self.shared.set_host_cmd(&mut hinting, restored.host_cmd);
            // Ended with DONE when the device runs again (`start`).
            self.restored_hinting = true;
        }
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.restored_held_stats = None;
        self.restored_hinting = false;
        self.stop_worker();
        // A reset driver's balloon is empty, and it holds no hinted pages.
        self.shared.actual_pages.store(0, Ordering::SeqCst);
        let mut hinting = self.shared.hinting();
        *hinting = HintingState::default();
        self.shared.set_host_cmd(&mut hinting, hint_cmd::STOP);
        true
    }

    fn name(&self) -> &str {
        "virtio-balloon"
    }
}

/// The VMM's control over a balloon; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct BalloonHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BalloonHandle {
    /// Ask the guest to hold `mib` MiB in its balloon. The driver is told at once if the
    /// device is running, otherwise it reads the target when it starts.
    pub fn set_target_mib(&self, mib: u64) -> Result<(), BalloonError> {
        let pages = mib_to_pages(mib)?;
        self.shared.target_pages.store(pages, Ordering::SeqCst);
        let irq = self.shared.interrupt().clone();
        if let Some(irq) = irq {
            irq.signal_config_change().map_err(BalloonError::Notify)?;
        }
        Ok(())
    }

    /// The target, in MiB.
    pub fn target_mib(&self) -> u64 {
        self.target_pages() / PAGES_PER_MIB
    }

    /// The target, in 4 KiB pages.
    pub fn target_pages(&self) -> u64 {
        u64::from(self.shared.target_pages.load(Ordering::SeqCst))
    }

    /// What the guest says its balloon holds, in MiB (rounded down).
    pub fn actual_mib(&self) -> u64 {
        self.actual_pages() / PAGES_PER_MIB
    }

    /// What the guest says its balloon holds, in 4 KiB pages.
    pub fn actual_pages(&self) -> u64 {
        u64::from(self.shared.actual_pages.load(Ordering::SeqCst))
    }

    /// The last statistics the guest sent, if any.
    pub fn statistics(&self) -> Option<BalloonStats> {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the device offers the statistics queue (created with a non-zero interval).
    pub fn stats_enabled(&self) -> bool {
        self.shared.stats_offered
    }

    /// The statistics polling interval, in seconds (0: not polling).
    pub fn stats_interval_s(&self) -> u64 {
        self.shared.stats_interval().as_secs()
    }

    /// Poll the guest's statistics every `seconds` (0 pauses polling). The statistics
    /// queue exists only if the device was created with a non-zero interval, so enabling
    /// polling on a device without it is an error.
    pub fn set_stats_interval(&self, seconds: u64) -> Result<(), BalloonError> {
        if seconds > 0 && !self.shared.stats_offered {
            return Err(BalloonError::StatsDisabled);
        }
        self.set_stats_interval_ms(seconds.saturating_mul(1000))
    }

    /// Same as [`BalloonHandle::set_stats_interval`] in milliseconds (tests use short
    /// intervals).
    pub(crate) fn set_stats_interval_ms(&self, ms: u64) -> Result<(), BalloonError> {
        self.shared.stats_interval_ms.store(ms, Ordering::SeqCst);
        self.shared.control.write(1).map_err(BalloonError::EventFd)
    }

    /// Whether the device offers free page hinting.
    pub fn hinting_enabled(&self) -> bool {
        self.shared.hinting_offered
    }

    /// Start a free page hinting run: a new command id (2 and up, never STOP or DONE)
    /// for the driver, which then hints its free pages and the worker discards them.
    /// With `acknowledge_on_stop` the worker sets DONE as soon as the guest ends the run,
    /// otherwise the guest keeps the hinted pages until [`BalloonHandle::stop_hinting`].
    /// Returns the run's id. The device must be running (its driver started it).
    pub fn start_hinting(&self, acknowledge_on_stop: bool) -> Result<u32, BalloonError> {
        self.set_hint_cmd(|state| {
            let mut id = state.last_run_id.wrapping_add(1);
            if id < hint_cmd::FIRST_RUN {
                id = hint_cmd::FIRST_RUN;
            }
            state.last_run_id = id;
            state.acknowledge_on_stop = acknowledge_on_stop;
            id
        })
    }

    /// End the hinting run: DONE, the guest may use the hinted pages again. The device
    /// must be running.
    pub fn stop_hinting(&self) -> Result<(), BalloonError> {
        self.set_hint_cmd(|_| hint_cmd::DONE).map(|_| ())
    }

    /// Set the command id `next` gives and tell the driver.
    fn set_hint_cmd(
        &self,
        next: impl FnOnce(&mut HintingState) -> u32,
    ) -> Result<u32, BalloonError> {
        if !self.shared.hinting_offered {
            return Err(BalloonError::HintingDisabled);
        }
        let irq = self.shared.interrupt().clone();
        let Some(irq) = irq else {
            return Err(BalloonError::NotActive);
        };
        let cmd = {
            // Waits for a hint being discarded: DONE reaches the driver after it.
            let mut state = self.shared.hinting();
            let cmd = next(&mut state);
            self.shared.set_host_cmd(&mut state, cmd);
            cmd
        };
        irq.signal_config_change().map_err(BalloonError::Notify)?;
        Ok(cmd)
    }

    /// The last command id the host set and the last one the guest sent.
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !self.shared.hinting_offered {
            return Err(BalloonError::HintingDisabled);
        }
        let state = self.shared.hinting();
        Ok(HintingStatus {
            host_cmd: state.host_cmd,
            guest_cmd: state.guest_cmd,
        })
    }

    /// Its counters in Firecracker's `balloon` group.
    pub fn metrics(&self) -> Arc<crate::metrics::BalloonMetrics> {
        self.shared.metrics.clone()
    }

    /// What the balloon has done so far.
    pub fn counters(&self) -> BalloonCounters {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BalloonCounters {
            inflated_pages: l(&c.inflated_pages),
            deflated_pages: l(&c.deflated_pages),
            released_bytes: l(&c.released_bytes),
            hinted_bytes: l(&c.hinted_bytes),
            stale_hints: l(&c.stale_hints),
            madvise_calls: l(&c.madvise_calls),
            ignored: l(&c.ignored),
            stats_updates: l(&c.stats_updates),
        }
    }
}

impl std::fmt::Debug for BalloonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonHandle")
            .field("target_pages", &self.target_pages())
            .field("actual_pages", &self.actual_pages())
            .field("stats_interval_s", &self.stats_interval_s())
            .finish()
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
