//! The virtio-blk device as its transport sees it: features, configuration space,
//! activation on a [`WorkerThread`] and reset (which takes the disk back so the driver
//! can start again).
//!
//! The VMM may change a disk while the VM runs ([`Block::replace_disk`],
//! [`Block::set_rate_limit`]): the change is made on the worker thread, between two
//! events, and a new capacity reaches the driver through a configuration-change
//! interrupt (Linux then reads the capacity again and resizes the disk).

use std::path::Path;
use std::sync::Arc;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

use virtio_devices::device::{
    ActivateContext, ActivateError, Interrupt, VirtioDevice, device_type, features,
    read_config_bytes,
};
use virtio_devices::worker::WorkerThread;
use virtio_queue::QueueT;

use crate::disk::BlockError;
use crate::metrics::BlockMetrics;
use crate::request::{MAX_DWZ_SECTORS, MAX_DWZ_SEGMENTS, SECTOR_SIZE};
use crate::worker::{BlockWorker, Engine, OpenedDisk};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data buffers per request the driver may use (`seg_max`): the queue less the header
/// and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes of configuration space (`struct virtio_blk_config` up to
/// `write_zeroes_may_unmap` and its padding).
pub const CONFIG_SIZE: usize = 60;
/// Discard granularity in sectors (`discard_sector_alignment`): 4 KiB, the host file
/// systems' block.
pub const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

/// Offsets in the configuration space.
pub mod config_offset {
    /// `capacity` (le64, 512-byte sectors).
    pub const CAPACITY: usize = 0;
    /// `seg_max` (le32).
    pub const SEG_MAX: usize = 12;
    /// `blk_size` (le32).
    pub const BLK_SIZE: usize = 20;
    /// `max_discard_sectors` (le32).
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// `max_discard_seg` (le32).
    pub const MAX_DISCARD_SEG: usize = 40;
    /// `discard_sector_alignment` (le32).
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// `max_write_zeroes_sectors` (le32).
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// `max_write_zeroes_seg` (le32).
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// `write_zeroes_may_unmap` (u8).
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// A virtio-blk disk.
pub struct Block {
    name: String,
    features: u64,
    config: [u8; CONFIG_SIZE],
    capacity: u64,
    readonly: bool,
    engine: Engine,
    /// The worker while the device is not running.
    idle: Option<BlockWorker>,
    running: Option<WorkerThread<BlockWorker>>,
    /// The interrupt line while running, for configuration changes.
    interrupt: Option<Arc<dyn Interrupt>>,
    metrics: Arc<BlockMetrics>,
}

impl Block {
    /// Open the disk of `cfg`; `name` names the worker thread.
    pub fn new(cfg: &api::DiskConfig, name: &str) -> Result<Self, BlockError> {
        Ok(Self::from_worker(BlockWorker::new(cfg)?, name))
    }

    /// A device around an already opened worker.
    pub fn from_worker(worker: BlockWorker, name: &str) -> Self {
        let capacity = worker.capacity_sectors();
        let metrics = worker.metrics().clone();
        Self {
            name: name.to_string(),
            features: device_features(worker.readonly()),
            config: config_space(capacity),
            capacity,
            readonly: worker.readonly(),
            engine: worker.engine(),
            idle: Some(worker),
            running: None,
            interrupt: None,
            metrics,
        }
    }

