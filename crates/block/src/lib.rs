//! virtio-blk (virtio 1.2, section 5.2) over raw and qcow2 disk images.
//!
//! - [`request`]: parsing a request from a descriptor chain (pure, fuzzable).
//! - [`disk`]: opening images (raw files and block devices; qcow2 with backing files
//!   through imago) and the synchronous I/O paths.
//! - `uring`: the io_uring engine for raw images (several requests in flight).
//! - [`worker`]: [`BlockWorker`], the [`virtio_devices::device::DeviceWorker`] that
//!   serves the request queue, with rate limiting.
//! - [`metrics`]: the disk's counters (Firecracker's `block` group).
//! - [`device`]: [`Block`], the [`virtio_devices::device::VirtioDevice`] (features,
//!   configuration space, activation, reset).
//!
//! The VMM builds a [`Block`] from an [`api::DiskConfig`] with [`Block::new`] and hands
//! it to a transport; everything else follows from the transport's calls.
//!
//! ```no_run
//! let cfg: api::DiskConfig = "path=/var/lib/vireo/root.img".parse().unwrap();
//! let disk = block::Block::new(&cfg, "blk0").expect("open disk");
//! assert!(disk.capacity_sectors() > 0);
//! ```

pub mod device;
pub mod disk;
pub mod metrics;
pub mod request;
mod uring;
pub mod worker;

pub use device::{Block, CONFIG_SIZE, QUEUE_SIZE, SEG_MAX};
pub use disk::BlockError;
pub use metrics::{BlockMetrics, BlockValues};
pub use request::{Request, RequestError, RequestKind, parse_request};
pub use worker::{BlockWorker, Engine, OpenedDisk};

/// Whether io_uring can be set up on this host (what `io=auto` picks).
pub fn io_uring_available() -> bool {
    uring::Uring::probe().is_ok()
}

#[cfg(test)]
mod tests;
