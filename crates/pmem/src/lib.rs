//! virtio-pmem (virtio 1.2, section 5.19) for Vireo: a host file mapped into the
//! guest's physical address space, which Linux's `virtio_pmem` driver presents as an
//! NVDIMM region (`/dev/pmemN`, with DAX: loads and stores go straight to the host's
//! page cache), and a request queue on which the guest asks for its writes to be made
//! durable (a flush: the device `msync`s the file).
//!
//! - [`backing`]: [`Backing`], the file opened and mapped (rounded up to 2 MiB,
//!   read-only or shared read-write).
//! - [`device`]: [`Pmem`], the [`virtio_devices::device::VirtioDevice`] the transport
//!   drives: type 27, one queue, the configuration space (`start`, `size`).
//! - [`worker`]: [`worker::PmemWorker`], which serves the flushes on the device's
//!   worker thread, through Firecracker's rate limiter.
//!
//! The VMM places the region (a 2 MiB aligned guest physical address above RAM) and
//! gives KVM the mapping as a memory slot of its own (read-only for a read-only
//! device); nothing here touches KVM.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let backing = Arc::new(pmem::Backing::open("rootfs.img".as_ref(), true)?);
//! // The VMM maps backing.host_addr()..+backing.len() at 4 GiB in the guest, then:
//! let device = pmem::Pmem::new("pmem0", backing, 4 << 30, &api::RateLimit::default())?;
//! # drop(device);
//! # Ok(())
//! # }
//! ```

pub mod backing;
pub mod device;
pub mod metrics;
pub mod worker;

pub use backing::{ALIGNMENT, Backing, BackingError};
pub use device::{CONFIG_SIZE, Pmem, PmemError, PmemState, QUEUE_SIZE};
pub use metrics::{PmemMetrics, PmemValues};
