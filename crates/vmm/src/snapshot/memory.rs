//! Guest memory to and from a snapshot's memory file.
//!
//! The file holds the guest's RAM regions one after the other, in guest-address order
//! (the same layout the state file's `regions` list describes), so region `i` starts at
//! the sum of the sizes before it. Pages that are all zero are not written: the file is
//! sparse and a mostly idle guest's snapshot costs little disk.
//!
//! Restore maps the file `MAP_PRIVATE`: nothing is read until the guest touches a page,
//! and the guest's writes go to private copies, never back to the file, so one memory
//! file can start many clones.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use super::replace::Replacement;
use crate::memory::GuestMemory;

/// Bytes written per call (and the unit of the zero-page check's skip).
const CHUNK: usize = 1 << 20;
/// The zero check's granule.
const PAGE: usize = 4096;
/// The dirty bitmap's page, the same as KVM's dirty log.
const BITMAP_PAGE: std::num::NonZeroUsize = std::num::NonZeroUsize::new(PAGE).unwrap();

/// One RAM region as the state file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Bytes.
    pub size: u64,
}

/// Why guest memory could not be written or mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The file could not be created, written or opened.
    #[error("memory file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than the regions the state file lists.
    #[error("memory file {path} holds {len} bytes; the snapshot's guest has {expected}")]
    Size {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
        /// What the regions add up to.
        expected: u64,
    },
    /// Guest memory could not be read (a region vanished: a bug, reported, not a panic).
    #[error("cannot read guest memory at {0:#x}")]
    Read(u64),
    /// The mapping failed.
    #[error("cannot map the memory file {path}: {reason}")]
    Map {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The RAM regions of `mem`, in order.
pub fn regions(mem: &GuestMemory) -> Vec<RegionInfo> {
    mem.iter()
        .map(|r| RegionInfo {
            guest_addr: r.start_addr().raw_value(),
            size: r.len(),
        })
        .collect()
}

/// Write every non-zero page of `mem` to a new file that replaces `path`; its size is the sum of the
/// regions. Returns the bytes actually written (the non-zero pages).
pub fn write_memory_file(mem: &GuestMemory, path: &Path) -> Result<u64, MemoryFileError> {
    write_memory_file_from(mem, path, true)
}

/// [`write_memory_file`]; `trust_page_table`: an anonymous page that is neither present
/// nor swapped out reads as zero and is skipped unread. Not so for memory served by a
/// userfaultfd handler (a missing page there is one the handler has not copied yet),
/// where every page is read (the handler serves the ones not yet touched).
pub fn write_memory_file_from(
    mem: &GuestMemory,
    path: &Path,
    trust_page_table: bool,
) -> Result<u64, MemoryFileError> {
    let io_err = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    // Written beside `path` and renamed into place: the guest may be running on the
    // very file being replaced (restored from it), and keeps its pages.
    let out = Replacement::create(path).map_err(io_err)?;
    let file = out.file();
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total).map_err(io_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_off = 0u64;
    let mut written = 0u64;
    let pagemap = File::open("/proc/self/pagemap")
        .ok()
        .filter(|_| trust_page_table);
    for region in mem.iter() {
        // Anonymous memory the guest never touched is neither present nor swapped, and
        // reads as zero: the page table says so without reading (a 1 GiB guest that used
        // a few pages costs a few pages). A file-backed region (a restored VM) keeps its
        // data in the file, so every page of it is read.
        let anonymous = region.file_offset().is_none();
        let host = region.as_ptr() as u64;
        let mut off = 0u64;
        while off < region.len() {
            let n = (region.len() - off).min(CHUNK as u64) as usize;
            let used = match (&pagemap, anonymous) {
                (Some(pm), true) => pages_in_use(pm, host + off, n.div_ceil(PAGE)),
                _ => None,
            };
            if used.as_ref().is_some_and(|u| !u.contains(&true)) {
                off += n as u64;
                continue;
            }
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, MemoryRegionAddress(off))
                .map_err(|_| MemoryFileError::Read(region.start_addr().raw_value() + off))?;
            // Write runs of non-zero pages; zero pages stay holes.
            let unused = |page: usize| used.as_ref().is_some_and(|u| !u[page / PAGE]);
            let mut page = 0;
            while page < n {
                let end = (page + PAGE).min(n);
                if unused(page) || chunk[page..end].iter().all(|&b| b == 0) {
                    page = end;
                    continue;
                }
                let mut run_end = end;
                while run_end < n {
                    let next = (run_end + PAGE).min(n);
                    if chunk[run_end..next].iter().all(|&b| b == 0) {
                        break;
                    }
                    run_end = next;
                }
                file.write_all_at(&chunk[page..run_end], file_off + off + page as u64)
                    .map_err(io_err)?;
                written += (run_end - page) as u64;
                page = run_end;
            }
            off += n as u64;
        }
        file_off += region.len();
    }
    out.commit().map_err(io_err)?;
    Ok(written)
}

