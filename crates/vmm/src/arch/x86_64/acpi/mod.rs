//! The ACPI tables that describe the machine to a guest: its vCPUs, its interrupt
//! controllers, how to power it off or reset it, and the devices it cannot probe for.
//!
//! Kernels built without `CONFIG_X86_MPPARSE` ignore the MP table and find the vCPUs only
//! through the MADT. This module owns the byte layout of the tables and writes them, once,
//! into the legacy BIOS area of guest memory; it touches nothing but guest memory and knows
//! nothing of KVM. The `acpi_tables` crate encodes the tables and computes their checksums.
//!
//! # Layout
//!
//! The RSDP sits at [`ACPI_START`] (0xe0000), where Linux's scan of the BIOS area
//! (0xe0000..0xfffff, 16-byte steps) finds it even when the boot protocol does not carry its
//! address. The other tables follow it, each on a 16-byte boundary:
//!
//! | table | points at     | what                                                          |
//! |-------|---------------|---------------------------------------------------------------|
//! | RSDP  | XSDT          | revision 2, no RSDT                                           |
//! | DSDT  |               | `\_S5_`, and `\_SB_` with the devices handed in and the VM    |
//! |       |               | generation ID's `VGEN` and `GED_` ([`VmGenIdAcpi`])           |
//! | MADT  |               | local APICs, the IOAPIC, the LINT1 NMI                        |
//! | FADT  | DSDT (X_DSDT) | hardware-reduced ACPI: sleep control/status and reset regs    |
//! | XSDT  | FADT, MADT    |                                                               |
//!
//! All of it must end below 1 MiB ([`ACPI_END`]); the caller backs the range with guest
//! memory and keeps it out of the e820 RAM map (Vireo's map leaves 0xa0000..1 MiB out).
//!
//! # Hardware-reduced ACPI, and the interrupts of the ISA devices
//!
//! The FADT sets HW_REDUCED_ACPI: no PM1 blocks, no SCI, no GPEs, no FACS. Power-off and
//! reset go through the three registers of the ACPI PM device
//! ([`crate::devices::legacy::acpi_pm`]): the guest reads SLP_TYP for S5 from `\_S5_`
//! ([`S5_SLP_TYP`], shared with the device) and writes it with SLP_EN to the sleep control
//! register; it resets by writing [`RESET_VALUE`] to the reset register.
//!
//! On such a platform Linux drops the legacy 8259 PIC (`null_legacy_pic`) and with it
//! every implicit ISA interrupt: it neither identity-maps ISA IRQs 0-15 to IOAPIC pins nor
//! reserves IRQ numbers 0-15 for them, and it never sets up the PIT (IRQ 0), timing with
//! the local APIC timer instead. An ISA device therefore gets an interrupt only if the DSDT
//! names its line in the device's `_CRS`. Hence:
//!
//! - The caller lists the devices that need an interrupt or a driver that probes by ACPI
//!   id, as [`DsdtDevice`]s: COM1 ([`DsdtDevice::uart_16550`], IRQ 4), the i8042
//!   ([`DsdtDevice::i8042`], IRQ 1) and the CMOS RTC ([`DsdtDevice::cmos_rtc`], no IRQ: Vireo's
//!   RTC raises none). Left out, Linux still finds them at their fixed ports, but their
//!   drivers ask for the fixed ISA IRQ numbers, which no longer exist: the console still
//!   prints (it polls), but opening ttyS0 fails and rtc_cmos does not probe. Later,
//!   virtio-mmio devices join the same list.
//! - The MADT carries no Interrupt Source Overrides. An override only says "ISA IRQ n
//!   arrives at GSI m, with these flags"; KVM's default routing wires GSI n to IOAPIC pin n
//!   (and PIC pin n) for n < 16, the identity the ACPI default assumes, and the only ISA
//!   IRQ whose pin differs on real PCs, IRQ 0 (pin 2 on QEMU's board), is the PIT's, which a
//!   hardware-reduced Linux never uses. An "IRQ 0 -> GSI 2" override would even be wrong
//!   for KVM's routing. The IOAPIC starts at GSI 0, so a `_CRS` GSI is its pin, and the
//!   `_CRS` descriptors carry the trigger mode and polarity the overrides would.
//!
//! # MADT
//!
//! vCPU `i` is processor UID `i` with local APIC id `i`, enabled; the IOAPIC gets id
//! `num_cpus` (as in the MP table) and GSI base 0. The local APIC NMI entry wires LINT1 of
//! every processor (UID 0xff) to the NMI, as [`super::interrupts`] programs it. The flags
//! say PCAT_COMPAT: KVM emulates the 8259 pair next to the IOAPIC.
//!
//! # Where things are
//!
//! This module builds the tables and writes them: their constants, [`AcpiConfig`],
//! [`AcpiError`] and [`setup_acpi_tables`]. What the DSDT says about a device —
//! [`DsdtDevice`], its [`DsdtResource`]s and their AML — is the `dsdt` submodule's, and
//! re-exported here.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{APIC_START, HIMEM_START, IOAPIC_START};
use crate::devices::legacy::acpi_pm::{AcpiPmPorts, RESET_VALUE, S5_SLP_TYP};

