//! Vireo's virtio device models served as vhost-user backends.
//!
//! A vhost-user frontend (QEMU, Cloud Hypervisor, crosvm) owns the guest and its virtio
//! transport; it shares guest memory with this process and hands over each virtqueue
//! (addresses, a kick eventfd, a call eventfd). The device models' [`DeviceWorker`]s, the
//! same ones `vireo run` uses, then serve the queues here.
//!
//! - [`served`]: the [`Served`] trait a device implements to be served, and the entropy
//!   device's implementation.
//! - [`blk`]: [`BlkServed`], a disk image (raw or qcow2) as vhost-user-blk.
//! - [`net`]: [`NetServed`], a host TAP device as vhost-user-net.
//! - [`vsock`]: [`VsockServed`], virtio-vsock with Vireo's Unix-socket host side.
//! - [`adapter`]: [`VhostUserDevice`], the generic `VhostUserBackend` over any [`Served`].
//! - [`daemon`]: [`serve`], which listens on a Unix socket and serves one frontend.
//!
//! [`DeviceWorker`]: virtio_devices::device::DeviceWorker

pub mod adapter;
pub mod blk;
pub mod daemon;
pub mod net;
pub mod relay;
pub mod served;
pub mod vsock;

pub use adapter::{AdapterError, VhostUserDevice};
pub use blk::BlkServed;
pub use daemon::{ServeError, Server, serve};
pub use net::NetServed;
pub use served::{RngServed, Served};
pub use vsock::VsockServed;
