//! Serving a device on a Unix socket: [`Server`] binds the socket, waits for one
//! frontend and serves it until it disconnects; [`serve`] does both in one call.
//!
//! One connection per server: when the frontend disconnects (QEMU exits, or closes the
//! chardev), the worker is dropped, the event loop thread ends, the socket file is
//! removed and [`Server::serve_one`] returns `Ok`. A frontend that sends a malformed
//! message is disconnected and `serve_one` returns [`ServeError::Frontend`]. To serve
//! again, bind a new server (the device state starts afresh, as after a reset).

use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;

use crate::adapter::{AdapterError, VhostUserDevice};
use crate::relay;
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
///
/// The frontend connects to the socket at `path`; its messages reach the daemon through
/// [`crate::relay`] (which fixes the order of one request QEMU sends early), over a
/// private socket the daemon listens on.
pub struct Server<S: Served> {
    daemon: VhostUserDaemon<Arc<VhostUserDevice<S>>>,
    frontend_listener: UnixListener,
    daemon_listener: Listener,
    daemon_path: PathBuf,
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
            GuestMemoryAtomic::new(crate::adapter::VhostMemory::default()),
        )
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
        if let Some(event_loop) = daemon.get_epoll_handlers().first() {
            device.attach(event_loop);
        }
        let listen_err = |path: &Path, e: &dyn std::fmt::Display| ServeError::Listen {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // A stale socket (checked above to be a socket) is replaced.
        let _ = fs::remove_file(socket);
        let frontend_listener = UnixListener::bind(socket).map_err(|e| listen_err(socket, &e))?;
        // The daemon's side: a socket in a private directory, connected to at once and
        // removed (see serve_one), so nothing else can reach the daemon.
        let daemon_path = match private_dir() {
            Ok(dir) => dir.join("daemon.sock"),
            Err(e) => {
                let _ = fs::remove_file(socket);
                return Err(listen_err(&std::env::temp_dir(), &e));
            }
        };
        let daemon_listener = match Listener::new(&daemon_path, true) {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_file(socket);
                remove_private(&daemon_path);
                return Err(listen_err(&daemon_path, &e));
            }
        };
        Ok(Self {
            daemon,
            frontend_listener,
            daemon_listener,
            daemon_path,
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
        // The relay's connection to the daemon waits in the listen backlog until the
        // daemon accepts it; then the private socket goes away.
        let daemon_side = UnixStream::connect(&self.daemon_path);
        let started = match &daemon_side {
            Ok(_) => self.daemon.start(&mut self.daemon_listener),
            Err(_) => Ok(()),
        };
        remove_private(&self.daemon_path);
        let daemon_side = daemon_side.map_err(|e| ServeError::Daemon(format!("relay: {e}")))?;
        started.map_err(|e| ServeError::Daemon(e.to_string()))?;
        let frontend = self.frontend_listener.accept().map(|(f, _)| f);
        let frontend = frontend.map_err(|e| ServeError::Listen {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        relay::spawn(frontend, daemon_side).map_err(|e| ServeError::Daemon(e.to_string()))?;
        let result = self.daemon.wait();
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

impl<S: Served> Drop for Server<S> {
    /// The sockets go with the server, served or not.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        remove_private(&self.daemon_path);
    }
}

/// A new directory only this user can enter, under the temporary directory.
fn private_dir() -> std::io::Result<PathBuf> {
    let template = std::env::temp_dir().join("vireo-vhost-user-XXXXXX");
    let mut bytes = std::ffi::CString::new(template.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?
        .into_bytes_with_nul();
    // SAFETY: `bytes` is a NUL-terminated template ending in XXXXXX, writable and alive
    // for the call; mkdtemp only rewrites the Xs.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// Remove the private socket and its directory.
fn remove_private(socket: &Path) {
    let _ = fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        let _ = fs::remove_dir(dir);
    }
}

/// Serve `served` on a socket at `socket` until the first frontend disconnects.
pub fn serve<S: Served>(socket: &Path, served: S) -> Result<(), ServeError> {
    Server::bind(socket, served)?.serve_one()
}