mod dsdt;
mod vmgenid;

pub use dsdt::{DsdtDevice, DsdtResource, IrqPolarity, IrqTrigger};
pub use vmgenid::{GED_DEVICE_NAME, VMGENID_DEVICE_NAME, VmGenIdAcpi};

/// Where the RSDP, and with it the ACPI tables, start: the first address Linux's scan of
/// the BIOS area looks at.
pub const ACPI_START: u64 = 0xe_0000;
/// The tables end at or below this address (1 MiB).
pub const ACPI_END: u64 = HIMEM_START;
/// Most vCPUs the MADT describes ([`super::MAX_VCPUS`]).
pub const MAX_CPUS: u32 = super::MAX_VCPUS;

/// OEM id of every table (6 bytes, space padded).
const OEM_ID: [u8; 6] = *b"VIREO ";
/// OEM table id of every table (8 bytes, space padded).
const OEM_TABLE_ID: [u8; 8] = *b"VIREOVM ";
/// OEM revision of every table.
const OEM_REVISION: u32 = 1;
/// FADT hypervisor vendor identity (8 bytes, space padded).
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"VIREO   ";
/// Every table starts on a 16-byte boundary (the RSDP must).
const TABLE_ALIGN: u64 = 16;

/// Length of a table header; the DSDT's AML and the MADT's fields follow it.
const HEADER_LEN: u32 = 36;
/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// MADT revision (ACPI 6.3).
const MADT_REVISION: u8 = 5;
/// Length of the MADT's fixed part: header, local APIC address, flags.
const MADT_FIXED_LEN: u32 = 44;
/// MADT flags: the machine also has a PC-AT dual 8259 set-up.
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// MADT structure type of a local APIC NMI.
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// Length of a local APIC NMI structure.
const MADT_LOCAL_APIC_NMI_LEN: u8 = 6;
/// Processor UID meaning "every processor".
const ALL_PROCESSORS: u8 = 0xff;
/// MPS INTI flags: polarity and trigger mode conform to the bus (edge, active high).
const INTI_FLAGS_CONFORMING: u16 = 0;
/// The local APIC pin the NMI comes in on.
const NMI_LINT: u8 = 1;

/// IA-PC boot architecture flags: there are ISA devices the OS must drive (COM1).
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
/// IA-PC boot architecture flags: an 8042 is present (Linux probes it, and resets by it).
const IAPC_8042: u16 = 1 << 1;
/// IA-PC boot architecture flags: probing for VGA is not safe (there is none).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IA-PC boot architecture flags: MSIs must not be enabled (there is no PCI).
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// The IA-PC boot architecture flags Vireo reports. Bit 5 (CMOS RTC not present) stays
/// clear: the RTC is at 0x70.
const IAPC_BOOT_ARCH: u16 =
    IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED;

