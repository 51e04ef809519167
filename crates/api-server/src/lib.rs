//! Vireo's control API: Firecracker's HTTP API on a Unix socket, served by one thread.
//!
//! [`start`] binds the socket and starts the `api` thread, which accepts connections
//! (several at once, each kept alive), parses each request ([`http`]), turns it into an
//! [`api::action::VmmAction`] ([`router`]), sends it to the thread that owns the VM and
//! waits for the answer. The VMM side gets an [`ApiChannel`]: a receiver of actions, a
//! sender of results and an eventfd written once per action, to put in its own epoll.
//! Nothing here touches the VM: a request that blocks is the VMM's to answer, and a vCPU
//! never waits for this thread.
//!
//! ```no_run
//! let chan = api_server::start(std::path::Path::new("/tmp/vireo.sock"), api_server::DEFAULT_PAYLOAD_LIMIT)?;
//! loop {
//!     chan.event.read()?; // readable: at least one action is waiting
//!     while let Ok(action) = chan.requests.try_recv() {
//!         let _ = chan.responses.send(Err(api::action::ActionError::NotSupportedPreBoot));
//!         let _ = action;
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod http;
pub mod router;
mod server;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};

use api::action::{ActionResult, VmmAction};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Largest request body accepted (Firecracker's default, 50 KiB).
pub const DEFAULT_PAYLOAD_LIMIT: usize = 51_200;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket path is in use by a live server or cannot be bound.
    #[error("cannot bind the API socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd, the epoll or the thread could not be created.
    #[error("cannot start the API thread: {0}")]
    Setup(#[source] std::io::Error),
}

/// The VMM's end of the API.
pub struct ApiChannel {
    /// Actions from the API thread, one at a time.
    pub requests: Receiver<VmmAction>,
    /// The answer to each action, in order.
    pub responses: Sender<ActionResult>,
    /// Written once per action sent; non-blocking.
    pub event: EventFd,
}

/// Bind `path` and serve the API on a new `api` thread. A stale socket file (nobody
/// listening) is replaced; a live one is an error.
pub fn start(path: &Path, payload_limit: usize) -> Result<ApiChannel, ServerError> {
    let listener = server::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let event = EventFd::new(EFD_NONBLOCK).map_err(ServerError::Setup)?;
    let (request_tx, requests) = channel();
    let (responses, response_rx) = channel();
    let server = server::Server::new(
        listener,
        payload_limit,
        request_tx,
        response_rx,
        event.try_clone().map_err(ServerError::Setup)?,
    )
    .map_err(ServerError::Setup)?;
    // Before the thread can log its first request: the line launchers wait for comes
    // first in the log.
    log::info!("API server started.");
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || server.run())
        .map_err(ServerError::Setup)?;
    Ok(ApiChannel {
        requests,
        responses,
        event,
    })
}
