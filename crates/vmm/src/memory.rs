//! Guest RAM: checking the requested size and laying it out around the 32-bit MMIO hole.
//!
//! RAM covers `[0, min(size, MMIO_HOLE_START))` and, for guests larger than that, resumes
//! at 4 GiB. Memory is mapped private, anonymous and `MAP_NORESERVE`, so the host only
//! backs the pages the guest touches; or, with huge pages (Firecracker's `huge_pages:
//! "2M"`), from the host's pool of 2 MiB hugetlb pages, reserved at the mapping (an
//! empty pool is an error at the build, not a SIGBUS later).

use vm_memory::GuestAddress;
use vm_memory::bitmap::AtomicBitmap;

use crate::arch::x86_64::layout::{DEVICE_MEMORY_ALIGN, MMIO_HOLE_START, RAM_ABOVE_4G_START};

/// Guest memory as Vireo uses it: the devices' type, with a dirty bitmap per region
/// (the pages written through the VMM's own mapping; KVM logs the vCPUs' writes).
pub type GuestMemory = virtio_devices::device::VmMemory;

/// Smallest guest Vireo builds: the boot structures below 1 MiB plus room for a kernel.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
/// Page size; guest memory is a whole number of pages.
const PAGE_SIZE: u64 = 4096;

/// Why guest memory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is below [`MIN_MEMORY_BYTES`].
    #[error("guest memory of {0} bytes is too small: at least 16 MiB is needed")]
    TooSmall(u64),
    /// The size is not a whole number of 4 KiB pages.
    #[error("guest memory of {0} bytes is not a whole number of 4 KiB pages")]
    Unaligned(u64),
    /// The host does not have that much memory.
    #[error("guest memory of {requested} MiB is more than this host has ({host} MiB)")]
    MoreThanHost {
        /// Requested MiB.
        requested: u64,
        /// Host total MiB.
        host: u64,
    },
    /// mmap failed.
    #[error("cannot map guest memory: {0}")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// A huge-page guest is not a whole number of 2 MiB pages.
    #[error("guest memory of {0} bytes is not a whole number of 2 MiB huge pages")]
    HugeUnaligned(u64),
    /// The host's hugetlb pool could not give the memory.
    #[error(
        "cannot map {mib} MiB of guest memory from 2 MiB huge pages: {reason} (the host has \
         {free} free of {total}: see /proc/sys/vm/nr_hugepages)"
    )]
    HugePages {
        /// MiB asked for.
        mib: u64,
        /// What mmap said.
        reason: String,
        /// The pool's free pages.
        free: u64,
        /// The pool's size.
        total: u64,
    },
}

/// Size of a huge page.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Check a requested size against the rules and what the host has.
pub fn check_size(bytes: u64, host_bytes: u64) -> Result<(), MemoryError> {
    if bytes < MIN_MEMORY_BYTES {
        return Err(MemoryError::TooSmall(bytes));
    }
    if !bytes.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::Unaligned(bytes));
    }
    if bytes > host_bytes {
        return Err(MemoryError::MoreThanHost {
            requested: bytes >> 20,
            host: host_bytes >> 20,
        });
    }
    Ok(())
}

/// Total RAM of the host, in bytes.
pub fn host_memory_bytes() -> u64 {
    // SAFETY: `sysinfo` only writes into the zeroed struct we pass it.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX; // Unknown: let the mmap decide.
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit))
}

/// The RAM regions for a guest of `bytes`: below the MMIO hole, then from 4 GiB.
pub fn ram_regions(bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = bytes.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low)];
    if bytes > low {
        regions.push((GuestAddress(RAM_ABOVE_4G_START), bytes - low));
    }
    regions
}

/// Where device memory (virtio-pmem regions) starts for a guest of `bytes` of RAM: the
/// first 1 GiB boundary at or above the end of RAM, and at least 4 GiB, so that it is
/// clear of RAM and of the 32-bit MMIO hole.
pub fn device_memory_start(bytes: u64) -> u64 {
    let ram_end = ram_regions(bytes)
        .last()
        .map_or(0, |(addr, len)| addr.0.saturating_add(*len));
    ram_end
        .max(RAM_ABOVE_4G_START)
        .checked_next_multiple_of(DEVICE_MEMORY_ALIGN)
        .unwrap_or(u64::MAX)
}

/// The guest physical addresses of device memory regions of `sizes` (each a whole
/// number of 2 MiB, as pmem regions are), one after the other from
/// [`device_memory_start`]; `None` if they would pass the end of the address space.
pub fn device_memory_layout(bytes: u64, sizes: &[u64]) -> Option<Vec<u64>> {
    let mut next = device_memory_start(bytes);
    sizes
        .iter()
        .map(|size| {
            let at = next;
            next = next.checked_add(*size)?;
            Some(at)
        })
        .collect()
}

