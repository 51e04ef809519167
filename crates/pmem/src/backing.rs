//! The backing file, mapped into the VMM's address space for KVM to map into the guest.
//!
//! The guest region must be a whole number of 2 MiB ([`ALIGNMENT`]; Linux's memory
//! hotplug of the region works in 2 MiB subsections), but the file may have any size.
//! So the mapping is made in two steps, as Firecracker does: an anonymous private
//! reservation of the rounded-up length, then the file mapped shared over its start
//! (`MAP_FIXED`). The guest's writes to the file part reach the file (the page cache
//! at once, the disk at a flush); the tail past the file's end reads as zeros and what
//! the guest writes there is lost. A read-only backing is opened read-only and both
//! parts are mapped `PROT_READ`.
//!
//! Nothing here reads or writes the mapping except [`Backing::read_at`] (volatile
//! copies, for tests and diagnostics) and [`Backing::sync`] (`msync`).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use vm_memory::{Bytes, VolatileSlice};

/// Alignment of a pmem region's guest address and size: 2 MiB.
pub const ALIGNMENT: u64 = 2 << 20;

/// Why a backing file could not be mapped. The texts start as Firecracker's do.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// The file could not be opened (read and write unless read-only) or sized.
    #[error("Error accessing backing file {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is empty.
    #[error("Error backing file size is 0: {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is too large to map.
    #[error("{}: a backing file of {len} bytes is too large to map", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// `mmap` failed.
    #[error("cannot map the backing file {}: {source}", path.display())]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A backing file mapped shared, its length rounded up to [`ALIGNMENT`].
#[derive(Debug)]
pub struct Backing {
    path: PathBuf,
    /// Kept open for the mapping's life (a flush syncs through the mapping).
    _file: File,
    file_len: u64,
    len: u64,
    addr: NonNull<u8>,
    read_only: bool,
}

// SAFETY: `Backing` owns its mapping; the pointer is never turned into a Rust reference,
// only used for volatile copies and for syscalls (`msync`, `munmap` in `drop`), which are
// sound from any thread. KVM accesses the same memory on the guest's behalf, as it does
// guest RAM.
unsafe impl Send for Backing {}
// SAFETY: as for `Send`: shared access only makes volatile reads and `msync` calls.
unsafe impl Sync for Backing {}

