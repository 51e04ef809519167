//! The block device (virtio-blk) as a vhost-user backend: [`BlkServed`].
//!
//! The disk is opened once, when the backend is made, so a bad path or image is reported
//! before any frontend connects. Its [`BlockWorker`] is lent to the adapter while the
//! frontend runs the queue and taken back (after the requests in flight finish) when it
//! stops the ring or resets the device, so the image stays open across guest reboots.
//! Features and configuration space are the ones `vireo run --disk` offers
//! ([`block::device::device_features`], [`block::device::config_space`]); the
//! configuration space is read-only (Vireo offers no writeback toggle), so writes to it
//! are ignored.

use std::io;
use std::sync::{Mutex, MutexGuard};

use block::{BlockError, BlockWorker};
use virtio_devices::device::features;

use crate::served::Served;

/// A disk image served as a vhost-user-blk backend.
pub struct BlkServed {
    config: api::DiskConfig,
    features: u64,
    capacity: u64,
    /// The worker while no frontend runs the queue.
    idle: Mutex<Option<BlockWorker>>,
}

impl BlkServed {
    /// Open the disk described by `config` (its path, format, read-only flag, serial,
    /// rate limits and I/O engine).
    pub fn new(config: &api::DiskConfig) -> Result<Self, BlockError> {
        let worker = BlockWorker::new(config)?;
        Ok(Self {
            config: config.clone(),
            features: block::device::device_features(worker.readonly()),
            capacity: worker.capacity_sectors(),
            idle: Mutex::new(Some(worker)),
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Whether the guest may only read.
    pub fn readonly(&self) -> bool {
        self.config.readonly
    }

    fn idle(&self) -> MutexGuard<'_, Option<BlockWorker>> {
        // An Option cannot be left half-updated; a panic elsewhere does not poison it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Served for BlkServed {
    type Worker = BlockWorker;

    fn name(&self) -> &str {
        "vhost-user-blk"
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> u16 {
        block::QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config(&self) -> Vec<u8> {
        block::device::config_space(self.capacity).to_vec()
    }

    fn new_worker(&self, acked_features: u64) -> io::Result<BlockWorker> {
        if acked_features & features::VERSION_1 == 0 {
            log::warn!("vhost-user-blk: the driver did not accept VIRTIO_F_VERSION_1");
        }
        if let Some(worker) = self.idle().take() {
            return Ok(worker);
        }
        // Only if a worker was lost (it never is by the adapter): open the disk again.
        log::info!("vhost-user-blk: reopening {}", self.config.path.display());
        BlockWorker::new(&self.config).map_err(io::Error::other)
    }

    fn recycle(&self, mut worker: BlockWorker) {
        worker.quiesce();
        *self.idle() = Some(worker);
    }
}
