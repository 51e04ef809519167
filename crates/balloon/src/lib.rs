//! The virtio memory balloon (virtio 1.2, section 5.5) for Vireo.
//!
//! The guest gives pages to the balloon (inflate) and the host releases the memory
//! behind them; it takes them back (deflate) when it needs them. The VMM sets the target
//! size, reads the guest's statistics and starts free page hinting runs through a
//! [`BalloonHandle`]; free pages the guest reports or hints are released too.
//!
//! - [`device`]: [`Balloon`] (the [`virtio_devices::device::VirtioDevice`] the transport
//!   drives: features, queues, configuration space) and [`BalloonHandle`].
//! - [`worker`]: [`worker::BalloonWorker`], which serves the queues on the device's
//!   worker thread.
//! - [`memory`]: releasing guest pages to the host (`madvise`).
//! - [`stats`]: the guest's memory statistics.
//!
//! ```no_run
//! # fn main() -> Result<(), balloon::BalloonError> {
//! let cfg: api::BalloonConfig = "size=64,stats=5".parse().expect("valid option");
//! let (device, handle) = balloon::Balloon::new(&cfg, "balloon0")?;
//! // The transport takes `device`; the VMM's API keeps `handle`.
//! handle.set_target_mib(128)?;
//! println!("guest holds {} MiB", handle.actual_mib());
//! # drop(device);
//! # Ok(())
//! # }
//! ```

pub mod device;
pub mod memory;
pub mod metrics;
pub mod stats;
pub mod worker;

pub use device::{
    Balloon, BalloonCounters, BalloonError, BalloonHandle, BalloonState, HintingState,
    HintingStatus,
};
pub use metrics::{BalloonMetrics, BalloonValues};
pub use stats::BalloonStats;
