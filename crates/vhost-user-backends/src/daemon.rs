//! Serving a device on a Unix socket: [`Server`] binds the socket, waits for one
//! frontend and serves it until it disconnects; [`serve`] does both in one call.
//!
//! One connection per server: when the frontend disconnects (QEMU exits, or closes the
//! chardev), the worker is dropped, the event loop thread ends, the socket file is
//! removed and [`Server::serve_one`] returns `Ok`. A frontend that sends a malformed
//! message is disconnected and `serve_one` returns [`ServeError::Frontend`]. To serve
//! again, bind a new server (the device state starts afresh, as after a reset).

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use virtio_devices::device::VmMemory;
use vm_memory::GuestMemoryAtomic;

use crate::adapter::{AdapterError, VhostUserDevice};
use crate::served::Served;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The device cannot be served (bad queue count or size).
    #[error(transparent)]
    Device(#[from] AdapterError),
    /// The socket path is taken by something that is not a socket.
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    PathTaken(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {reason}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The vhost-user daemon could not start (threads, epoll).
    #[error("cannot start the vhost-user daemon: {0}")]
    Daemon(String),
    /// The frontend broke the protocol; it was disconnected.
    #[error("frontend error, connection closed: {0}")]
    Frontend(String),
}

/// A device listening on a vhost-user socket.
pub struct Server<S: Served> {
    daemon: VhostUserDaemon<Arc<VhostUserDevice<S>>>,
    listener: Listener,
    device: Arc<VhostUserDevice<S>>,
    path: PathBuf,
}

impl<S: Served> Server<S> {
    /// Create the socket at `socket` (a stale socket there is replaced; any other file
    /// is not) and get `served` ready to be served on it.
    pub fn bind(socket: &Path, served: S) -> Result<Self, ServeError> {
        let device = Arc::new(VhostUserDevice::new(served)?);
        if let Ok(meta) = fs::symlink_metadata(socket)
            && !meta.file_type().is_socket()
        {
            return Err(ServeError::PathTaken(socket.to_path_buf()));
        }
        let name = device.served().name().to_string();
        let daemon = VhostUserDaemon::new(
            name,
            device.clone(),
            GuestMemoryAtomic::new(VmMemory::default()),
        )
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
        if let Some(event_loop) = daemon.get_epoll_handlers().first() {
            device.attach(event_loop);
        }
        let listener = Listener::new(socket, true).map_err(|e| ServeError::Listen {
            path: socket.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            daemon,
            listener,
            device,
            path: socket.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device being served.
    pub fn device(&self) -> &Arc<VhostUserDevice<S>> {
        &self.device
    }

    /// Wait for a frontend, serve it until it disconnects, then stop the device and
    /// remove the socket.
    pub fn serve_one(mut self) -> Result<(), ServeError> {
        let name = self.device.served().name().to_string();
        log::info!("{name}: listening on {}", self.path.display());
        let result = self
            .daemon
            .start(&mut self.listener)
            .and_then(|()| self.daemon.wait());
        for event_loop in self.daemon.get_epoll_handlers() {
            event_loop.send_exit_event();
        }
        self.device.stop();
        match result {
            Ok(()) => {
                log::info!("{name}: frontend disconnected");
                Ok(())
            }
            Err(DaemonError::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => {
                log::info!("{name}: frontend disconnected");
                Ok(())
            }
            Err(DaemonError::HandleRequest(e)) => Err(ServeError::Frontend(e.to_string())),
            Err(e) => Err(ServeError::Daemon(e.to_string())),
        }
    }
}

/// Serve `served` on a socket at `socket` until the first frontend disconnects.
pub fn serve<S: Served>(socket: &Path, served: S) -> Result<(), ServeError> {
    Server::bind(socket, served)?.serve_one()
}
