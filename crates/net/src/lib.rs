//! virtio-net (virtio 1.2, section 5.1) on a host TAP device.
//!
//! - [`tap`]: our own `/dev/net/tun` wrapper ([`Tap`]): create or attach a TAP with a
//!   12-byte virtio-net header on every frame, set its offloads, read and write frames.
//! - [`backend`]: the [`NetBackend`] trait the worker does its frame I/O through, for the
//!   TAP and for a datagram socket pair ([`SocketBackend`], used by tests and benches).
//! - [`device`]: [`Net`], the register side (features, MAC and link status in the
//!   configuration space, two queues) that the transport drives.
//! - [`worker`]: [`NetWorker`], which serves the rx and tx queues on the device's worker
//!   thread (or behind vhost-user): frames between guest chains and the backend, with
//!   merged rx buffers and optional rate limits.
//!
//! Guest-controlled data never panics the VMM: malformed chains are answered (used
//! length 0) and counted in [`NetMetrics`].

pub mod backend;
pub mod device;
pub mod tap;
pub mod worker;

pub use backend::{NetBackend, SocketBackend};
pub use device::{MmdsLink, Net, NetError, NetMetrics, NetValues};
pub use tap::{Tap, TapError};
pub use worker::NetWorker;

/// Size of the header before every frame on both queues and on the TAP:
/// `struct virtio_net_hdr_v1` (virtio 1.x always has `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame (after the header) the device moves: 64 KiB of TSO payload and headers
/// plus an Ethernet header.
pub const MAX_FRAME_LEN: usize = 65536 + 14;
/// Largest header-plus-frame buffer.
pub const MAX_BUFFER_LEN: usize = NET_HDR_LEN + MAX_FRAME_LEN;
