//! The disk image behind a virtio-blk device: opening raw and qcow2 images (with clear
//! errors), and the synchronous I/O paths: `preadv`/`pwritev` straight into guest memory
//! for raw images, imago's synchronous API for qcow2.
//!
//! Offsets and lengths reaching this module were checked against the disk's capacity by
//! the request parser; the functions here still refuse anything past the end.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestMemory, Permissions, VolatileSlice};

use crate::request::{Buffer, SECTOR_SHIFT, SectorRange};

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image file does not exist.
    #[error("disk image {0:?} does not exist")]
    NotFound(PathBuf),
    /// The image may not be opened as asked.
    #[error("no permission to open disk image {path:?} {}", if *.readonly { "for reading" } else { "for reading and writing (add 'readonly' for a read-only disk)" })]
    PermissionDenied {
        /// The image.
        path: PathBuf,
        /// Whether read-only access was asked.
        readonly: bool,
    },
    /// Any other failure to open or size the image.
    #[error("cannot open disk image {path:?}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `format=qcow2` was given for a file that is not qcow2.
    #[error(
        "disk image {0:?} is not a qcow2 image (no QFI\\xfb magic); use format=raw for a raw image"
    )]
    NotQcow2(PathBuf),
    /// A qcow2 image uses something Vireo does not implement.
    #[error("qcow2 image {path:?} uses an unsupported feature: {reason}")]
    Qcow2Unsupported {
        /// The image.
        path: PathBuf,
        /// The feature.
        reason: String,
    },
    /// imago could not open the qcow2 image or its backing chain.
    #[error("cannot open qcow2 image {path:?}: {source}")]
    Qcow2 {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `io=uring` was asked but the host does not allow io_uring.
    #[error("io_uring is not available on this host ({0}); use io=sync or io=auto")]
    IoUringUnavailable(#[source] io::Error),
    /// `io=uring` was asked for a qcow2 image.
    #[error(
        "io=uring serves raw images only; qcow2 images use the synchronous engine (io=sync or io=auto)"
    )]
    IoUringNeedsRaw,
    /// The rate limiter could not be set up.
    #[error("rate limiter: {0}")]
    RateLimiter(#[source] io::Error),
    /// A running device could not take a new image or limits: its worker thread is
    /// gone, or it lost its disk when an earlier start failed.
    #[error("the device cannot be changed: {0}")]
    Unavailable(String),
}

/// An open disk image.
pub(crate) enum Image {
    /// Plain file or block device.
    Raw(File),
    /// qcow2 through imago.
    Qcow2(Box<FormatAccess<imago::file::File>>),
}

/// Open `path` for the guest.
pub(crate) fn open(
    path: &Path,
    format: api::DiskFormat,
    readonly: bool,
) -> Result<(Image, u64), BlockError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BlockError::NotFound(path.to_path_buf()),
            io::ErrorKind::PermissionDenied => BlockError::PermissionDenied {
                path: path.to_path_buf(),
                readonly,
            },
            _ => BlockError::Open {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    match format {
        api::DiskFormat::Raw => {
            // Works for regular files and block devices alike.
            let size = file.seek(SeekFrom::End(0)).map_err(|e| BlockError::Open {
                path: path.to_path_buf(),
                source: e,
            })?;
            Ok((Image::Raw(file), size >> SECTOR_SHIFT))
        }
        api::DiskFormat::Qcow2 => {
            check_qcow2_header(&mut file, path)?;
            drop(file);
            let q = Qcow2::<imago::file::File>::builder_path(path)
                .write(!readonly)
                .open(PermissiveImplicitOpenGate::default())
                .map_err(|e| BlockError::Qcow2 {
                    path: path.to_path_buf(),
                    source: e,
                })?;
            let access = FormatAccess::new(q);
            let sectors = access.size() >> SECTOR_SHIFT;
            Ok((Image::Qcow2(Box::new(access)), sectors))
        }
    }
}