/// Check `bytes` and map that much guest RAM, from 2 MiB huge pages if `huge_pages`.
pub fn create_guest_memory(bytes: u64, huge_pages: bool) -> Result<GuestMemory, MemoryError> {
    check_size(bytes, host_memory_bytes())?;
    if huge_pages {
        return create_huge_memory(bytes);
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(bytes)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    GuestMemory::from_ranges(&ranges).map_err(MemoryError::Map)
}

/// The regions from the hugetlb pool: private, anonymous, not `MAP_NORESERVE`, so the
/// kernel reserves every page at the mapping.
fn create_huge_memory(bytes: u64) -> Result<GuestMemory, MemoryError> {
    if !bytes.is_multiple_of(HUGE_PAGE_SIZE) {
        return Err(MemoryError::HugeUnaligned(bytes));
    }
    let fail = |reason: String| {
        let (free, total) = huge_pool();
        MemoryError::HugePages {
            mib: bytes >> 20,
            reason,
            free,
            total,
        }
    };
    let mut regions = Vec::new();
    for (addr, len) in ram_regions(bytes) {
        let size = usize::try_from(len).map_err(|_| fail("region too large".into()))?;
        let mapping = vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(
            size,
            AtomicBitmap::new(size, BITMAP_PAGE),
        )
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
        )
        .build()
        .map_err(|e| fail(e.to_string()))?;
        let region = vm_memory::GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| fail(format!("region at {:#x} overflows", addr.0)))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| fail(e.to_string()))
}

/// The devices' dirty bitmap granule, as `from_ranges` gives it.
const BITMAP_PAGE: std::num::NonZeroUsize = std::num::NonZeroUsize::new(4096).unwrap();

/// The host's 2 MiB pool: (free, total) pages, from /proc/meminfo (zeros if unreadable).
pub fn huge_pool() -> (u64, u64) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("HugePages_Free:"), field("HugePages_Total:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn small_guest_is_one_region_from_zero() {
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(
            ram_regions(MMIO_HOLE_START),
            vec![(GuestAddress(0), MMIO_HOLE_START)]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let regions = ram_regions(4 << 30);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), MMIO_HOLE_START),
                (
                    GuestAddress(RAM_ABOVE_4G_START),
                    (4 << 30) - MMIO_HOLE_START
                )
            ]
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn size_rules() {
        let host = 8 << 30;
        assert!(check_size(128 << 20, host).is_ok());
        assert!(matches!(
            check_size(1 << 20, host),
            Err(MemoryError::TooSmall(_))
        ));
        assert!(matches!(
            check_size((128 << 20) + 1, host),
            Err(MemoryError::Unaligned(_))
        ));
        let err = check_size(16 << 30, host).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest memory of 16384 MiB is more than this host has (8192 MiB)"
        );
    }

    #[test]
    fn device_memory_goes_above_ram_and_the_hole_on_a_1_gib_boundary() {
        const G: u64 = 1 << 30;
        assert_eq!(device_memory_start(128 << 20), 4 * G);
        assert_eq!(device_memory_start(MMIO_HOLE_START), 4 * G);
        // 3 GiB + 1 MiB: RAM ends at 4 GiB + 1 MiB.
        assert_eq!(device_memory_start(MMIO_HOLE_START + (1 << 20)), 5 * G);
        assert_eq!(device_memory_start(4 * G), 5 * G, "RAM up to 5 GiB");
        assert_eq!(device_memory_start(4 * G + 4096), 6 * G);
        for bytes in [16 << 20, 3 * G, 4 * G, 7 * G + 8192] {
            let start = device_memory_start(bytes);
            for (addr, len) in ram_regions(bytes) {
                assert!(addr.0 + len <= start, "{bytes}: RAM {addr:?}+{len:#x}");
            }
            assert!(start >= RAM_ABOVE_4G_START);
        }
        let two_mib = 2 << 20;
        assert_eq!(
            device_memory_layout(128 << 20, &[two_mib, 3 * two_mib, two_mib]),
            Some(vec![4 * G, 4 * G + two_mib, 4 * G + 4 * two_mib])
        );
        assert_eq!(device_memory_layout(128 << 20, &[]), Some(vec![]));
        assert_eq!(
            device_memory_layout(128 << 20, &[u64::MAX - 4 * G]),
            Some(vec![4 * G])
        );
        assert_eq!(device_memory_layout(128 << 20, &[u64::MAX - 3 * G]), None);
        assert_eq!(
            device_memory_layout(128 << 20, &[u64::MAX - 4 * G, 2]),
            None
        );
    }

    #[test]
    fn maps_a_large_guest_without_touching_it() {
        // 5 GiB of address space, reserved lazily: the hole stays unmapped.
        let mem = GuestMemory::from_ranges(
            &ram_regions(5 << 30)
                .into_iter()
                .map(|(a, l)| (a, l as usize))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(MMIO_HOLE_START - 1)));
        assert!(!mem.address_in_range(GuestAddress(MMIO_HOLE_START)));
        assert!(mem.address_in_range(GuestAddress(RAM_ABOVE_4G_START)));
    }
}
