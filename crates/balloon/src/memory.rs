//! Giving guest pages back to the host: turning balloon page frame numbers into runs of
//! consecutive pages, and releasing a guest-physical range with `madvise(2)`.
//!
//! The `madvise` call is the one place the balloon changes guest memory behind
//! vm-memory's back; the range comes from vm-memory's own slices, so a range outside
//! guest memory is an error, never a wild pointer.

use std::io;
use std::sync::OnceLock;

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, Permissions};

/// Balloon page frame numbers count 4 KiB pages, whatever the guest's page size
/// (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const PFN_SHIFT: u32 = 12;
/// Size of one balloon page.
pub const BALLOON_PAGE_SIZE: u64 = 1 << PFN_SHIFT;

/// Why a range could not be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Part of the range is not guest memory.
    #[error("guest range {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange {
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The host mapping of the range does not start or end on a host page boundary
    /// (a region mapped at an odd guest address, or huge pages).
    #[error("host mapping of guest range {addr:#x}+{len:#x} is not aligned to host pages")]
    Misaligned {
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The kernel refused the advice.
    #[error("madvise on guest range {addr:#x}+{len:#x}: {source}")]
    Madvise {
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// A run of consecutive balloon pages: `count` pages from frame `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First page frame number.
    pub start: u64,
    /// Number of pages (at least 1).
    pub count: u64,
}

impl PageRun {
    /// Guest-physical address of the first page.
    pub fn addr(&self) -> GuestAddress {
        GuestAddress(self.start << PFN_SHIFT)
    }

    /// Length of the run in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.count << PFN_SHIFT
    }
}

/// Groups page frame numbers, as they stream out of a chain, into runs of consecutive
/// pages, so that each run costs one `madvise` instead of one per page. A frame repeated
/// right after itself stays in the same run. Memory use is constant whatever the chain's
/// length.
#[derive(Debug, Default)]
pub struct RunBuilder {
    current: Option<PageRun>,
}

impl RunBuilder {
    /// Add `pfn`; returns the run it closed, if it does not extend the current one.
    pub fn push(&mut self, pfn: u64) -> Option<PageRun> {
        if let Some(run) = &mut self.current {
            let last = run.start + (run.count - 1);
            if pfn == last {
                return None;
            }
            if last.checked_add(1) == Some(pfn) {
                run.count += 1;
                return None;
            }
        }
        self.current.replace(PageRun {
            start: pfn,
            count: 1,
        })
    }

    /// The run still open, if any.
    pub fn finish(&mut self) -> Option<PageRun> {
        self.current.take()
    }
}

fn host_page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant; no memory is touched.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
    })
}

/// Whether `[addr, addr + len)` lies entirely in guest memory.
pub fn in_guest_memory<M: GuestMemory>(mem: &M, addr: GuestAddress, len: u64) -> bool {
    usize::try_from(len).is_ok_and(|len| mem.check_range(addr, len, Permissions::Write))
}

/// Give the host memory behind `[addr, addr + len)` back to the host. The guest reads
/// zeros there afterwards (anonymous private memory), or the backing file's hole for
/// shared file-backed memory (memfd, tmpfs, hugetlbfs), where `MADV_REMOVE` frees the
/// backing store too.
///
/// Nothing is released unless the whole range is guest memory and host-page aligned.
/// Returns the number of `madvise` calls made (one per memory region crossed).
pub fn release<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    len: u64,
) -> Result<usize, ReleaseError> {
    let out_of_range = || ReleaseError::OutOfRange { addr: addr.0, len };
    let misaligned = || ReleaseError::Misaligned { addr: addr.0, len };
    if len == 0 {
        return Ok(0);
    }
    if !in_guest_memory(mem, addr, len) {
        return Err(out_of_range());
    }
    let count = usize::try_from(len).map_err(|_| out_of_range())?;
    let page = host_page_size();
    let slices = mem
        .get_slices(addr, count, Permissions::Write)
        .map_err(|_| out_of_range())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| out_of_range())?;
    if slices.iter().map(|s| s.len()).sum::<usize>() != count {
        return Err(out_of_range());
    }
    // Check every piece before touching any, so a bad range releases nothing.
    for s in &slices {
        let ptr = s.ptr_guard_mut().as_ptr() as usize;
        if !ptr.is_multiple_of(page) || !s.len().is_multiple_of(page) {
            return Err(misaligned());
        }
    }
    let mut guest = addr.0;
    for s in &slices {
        let file_backed = mem
            .physical_memory()
            .and_then(|p| p.find_region(GuestAddress(guest)))
            .is_some_and(|r| r.file_offset().is_some());
        let guard = s.ptr_guard_mut();
        advise(guard.as_ptr(), s.len(), file_backed).map_err(|source| ReleaseError::Madvise {
            addr: guest,
            len: s.len() as u64,
            source,
        })?;
        // The content changed (to zeros): a dirty-page log must carry it.
        s.bitmap().mark_dirty(0, s.len());
        guest += s.len() as u64;
    }
    Ok(slices.len())
}

