//! A message relay between the frontend and the vhost-user daemon that puts one
//! request QEMU sends early in the order the daemon accepts.
//!
//! QEMU's virtio-net frontend sends `SET_VRING_ENABLE` as soon as the guest driver sets
//! the device's features, before it sends the backend `SET_FEATURES` (which comes at
//! DRIVER_OK); it only checks that the backend *offers* `VHOST_USER_F_PROTOCOL_FEATURES`.
//! The vhost and vhost-user-backend crates refuse `SET_VRING_ENABLE` until that bit has
//! been *acked* and drop the connection. The relay sits on the frontend's socket: every
//! message goes through unchanged (with its file descriptors), except that before a
//! `SET_VRING_ENABLE` that arrives while no features have been set, it sends the daemon
//! a `SET_FEATURES` holding only `VHOST_USER_F_PROTOCOL_FEATURES` (no reply asked). The
//! frontend's own `SET_FEATURES` replaces it when it comes. Replies and the daemon's
//! other messages go back unchanged.
//!
//! The relay carries the control channel only: the rings live in shared guest memory
//! and kicks and calls go through eventfds, so the data path does not pass through it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// vhost-user message header: request, flags, payload size (each le32).
const HEADER: usize = 12;
/// Largest payload relayed (the largest vhost-user message, a memory table of many
/// regions or a config space, is a few KiB).
const MAX_PAYLOAD: usize = 64 << 10;
/// File descriptors one message may carry.
const MAX_FDS: usize = 32;
/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_RESET_OWNER`.
const RESET_OWNER: u32 = 4;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// `VHOST_USER_RESET_DEVICE`.
const RESET_DEVICE: u32 = 34;
/// Header flags of a frontend request: protocol version 1.
const VERSION_1: u32 = 0x1;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// One vhost-user message with the descriptors that came with it.
struct Message {
    bytes: Vec<u8>,
    fds: Vec<File>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }

    fn send(&self, to: &UnixStream) -> io::Result<()> {
        let fds: Vec<RawFd> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = to
            .send_with_fds(&[&self.bytes[..]], &fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // The descriptors went with the first bytes; the rest, if any, follows plainly.
        while sent < self.bytes.len() {
            sent += (&*to).write(&self.bytes[sent..])?;
        }
        Ok(())
    }
}

/// Read one message; `None` at a clean end of stream.
fn read_message(from: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: header.len(),
    }];
    // SAFETY: the iovec points at `header`, which lives across the call and may take any
    // bytes; `raw_fds` has room for MAX_FDS descriptors.
    let (n, nfds) = unsafe { from.recv_with_fds(&mut iov, &mut raw_fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: recvmsg gave us these `nfds` descriptors; nothing else owns them, and each
    // is wrapped once so that it is closed once.
    let fds: Vec<File> = raw_fds[..nfds.min(MAX_FDS)]
        .iter()
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    (&*from).read_exact(&mut header[n..])?;
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    let mut bytes = Vec::with_capacity(HEADER + size);
    bytes.extend_from_slice(&header);
    bytes.resize(HEADER + size, 0);
    (&*from).read_exact(&mut bytes[HEADER..])?;
    Ok(Some(Message { bytes, fds }))
}

/// The `SET_FEATURES` the relay sends ahead of an early `SET_VRING_ENABLE`.
fn protocol_features_only() -> Message {
    let mut bytes = Vec::with_capacity(HEADER + 8);
    bytes.extend_from_slice(&SET_FEATURES.to_le_bytes());
    bytes.extend_from_slice(&VERSION_1.to_le_bytes());
    bytes.extend_from_slice(&8u32.to_le_bytes());
    bytes.extend_from_slice(&PROTOCOL_FEATURES.to_le_bytes());
    Message {
        bytes,
        fds: Vec::new(),
    }
}

/// Frontend to daemon, fixing the order on the way.
fn frontend_to_daemon(frontend: &UnixStream, daemon: &UnixStream) -> io::Result<()> {
    let mut features_set = false;
    while let Some(msg) = read_message(frontend)? {
        match msg.request() {
            SET_FEATURES => features_set = true,
            RESET_OWNER | RESET_DEVICE => features_set = false,
            SET_VRING_ENABLE if !features_set => {
                log::debug!("vhost-user relay: SET_VRING_ENABLE before SET_FEATURES");
                protocol_features_only().send(daemon)?;
                features_set = true;
            }
            _ => {}
        }
        msg.send(daemon)?;
    }
    Ok(())
}

/// Daemon to frontend, unchanged.
fn daemon_to_frontend(daemon: &UnixStream, frontend: &UnixStream) -> io::Result<()> {
    while let Some(msg) = read_message(daemon)? {
        msg.send(frontend)?;
    }
    Ok(())
}

/// Relay between `frontend` and `daemon` on two threads until either side closes;
/// then both connections are shut down, so the other side sees the end too.
pub fn spawn(frontend: UnixStream, daemon: UnixStream) -> io::Result<JoinHandle<()>> {
    let (f2, d2) = (frontend.try_clone()?, daemon.try_clone()?);
    let back = std::thread::Builder::new()
        .name("vhost-user-relay".into())
        .spawn(move || {
            if let Err(e) = daemon_to_frontend(&d2, &f2) {
                log::debug!("vhost-user relay (to the frontend): {e}");
            }
            let _ = f2.shutdown(std::net::Shutdown::Both);
            let _ = d2.shutdown(std::net::Shutdown::Both);
        })?;
    std::thread::Builder::new()
        .name("vhost-user-relay".into())
        .spawn(move || {
            if let Err(e) = frontend_to_daemon(&frontend, &daemon) {
                log::info!("vhost-user relay (to the device): {e}");
            }
            let _ = frontend.shutdown(std::net::Shutdown::Both);
            let _ = daemon.shutdown(std::net::Shutdown::Both);
            let _ = back.join();
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&VERSION_1.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn read_all(mut s: &UnixStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn an_early_vring_enable_gets_protocol_features_first_and_fds_pass() {
        let (qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, daemon) = UnixStream::pair().unwrap();
        let handle = spawn(relay_front, relay_back).unwrap();

        // SET_VRING_ENABLE(0, 1) before any SET_FEATURES.
        let enable = message(SET_VRING_ENABLE, &[0, 0, 0, 0, 1, 0, 0, 0]);
        (&qemu).write_all(&enable).unwrap();
        let got = read_all(&daemon, HEADER + 8 + enable.len());
        assert_eq!(
            &got[..HEADER + 8],
            &message(SET_FEATURES, &PROTOCOL_FEATURES.to_le_bytes())[..]
        );
        assert_eq!(&got[HEADER + 8..], &enable[..]);

        // A message with a descriptor: the daemon gets a working one.
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let kick = message(12, &0u64.to_le_bytes());
        qemu.send_with_fds(&[&kick[..]], &[evt.as_raw_fd()])
            .unwrap();
        let mut buf = vec![0u8; kick.len()];
        let (n, file) = daemon.recv_with_fd(&mut buf).unwrap();
        assert_eq!(&buf[..n], &kick[..n]);
        let mut file = file.expect("the kick eventfd came through");
        file.write_all(&5u64.to_le_bytes()).unwrap();
        assert_eq!(evt.read().unwrap(), 5);

        // After the frontend's own SET_FEATURES, nothing is added.
        let features = message(SET_FEATURES, &(PROTOCOL_FEATURES | 1 << 32).to_le_bytes());
        (&qemu).write_all(&features).unwrap();
        (&qemu).write_all(&enable).unwrap();
        let got = read_all(&daemon, features.len() + enable.len());
        assert_eq!(got, [features.clone(), enable.clone()].concat());

        // Replies go back unchanged; closing the frontend ends the relay.
        let reply = message(1, &7u64.to_le_bytes());
        (&daemon).write_all(&reply).unwrap();
        assert_eq!(read_all(&qemu, reply.len()), reply);
        drop(qemu);
        let mut rest = Vec::new();
        (&daemon).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        handle.join().unwrap();
    }

    #[test]
    fn an_oversized_message_closes_the_relay() {
        let (qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, daemon) = UnixStream::pair().unwrap();
        let handle = spawn(relay_front, relay_back).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&VERSION_1.to_le_bytes());
        m.extend_from_slice(&u32::MAX.to_le_bytes());
        (&qemu).write_all(&m).unwrap();
        let mut rest = Vec::new();
        (&daemon).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing relayed");
        handle.join().unwrap();
    }
}