/// Errors of building and writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// A machine needs at least one vCPU.
    #[error("the ACPI tables need at least one vCPU")]
    NoCpus,
    /// More vCPUs than xAPIC ids below the IOAPIC's and the broadcast id.
    #[error("{0} vCPUs do not fit in the MADT (at most {MAX_CPUS})")]
    TooManyCpus(u32),
    /// An ACPI name is four characters: A-Z or '_', then A-Z, 0-9 or '_'.
    #[error("{0:?} is not a valid ACPI device name")]
    InvalidName(String),
    /// A hardware id is a PNP id ("PNP0501") or an ACPI id ("LNRO0005").
    #[error("{0:?} is not a valid PNP or ACPI hardware id")]
    InvalidHid(String),
    /// Two devices in the DSDT have the same name.
    #[error("more than one DSDT device is named {0:?}")]
    DuplicateName(String),
    /// The tables would run past 1 MiB.
    #[error("the ACPI tables ({size:#x} bytes from {start:#x}) do not fit below 1 MiB")]
    TooLarge {
        /// Guest physical address the tables start at.
        start: u64,
        /// Size of the tables in bytes.
        size: u64,
    },
    /// Guest memory does not cover the tables.
    #[error("guest memory does not cover the ACPI tables at {start:#x}+{size:#x}")]
    DoesNotFit {
        /// Guest physical address the tables start at.
        start: u64,
        /// Size of the tables in bytes.
        size: u64,
    },
    /// Writing the tables into guest memory failed.
    #[error("failed to write the ACPI tables into guest memory")]
    Write(#[source] GuestMemoryError),
}

/// What [`setup_acpi_tables`] describes.
#[derive(Debug, Clone, Copy)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs, 1..=[`MAX_CPUS`].
    pub num_cpus: u32,
    /// Where the ACPI PM device's registers are.
    pub pm: AcpiPmPorts,
    /// The devices the DSDT lists in `\_SB_`, with unique names.
    pub devices: &'a [DsdtDevice],
    /// The VM generation ID, if the machine has one: the `VGEN` and `GED_` devices.
    pub vmgenid: Option<VmGenIdAcpi>,
}

/// The DSDT: `\_S5_`, the devices and the VM generation ID's two.
fn dsdt(devices: &[DsdtDevice], vmgenid: Option<&VmGenIdAcpi>) -> Result<Sdt, AcpiError> {
    let fixed: &[&str] = match vmgenid {
        Some(_) => &[VMGENID_DEVICE_NAME, GED_DEVICE_NAME],
        None => &[],
    };
    for (i, device) in devices.iter().enumerate() {
        if devices[..i].iter().any(|d| d.name() == device.name()) || fixed.contains(&device.name())
        {
            return Err(AcpiError::DuplicateName(device.name().to_owned()));
        }
    }
    let mut body = Vec::new();
    // SLP_TYPa = S5 for the sleep control register; SLP_TYPb has no register here.
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLP_TYP, &0u8]))
        .to_aml_bytes(&mut body);
    let mut children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    if let Some(vmgenid) = vmgenid {
        children.push(vmgenid);
    }
    if !children.is_empty() {
        aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);
    }
    let mut table = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&body);
    Ok(table)
}

/// The MADT for `num_cpus` (1..=[`MAX_CPUS`]) vCPUs.
fn madt(num_cpus: u8) -> Sdt {
    let mut table = Sdt::new(
        *b"APIC",
        MADT_FIXED_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // Both below 4 GiB by construction of the layout.
    table.write_u32(36, APIC_START as u32);
    table.write_u32(40, MADT_PCAT_COMPAT);

    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(num_cpus, IOAPIC_START as u32, 0).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&[MADT_LOCAL_APIC_NMI, MADT_LOCAL_APIC_NMI_LEN, ALL_PROCESSORS]);
    entries.extend_from_slice(&INTI_FLAGS_CONFORMING.to_le_bytes());
    entries.push(NMI_LINT);
    table.append_slice(&entries);
    table
}

/// An 8-bit register at I/O `port`, as the FADT's generic address structures give it.
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT (revision 6.5) of a hardware-reduced machine whose DSDT is at `dsdt`.
fn fadt(dsdt: u64, pm: AcpiPmPorts) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .preferred_pm_profile(PmProfile::EnterpriseServer);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_register(pm.reset);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_register(pm.sleep_control);
    fadt.sleep_status_reg = io_register(pm.sleep_status);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// `addr` rounded up to the table alignment.
fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