    /// The disk's counters.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    fn start(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if !ctx.queues.first().is_some_and(|q| q.ready()) {
            return Err(ActivateError::QueueNotReady(0));
        }
        let Some(worker) = self.idle.take() else {
            return Err(ActivateError::Backend(
                "the disk is lost (an earlier start failed)".into(),
            ));
        };
        let interrupt = ctx.interrupt.clone();
        let thread = WorkerThread::spawn(&self.name, worker, ctx).map_err(ActivateError::Worker)?;
        self.running = Some(thread);
        self.interrupt = Some(interrupt);
        Ok(())
    }

    /// Serve the guest from the image at `path` (a `format` image) from now on, opened
    /// read-only if the disk is (a read-only disk stays read-only). Returns the new
    /// capacity in sectors.
    ///
    /// The image is opened first: if that fails, the disk keeps its image and nothing
    /// changed. On a running device the worker finishes the requests in flight on the
    /// old image, then takes the new one; the configuration space gets the new capacity
    /// and the driver a configuration-change interrupt. A device not running (not yet
    /// started by the driver, or reset) just takes the new image; the driver reads the
    /// capacity when it starts it.
    pub fn replace_disk(
        &mut self,
        path: &Path,
        format: api::DiskFormat,
    ) -> Result<u64, BlockError> {
        self.metrics.update_count.inc();
        self.swap_disk(path, format)
            .inspect_err(|_| self.metrics.update_fails.inc())
    }

    fn swap_disk(&mut self, path: &Path, format: api::DiskFormat) -> Result<u64, BlockError> {
        let disk = OpenedDisk::open(path, format, self.readonly)?;
        if !disk.fits(self.engine) {
            return Err(BlockError::IoUringNeedsRaw);
        }
        let capacity = disk.capacity_sectors();
        if let Some(thread) = &self.running {
            let result = thread
                .run(move |worker, ctx| match ctx.queues.get_mut(0) {
                    Some(queue) => worker.replace_disk(disk, queue, ctx.mem, ctx.interrupt),
                    None => worker
                        .replace_idle_disk(disk)
                        .map_err(virtio_devices::device::WorkerError::new),
                })
                .ok_or_else(|| {
                    BlockError::Unavailable(format!("{}: the worker thread has ended", self.name))
                })?;
            if let Err(e) = result {
                // The swap stands; the queue will fail the worker on its next turn.
                log::warn!("{}: after the disk swap: {e}", self.name);
            }
        } else if let Some(worker) = &mut self.idle {
            worker.replace_idle_disk(disk)?;
        } else {
            return Err(BlockError::Unavailable(format!(
                "{}: the disk was lost when an earlier start failed",
                self.name
            )));
        }
        self.set_capacity(capacity);
        Ok(capacity)
    }

    /// Replace the rate limits (`None` rates are unlimited): on the running worker,
    /// where a request held back by the old limits is looked at again at once, or on
    /// the idle one.
    pub fn set_rate_limit(&mut self, limit: &api::RateLimit) -> Result<(), BlockError> {
        self.metrics.update_count.inc();
        self.apply_rate_limit(limit)
            .inspect_err(|_| self.metrics.update_fails.inc())
    }

    fn apply_rate_limit(&mut self, limit: &api::RateLimit) -> Result<(), BlockError> {
        let limit = *limit;
        let result = if let Some(thread) = &self.running {
            thread
                .run(move |worker, _| worker.set_rate_limit(&limit))
                .ok_or_else(|| {
                    BlockError::Unavailable(format!("{}: the worker thread has ended", self.name))
                })?
        } else if let Some(worker) = &mut self.idle {
            worker.set_rate_limit(&limit)
        } else {
            return Err(BlockError::Unavailable(format!(
                "{}: the disk was lost when an earlier start failed",
                self.name
            )));
        };
        result.map_err(BlockError::RateLimiter)
    }

    /// The rate limits in force (asked of the worker).
    pub fn rate_limit(&self) -> Option<api::RateLimit> {
        match (&self.running, &self.idle) {
            (Some(thread), _) => thread.run(|worker, _| worker.rate_limit()),
            (None, Some(worker)) => Some(worker.rate_limit()),
            (None, None) => None,
        }
    }

    /// A new capacity in the configuration space, told to a running driver.
    fn set_capacity(&mut self, capacity: u64) {
        use config_offset as o;
        self.capacity = capacity;
        self.config[o::CAPACITY..o::CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
        // After the configuration space changed: the driver reads it on the interrupt.
        if let Some(irq) = &self.interrupt
            && let Err(e) = irq.signal_config_change()
        {
            log::warn!("{}: cannot signal the new capacity: {e}", self.name);
        }
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Whether the worker thread is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

/// The virtio features a disk offers: the common ones, `SEG_MAX`, `BLK_SIZE`, `FLUSH`,
/// and `RO` for a read-only disk or `DISCARD` and `WRITE_ZEROES` for a writable one.
pub fn device_features(readonly: bool) -> u64 {
    let mut f = features::COMMON
        | 1 << VIRTIO_BLK_F_SEG_MAX
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_FLUSH;
    if readonly {
        f |= 1 << VIRTIO_BLK_F_RO;
    } else {
        f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    f
}

/// The configuration space for a disk of `capacity` sectors.
pub fn config_space(capacity: u64) -> [u8; CONFIG_SIZE] {
    use config_offset as o;
    let mut c = [0u8; CONFIG_SIZE];
    let mut put32 = |off: usize, v: u32| c[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put32(o::SEG_MAX, SEG_MAX);
    put32(o::BLK_SIZE, SECTOR_SIZE as u32);
    put32(o::MAX_DISCARD_SECTORS, MAX_DWZ_SECTORS);
    put32(o::MAX_DISCARD_SEG, MAX_DWZ_SEGMENTS);
    put32(o::DISCARD_SECTOR_ALIGNMENT, DISCARD_ALIGNMENT_SECTORS);
    put32(o::MAX_WRITE_ZEROES_SECTORS, MAX_DWZ_SECTORS);
    put32(o::MAX_WRITE_ZEROES_SEG, MAX_DWZ_SEGMENTS);
    c[o::CAPACITY..o::CAPACITY + 8].copy_from_slice(&capacity.to_le_bytes());
    c[o::WRITE_ZEROES_MAY_UNMAP] = 1;
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing in a virtio-blk configuration space is writable without `CONFIG_WCE`.
        log::debug!(
            "{}: configuration write at {offset} ({} bytes) ignored",
            self.name,
            data.len()
        );
        self.metrics.cfg_fails.inc();
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.start(ctx)
            .inspect_err(|_| self.metrics.activate_fails.inc())
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

    fn snapshot_queues(
        &mut self,
    ) -> Result<Option<Vec<virtio_devices::device::QueueSnapshot>>, String> {
        self.running.as_ref().map(|w| w.snapshot()).transpose()
    }

    fn reset(&mut self) -> bool {
        self.interrupt = None;
        let Some(thread) = self.running.take() else {
            return self.idle.is_some();
        };
        match thread.stop() {
            Some((mut worker, _queues)) => {
                worker.quiesce();
                self.idle = Some(worker);
                true
            }
            None => false,
        }
    }

    fn name(&self) -> &str {
        "virtio-blk"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        let c = config_space(0x1_0000_0001);
        assert_eq!(c[0..8], 0x1_0000_0001u64.to_le_bytes());
        assert_eq!(c[12..16], 254u32.to_le_bytes());
        assert_eq!(c[20..24], 512u32.to_le_bytes());
        assert_eq!(c[36..40], MAX_DWZ_SECTORS.to_le_bytes());
        assert_eq!(c[40..44], MAX_DWZ_SEGMENTS.to_le_bytes());
        assert_eq!(c[44..48], 8u32.to_le_bytes());
        assert_eq!(c[48..52], MAX_DWZ_SECTORS.to_le_bytes());
        assert_eq!(c[52..56], MAX_DWZ_SEGMENTS.to_le_bytes());
        assert_eq!(c[56], 1);
        // Geometry, topology, writeback, num_queues: zero.
        assert!(c[16..20].iter().chain(&c[24..36]).all(|b| *b == 0));
    }
}
