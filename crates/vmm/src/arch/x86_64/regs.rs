//! Boot register state of a vCPU: general registers, segments, control registers, the
//! identity page tables for 64-bit entry, and the FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry bits: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry bits for a 2 MiB page: present, writable, page size.
const PDE_2M_PAGE: u64 = 0x83;
/// How many GiB the boot identity map covers (LAPIC and IOAPIC included).
const IDENTITY_MAP_GIB: u64 = 4;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, paging on, RSI = zero page (ELF vmlinux, bzImage 64-bit protocol).
    Long64,
    /// 32-bit protected mode, paging off, EBX = `hvm_start_info` (PVH).
    Pvh32,
}

/// Errors writing the boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The GDT or IDT could not be written.
    #[error("cannot write the boot GDT/IDT: {0}")]
    Gdt(#[source] vm_memory::GuestMemoryError),
    /// The page tables could not be written.
    #[error("cannot write the boot page tables: {0}")]
    PageTables(#[source] vm_memory::GuestMemoryError),
}

/// Write the boot GDT and an empty IDT into guest memory (shared by all vCPUs).
pub fn write_gdt<M: GuestMemoryBackend>(mem: &M, mode: EntryMode) -> Result<(), RegsError> {
    for (i, entry) in gdt::boot_gdt(mode == EntryMode::Long64).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::Gdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::Gdt)
}

/// Write identity page tables mapping the first 4 GiB with 2 MiB pages.
pub fn write_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(RegsError::PageTables)
    };
    write(PDPTE_START | PTE_PRESENT_RW, PML4_START)?;
    let mut pd = [0u8; 4096];
    for gib in 0..IDENTITY_MAP_GIB {
        let pd_addr = PDE_START + gib * 0x1000;
        write(pd_addr | PTE_PRESENT_RW, PDPTE_START + gib * 8)?;
        for (i, slot) in pd.chunks_exact_mut(8).enumerate() {
            let page = (gib << 30) | ((i as u64) << 21);
            slot.copy_from_slice(&(page | PDE_2M_PAGE).to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(pd_addr))
            .map_err(RegsError::PageTables)?;
    }
    Ok(())
}

/// General registers at entry.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // Bit 1 is reserved and always set; interrupts off.
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Long64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh32 => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// Update `sregs` (as read from KVM) for entry in `mode`: flat segments from the boot GDT,
/// protected mode, and for long mode PAE paging through the identity map.
pub fn set_boot_sregs(sregs: &mut kvm_sregs, mode: EntryMode) {
    let gdt = gdt::boot_gdt(mode == EntryMode::Long64);
    let code = gdt::kvm_segment_from_gdt(gdt[1], CODE_SELECTOR);
    let data = gdt::kvm_segment_from_gdt(gdt[2], DATA_SELECTOR);
    let tss = gdt::kvm_segment_from_gdt(gdt[3], TSS_SELECTOR);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Long64 => {
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh32 => {
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.efer = 0;
        }
    }
}

/// FPU state at entry: x87 control word and MXCSR at their reset values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Walk the page tables the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap<()>, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(PML4_START + ((va >> 39) & 0x1ff) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))
            .ok()?;
        if pde & 0x81 != 0x81 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = mem();
        write_page_tables(&mem).unwrap();
        for va in [0, 0x1000, 0x20_0000, 0x1234_5678, 0xfee0_0300, 0xffff_ffff] {
            assert_eq!(translate(&mem, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, 0x1_0000_0000), None);
        assert_eq!(translate(&mem, 1 << 39), None);
    }

    #[test]
    fn gdt_is_in_memory_for_both_modes() {
        let mem = mem();
        write_gdt(&mem, EntryMode::Long64).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, gdt::gdt_entry(gdt::CODE64_FLAGS, 0, 0xfffff));
        write_gdt(&mem, EntryMode::Pvh32).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, gdt::gdt_entry(gdt::CODE32_FLAGS, 0, 0xfffff));
    }

    #[test]
    fn long_mode_sregs() {
        let mut sregs = kvm_sregs::default();
        set_boot_sregs(&mut sregs, EntryMode::Long64);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(sregs.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (CODE_SELECTOR, 1));
        assert_eq!(sregs.ss.selector, DATA_SELECTOR);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode_without_paging() {
        let mut sregs = kvm_sregs::default();
        set_boot_sregs(&mut sregs, EntryMode::Pvh32);
        assert_eq!(sregs.cr0 & CR0_PG, 0);
        assert_eq!(sregs.cr0 & CR0_PE, CR0_PE);
        assert_eq!(sregs.efer, 0);
        assert_eq!(
            (sregs.cs.l, sregs.cs.db, sregs.cs.base, sregs.cs.limit),
            (0, 1, 0, 0xffff_ffff)
        );
        let regs = boot_regs(EntryMode::Pvh32, 0x100_0000);
        assert_eq!((regs.rip, regs.rbx), (0x100_0000, PVH_INFO_START));
    }

    #[test]
    fn long_mode_regs_point_at_the_zero_page() {
        let regs = boot_regs(EntryMode::Long64, 0x20_0000);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp, regs.rflags),
            (0x20_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
    }
}