/// Build the ACPI tables for `config` and write them from [`ACPI_START`] on; returns the
/// address of the RSDP.
///
/// Nothing is written unless every table fits below [`ACPI_END`] and in guest memory.
pub fn setup_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    config: &AcpiConfig<'_>,
) -> Result<GuestAddress, AcpiError> {
    let num_cpus = match config.num_cpus {
        0 => return Err(AcpiError::NoCpus),
        n if n > MAX_CPUS => return Err(AcpiError::TooManyCpus(n)),
        // At most MAX_CPUS (254), checked above.
        n => n as u8,
    };

    // Place the tables one after the other, each built once the tables it points at have
    // their places; the RSDP's place is fixed, ahead of them all, so it is built last.
    let rsdp_addr = ACPI_START;
    let dsdt = dsdt(config.devices, config.vmgenid.as_ref())?;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let madt = madt(num_cpus);
    let madt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt_addr = align(madt_addr + madt.len() as u64);
    let fadt = fadt(dsdt_addr, config.pm);
    let xsdt_addr = align(fadt_addr + fadt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);

    let end = xsdt_addr + xsdt_bytes.len() as u64;
    let size = end - ACPI_START;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            start: ACPI_START,
            size,
        });
    }
    // `size` is below 1 MiB here.
    if !mem.check_range(GuestAddress(ACPI_START), size as usize) {
        return Err(AcpiError::DoesNotFit {
            start: ACPI_START,
            size,
        });
    }

    for (bytes, addr) in [
        (rsdp.as_slice(), rsdp_addr),
        (dsdt.as_slice(), dsdt_addr),
        (madt.as_slice(), madt_addr),
        (fadt.as_slice(), fadt_addr),
        (xsdt_bytes.as_slice(), xsdt_addr),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(GuestAddress(rsdp_addr))
}

/// Reading the tables back out of guest memory, and checking them on the way: shared by the
/// tests of this module and of `dsdt`.
#[cfg(test)]
mod test_util {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    pub(super) const MIB: usize = 1 << 20;

    pub(super) fn memory(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    pub(super) fn config(num_cpus: u32, devices: &[DsdtDevice]) -> AcpiConfig<'_> {
        AcpiConfig {
            num_cpus,
            pm: AcpiPmPorts::default(),
            devices,
            vmgenid: None,
        }
    }

    /// The PC devices the builder lists.
    pub(super) fn pc_devices() -> Vec<DsdtDevice> {
        vec![
            DsdtDevice::uart_16550("COM1", 1, 0x3f8, 4).unwrap(),
            DsdtDevice::i8042(0x60, 0x64, Some(1)),
            DsdtDevice::cmos_rtc(0x70),
        ]
    }

    pub(super) fn bytes(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    pub(super) fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// A table at `addr` with signature `sig`: checks its length field and checksum and
    /// that it lies in the BIOS area, and returns its bytes.
    pub(super) fn table(mem: &GuestMemoryMmap<()>, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        assert!((ACPI_START..ACPI_END).contains(&addr), "{addr:#x}");
        assert_eq!(addr % TABLE_ALIGN, 0, "{addr:#x}");
        let header = bytes(mem, addr, 36);
        assert_eq!(&header[..4], sig);
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36);
        assert!(addr + len as u64 <= ACPI_END);
        let t = bytes(mem, addr, len);
        assert_eq!(sum(&t), 0, "checksum of {}", String::from_utf8_lossy(sig));
        assert_eq!(&t[10..16], b"VIREO ");
        assert_eq!(&t[16..24], b"VIREOVM ");
        t
    }

