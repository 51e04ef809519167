//! What a kernel is told at entry: the Linux zero page (`boot_params`, with its e820 memory
//! map, command line and initrd) or the PVH `hvm_start_info` (with its memory map and
//! module list). linux-loader's configurators write the structures; this module fills them.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{CMDLINE_START, HIMEM_START, LOW_RAM_END, PVH_INFO_START, ZERO_PAGE_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Where the PVH module list goes, after `hvm_start_info` (56 bytes).
const PVH_MODLIST_START: u64 = PVH_INFO_START + 0x40;
/// Where the PVH memory map goes, after the single module entry.
const PVH_MEMMAP_START: u64 = PVH_INFO_START + 0x80;
/// Default `initrd_addr_max` for boot protocols before 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Most e820 entries the zero page holds.
const E820_MAX: usize = 128;

/// Errors filling or writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The memory map has more entries than the zero page holds.
    #[error("too many memory map entries ({0})")]
    TooManyE820Entries(usize),
    /// linux-loader could not write the structures.
    #[error("cannot write boot parameters: {0}")]
    Write(#[source] linux_loader::configurator::Error),
    /// The initrd does not fit below the kernel's limit.
    #[error(
        "initrd of {size} bytes does not fit in guest memory below {limit:#x} \
         (the kernel's initrd_addr_max, or the end of low RAM); give the guest more memory"
    )]
    InitrdTooLarge {
        /// Size of the initrd.
        size: u64,
        /// Highest address it could end at.
        limit: u64,
    },
}

/// Where the loaded initrd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// The guest's RAM as (start, length) ranges, with the legacy hole below 1 MiB cut out.
pub fn memory_map<M: GuestMemoryBackend>(mem: &M) -> Vec<(u64, u64)> {
    let mut map = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        if start < HIMEM_START {
            map.push((start, LOW_RAM_END.min(end) - start));
            if end > HIMEM_START {
                map.push((HIMEM_START, end - HIMEM_START));
            }
        } else {
            map.push((start, end - start));
        }
    }
    map
}

/// Highest page-aligned address at which `size` bytes fit in RAM of `mem` and end at or
/// below `addr_max` (inclusive limit, as the boot protocol's `initrd_addr_max`).
pub fn initrd_address<M: GuestMemoryBackend>(
    mem: &M,
    size: u64,
    addr_max: u64,
) -> Result<GuestAddress, BootError> {
    let too_large = BootError::InitrdTooLarge {
        size,
        limit: addr_max,
    };
    // The initrd goes in the first RAM region above 1 MiB that holds addresses below the limit.
    let (start, len) = memory_map(mem)
        .into_iter()
        .rfind(|&(start, _)| start >= HIMEM_START && start <= addr_max)
        .ok_or(BootError::InitrdTooLarge {
            size,
            limit: addr_max,
        })?;
    let end = (start + len).min(addr_max.saturating_add(1));
    let addr = end.checked_sub(size).ok_or(too_large)? & !0xfff;
    if addr < start {
        return Err(BootError::InitrdTooLarge {
            size,
            limit: addr_max,
        });
    }
    Ok(GuestAddress(addr))
}

/// The highest address the kernel accepts the initrd at: from its setup header (bzImage,
/// protocol 2.03+) or the protocol default.
pub fn initrd_addr_max(header: Option<&setup_header>) -> u64 {
    match header {
        Some(hdr) if hdr.version >= 0x0203 && hdr.initrd_addr_max != 0 => {
            u64::from(hdr.initrd_addr_max)
        }
        _ => DEFAULT_INITRD_ADDR_MAX,
    }
}

/// Fill the zero page for the Linux boot protocol and write it at [`ZERO_PAGE_START`].
/// `header` is the bzImage's own setup header; ELF kernels get a minimal one.
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
    rsdp: Option<GuestAddress>,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    match header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    // Read by kernels of boot protocol 2.14+; older ones scan 0xe0000..1 MiB for the RSDP.
    params.acpi_rsdp_addr = rsdp.map_or(0, |a| a.raw_value());
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = memory_map(mem);
    if map.len() > E820_MAX {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;

    let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(BootError::Write)?;
    Ok(params)
}