/// Refuse what is not qcow2, or qcow2 with features imago does not implement, with a
/// message that says which.
fn check_qcow2_header(file: &mut File, path: &Path) -> Result<(), BlockError> {
    let mut hdr = [0u8; 104];
    let mut got = 0;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| {
            while got < hdr.len() {
                match file.read(&mut hdr[got..])? {
                    0 => break,
                    n => got += n,
                }
            }
            Ok(())
        })
        .map_err(|e| BlockError::Open {
            path: path.to_path_buf(),
            source: e,
        })?;
    if got < 72 || hdr[0..4] != *b"QFI\xfb" {
        return Err(BlockError::NotQcow2(path.to_path_buf()));
    }
    let be32 = |o: usize| u32::from_be_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
    let unsupported = |reason: String| BlockError::Qcow2Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(unsupported(format!("version {version}")));
    }
    if be32(32) != 0 {
        return Err(unsupported("encryption".into()));
    }
    if version == 3 {
        if got < 80 {
            return Err(unsupported("truncated version 3 header".into()));
        }
        let incompatible = (u64::from(be32(72)) << 32) | u64::from(be32(76));
        let names = [
            "dirty (run 'qemu-img check -r all')",
            "corrupt",
            "",
            "compression type",
            "extended L2 entries",
        ];
        // Bit 2 (external data file) is handled by imago.
        if let Some(bit) = (0..64).find(|b| b != &2 && incompatible & (1 << b) != 0) {
            let name = names.get(bit).copied().unwrap_or("unknown");
            return Err(unsupported(format!(
                "incompatible feature bit {bit} ({name})"
            )));
        }
    }
    Ok(())
}

/// The guest slices behind `buffers`, in order.
pub(crate) fn guest_slices<'a, M: GuestMemory>(
    mem: &'a M,
    buffers: &[Buffer],
    access: Permissions,
) -> io::Result<Vec<VolatileSlice<'a, vm_memory::bitmap::BS<'a, M::Bitmap>>>> {
    let bad = |_| io::Error::new(io::ErrorKind::InvalidInput, "buffer outside guest memory");
    let mut out = Vec::with_capacity(buffers.len());
    for b in buffers {
        for s in mem
            .get_slices(b.addr, b.len as usize, access)
            .map_err(bad)?
        {
            out.push(s.map_err(bad)?);
        }
    }
    Ok(out)
}