    /// The RSDP, checked; returns the XSDT's address.
    pub(super) fn rsdp(mem: &GuestMemoryMmap<()>) -> u64 {
        let r = bytes(mem, ACPI_START, 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        assert_eq!(&r[9..15], b"VIREO ");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(u32_at(&r, 16), 0, "no RSDT");
        assert_eq!(u32_at(&r, 20), 36, "length");
        u64_at(&r, 24)
    }

    /// The tables XSDT lists, by signature: (signature, address).
    pub(super) fn xsdt_entries(mem: &GuestMemoryMmap<()>) -> Vec<([u8; 4], u64)> {
        let xsdt = table(mem, rsdp(mem), b"XSDT");
        assert_eq!((xsdt.len() - 36) % 8, 0);
        xsdt[36..]
            .chunks(8)
            .map(|c| {
                let addr = u64::from_le_bytes(c.try_into().unwrap());
                let sig: [u8; 4] = bytes(mem, addr, 4).try_into().unwrap();
                (sig, addr)
            })
            .collect()
    }

    pub(super) fn find(mem: &GuestMemoryMmap<()>, sig: &[u8; 4]) -> Vec<u8> {
        let entries = xsdt_entries(mem);
        let (_, addr) = entries.iter().find(|(s, _)| s == sig).unwrap();
        table(mem, *addr, sig)
    }

    pub(super) fn fadt_of(mem: &GuestMemoryMmap<()>) -> Vec<u8> {
        find(mem, b"FACP")
    }

    pub(super) fn dsdt_of(mem: &GuestMemoryMmap<()>) -> Vec<u8> {
        let fadt = fadt_of(mem);
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        table(mem, u64_at(&fadt, 140), b"DSDT")
    }

    pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    pub(super) fn setup(num_cpus: u32, devices: &[DsdtDevice]) -> GuestMemoryMmap<()> {
        let mem = memory(2 * MIB);
        let rsdp = setup_acpi_tables(&mem, &config(num_cpus, devices)).unwrap();
        assert_eq!(rsdp, GuestAddress(ACPI_START));
        mem
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use crate::devices::legacy::acpi_pm::{ACPI_PM_BASE, S5_SLEEP_CONTROL};

    #[test]
    fn rsdp_points_at_an_xsdt_listing_fadt_and_madt() {
        let mem = setup(1, &pc_devices());
        let sigs: Vec<[u8; 4]> = xsdt_entries(&mem).into_iter().map(|(s, _)| s).collect();
        assert_eq!(sigs, [*b"FACP", *b"APIC"]);
    }

    #[test]
    fn tables_do_not_overlap_and_end_below_1mib() {
        let mem = setup(254, &pc_devices());
        let mut spans = vec![(ACPI_START, 36), (rsdp(&mem), 0)];
        let xsdt = table(&mem, spans[1].0, b"XSDT");
        spans[1].1 = xsdt.len();
        for (sig, addr) in xsdt_entries(&mem) {
            spans.push((addr, table(&mem, addr, &sig).len()));
        }
        let dsdt_addr = u64_at(&fadt_of(&mem), 140);
        spans.push((dsdt_addr, dsdt_of(&mem).len()));
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].0 + pair[0].1 as u64 <= pair[1].0, "{spans:x?}");
        }
        let (last, len) = spans[spans.len() - 1];
        assert!(last + len as u64 <= ACPI_END);
        // Nothing past the tables was touched.
        assert_eq!(bytes(&mem, last + len as u64, 16), [0; 16]);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_pm_registers() {
        let mem = setup(2, &[]);
        let fadt = fadt_of(&mem);
        assert_eq!(fadt.len(), 276);
        assert_eq!((fadt[8], fadt[131]), (6, 5), "revision 6.5");
        let flags = u32_at(&fadt, 112);
        for bit in [20, 10, 4, 5] {
            assert_ne!(flags & (1 << bit), 0, "flag bit {bit}");
        }
        assert_eq!(flags & !(1 << 20 | 1 << 10 | 1 << 4 | 1 << 5), 0);
        assert_eq!(fadt[45], 4, "preferred PM profile: enterprise server");
        let boot_arch = u16_at(&fadt, 109);
        assert_eq!(boot_arch & 0b1110, 0b1110, "8042, no VGA, no MSI");
        assert_eq!(boot_arch & (1 << 5), 0, "CMOS RTC present");
        assert_eq!(u32_at(&fadt, 36), 0, "no FACS");
        assert_eq!(u64_at(&fadt, 132), 0, "no FACS");

        // Generic address structures: I/O space, 8 bits at offset 0, byte access.
        let io_gas = |port: u64| {
            let mut gas = vec![1u8, 8, 0, 1];
            gas.extend_from_slice(&port.to_le_bytes());
            gas
        };
        assert_eq!(
            fadt[116..128],
            io_gas(ACPI_PM_BASE + 2)[..],
            "reset register"
        );
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(fadt[244..256], io_gas(ACPI_PM_BASE)[..], "sleep control");
        assert_eq!(fadt[256..268], io_gas(ACPI_PM_BASE + 1)[..], "sleep status");
        // PM1, PM timer and GPE blocks are all absent.
        assert!(fadt[148..244].iter().all(|b| *b == 0));
        assert!(fadt[56..96].iter().all(|b| *b == 0));
        assert_eq!(&fadt[268..276], b"VIREO   ");
    }