/// Fill `hvm_start_info` (command line, initrd as module 0, memory map) and write it, with
/// its tables, at [`PVH_INFO_START`].
pub fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    initrd: Option<InitrdRegion>,
    rsdp: Option<GuestAddress>,
) -> Result<hvm_start_info, BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.map_or(0, |a| a.raw_value()),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut boot = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    if let Some(initrd) = initrd {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
        boot = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: initrd.addr.raw_value(),
            size: initrd.size,
            ..Default::default()
        };
        boot.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&boot, mem).map_err(BootError::Write)?;
    Ok(start_info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_HOLE_START, RAM_ABOVE_4G_START};
    use crate::memory::ram_regions;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem(bytes: u64) -> GuestMemoryMmap<()> {
        let ranges: Vec<_> = ram_regions(bytes)
            .into_iter()
            .map(|(a, l)| (a, l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn memory_map_skips_legacy_hole_and_mmio_hole() {
        assert_eq!(
            memory_map(&mem(128 << 20)),
            vec![(0, LOW_RAM_END), (HIMEM_START, (128 << 20) - HIMEM_START)]
        );
        assert_eq!(
            memory_map(&mem(4 << 30)),
            vec![
                (0, LOW_RAM_END),
                (HIMEM_START, MMIO_HOLE_START - HIMEM_START),
                (RAM_ABOVE_4G_START, (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn zero_page_for_elf_kernel() {
        let mem = mem(128 << 20);
        let initrd = InitrdRegion {
            addr: GuestAddress(0x700_0000),
            size: 0x12345,
        };
        write_zero_page(&mem, None, 42, Some(initrd), Some(GuestAddress(0xe0000))).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x700_0000, 0x12345)
        );
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(params.e820_entries, 2);
        let e = params.e820_table;
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
            (0, LOW_RAM_END, E820_RAM)
        );
        assert_eq!(
            ({ e[1].addr }, { e[1].size }),
            (HIMEM_START, (128 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn zero_page_keeps_bzimage_header() {
        let mem = mem(128 << 20);
        let hdr = setup_header {
            header: KERNEL_HDR_MAGIC,
            version: 0x020f,
            setup_sects: 27,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        write_zero_page(&mem, Some(hdr), 10, None, None).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(
            ({ params.hdr.version }, { params.hdr.setup_sects }),
            (0x020f, 27)
        );
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
        assert_eq!(
            ({ params.hdr.ramdisk_image }, { params.hdr.ramdisk_size }),
            (0, 0)
        );
    }

    #[test]
    fn pvh_start_info_with_initrd_and_memmap() {
        let mem = mem(5 << 30);
        let initrd = InitrdRegion {
            addr: GuestAddress(0x800_0000),
            size: 0x1000,
        };
        write_pvh_start_info(&mem, Some(initrd), Some(GuestAddress(0xe0000))).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!((info.magic, info.version), (XEN_HVM_START_MAGIC, 1));
        assert_eq!(
            (info.cmdline_paddr, info.rsdp_paddr),
            (CMDLINE_START, 0xe0000)
        );
        assert_eq!(
            (info.nr_modules, info.modlist_paddr),
            (1, PVH_MODLIST_START)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x800_0000, 0x1000));
        assert_eq!(info.memmap_entries, 3);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (RAM_ABOVE_4G_START, (5 << 30) - MMIO_HOLE_START, E820_RAM)
        );
        // The structures do not overlap.
        assert!(PVH_MODLIST_START >= PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64);
        assert!(
            PVH_MEMMAP_START >= PVH_MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64
        );
    }

    #[test]
    fn pvh_start_info_without_initrd() {
        let mem = mem(128 << 20);
        let info = write_pvh_start_info(&mem, None, None).unwrap();
        assert_eq!(
            (info.nr_modules, info.modlist_paddr, info.memmap_entries),
            (0, 0, 2)
        );
    }

    #[test]
    fn initrd_goes_high_and_page_aligned_below_the_limit() {
        let guest = mem(128 << 20);
        let addr = initrd_address(&guest, 0x1801, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(addr.raw_value(), ((128 << 20) - 0x1801) & !0xfff);
        // A limit inside RAM is honoured (inclusive).
        let addr = initrd_address(&guest, 0x1000, 0x3ff_ffff).unwrap();
        assert_eq!(addr.raw_value(), 0x400_0000 - 0x1000);
        // Large guests keep it below the limit, not above 4 GiB.
        let big = mem(8 << 30);
        let addr = initrd_address(&big, 0x10_0000, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(addr.raw_value(), 0x3800_0000 - 0x10_0000);
    }

    #[test]
    fn initrd_too_large_is_refused() {
        let small = mem(16 << 20);
        let err = initrd_address(&small, 16 << 20, DEFAULT_INITRD_ADDR_MAX).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { size, .. } if size == 16 << 20));
        assert!(err.to_string().contains("give the guest more memory"));
    }

    #[test]
    fn initrd_addr_max_from_header() {
        let mut hdr = setup_header {
            version: 0x0202,
            initrd_addr_max: 0x1234,
            ..Default::default()
        };
        assert_eq!(initrd_addr_max(Some(&hdr)), DEFAULT_INITRD_ADDR_MAX);
        hdr.version = 0x0203;
        assert_eq!(initrd_addr_max(Some(&hdr)), 0x1234);
        assert_eq!(initrd_addr_max(None), DEFAULT_INITRD_ADDR_MAX);
    }
}