impl Backing {
    /// Open `path` (read and write, or read-only) and map it: the file (or block device)
    /// must not be empty.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackingError> {
        let open_err = |source| BackingError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        // The end, not the metadata's length: a block device has no length there.
        let file_len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if file_len == 0 {
            return Err(BackingError::Empty {
                path: path.to_path_buf(),
            });
        }
        let too_large = || BackingError::TooLarge {
            path: path.to_path_buf(),
            len: file_len,
        };
        let len = file_len
            .checked_next_multiple_of(ALIGNMENT)
            .filter(|l| usize::try_from(*l).is_ok() && *l <= i64::MAX as u64)
            .ok_or_else(too_large)?;
        let map_err = |source| BackingError::Map {
            path: path.to_path_buf(),
            source,
        };
        let prot = if read_only {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: a new anonymous mapping at an address the kernel chooses: no existing
        // memory is affected. The result is checked below.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            return Err(map_err(io::Error::last_os_error()));
        }
        // SAFETY: `MAP_FIXED` replaces the first `file_len` bytes (rounded up to a page)
        // of the reservation just made, which this function owns and nothing uses yet;
        // the file descriptor is open. The result is checked below.
        let mapped = unsafe {
            libc::mmap(
                reserved,
                file_len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping the reservation made above, which nothing else uses.
            unsafe { libc::munmap(reserved, len as usize) };
            return Err(map_err(e));
        }
        let addr = NonNull::new(reserved.cast::<u8>())
            .ok_or_else(|| map_err(io::Error::other("mmap returned a null mapping")))?;
        Ok(Self {
            path: path.to_path_buf(),
            _file: file,
            file_len,
            len,
            addr,
            read_only,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The mapping's size: the file's rounded up to [`ALIGNMENT`], the guest region's.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: an empty file is refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the file is mapped read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The mapping's address in the VMM, for KVM's memory slot.
    pub fn host_addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    /// Write the guest's changes back to the file and wait for the disk (`msync`
    /// with `MS_SYNC`, which Linux carries out as an `fdatasync` of the range). A
    /// read-only mapping has nothing to write: nothing is done.
    pub fn sync(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // SAFETY: the range is the file's part of the mapping this struct owns, from its
        // page-aligned start; msync only writes pages back, it changes no memory.
        let r = unsafe {
            libc::msync(
                self.addr.as_ptr().cast(),
                self.file_len as usize,
                libc::MS_SYNC,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Copy `buf.len()` bytes of the mapping at `offset` into `buf` (volatile reads: the
    /// guest may be writing meanwhile). Past the mapping's end is an error.
    pub fn read_at(
        &self,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), vm_memory::VolatileMemoryError> {
        let offset = usize::try_from(offset)
            .map_err(|_| vm_memory::VolatileMemoryError::OutOfBounds { addr: usize::MAX })?;
        self.slice().read_slice(buf, offset).map_err(|e| match e {
            vm_memory::VolatileMemoryError::PartialBuffer { .. } => {
                vm_memory::VolatileMemoryError::OutOfBounds {
                    addr: offset.saturating_add(buf.len()),
                }
            }
            e => e,
        })
    }

    fn slice(&self) -> VolatileSlice<'_> {
        // SAFETY: `addr..addr + len` is a live mapping owned by `self`, which outlives the
        // borrow; a VolatileSlice only accesses it through volatile copies. `len` fits a
        // usize (checked at `open`).
        unsafe { VolatileSlice::new(self.addr.as_ptr(), self.len as usize) }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `open`, which nothing uses any more (KVM's
        // memory slot is removed with the VM, whose owner keeps the backing alive until
        // then).
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(data)
            .unwrap();
        path
    }

    #[test]
    fn a_file_of_any_size_maps_rounded_up_to_2_mib_with_its_bytes_then_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let path = file_with(dir.path(), "odd.img", &data);
        let b = Backing::open(&path, false).unwrap();
        assert_eq!(b.file_len(), 5000);
        assert_eq!(b.len(), ALIGNMENT);
        assert!(!b.is_empty());
        assert_eq!(b.host_addr() % 4096, 0);
        let mut back = vec![0u8; 5000];
        b.read_at(0, &mut back).unwrap();
        assert_eq!(back, data);
        // Past the file: zeros, up to the region's end and no further.
        let mut tail = vec![0xffu8; 4096];
        b.read_at(ALIGNMENT - 4096, &mut tail).unwrap();
        assert!(tail.iter().all(|&x| x == 0));
        assert!(b.read_at(ALIGNMENT - 1, &mut [0u8; 2]).is_err());
        assert!(b.read_at(u64::MAX, &mut [0u8; 1]).is_err());
        // The host's later writes to the file show through the shared mapping.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"HOST")
            .unwrap();
        let mut head = [0u8; 4];
        b.read_at(0, &mut head).unwrap();
        assert_eq!(&head, b"HOST");
        b.sync().unwrap();

        // An exact multiple is not padded.
        let exact = file_with(dir.path(), "exact.img", &vec![7u8; 2 * ALIGNMENT as usize]);
        assert_eq!(Backing::open(&exact, true).unwrap().len(), 2 * ALIGNMENT);
    }

    #[test]
    fn empty_missing_and_unwritable_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = file_with(dir.path(), "empty.img", b"");
        let err = Backing::open(&empty, false).unwrap_err().to_string();
        assert!(err.starts_with("Error backing file size is 0"), "{err}");
        assert!(err.contains("empty.img"), "{err}");
        let err = Backing::open(&dir.path().join("missing"), false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("Error accessing backing file"), "{err}");
        assert!(err.contains("missing"), "{err}");
        // A directory cannot be opened for writing.
        let err = Backing::open(dir.path(), false).unwrap_err().to_string();
        assert!(err.starts_with("Error accessing backing file"), "{err}");
    }

    #[test]
    fn a_read_only_backing_opens_a_file_it_may_not_write_and_syncs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), "ro.img", b"read me");
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(&path, perms).unwrap();
        let b = Backing::open(&path, true).unwrap();
        assert!(b.read_only());
        b.sync().unwrap();
        let mut buf = [0u8; 7];
        b.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"read me");
    }
}