    #[test]
    fn fadt_follows_the_pm_ports_it_is_given() {
        let mem = memory(2 * MIB);
        let pm = AcpiPmPorts::at(0xb000);
        setup_acpi_tables(
            &mem,
            &AcpiConfig {
                num_cpus: 1,
                pm,
                devices: &[],
                vmgenid: None,
            },
        )
        .unwrap();
        let fadt = fadt_of(&mem);
        assert_eq!(u64_at(&fadt, 120), 0xb002);
        assert_eq!(u64_at(&fadt, 248), 0xb000);
        assert_eq!(u64_at(&fadt, 260), 0xb001);
    }

    /// MADT structures after the fixed part, each whole (type and length included).
    fn madt_entries(madt: &[u8]) -> Vec<Vec<u8>> {
        let mut entries = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let len = madt[at + 1] as usize;
            assert!(len >= 2 && at + len <= madt.len());
            entries.push(madt[at..at + len].to_vec());
            at += len;
        }
        entries
    }

    fn check_madt(num_cpus: u32) {
        let mem = setup(num_cpus, &pc_devices());
        let madt = find(&mem, b"APIC");
        assert_eq!(madt[8], MADT_REVISION);
        assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
        assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
        let entries = madt_entries(&madt);
        let n = num_cpus as usize;
        // Nothing but these: no interrupt source overrides (see the module docs).
        assert_eq!(entries.len(), n + 2);
        for (i, lapic) in entries[..n].iter().enumerate() {
            // Type 0, length 8, UID i, APIC id i, enabled.
            assert_eq!(lapic[..], [0, 8, i as u8, i as u8, 1, 0, 0, 0]);
        }
        // Type 1, length 12, id num_cpus, reserved, address, GSI base 0.
        let mut ioapic = vec![1, 12, num_cpus as u8, 0];
        ioapic.extend_from_slice(&0xfec0_0000u32.to_le_bytes());
        ioapic.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(entries[n], ioapic);
        // Type 4, length 6, every processor, conforming flags, LINT1.
        assert_eq!(entries[n + 1][..], [4, 6, 0xff, 0, 0, 1]);
    }

    #[test]
    fn madt_lists_every_vcpu() {
        check_madt(1);
        check_madt(2);
        check_madt(64);
    }

    #[test]
    fn madt_lists_the_most_vcpus() {
        check_madt(MAX_CPUS);
    }

    #[test]
    fn refuses_vcpu_counts_without_apic_ids() {
        let mem = memory(2 * MIB);
        assert!(matches!(
            setup_acpi_tables(&mem, &config(0, &[])),
            Err(AcpiError::NoCpus)
        ));
        assert!(matches!(
            setup_acpi_tables(&mem, &config(255, &[])),
            Err(AcpiError::TooManyCpus(255))
        ));
        assert!(matches!(
            setup_acpi_tables(&mem, &config(u32::MAX, &[])),
            Err(AcpiError::TooManyCpus(u32::MAX))
        ));
        assert_eq!(bytes(&mem, ACPI_START, 64), [0; 64]);
    }

    #[test]
    fn dsdt_offers_s5_with_the_pm_device_sleep_type() {
        let mem = setup(1, &[]);
        let dsdt = dsdt_of(&mem);
        assert_eq!(dsdt[8], 2, "revision");
        // Name (_S5_, Package (2) { 5, 0 }): NameOp, name, PackageOp, length, count,
        // BytePrefix 5, ZeroOp.
        assert_eq!(
            dsdt[36..],
            [0x08, b'_', b'S', b'5', b'_', 0x12, 5, 2, 0x0a, 5, 0]
        );
        assert_eq!(S5_SLP_TYP, 5);
        assert_eq!(S5_SLEEP_CONTROL, (S5_SLP_TYP << 2) | (1 << 5));
    }

    #[test]
    fn refuses_duplicate_device_names() {
        let mem = memory(2 * MIB);
        let devices = [
            DsdtDevice::cmos_rtc(0x70),
            DsdtDevice::uart_16550("COM1", 1, 0x3f8, 4).unwrap(),
            DsdtDevice::cmos_rtc(0x72),
        ];
        assert!(matches!(
            setup_acpi_tables(&mem, &config(1, &devices)),
            Err(AcpiError::DuplicateName(n)) if n == "RTC_"
        ));
        assert_eq!(bytes(&mem, ACPI_START, 64), [0; 64]);
    }

    const VMGENID: VmGenIdAcpi = VmGenIdAcpi {
        addr: 0xd_f000,
        gsi: 23,
    };

    fn setup_with_vmgenid(devices: &[DsdtDevice]) -> vm_memory::GuestMemoryMmap<()> {
        let mem = memory(2 * MIB);
        let config = AcpiConfig {
            vmgenid: Some(VMGENID),
            ..config(2, devices)
        };
        setup_acpi_tables(&mem, &config).unwrap();
        mem
    }

    #[test]
    fn dsdt_holds_the_generation_id_and_its_event_device_in_sb() {
        let dsdt = dsdt_of(&setup_with_vmgenid(&pc_devices()));
        let mut vmgenid = Vec::new();
        VMGENID.to_aml_bytes(&mut vmgenid);
        let at = dsdt
            .windows(vmgenid.len())
            .position(|w| w == vmgenid)
            .expect("the VGEN and GED_ devices");
        // After the PC devices, inside \_SB_ (ScopeOp, a PkgLength reaching past them).
        let scope = dsdt.iter().position(|b| *b == 0x10).unwrap();
        assert_eq!(&dsdt[scope + 3..scope + 8], b"\\_SB_", "two-byte PkgLength");
        let scope_len = (dsdt[scope + 1] & 0xf) as usize | (dsdt[scope + 2] as usize) << 4;
        assert_eq!(
            scope + 1 + scope_len,
            dsdt.len(),
            "the scope ends the table"
        );
        assert!(at > scope && contains(&dsdt[..at], b"RTC_"));
        // Without it, neither device.
        let plain = dsdt_of(&setup(2, &pc_devices()));
        assert!(!contains(&plain, b"VGEN") && !contains(&plain, b"ACPI0013"));
    }

    #[test]
    fn no_device_may_take_the_generation_id_names() {
        for name in ["VGEN", "GED_"] {
            let devices = [DsdtDevice::new(name, "PNP0C02", 0).unwrap()];
            let mem = memory(2 * MIB);
            let config = AcpiConfig {
                vmgenid: Some(VMGENID),
                ..config(1, &devices)
            };
            assert!(matches!(
                setup_acpi_tables(&mem, &config),
                Err(AcpiError::DuplicateName(n)) if n == name
            ));
            // Free without the generation ID.
            setup_acpi_tables(&mem, &super::test_util::config(1, &devices)).unwrap();
        }
    }

    /// ACPICA's `acpiexec`, the interpreter Linux runs, on `dsdt` (the whole table):
    /// the output of each `evaluate` command, in order.
    fn acpiexec(dsdt: &[u8], commands: &[&str]) -> Option<Vec<String>> {
        let tool = match test_support::skip::tool("acpiexec", "acpica-tools") {
            Ok(tool) => tool,
            Err(why) => {
                test_support::skip::missing(&test_support::skip::current_test(), &why);
                return None;
            }
        };
        let path = std::env::temp_dir().join(format!(
            "vireo-acpi-dsdt-{}-{:?}.aml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, dsdt).unwrap();
        let out = std::process::Command::new(tool)
            .arg("-b")
            .arg(commands.join("; "))
            .arg(&path)
            .output()
            .expect("run acpiexec");
        std::fs::remove_file(&path).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "acpiexec: {}\n{text}", out.status);
        assert!(!text.contains("Error") && !text.contains("AE_"), "{text}");
        let sections: Vec<String> = text
            .split("\nEvaluating ")
            .skip(1)
            .map(str::to_owned)
            .collect();
        assert_eq!(sections.len(), commands.len(), "{text}");
        Some(sections)
    }

    /// What Linux's ACPI core sees: `_HID` and `_CID` as its vmgenid driver matches them
    /// (ACPICA upper-cases the `_CID` string), `ADDR` returning the address as two
    /// integers, `_CRS` with the interrupt, and `_EVT` notifying VGEN with 0x80 for the
    /// device's GSI and for no other.
    #[test]
    fn acpica_evaluates_the_generation_id_devices_as_linux_needs() {
        let dsdt = dsdt_of(&setup_with_vmgenid(&pc_devices()));
        let Some(out) = acpiexec(
            &dsdt,
            &[
                "evaluate \\_SB.VGEN._HID",
                "evaluate \\_SB.VGEN._CID",
                "evaluate \\_SB.VGEN.ADDR",
                "evaluate \\_SB.GED_._HID",
                "evaluate \\_SB.GED_._CRS",
                "evaluate \\_SB.GED_._EVT 23",
                "evaluate \\_SB.GED_._EVT 5",
            ],
        ) else {
            return;
        };
        assert!(
            out[0].contains(r#"[String] Length 08 = "VMGENCTR""#),
            "{}",
            out[0]
        );
        assert!(
            out[1].contains(r#"[String] Length 0E = "VM_GEN_COUNTER""#),
            "{}",
            out[1]
        );
        let addr: Vec<&str> = out[2].lines().map(str::trim).collect();
        assert!(
            addr.contains(&"[Package] Contains 2 Elements:"),
            "{}",
            out[2]
        );
        let ints: Vec<&&str> = addr.iter().filter(|l| l.starts_with("[Integer]")).collect();
        assert_eq!(
            ints,
            [
                &"[Integer] = 00000000000DF000",
                &"[Integer] = 0000000000000000"
            ],
            "{}",
            out[2]
        );
        assert!(out[3].contains(r#"= "ACPI0013""#), "{}", out[3]);
        // The buffer: extended interrupt descriptor, consumer, edge, active high, GSI 23.
        assert!(out[4].contains("[Buffer]"), "{}", out[4]);
        assert!(
            out[4].contains("89 06 00 03 01 17 00 00 00 79 00"),
            "{}",
            out[4]
        );
        assert!(
            out[5].contains("Device Notify on [VGEN]") && out[5].contains("Value 0x80"),
            "{}",
            out[5]
        );
        assert!(!out[6].contains("Notify"), "GSI 5 is not ours: {}", out[6]);
    }

    #[test]
    fn refuses_tables_past_1mib() {
        let mem = memory(2 * MIB);
        // 200 devices of 100 port ranges: some 160 KiB of AML.
        let devices: Vec<DsdtDevice> = (0..200)
            .map(|i| {
                (0..100).fold(
                    DsdtDevice::new(&format!("D{i:03}"), "PNP0C02", i).unwrap(),
                    |d, port| d.with_resource(DsdtResource::Io { base: port, len: 1 }),
                )
            })
            .collect();
        assert!(matches!(
            setup_acpi_tables(&mem, &config(1, &devices)),
            Err(AcpiError::TooLarge { start: ACPI_START, size }) if ACPI_START + size > ACPI_END
        ));
        assert_eq!(bytes(&mem, ACPI_START, 64), [0; 64]);
    }

    #[test]
    fn refuses_memory_that_does_not_cover_the_tables() {
        // Ends before the BIOS area.
        let mem = memory(0x8_0000);
        assert!(matches!(
            setup_acpi_tables(&mem, &config(1, &[])),
            Err(AcpiError::DoesNotFit {
                start: ACPI_START,
                ..
            })
        ));
        // Holds the RSDP but not the rest.
        let mem = memory(ACPI_START as usize + 0x40);
        assert!(matches!(
            setup_acpi_tables(&mem, &config(1, &[])),
            Err(AcpiError::DoesNotFit { start: ACPI_START, size }) if size > 0x40
        ));
        assert_eq!(bytes(&mem, ACPI_START, 0x40), [0; 0x40]);
        // Exactly 1 MiB is enough.
        let mem = memory(MIB);
        setup_acpi_tables(&mem, &config(MAX_CPUS, &pc_devices())).unwrap();
    }
}
