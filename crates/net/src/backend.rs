//! Where the worker's frames go: the [`NetBackend`] trait and its two implementations,
//! the host [`Tap`] and a datagram [`SocketBackend`] (one end of a Unix socket pair,
//! for tests and benchmarks that need no privileges).
//!
//! A backend moves whole frames, each preceded by the 12-byte virtio-net header, and is
//! non-blocking: `WouldBlock` means "nothing to read" or "try again when writable". Its
//! file descriptor is what the worker polls.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use crate::tap::{Tap, TapError, offload_flags};

/// Frame I/O of a network device.
pub trait NetBackend: Send + 'static {
    /// Read one frame (virtio-net header first) into `bufs`; returns its length.
    /// `WouldBlock` when no frame is waiting.
    fn read_frame(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize>;

    /// Write one frame (virtio-net header first) gathered from `bufs`, whole.
    /// `WouldBlock` when the backend cannot take it now.
    fn write_frame(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// The descriptor to poll for readability and writability.
    fn raw_fd(&self) -> RawFd;

    /// The driver accepted `acked_features`: enable what it can receive.
    fn set_offload(&mut self, acked_features: u64) -> Result<(), TapError> {
        let _ = acked_features;
        Ok(())
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.readv(bufs)
    }

    fn write_frame(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.writev(bufs)
    }

    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn set_offload(&mut self, acked_features: u64) -> Result<(), TapError> {
        Tap::set_offload(self, offload_flags(acked_features))
    }
}

/// One end of a non-blocking `AF_UNIX` datagram socket pair: each datagram is one frame,
/// header included. The other end plays the host network.
#[derive(Debug)]
pub struct SocketBackend {
    /// The socket as a file, so reads and writes are `readv`/`writev`.
    file: File,
}

impl SocketBackend {
    /// A backend and the peer socket that receives what the device sends and sends what
    /// the device receives. Both are non-blocking.
    pub fn pair() -> io::Result<(Self, UnixDatagram)> {
        let (ours, peer) = UnixDatagram::pair()?;
        ours.set_nonblocking(true)?;
        peer.set_nonblocking(true)?;
        let file = File::from(OwnedFd::from(ours));
        Ok((Self { file }, peer))
    }
}

impl NetBackend for SocketBackend {
    fn read_frame(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    fn write_frame(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_backend_keeps_frame_boundaries() {
        let (mut b, peer) = SocketBackend::pair().unwrap();
        let mut buf = [0u8; 64];
        let e = b.read_frame(&mut [IoSliceMut::new(&mut buf)]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        peer.send(b"first").unwrap();
        peer.send(b"second!").unwrap();
        assert_eq!(b.read_frame(&mut [IoSliceMut::new(&mut buf)]).unwrap(), 5);
        assert_eq!(&buf[..5], b"first");
        assert_eq!(b.read_frame(&mut [IoSliceMut::new(&mut buf)]).unwrap(), 7);
        assert_eq!(&buf[..7], b"second!");
        b.write_frame(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .unwrap();
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"abcd", "a gathered write is one datagram");
    }
}