/// `iovec`s for `slices`, and the guards that keep their pointers valid.
pub(crate) fn iovecs<B: BitmapSlice>(
    slices: &[VolatileSlice<'_, B>],
) -> (
    Vec<libc::iovec>,
    Vec<vm_memory::volatile_memory::PtrGuardMut>,
) {
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
    let iovs = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    (iovs, guards)
}

/// Mark guest memory the kernel wrote from raw host addresses as dirty in its region's
/// bitmap (vm-memory marks only what goes through it; Diff snapshots read the bitmap).
pub(crate) fn mark_dirty<B: BitmapSlice>(slices: &[VolatileSlice<'_, B>]) {
    for s in slices {
        s.bitmap().mark_dirty(0, s.len());
    }
}

/// `preadv`/`pwritev` the whole of `iovs` at `offset`, retrying short transfers.
fn rw_all(fd: RawFd, iovs: &mut [libc::iovec], mut offset: u64, write: bool) -> io::Result<()> {
    let mut start = 0usize;
    loop {
        while iovs.get(start).is_some_and(|v| v.iov_len == 0) {
            start += 1;
        }
        let Some(rest) = iovs.get(start..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let count = rest.len().min(1024) as libc::c_int;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: `rest` holds `count` valid iovecs pointing into guest memory that is
        // mapped for the duration of the call (the caller holds the slices' guards);
        // the kernel reads or writes only within them.
        let r = unsafe {
            if write {
                libc::pwritev(fd, rest.as_ptr(), count, off)
            } else {
                libc::preadv(fd, rest.as_ptr(), count, off)
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "disk image ended early",
            ));
        }
        let mut n = r as usize;
        offset += n as u64;
        while n > 0 {
            let Some(v) = iovs.get_mut(start) else { break };
            if n >= v.iov_len {
                n -= v.iov_len;
                start += 1;
            } else {
                // SAFETY: `n` < `iov_len`, so the new base stays inside the same buffer.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }
}

fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    loop {
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        if unsafe { libc::fallocate(fd, mode, off, l) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    ) || e.kind() == io::ErrorKind::Unsupported
}

const ZERO_CHUNK: usize = 64 * 1024;

impl Image {
    /// The raw file's descriptor (for io_uring).
    pub(crate) fn raw_fd(&self) -> Option<RawFd> {
        match self {
            Image::Raw(f) => Some(f.as_raw_fd()),
            Image::Qcow2(_) => None,
        }
    }

    /// Read `offset..` into the guest `slices`.
    pub(crate) fn read<B: BitmapSlice>(
        &self,
        slices: &[VolatileSlice<'_, B>],
        offset: u64,
    ) -> io::Result<()> {
        match self {
            Image::Raw(f) => {
                let (mut iovs, _guards) = iovecs(slices);
                let r = rw_all(f.as_raw_fd(), &mut iovs, offset, false);
                // Also after an error: a short read wrote part of the buffers.
                mark_dirty(slices);
                r
            }
            Image::Qcow2(q) => {
                // The guard marks the slices dirty when dropped.
                let (iov, _guard) = IoVectorMut::from_volatile_slice(slices.iter());
                q.readv(iov, offset)
            }
        }
    }

    /// Write the guest `slices` at `offset`.
    pub(crate) fn write<B: BitmapSlice>(
        &self,
        slices: &[VolatileSlice<'_, B>],
        offset: u64,
    ) -> io::Result<()> {
        match self {
            Image::Raw(f) => {
                let (mut iovs, _guards) = iovecs(slices);
                rw_all(f.as_raw_fd(), &mut iovs, offset, true)
            }
            Image::Qcow2(q) => {
                let (iov, _guard) = IoVector::from_volatile_slice(slices.iter());
                q.writev(iov, offset)
            }
        }
    }

    /// Whether the image is qcow2 (whose metadata imago caches until a flush).
    pub(crate) fn is_qcow2(&self) -> bool {
        matches!(self, Image::Qcow2(_))
    }

    /// Make everything written so far durable: data and, for qcow2, metadata.
    pub(crate) fn flush(&self) -> io::Result<()> {
        match self {
            Image::Raw(f) => f.sync_data(),
            Image::Qcow2(q) => {
                q.flush()?;
                q.sync()
            }
        }
    }

    /// Discard `range` (a hint: a host that cannot discard does nothing).
    pub(crate) fn discard(&mut self, range: &SectorRange) -> io::Result<()> {
        let r = match self {
            Image::Raw(f) => fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                range.offset(),
                range.len(),
            ),
            Image::Qcow2(q) => q.discard_to_any(range.offset(), range.len()),
        };
        match r {
            Err(e) if is_unsupported(&e) => Ok(()),
            r => r,
        }
    }

    /// Make `range` read as zeroes; deallocate it if `unmap` allows.
    pub(crate) fn write_zeroes(&mut self, range: &SectorRange) -> io::Result<()> {
        let (offset, len) = (range.offset(), range.len());
        if len == 0 {
            return Ok(());
        }
        let r = match self {
            Image::Raw(f) => {
                let fd = f.as_raw_fd();
                let keep = libc::FALLOC_FL_KEEP_SIZE;
                let punched = range.unmap
                    && fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len).is_ok();
                if punched {
                    Ok(())
                } else {
                    fallocate(fd, libc::FALLOC_FL_ZERO_RANGE | keep, offset, len)
                }
            }
            Image::Qcow2(q) if range.unmap => q.discard_to_zero(offset, len),
            Image::Qcow2(q) => q.write_zeroes(offset, len),
        };
        match r {
            Err(e) if is_unsupported(&e) => self.write_zero_buffers(offset, len),
            r => r,
        }
    }

    /// Zero a range by writing zeroes, for hosts and formats without a cheaper way.
    fn write_zero_buffers(&mut self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(ZERO_CHUNK as u64) as usize;
            match self {
                Image::Raw(f) => std::os::unix::fs::FileExt::write_all_at(f, &zeroes[..n], offset)?,
                Image::Qcow2(q) => q.write(&zeroes[..n], offset)?,
            }
            offset += n as u64;
        }
        Ok(())
    }
}
