//! Vireo's virtio devices and their transports.
//!
//! - [`device`]: the contract a device model implements ([`device::VirtioDevice`] for
//!   the register side, [`device::DeviceWorker`] for serving queues) and helpers for
//!   serving them.
//! - [`worker`]: the thread that runs an activated device's worker.
//! - [`mmio`]: the virtio-mmio transport (version 2).
//! - [`rng`]: the entropy device.
//! - [`metrics`]: device counters and the group macro.
//! - `testing` (feature `test-utils`): guest memory, a counting interrupt and an MMIO
//!   driver for device tests.
//!
//! Devices never touch KVM; the VMM wires the transport's eventfds to KVM.

pub mod device;
pub mod metrics;
pub mod mmio;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod worker;