/// For `pages` pages of this process from `host_addr`: whether each is present in
/// memory or swapped out (from /proc/self/pagemap: bit 63 present, bit 62 swapped).
/// `None` if the page map cannot be read; then every page must be looked at.
fn pages_in_use(pagemap: &File, host_addr: u64, pages: usize) -> Option<Vec<bool>> {
    let mut raw = vec![0u8; pages * 8];
    let at = (host_addr / PAGE as u64) * 8;
    pagemap.read_exact_at(&mut raw, at).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let entry = u64::from_le_bytes(e.try_into().unwrap_or([0; 8]));
                entry & (3 << 62) != 0
            })
            .collect(),
    )
}

/// Write the pages of `mem` whose bit is set in `dirty` (one bit per 4 KiB page, per
/// region, as [`regions`] orders them) into the existing memory file at `path`.
/// Returns the bytes written.
pub fn write_dirty_pages(
    mem: &GuestMemory,
    path: &Path,
    dirty: &[Vec<u64>],
) -> Result<u64, MemoryFileError> {
    let io_err = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let len = file.metadata().map_err(io_err)?.len();
    if len != total {
        return Err(MemoryFileError::Size {
            path: path.display().to_string(),
            len,
            expected: total,
        });
    }
    let mut page_buf = vec![0u8; PAGE];
    let mut file_off = 0u64;
    let mut written = 0u64;
    for (region, bits) in mem.iter().zip(dirty) {
        let pages = region.len() / PAGE as u64;
        for page in 0..pages {
            let word = bits.get((page / 64) as usize).copied().unwrap_or(0);
            if word & (1 << (page % 64)) == 0 {
                continue;
            }
            let off = page * PAGE as u64;
            region
                .read_slice(&mut page_buf, MemoryRegionAddress(off))
                .map_err(|_| MemoryFileError::Read(region.start_addr().raw_value() + off))?;
            file.write_all_at(&page_buf, file_off + off)
                .map_err(io_err)?;
            written += PAGE as u64;
        }
        file_off += region.len();
    }
    file.sync_all().map_err(io_err)?;
    Ok(written)
}

/// The pages written through the VMM's own mapping of `mem` since the last call (or the
/// last [`reset_device_dirty`]): the virtio devices' writes (through vm-memory, which
/// marks each region's dirty bitmap, or marked by hand after the kernel wrote guest
/// buffers, as io_uring reads do) and the VMM's own. One bitmap per region, in
/// [`regions`] order and laid out like KVM's dirty log (bit n of word w: page 64w+n of
/// the region). The bitmaps are cleared as they are read.
pub fn take_device_dirty(mem: &GuestMemory) -> Vec<Vec<u64>> {
    mem.iter()
        .map(|region| std::ops::Deref::deref(region).bitmap().get_and_reset())
        .collect()
}

/// Forget the pages written through the VMM's mapping so far (after a Full snapshot,
/// which the next Diff is relative to).
pub fn reset_device_dirty(mem: &GuestMemory) {
    for region in mem.iter() {
        std::ops::Deref::deref(region).bitmap().reset();
    }
}

/// The pages dirty in either `kvm` (KVM's dirty log: the vCPUs' writes) or `devices`
/// ([`take_device_dirty`]), region by region. A region or word missing from one side
/// counts as clean there.
pub fn merge_dirty(kvm: &[Vec<u64>], devices: &[Vec<u64>]) -> Vec<Vec<u64>> {
    let empty = Vec::new();
    (0..kvm.len().max(devices.len()))
        .map(|i| {
            let a = kvm.get(i).unwrap_or(&empty);
            let b = devices.get(i).unwrap_or(&empty);
            (0..a.len().max(b.len()))
                .map(|w| a.get(w).copied().unwrap_or(0) | b.get(w).copied().unwrap_or(0))
                .collect()
        })
        .collect()
}

