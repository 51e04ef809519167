//! Guest memory served by a userfaultfd page-fault handler (Firecracker's `Uffd` memory
//! backend), and the small part of the userfaultfd ABI (`linux/userfaultfd.h`) that both
//! sides of it use.
//!
//! On a load with `{"backend_type": "Uffd", "backend_path": SOCKET}`, [`guest_memory`]
//! maps guest memory anonymous and private (from the hugetlb pool for a `huge_pages`
//! guest), creates a userfaultfd with `UFFD_FEATURE_EVENT_REMOVE` (so that a balloon's
//! `madvise(MADV_DONTNEED)` reaches the handler) and registers every region for missing
//! pages. It connects to the handler's Unix socket and sends, in one message carrying the
//! userfaultfd as `SCM_RIGHTS`, the JSON list of regions Firecracker sends
//! ([`UffdRegion`]: `base_host_virt_addr`, `size`, `offset` into the memory file,
//! `page_size` and its deprecated twin `page_size_kib`, both in bytes), so a handler
//! written for Firecracker serves Vireo unchanged. Nothing else is ever said on the
//! socket; Vireo keeps the connection and a copy of the userfaultfd for the VM's life, as
//! Firecracker does: a handler that dies later leaves the guest waiting for its pages
//! (not silently zero-filled).
//!
//! Unlike Firecracker, the load then checks that the handler serves: a thread reads the
//! first guest page. If the handler hung up (or never takes the message, or does not
//! serve it within [`PROBE_TIMEOUT`]), Vireo lets go of its copy of the userfaultfd: if
//! the handler never held it, that releases it, the read completes on a zero page, the
//! regions are no longer registered, and the load fails with a clear error. If it does
//! hold it but serves nothing, the load fails too (the mapping is then left mapped, for
//! the thread still waiting on it).
//!
//! The userfaultfd comes from `userfaultfd(2)` (kernel-mode faults included: KVM's
//! accesses are the kernel's), else from `/dev/userfaultfd` (Linux 6.1+, where file
//! permissions decide); an unprivileged process on a host with
//! `vm.unprivileged_userfaultfd = 0` and no access to `/dev/userfaultfd` gets an error
//! naming both.
//!
//! The `userfaultfd` crate would need libclang and bindgen at build time (its -sys crate
//! generates bindings from the host's headers) and an old `nix`; the ABI used here is five
//! ioctls and two structures, written out below.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::memory::{GuestMemory, HUGE_PAGE_SIZE, MemoryError};
use crate::snapshot::memory::RegionInfo;

/// How long the load waits for the handler to serve the first guest page.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

