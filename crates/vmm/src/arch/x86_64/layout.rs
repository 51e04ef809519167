//! The x86-64 guest physical memory map Vireo builds.
//!
//! Low memory (below 1 MiB) holds the boot structures at fixed places, as the Linux boot
//! protocol and PVH expect; RAM runs from 0 up to the 32-bit MMIO hole and continues at
//! 4 GiB for large guests.

/// GDT for the boot vCPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT loaded at entry (the guest installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (grows down below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot identity map; PDPT and PDs follow page by page.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages) mapping 0..4 GiB.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line Vireo accepts (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional low memory; 0xa0000..1 MiB is the legacy VGA/BIOS hole.
pub const LOW_RAM_END: u64 = EBDA_START;
/// The VM generation ID's page ([`crate::devices::vmgenid`]): in the legacy hole, which
/// the memory maps leave out of RAM, just below the ACPI tables.
pub const VMGENID_START: u64 = 0xd_f000;
/// Length of the VM generation ID's page (the ID is its first 16 bytes).
pub const VMGENID_LEN: u64 = 0x1000;
/// Where high memory starts; kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole below 4 GiB (virtio-mmio, IOAPIC, LAPIC live here).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address past 32 bits; RAM resumes here when the guest is larger than the hole start.
pub const RAM_ABOVE_4G_START: u64 = 0x1_0000_0000;
/// Size of the MMIO hole.
pub const MMIO_HOLE_SIZE: u64 = RAM_ABOVE_4G_START - MMIO_HOLE_START;
/// Device memory (virtio-pmem regions) starts at the first multiple of this at or above
/// both the end of RAM and 4 GiB: above everything else the guest has, out of RAM and of
/// the 32-bit MMIO hole.
pub const DEVICE_MEMORY_ALIGN: u64 = 1 << 30;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) for real-mode emulation on Intel, inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
