//! Vireo's virtio-vsock device, with the host side on Unix sockets as Firecracker does
//! it (tools such as firecracker-containerd rely on this scheme).
//!
//! - Host to guest: a host process connects to the device's socket and writes
//!   `CONNECT <port>\n`; once the guest accepts on that port the process reads
//!   `OK <local port>\n` and the stream is relayed both ways. If nothing listens in the
//!   guest the host connection is closed.
//! - Guest to host: a guest connection to CID 2, port P, is relayed to the Unix socket
//!   `<socket>_P`; the guest gets a reset if nothing listens there.
//!
//! Modules:
//! - [`device`]: [`Vsock`] (the [`virtio_devices::device::VirtioDevice`] the transport
//!   carries) and [`VsockWorker`] (serves the queues on a worker thread).
//! - [`muxer`]: the listening socket, the connections, one inner epoll set.
//! - [`connection`]: one stream's state machine, buffers and credit.
//! - [`packet`]: the packet header and reading/writing packets in guest memory.
//! - [`unix`]: binding, non-blocking connect, `SIGPIPE`-free sends.
//!
//! ```no_run
//! use virtio_devices::device::VirtioDevice;
//! let cfg: api::VsockConfig = "cid=3,socket=/run/vireo/v.sock".parse().unwrap();
//! let dev = vsock::Vsock::new(&cfg, "vsock0").unwrap();
//! assert_eq!(dev.device_type(), 19);
//! // Hand `dev` to the transport (for example `MmioTransport::new(Box::new(dev), mem)`).
//! ```

pub mod connection;
pub mod device;
pub mod metrics;
pub mod muxer;
pub mod packet;
pub mod unix;

#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockError, VsockWorker};
pub use metrics::{VsockMetrics, VsockValues};
