//! A host TAP device opened through `/dev/net/tun`, our own wrapper (no TAP crate).
//!
//! [`Tap::open`] creates the interface if it does not exist (and we have
//! `CAP_NET_ADMIN`) or attaches to an existing one, with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`: every frame read or written starts with a 12-byte
//! `virtio_net_hdr_v1`, the same header the guest's driver uses, so frames pass between
//! the guest and the TAP without rewriting. The descriptor is non-blocking; reads and
//! writes are `readv`/`writev` of whole frames. Offloads the guest can receive are set
//! with [`Tap::set_offload`] from the features the driver accepted ([`offload_flags`]).
//!
//! This module owns the TAP file descriptor only; it knows nothing of guest memory.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_net;

use crate::NET_HDR_LEN;

/// The clone device that makes TUN/TAP interfaces.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Why a TAP device could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` is missing.
    #[error("cannot open {TUN_PATH}: {0} (is the tun module loaded?)")]
    NoTunDevice(#[source] io::Error),
    /// `/dev/net/tun` could not be opened for another reason.
    #[error("cannot open {TUN_PATH}: {0}")]
    Open(#[source] io::Error),
    /// The name is longer than an interface name can be.
    #[error("TAP name '{0}' is too long: at most {max} bytes", max = libc::IFNAMSIZ - 1)]
    NameTooLong(String),
    /// The name cannot be an interface name.
    #[error("invalid TAP name '{0}': not empty, '.' or '..', no '/', ':' or whitespace")]
    InvalidName(String),
    /// Creating the interface, or attaching to one we do not own, was refused.
    #[error(
        "not permitted to create or attach TAP '{0}': needs CAP_NET_ADMIN, or an existing \
         TAP owned by this user"
    )]
    Permission(String),
    /// Another process has the (single-queue) interface open.
    #[error("TAP '{0}' is busy: another process has it open")]
    Busy(String),
    /// An interface of that name exists but is not a TAP with our flags.
    #[error("'{0}' exists but is not a single-queue TAP (a TUN, a multi-queue TAP, or not tun)")]
    NotATap(String),
    /// `TUNSETIFF` failed for another reason.
    #[error("TUNSETIFF on '{name}': {source}")]
    SetIff {
        /// The interface name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("TUNSETVNETHDRSZ on '{name}': {source}")]
    VnetHdrSize {
        /// The interface name.
        name: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `TUNSETOFFLOAD` failed.
    #[error("TUNSETOFFLOAD {flags:#x} on '{name}': {source}")]
    Offload {
        /// The interface name.
        name: String,
        /// The flags asked for.
        flags: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Whether `name` can be a Linux interface name (the kernel's `dev_valid_name`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

impl Tap {
    /// Create the TAP `name`, or attach to it if it exists, with a virtio-net header on
    /// every frame; the descriptor is non-blocking and closed on exec. No offloads are
    /// set until [`Tap::set_offload`].
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(TapError::NameTooLong(name.to_string()));
        }
        if !valid_name(name) {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::NoTunDevice(e),
                Some(libc::EACCES | libc::EPERM) => TapError::Permission(name.to_string()),
                _ => TapError::Open(e),
            })?;

        // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers and
        // addresses) for which all-zero bytes are a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is, valid and
        // exclusively borrowed for the call; the name is NUL-terminated (checked
        // shorter than IFNAMSIZ, rest zeroed). The fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => TapError::Permission(name),
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EINVAL) => TapError::NotATap(name),
                _ => TapError::SetIff { name, source: e },
            });
        }

        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to a
        // live local. The fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(TapError::VnetHdrSize {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tell the kernel which offloads we accept on frames it gives us (`TUN_F_*`);
    /// without `TUN_F_CSUM` it hands over only complete, checksummed frames.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed. The
        // fd is ours.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Read one frame (header included) with `readv`; `WouldBlock` when none is queued.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    /// Write one frame (header included) with `writev`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The `TUN_F_*` offloads to set for a driver that accepted `acked_features`: what the
/// guest can receive (`VIRTIO_NET_F_GUEST_*`). Segmentation offloads need checksum
/// offload, as in the virtio spec, so they are only set with `GUEST_CSUM`. UFO is never
/// set: current kernels ignore `TUN_F_UFO`, and Vireo does not offer it.
pub fn offload_flags(acked_features: u64) -> u32 {
    let has = |bit: u32| acked_features & (1u64 << bit) != 0;
    let mut flags = 0;
    if has(virtio_net::VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(virtio_net::VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(virtio_net::VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        if has(virtio_net::VIRTIO_NET_F_GUEST_ECN)
            && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
        {
            flags |= libc::TUN_F_TSO_ECN;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(b: u32) -> u64 {
        1 << b
    }

    #[test]
    fn offloads_follow_guest_features() {
        use virtio_net::*;
        assert_eq!(offload_flags(0), 0);
        assert_eq!(
            offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM)),
            libc::TUN_F_CSUM
        );
        assert_eq!(
            offload_flags(
                bit(VIRTIO_NET_F_GUEST_CSUM)
                    | bit(VIRTIO_NET_F_GUEST_TSO4)
                    | bit(VIRTIO_NET_F_GUEST_TSO6)
            ),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        // TSO without checksum offload is not valid: nothing is set.
        assert_eq!(offload_flags(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        // Host-side (guest transmit) offloads need no TUNSETOFFLOAD.
        assert_eq!(
            offload_flags(
                bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_MRG_RXBUF)
            ),
            0
        );
        // ECN only together with TSO.
        assert_eq!(
            offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_ECN)),
            libc::TUN_F_CSUM
        );
        assert_eq!(
            offload_flags(
                bit(VIRTIO_NET_F_GUEST_CSUM)
                    | bit(VIRTIO_NET_F_GUEST_TSO6)
                    | bit(VIRTIO_NET_F_GUEST_ECN)
            ),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
    }

    #[test]
    fn bad_names_are_refused_before_the_kernel() {
        assert!(matches!(
            Tap::open("sixteen-chars-xy"),
            Err(TapError::NameTooLong(_))
        ));
        for name in ["", "a/b", "a:b", "a b", ".", "..", "a\0b"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::InvalidName(_))),
                "{name:?}"
            );
        }
        assert!(valid_name("vtap0"));
        assert!(valid_name("fifteen-chars-x"));
    }
}