/// Map the memory file at `path` privately as guest memory with `regions`.
pub fn map_memory_file(
    path: &Path,
    regions: &[RegionInfo],
) -> Result<GuestMemory, MemoryFileError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| MemoryFileError::Io {
        path: name.clone(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| MemoryFileError::Io {
        path: name.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(MemoryFileError::Io {
            path: name,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let len = meta.len();
    let expected: u64 = regions.iter().map(|r| r.size).sum();
    if len != expected {
        return Err(MemoryFileError::Size {
            path: name,
            len,
            expected,
        });
    }
    let file = std::sync::Arc::new(file);
    let mut mapped = Vec::with_capacity(regions.len());
    let mut offset = 0u64;
    for r in regions {
        let map_err = |reason: String| MemoryFileError::Map {
            path: name.clone(),
            reason,
        };
        let size = usize::try_from(r.size).map_err(|_| map_err("region too large".into()))?;
        // A dirty bitmap like the one `create_guest_memory` gives every region, so the
        // devices' writes to a restored guest are tracked too.
        let mapping =
            MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::new(size, BITMAP_PAGE))
                .with_file_offset(FileOffset::from_arc(file.clone(), offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| map_err(format!("region at {:#x} overflows", r.guest_addr)))?;
        mapped.push(region);
        offset += r.size;
    }
    GuestMemory::from_regions(mapped).map_err(|e| MemoryFileError::Map {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Whether two guest memories hold the same bytes (for tests and checks).
pub fn same_contents(a: &GuestMemory, b: &GuestMemory) -> bool {
    let (ra, rb) = (regions(a), regions(b));
    if ra != rb {
        return false;
    }
    let mut x = vec![0u8; CHUNK];
    let mut y = vec![0u8; CHUNK];
    for r in ra {
        let mut off = 0;
        while off < r.size {
            let n = (r.size - off).min(CHUNK as u64) as usize;
            let at = GuestAddress(r.guest_addr + off);
            if a.read_slice(&mut x[..n], at).is_err()
                || b.read_slice(&mut y[..n], at).is_err()
                || x[..n] != y[..n]
            {
                return false;
            }
            off += n as u64;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vireo-snapmem-{}-{name}", std::process::id()))
    }

    fn guest(bytes: u64) -> GuestMemory {
        crate::memory::create_guest_memory(bytes, false).unwrap()
    }

    #[test]
    fn a_written_memory_file_maps_back_identical_and_sparse() {
        let mem = guest(32 << 20);
        mem.write_slice(b"first page", GuestAddress(0)).unwrap();
        mem.write_slice(&[0xab; 8192], GuestAddress(5 << 20))
            .unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress((32 << 20) - 4))
            .unwrap();
        let path = temp("full");
        let written = write_memory_file(&mem, &path).unwrap();
        assert_eq!(written, 4 * 4096, "only the non-zero pages");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 32 << 20);
        let restored = map_memory_file(&path, &regions(&mem)).unwrap();
        assert!(same_contents(&mem, &restored));

        // Private mapping: the restored guest's writes do not reach the file.
        restored.write_obj(7u64, GuestAddress(0)).unwrap();
        let again = map_memory_file(&path, &regions(&mem)).unwrap();
        assert!(same_contents(&mem, &again));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_restored_guest_can_snapshot_into_the_file_it_runs_on() {
        // Restored from `path`, then a full snapshot written to `path` again: the guest
        // keeps its memory (it once read zeros, the file truncated under its mapping),
        // and the new file holds what the guest has now, its private writes included.
        let mem = guest(16 << 20);
        mem.write_slice(&[0x5a; 3 * 4096], GuestAddress(1 << 20))
            .unwrap();
        let path = temp("self");
        write_memory_file(&mem, &path).unwrap();
        let restored = map_memory_file(&path, &regions(&mem)).unwrap();
        restored
            .write_slice(b"written after restore", GuestAddress(4 << 20))
            .unwrap();
        write_memory_file(&restored, &path).unwrap();
        let mut page = [0u8; 3 * 4096];
        restored
            .read_slice(&mut page, GuestAddress(1 << 20))
            .unwrap();
        assert!(
            page.iter().all(|&b| b == 0x5a),
            "the running guest lost its pages"
        );
        let again = map_memory_file(&path, &regions(&mem)).unwrap();
        assert!(same_contents(&restored, &again));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn dirty_pages_update_the_file() {
        let mem = guest(16 << 20);
        mem.write_slice(&[1; 4096], GuestAddress(0)).unwrap();
        let path = temp("diff");
        write_memory_file(&mem, &path).unwrap();
        mem.write_slice(&[2; 4096], GuestAddress(0)).unwrap();
        mem.write_slice(&[3; 4096], GuestAddress(70 * 4096))
            .unwrap();
        let mut bits = vec![0u64; (16 << 20) / 4096 / 64];
        bits[0] |= 1;
        bits[1] |= 1 << 6;
        let written = write_dirty_pages(&mem, &path, &[bits]).unwrap();
        assert_eq!(written, 2 * 4096);
        let restored = map_memory_file(&path, &regions(&mem)).unwrap();
        assert!(same_contents(&mem, &restored));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn writes_through_the_vmm_mapping_are_in_the_device_dirty_pages() {
        // Two regions (a guest above the MMIO hole would have two as well).
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 30), 1 << 20),
        ])
        .unwrap();
        assert!(take_device_dirty(&mem).iter().flatten().all(|&w| w == 0));
        mem.write_obj(1u32, GuestAddress(3 * 4096 + 8)).unwrap();
        // Across a page boundary: both pages.
        mem.write_slice(&[7; 16], GuestAddress((1 << 30) + 70 * 4096 - 8))
            .unwrap();
        let dirty = take_device_dirty(&mem);
        assert_eq!(dirty.len(), 2);
        assert_eq!(dirty[0][0], 1 << 3);
        assert!(dirty[0][1..].iter().all(|&w| w == 0));
        assert_eq!(dirty[1][1], (1 << 5) | (1 << 6));
        assert_eq!(dirty[1][0], 0);
        // Read and cleared.
        assert!(take_device_dirty(&mem).iter().flatten().all(|&w| w == 0));
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        reset_device_dirty(&mem);
        assert!(take_device_dirty(&mem).iter().flatten().all(|&w| w == 0));
        // Reads mark nothing.
        let _: u64 = mem.read_obj(GuestAddress(4096)).unwrap();
        assert!(take_device_dirty(&mem).iter().flatten().all(|&w| w == 0));
    }

    #[test]
    fn a_restored_memory_file_tracks_device_writes_too() {
        let mem = guest(16 << 20);
        let path = temp("bitmap");
        write_memory_file(&mem, &path).unwrap();
        let restored = map_memory_file(&path, &regions(&mem)).unwrap();
        restored.write_obj(5u64, GuestAddress(9 * 4096)).unwrap();
        let dirty = take_device_dirty(&restored);
        assert_eq!(dirty[0][0], 1 << 9);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn kvm_and_device_dirty_pages_are_merged() {
        let kvm = vec![vec![0b0011, 0], vec![1 << 63]];
        let dev = vec![vec![0b0110, 1 << 2], vec![0]];
        assert_eq!(
            merge_dirty(&kvm, &dev),
            vec![vec![0b0111, 1 << 2], vec![1 << 63]]
        );
        // A shorter side counts as clean.
        assert_eq!(merge_dirty(&kvm, &[]), kvm);
        assert_eq!(merge_dirty(&[vec![1]], &[vec![2, 4]]), vec![vec![3, 4]]);
    }

    #[test]
    fn a_diff_writes_the_pages_only_a_device_wrote() {
        // The guest memory a VMM has, written by a "device" (through Bytes) after the
        // Full snapshot: KVM's log is empty, the bitmap has the page, the file gets it.
        let mem = guest(16 << 20);
        mem.write_slice(&[1; 4096], GuestAddress(0)).unwrap();
        let path = temp("devdiff");
        write_memory_file(&mem, &path).unwrap();
        reset_device_dirty(&mem);
        mem.write_slice(&[9; 100], GuestAddress(33 * 4096 + 50))
            .unwrap();
        let kvm = vec![vec![0u64; (16 << 20) / 4096 / 64]];
        let dirty = merge_dirty(&kvm, &take_device_dirty(&mem));
        assert_eq!(write_dirty_pages(&mem, &path, &dirty).unwrap(), 4096);
        let restored = map_memory_file(&path, &regions(&mem)).unwrap();
        assert!(same_contents(&mem, &restored));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_of_the_wrong_size_is_refused() {
        let path = temp("short");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let regions = [RegionInfo {
            guest_addr: 0,
            size: 16 << 20,
        }];
        let err = map_memory_file(&path, &regions).unwrap_err();
        assert!(matches!(err, MemoryFileError::Size { .. }), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = map_memory_file(&path, &regions).unwrap_err();
        assert!(matches!(err, MemoryFileError::Io { .. }), "{err}");
    }
}