const UFFD_API: u64 = 0xaa;
/// `UFFD_FEATURE_EVENT_REMOVE`: `madvise(MADV_DONTNEED/MADV_REMOVE)` is reported.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `UFFD_EVENT_PAGEFAULT`.
const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMOVE`.
const EVENT_REMOVE: u8 = 0x15;
/// `_UFFDIO_COPY`: bit of the register ioctl's answer.
const IOCTL_COPY_BIT: u64 = 1 << 0x03;

/// `_IOC(dir, 0xAA, nr, size)`.
const fn uffd_ioc(dir: u64, nr: u64, size: usize) -> libc::c_ulong {
    (dir << 30 | (size as u64) << 16 | 0xaa << 8 | nr) as libc::c_ulong
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO_API: libc::c_ulong = uffd_ioc(IOC_READ | IOC_WRITE, 0x3f, size_of::<UffdioApi>());
const UFFDIO_REGISTER: libc::c_ulong =
    uffd_ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: libc::c_ulong = uffd_ioc(IOC_READ, 0x01, size_of::<UffdioRange>());
const UFFDIO_WAKE: libc::c_ulong = uffd_ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: libc::c_ulong = uffd_ioc(IOC_READ | IOC_WRITE, 0x03, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: libc::c_ulong =
    uffd_ioc(IOC_READ | IOC_WRITE, 0x04, size_of::<UffdioZeropage>());
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xAA, 0)`.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa00;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg`: 32 bytes, the event in the first byte, its arguments from byte 8.
const MSG_SIZE: usize = 32;

/// One guest memory region as Firecracker describes it to its page-fault handler; the
/// field names are Firecracker's (`GuestRegionUffdMapping`), so handlers written for it
/// parse Vireo's message unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdRegion {
    /// Where the region starts in the VMM's address space (the handler's copies go here).
    pub base_host_virt_addr: u64,
    /// Bytes.
    pub size: u64,
    /// Where the region's contents start in the memory file.
    pub offset: u64,
    /// The page size of the mapping, in bytes (4096, or 2 MiB for a `huge_pages` guest).
    #[serde(default)]
    pub page_size: u64,
    /// The same, in bytes despite its name: Firecracker's deprecated field, still sent
    /// (older handlers read only this one).
    #[serde(default)]
    pub page_size_kib: u64,
}

impl UffdRegion {
    /// The page size, from whichever field the sender filled.
    pub fn page_bytes(&self) -> u64 {
        if self.page_size != 0 {
            self.page_size
        } else {
            self.page_size_kib
        }
    }
}

/// Why a Uffd-backed guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// No userfaultfd could be had.
    #[error(
        "cannot create a userfaultfd: userfaultfd(2): {syscall}; /dev/userfaultfd: {device} \
         (an unprivileged process needs vm.unprivileged_userfaultfd = 1, or read-write \
         access to /dev/userfaultfd)"
    )]
    Create {
        /// What the system call said.
        syscall: io::Error,
        /// What opening the device said.
        device: io::Error,
    },
    /// The kernel's userfaultfd lacks what the backend needs.
    #[error("the host's userfaultfd refused the API handshake with UFFD_FEATURE_EVENT_REMOVE: {0}")]
    Api(#[source] io::Error),
    /// A region could not be registered.
    #[error("cannot register guest memory at {addr:#x}+{len:#x} with the userfaultfd: {source}")]
    Register {
        /// Host address.
        addr: u64,
        /// Bytes.
        len: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The handler's socket could not be reached.
    #[error("cannot connect to the page-fault handler's socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The regions and the userfaultfd could not be sent.
    #[error("cannot send the userfaultfd to the page-fault handler at {path}: {source}")]
    Send {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The handler went away without taking the userfaultfd.
    #[error(
        "the page-fault handler at {0} closed the connection without taking the userfaultfd \
         (or exited): nothing serves the guest's memory"
    )]
    HandlerGone(PathBuf),
    /// The handler holds the userfaultfd but did not serve the first page.
    #[error(
        "the page-fault handler at {path} did not serve the guest's first page within {secs} s"
    )]
    NotServing {
        /// The socket.
        path: PathBuf,
        /// The time waited.
        secs: u64,
    },
    /// The probe thread could not be started.
    #[error("cannot start the thread that checks the page-fault handler: {0}")]
    Thread(#[source] io::Error),
}

/// A userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    file: File,
}

/// Why `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` did not fill a page.
#[derive(Debug, PartialEq, Eq)]
pub enum FillError {
    /// The page is already there (another fault filled it): nothing to do.
    Exists,
    /// An event (a `remove`) waits to be read first: read the events, then try again.
    Again,
    /// The VMM's memory is gone (its process exited, or the range was unmapped).
    Gone,
    /// Anything else (errno).
    Other(i32),
}

/// What a userfaultfd reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread touched a missing page at `addr` (a write if `write`).
    Pagefault {
        /// The faulting address (not rounded down).
        addr: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// `madvise(MADV_DONTNEED/MADV_REMOVE)` dropped `[start, end)`: those pages read as
    /// zeros from now on.
    Remove {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Another event (fork, remap, unmap: not asked for by Vireo).
    Other(u8),
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Uffd {
    /// A new userfaultfd (non-blocking, close-on-exec, kernel faults included) that has
    /// done the API handshake with `features`.
    pub fn create(features: u64) -> Result<Uffd, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the system call takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        let file = if fd >= 0 {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            unsafe { File::from_raw_fd(fd as i32) }
        } else {
            let syscall = io::Error::last_os_error();
            Self::from_device(flags).map_err(|device| UffdError::Create { syscall, device })?
        };
        let uffd = Uffd { file };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `api` is.
        let r = unsafe { libc::ioctl(uffd.file.as_raw_fd(), UFFDIO_API, &mut api) };
        if r != 0 {
            return Err(UffdError::Api(io::Error::last_os_error()));
        }
        Ok(uffd)
    }

    /// A userfaultfd from `/dev/userfaultfd` (Linux 6.1+).
    fn from_device(flags: libc::c_int) -> io::Result<File> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags as its argument.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// A userfaultfd received from a VMM (its API handshake is done).
    pub fn from_fd(fd: OwnedFd) -> Uffd {
        Uffd {
            file: File::from(fd),
        }
    }

    /// Register `[addr, addr+len)` for missing-page faults.
    pub fn register_missing(&self, addr: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: addr, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if reg.ioctls & IOCTL_COPY_BIT == 0 {
            return Err(io::Error::other("the range does not support UFFDIO_COPY"));
        }
        Ok(())
    }

    /// Stop tracking `[addr, addr+len)`.
    pub fn unregister(&self, addr: u64, len: u64) -> io::Result<()> {
        let range = UffdioRange { start: addr, len };
        // SAFETY: UFFDIO_UNREGISTER reads a `struct uffdio_range`.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_UNREGISTER, &range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wake the threads waiting on `[addr, addr+len)`.
    pub fn wake(&self, addr: u64, len: u64) -> io::Result<()> {
        let range = UffdioRange { start: addr, len };
        // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range`.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_WAKE, &range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn fill_error(e: i32) -> FillError {
        match e {
            libc::EEXIST => FillError::Exists,
            libc::EAGAIN => FillError::Again,
            libc::ENOENT | libc::ESRCH => FillError::Gone,
            e => FillError::Other(e),
        }
    }

    /// Copy `len` bytes from `src` (in this process) to the registered page(s) at `dst`
    /// (in the VMM's), and wake the threads waiting there.
    ///
    /// # Safety
    /// `src..src+len` must be readable memory of this process.
    pub unsafe fn copy(&self, dst: u64, src: *const u8, len: u64) -> Result<(), FillError> {
        let mut copy = UffdioCopy {
            dst,
            src: src as u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `struct uffdio_copy`; the kernel reads
        // `len` bytes at `src`, readable by the caller's contract.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_COPY, &mut copy) } == 0 {
            return Ok(());
        }
        // A partial copy reports -errno or the bytes copied in `copy`.
        Err(Self::fill_error(match copy.copy {
            c if c < 0 => (-c) as i32,
            _ => errno(),
        }))
    }

    /// Map the zero page at the registered page(s) `[dst, dst+len)` and wake the threads
    /// waiting there (4 KiB pages only: hugetlb mappings refuse it).
    pub fn zeropage(&self, dst: u64, len: u64) -> Result<(), FillError> {
        let mut zero = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct uffdio_zeropage`; it only
        // maps pages in the registered range of the VMM.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), UFFDIO_ZEROPAGE, &mut zero) } == 0 {
            return Ok(());
        }
        Err(Self::fill_error(match zero.zeropage {
            z if z < 0 => (-z) as i32,
            _ => errno(),
        }))
    }

    /// The next event, or `None` if none is waiting (the descriptor is non-blocking).
    pub fn read_event(&self) -> io::Result<Option<Event>> {
        let mut msg = [0u8; MSG_SIZE];
        match (&self.file).read(&mut msg) {
            Ok(MSG_SIZE) => {}
            Ok(n) => return Err(io::Error::other(format!("a {n}-byte userfaultfd message"))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        let word = |i: usize| u64::from_ne_bytes(msg[i..i + 8].try_into().unwrap_or([0; 8]));
        Ok(Some(match msg[0] {
            EVENT_PAGEFAULT => Event::Pagefault {
                write: word(8) & 1 != 0,
                addr: word(16),
            },
            EVENT_REMOVE => Event::Remove {
                start: word(8),
                end: word(16),
            },
            other => Event::Other(other),
        }))
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// What a Uffd-backed VM keeps for its life: the connection to the handler and Vireo's
/// copy of the userfaultfd.
#[derive(Debug)]
pub struct UffdBackend {
    /// The handler's socket.
    pub socket: PathBuf,
    /// Kept open: the handler sees the VMM go when it closes.
    _stream: UnixStream,
    /// Vireo's copy (`None` if it was let go during the load's check).
    _uffd: Option<Uffd>,
}

/// Guest memory for `regions` (anonymous, private; from 2 MiB huge pages if
/// `huge_pages`), registered with a new userfaultfd handed to the handler listening on
/// `socket`, which serves it from the snapshot's memory file.
pub fn guest_memory(
    socket: &Path,
    regions: &[RegionInfo],
    huge_pages: bool,
) -> Result<(GuestMemory, UffdBackend), UffdError> {
    let total: u64 = regions.iter().map(|r| r.size).sum();
    let mem = crate::memory::create_guest_memory(total, huge_pages)?;
    let uffd = Uffd::create(FEATURE_EVENT_REMOVE)?;
    let page_size = if huge_pages { HUGE_PAGE_SIZE } else { 4096 };
    let mut mappings = Vec::with_capacity(regions.len());
    let mut offset = 0;
    for region in mem.iter() {
        let addr = region.as_ptr() as u64;
        let len = region.len();
        uffd.register_missing(addr, len)
            .map_err(|source| UffdError::Register { addr, len, source })?;
        mappings.push(UffdRegion {
            base_host_virt_addr: addr,
            size: len,
            offset,
            page_size,
            page_size_kib: page_size,
        });
        offset += len;
    }
    let stream = send_regions(socket, &mappings, &uffd)?;
    let first = mappings.first().map_or(0, |m| m.base_host_virt_addr);
    let kept = check_served(socket, &stream, uffd, first, mem)?;
    let (mem, uffd) = kept;
    Ok((
        mem,
        UffdBackend {
            socket: socket.to_path_buf(),
            _stream: stream,
            _uffd: uffd,
        },
    ))
}

/// Connect to `socket` and send the regions' JSON with the userfaultfd.
fn send_regions(
    socket: &Path,
    regions: &[UffdRegion],
    uffd: &Uffd,
) -> Result<UnixStream, UffdError> {
    let stream = UnixStream::connect(socket).map_err(|source| UffdError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let body = serde_json::to_vec(regions).map_err(|e| UffdError::Send {
        path: socket.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let sent = stream
        .send_with_fd(&body[..], uffd.as_raw_fd())
        .map_err(|e| UffdError::Send {
            path: socket.to_path_buf(),
            source: io::Error::from_raw_os_error(e.errno()),
        })?;
    if sent != body.len() {
        return Err(UffdError::Send {
            path: socket.to_path_buf(),
            source: io::Error::other(format!("{sent} of {} bytes sent", body.len())),
        });
    }
    Ok(stream)
}

/// Whether the peer of `stream` has closed its end.
fn hung_up(stream: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
}

/// Read the first byte at `addr` in a thread and wait for the handler to serve it (see
/// the module's notes). Gives back the memory and Vireo's copy of the userfaultfd (let go
/// if the handler hung up).
fn check_served(
    socket: &Path,
    stream: &UnixStream,
    uffd: Uffd,
    addr: u64,
    mem: GuestMemory,
) -> Result<(GuestMemory, Option<Uffd>), UffdError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("uffd-probe".into())
        .spawn(move || {
            // SAFETY: `addr` is the first byte of guest memory, mapped until this thread
            // ends: on every path where it could still be waiting, the mapping is leaked.
            // A volatile read of a u8 of plain memory has no other effect than the fault.
            let _ = unsafe { std::ptr::read_volatile(addr as *const u8) };
            let _ = tx.send(());
        })
        .map_err(UffdError::Thread)?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(2)) {
            Ok(()) => return Ok((mem, Some(uffd))),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if hung_up(stream) || Instant::now() >= deadline {
            break;
        }
    }
    // The handler hung up, or is silent. Let go of Vireo's copy: if the handler never
    // took the userfaultfd (or has exited), this releases it, which unregisters guest
    // memory and lets the waiting read complete.
    drop(uffd);
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    match rx.recv_timeout(wait) {
        Ok(()) if registered(addr) => {
            log::warn!(
                "the page-fault handler at {} closed its connection; it serves the guest's \
                 memory, and Vireo keeps no copy of the userfaultfd",
                socket.display()
            );
            Ok((mem, None))
        }
        Ok(()) => Err(UffdError::HandlerGone(socket.to_path_buf())),
        Err(_) => {
            // The thread may still wait on this memory: it stays mapped.
            std::mem::forget(mem);
            Err(UffdError::NotServing {
                path: socket.to_path_buf(),
                secs: PROBE_TIMEOUT.as_secs(),
            })
        }
    }
}

/// Whether the mapping holding `addr` is registered with a userfaultfd for missing pages
/// (`um` in its `VmFlags` in /proc/self/smaps).
pub fn registered(addr: u64) -> bool {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return false;
    };
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            inside = (start..end).contains(&addr);
        } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            return flags.split_whitespace().any(|f| f == "um");
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernel_headers() {
        // From <linux/userfaultfd.h> on x86_64 (a C program printed them).
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
    }

    #[test]
    fn regions_are_firecrackers_json_both_ways() {
        let r = UffdRegion {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 32 << 20,
            offset: 4096,
            page_size: 4096,
            page_size_kib: 4096,
        };
        let json: serde_json::Value = serde_json::to_value([r]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "base_host_virt_addr": 0x7f00_0000_0000u64,
                "size": 32 << 20,
                "offset": 4096,
                "page_size": 4096,
                "page_size_kib": 4096
            }])
        );
        // An older sender with page_size_kib only; a newer one with extra fields.
        let old: Vec<UffdRegion> = serde_json::from_str(
            r#"[{"base_host_virt_addr": 1, "size": 2, "offset": 3, "page_size_kib": 2097152, "x": 0}]"#,
        )
        .unwrap();
        assert_eq!(old[0].page_bytes(), 2 << 20);
    }
}