/// `madvise` one host range, which lies inside a live guest memory mapping.
fn advise(ptr: *mut u8, len: usize, file_backed: bool) -> io::Result<()> {
    if file_backed {
        // SAFETY: `ptr..ptr+len` is a page-aligned part of a guest memory mapping that
        // stays mapped while `mem` is borrowed. MADV_REMOVE only drops the pages' content
        // (the guest sees zeros); no Rust reference points into guest memory.
        if unsafe { libc::madvise(ptr.cast(), len, libc::MADV_REMOVE) } == 0 {
            return Ok(());
        }
        // A private file mapping refuses MADV_REMOVE: fall through to MADV_DONTNEED.
    }
    // SAFETY: as above; MADV_DONTNEED drops the pages, later reads fault in zero pages
    // (or the file's content for a private file mapping).
    if unsafe { libc::madvise(ptr.cast(), len, libc::MADV_DONTNEED) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_devices::testing::guest_memory;
    use vm_memory::{Bytes, FileOffset, GuestMemoryMmap};

    fn runs(pfns: &[u64]) -> Vec<(u64, u64)> {
        let mut b = RunBuilder::default();
        let mut out: Vec<_> = pfns.iter().filter_map(|p| b.push(*p)).collect();
        out.extend(b.finish());
        out.into_iter().map(|r| (r.start, r.count)).collect()
    }

    #[test]
    fn consecutive_pages_form_one_run() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[7]), vec![(7, 1)]);
        assert_eq!(runs(&[1, 2, 3, 4]), vec![(1, 4)]);
        assert_eq!(
            runs(&[1, 2, 2, 3]),
            vec![(1, 3)],
            "a repeated frame is absorbed"
        );
        assert_eq!(runs(&[5, 4, 3]), vec![(5, 1), (4, 1), (3, 1)]);
        assert_eq!(runs(&[1, 2, 10, 11, 12, 3]), vec![(1, 2), (10, 3), (3, 1)]);
        assert_eq!(
            runs(&[u64::MAX - 1, u64::MAX, 0]),
            vec![(u64::MAX - 1, 2), (0, 1)]
        );
    }

    #[test]
    fn release_zeroes_anonymous_memory() {
        let mem = guest_memory(1 << 20);
        let addr = GuestAddress(0x4000);
        mem.write_slice(&[0xaa; 8192], addr).unwrap();
        mem.write_slice(&[0xbb; 16], GuestAddress(0x6000)).unwrap();
        assert_eq!(release(mem.as_ref(), addr, 8192).unwrap(), 1);
        let mut buf = [0xffu8; 8192];
        mem.read_slice(&mut buf, addr).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        let mut next = [0u8; 16];
        mem.read_slice(&mut next, GuestAddress(0x6000)).unwrap();
        assert_eq!(next, [0xbb; 16], "the page after the range is untouched");
    }

    #[test]
    fn release_refuses_bad_ranges_and_touches_nothing() {
        let mem = guest_memory(1 << 20);
        mem.write_slice(&[0xaa; 16], GuestAddress(0xf_f000))
            .unwrap();
        let r = release(mem.as_ref(), GuestAddress(0xf_f000), 0x2000);
        assert!(matches!(r, Err(ReleaseError::OutOfRange { .. })), "{r:?}");
        let r = release(mem.as_ref(), GuestAddress(u64::MAX - 0xfff), 0x1000);
        assert!(matches!(r, Err(ReleaseError::OutOfRange { .. })), "{r:?}");
        let r = release(mem.as_ref(), GuestAddress(0x1000), 100);
        assert!(matches!(r, Err(ReleaseError::Misaligned { .. })), "{r:?}");
        let r = release(mem.as_ref(), GuestAddress(0x1001), 0x1000);
        assert!(matches!(r, Err(ReleaseError::Misaligned { .. })), "{r:?}");
        assert_eq!(release(mem.as_ref(), GuestAddress(0), 0).unwrap(), 0);
        let mut buf = [0u8; 16];
        mem.read_slice(&mut buf, GuestAddress(0xf_f000)).unwrap();
        assert_eq!(buf, [0xaa; 16]);
    }

    #[test]
    fn release_spans_two_regions() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .unwrap();
        mem.write_slice(&[0x55; 0x4000], GuestAddress(0xe000))
            .unwrap();
        assert_eq!(release(&mem, GuestAddress(0xe000), 0x4000).unwrap(), 2);
        let mut buf = [0xffu8; 0x4000];
        mem.read_slice(&mut buf, GuestAddress(0xe000)).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }

    #[test]
    fn release_punches_holes_in_shared_file_memory() {
        use std::os::fd::FromRawFd;
        use std::os::unix::fs::FileExt;
        // SAFETY: the name is a valid NUL-terminated string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(0x10000).unwrap();
        let f2 = file.try_clone().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            0x10000,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        mem.write_slice(&[0x77; 0x2000], GuestAddress(0x3000))
            .unwrap();
        let mut via_file = [0u8; 4];
        f2.read_exact_at(&mut via_file, 0x3000).unwrap();
        assert_eq!(via_file, [0x77; 4], "the mapping is shared with the file");
        release(&mem, GuestAddress(0x3000), 0x2000).unwrap();
        f2.read_exact_at(&mut via_file, 0x4ffc).unwrap();
        assert_eq!(
            via_file, [0; 4],
            "the file's pages were freed, not just unmapped"
        );
        let mut buf = [0xffu8; 0x2000];
        mem.read_slice(&mut buf, GuestAddress(0x3000)).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }
}
