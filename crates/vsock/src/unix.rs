//! The host side's Unix sockets: the listening socket at the configured path (bound
//! once, refused when another process serves it, removed when the device goes), the
//! non-blocking connect used for guest-initiated connections, and sends that never raise
//! `SIGPIPE`.
//!
//! Nothing here blocks: the device's worker thread serves every connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the host socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    /// Another process accepts connections on the path.
    #[error("{0}: the socket is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket: it is not ours to remove.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// A stale socket file could not be removed.
    #[error("{0}: cannot remove the stale socket: {1}")]
    RemoveStale(PathBuf, #[source] io::Error),
    /// bind(2) or listen(2) failed.
    #[error("{0}: cannot bind: {1}")]
    Bind(PathBuf, #[source] io::Error),
}

/// The listening Unix socket of a vsock device. Dropping it removes the socket file, if
/// the file is still the one it bound.
#[derive(Debug)]
pub struct HostListener {
    listener: UnixListener,
    path: PathBuf,
    file_id: Option<(u64, u64)>,
}

impl HostListener {
    /// Bind `path`, non-blocking. A socket file nobody listens on is removed first; a
    /// live one, or a file that is not a socket, is refused.
    pub fn bind(path: &Path) -> Result<Self, UnixError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(UnixError::NotASocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(UnixError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    match std::fs::remove_file(path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(UnixError::RemoveStale(path.to_path_buf(), e));
                        }
                        _ => {}
                    }
                }
                Err(e) => return Err(UnixError::Bind(path.to_path_buf(), e)),
            }
        }
        let listener =
            UnixListener::bind(path).map_err(|e| UnixError::Bind(path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| UnixError::Bind(path.to_path_buf(), e))?;
        let file_id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            file_id,
        })
    }

    /// The path the socket is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept one pending connection, non-blocking; `Ok(None)` when none is waiting.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for HostListener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        let still_ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if still_ours.is_some() && still_ours == self.file_id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Connect to the Unix socket at `path` without blocking: a listener whose backlog is
/// full is an error (`WouldBlock`), as is a missing one. The stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or with a NUL byte",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call, and `len` does not
    // exceed its size (checked against sun_path's length above).
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Send `buf` on a connected stream socket without raising `SIGPIPE` if the peer is
/// gone (the error is `BrokenPipe` instead). Returns the bytes sent.
pub fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call and
        // the fd is owned by `stream`, which outlives it.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TempDir;

    #[test]
    fn bind_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = TempDir::new();
        let path = dir.path().join("v.sock");
        let first = HostListener::bind(&path).unwrap();
        let e = HostListener::bind(&path).unwrap_err();
        assert!(matches!(e, UnixError::InUse(_)), "{e}");
        assert!(e.to_string().contains("in use"));
        // A stale socket file: bound by a listener that is gone without cleaning up.
        drop(first);
        assert!(!path.exists(), "dropping the listener removes its file");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let l = HostListener::bind(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        assert!(l.accept().unwrap().is_some());
        assert!(l.accept().unwrap().is_none());
    }

    #[test]
    fn bind_refuses_a_regular_file() {
        let dir = TempDir::new();
        let path = dir.path().join("file");
        std::fs::write(&path, b"x").unwrap();
        let e = HostListener::bind(&path).unwrap_err();
        assert!(matches!(e, UnixError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn nonblocking_connect_reports_missing_listeners() {
        let dir = TempDir::new();
        let path = dir.path().join("none");
        let e = connect_nonblocking(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let long = dir.path().join("x".repeat(200));
        assert!(connect_nonblocking(&long).is_err());
        let l = UnixListener::bind(&path).unwrap();
        let s = connect_nonblocking(&path).unwrap();
        let (peer, _) = l.accept().unwrap();
        assert_eq!(send_nosignal(&s, b"hi").unwrap(), 2);
        drop(peer);
        // The peer is gone: an error, not SIGPIPE.
        let mut failed = false;
        for _ in 0..4 {
            if send_nosignal(&s, b"again").is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
