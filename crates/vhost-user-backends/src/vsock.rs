//! The socket device (virtio-vsock) as a vhost-user backend: [`VsockServed`].
//!
//! The host side is Vireo's own, as with `vireo run --vsock`: a Unix socket where host
//! processes connect and write `CONNECT <port>\n` to reach a guest port, and
//! `<socket>_<port>` sockets for guest connections to the host (CID 2). The socket is
//! bound when the backend is made (host connections queue until the guest driver
//! starts); the [`VsockWorker`] that owns it is lent to the adapter while the frontend
//! runs the queues and taken back, with every connection dropped (as on a device
//! reset), when the frontend stops a ring or resets the device. Features and the
//! configuration space (the guest CID, read-only) are those of [`vsock::Vsock`].
//!
//! This is Vireo's vsock device model behind vhost-user, not the `vhost-user-vsock`
//! daemon's hybrid-vsock protocol; it speaks the same host-side protocol, though.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use vsock::device::{self as vsockdev, VsockError, VsockWorker};

use crate::served::Served;

/// A virtio-vsock device served as a vhost-user backend (rx, tx and event queues).
pub struct VsockServed {
    cid: u64,
    socket: PathBuf,
    /// The worker (and its bound host socket) while no frontend runs the queues.
    idle: Mutex<Option<VsockWorker>>,
}

impl VsockServed {
    /// Check the guest CID of `config` and bind its host socket.
    pub fn new(config: &api::VsockConfig) -> Result<Self, VsockError> {
        let cid = vsockdev::check_cid(config.cid)?;
        let worker = VsockWorker::bind(cid, &config.socket)?;
        Ok(Self {
            cid,
            socket: config.socket.clone(),
            idle: Mutex::new(Some(worker)),
        })
    }

    /// The guest's context id.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host-side Unix socket.
    pub fn host_socket(&self) -> &Path {
        &self.socket
    }

    fn idle(&self) -> MutexGuard<'_, Option<VsockWorker>> {
        // An Option cannot be left half-updated; a panic elsewhere does not poison it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Served for VsockServed {
    type Worker = VsockWorker;

    fn name(&self) -> &str {
        "vhost-user-vsock"
    }

    fn num_queues(&self) -> usize {
        3
    }

    fn max_queue_size(&self) -> u16 {
        vsockdev::QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        vsockdev::OFFERED_FEATURES
    }

    fn config(&self) -> Vec<u8> {
        vsockdev::config_space(self.cid).to_vec()
    }

    fn new_worker(&self, _acked_features: u64) -> io::Result<VsockWorker> {
        if let Some(worker) = self.idle().take() {
            return Ok(worker);
        }
        // Only if a worker was lost (it never is by the adapter): bind the socket again.
        VsockWorker::bind(self.cid, &self.socket).map_err(io::Error::other)
    }

    fn recycle(&self, mut worker: VsockWorker) {
        worker.reset();
        *self.idle() = Some(worker);
    }
}
