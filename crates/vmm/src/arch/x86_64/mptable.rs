//! The Intel MultiProcessor Specification (1.4) table that tells a guest booted without
//! ACPI about its vCPUs, its IOAPIC and how the ISA interrupts reach that IOAPIC.
//!
//! This module owns the byte layout of the table and writes it, once, into guest memory at
//! [`EBDA_START`], where Linux's MP scan (the last KiB of base memory) finds the floating
//! pointer. It touches nothing but guest memory and knows nothing of KVM.
//!
//! The table is one floating pointer structure ("_MP_") followed directly by the
//! configuration table ("PCMP") and its entries:
//!
//! | entries            | count      | what                                                 |
//! |--------------------|------------|------------------------------------------------------|
//! | processor          | `num_cpus` | APIC id = vCPU index, vCPU 0 is the bootstrap CPU     |
//! | bus                | 1          | bus 0, "ISA"                                         |
//! | IOAPIC             | 1          | id `num_cpus`, at [`IOAPIC_START`]                   |
//! | I/O interrupt      | 16         | ISA IRQ n to IOAPIC pin n                            |
//! | local interrupt    | 2          | LINT0 = ExtINT, LINT1 = NMI, on every local APIC     |
//!
//! With many vCPUs the table is longer than the 1 KiB EBDA (41 vCPUs and more) and runs
//! on into the legacy hole above 0xa0000; it always ends below 1 MiB ([`HIMEM_START`]).
//! The caller must back that range with guest memory and keep it out of the e820 RAM map.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_START};

/// Most vCPUs the table can describe ([`super::MAX_VCPUS`]).
pub const MAX_CPUS: u8 = super::MAX_VCPUS as u8;

/// Errors of writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// A machine needs at least one vCPU.
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    /// More vCPUs than APIC ids below the broadcast id 255.
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    /// Guest memory does not cover the whole table.
    #[error("guest memory does not cover the MP table at {start:#x}+{size:#x}")]
    DoesNotFit {
        /// Guest physical address the table starts at.
        start: u64,
        /// Size of the table in bytes.
        size: usize,
    },
    /// Writing the table into guest memory failed.
    #[error("failed to write the MP table into guest memory")]
    Write(#[source] GuestMemoryError),
}

/// MP floating pointer structure signature.
const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
/// Configuration table header signature.
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
/// MP specification revision 1.4.
const SPEC_REV_1_4: u8 = 4;
/// OEM id of the configuration table (8 bytes, space padded).
const OEM_ID: [u8; 8] = *b"VIREO   ";
/// Product id of the configuration table (12 bytes, space padded).
const PRODUCT_ID: [u8; 12] = *b"VIREO VM    ";

/// Entry type codes.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Local APIC version reported for every vCPU (an integrated xAPIC).
const APIC_VERSION: u8 = 0x14;
/// Processor flags: the CPU is usable.
const CPU_ENABLED: u8 = 1 << 0;
/// Processor flags: the CPU is the bootstrap processor.
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// CPU signature: family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature bits reported: FPU (bit 0) and on-chip APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// The one bus: ISA, id 0.
const ISA_BUS_ID: u8 = 0;
/// Bus type string of the ISA bus (6 bytes, space padded).
const ISA_BUS_TYPE: [u8; 6] = *b"ISA   ";

/// IOAPIC version (an 82093AA-like IOAPIC, as KVM emulates).
const IOAPIC_VERSION: u8 = 0x11;
/// IOAPIC flags: usable.
const IOAPIC_ENABLED: u8 = 1 << 0;
/// Legacy ISA IRQs routed to the IOAPIC.
const ISA_IRQS: u8 = 16;

/// Interrupt types of I/O and local interrupt entries.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt flags: polarity and trigger mode conform to the bus (ISA: active high, edge).
const INT_FLAGS_CONFORMING: u16 = 0;
/// Destination local APIC id meaning "every local APIC".
const ALL_LOCAL_APICS: u8 = 0xff;

/// MP floating pointer structure: found by the guest's signature scan, points at the
/// configuration table.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct FloatingPointer {
    /// "_MP_".
    signature: [u8; 4],
    /// Guest physical address of the configuration table.
    config_table: u32,
    /// Length of this structure in 16-byte paragraphs (1).
    length: u8,
    /// Specification revision (4 for 1.4).
    spec_rev: u8,
    /// Makes the bytes of this structure sum to 0.
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    feature1: u8,
    /// Bit 7 clear: virtual-wire mode, no IMCR.
    feature2: u8,
    /// Reserved.
    feature3_5: [u8; 3],
}

/// Configuration table header; the entries follow it.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct ConfigHeader {
    /// "PCMP".
    signature: [u8; 4],
    /// Length of the header plus all base entries.
    base_length: u16,
    /// Specification revision (4 for 1.4).
    spec_rev: u8,
    /// Makes the bytes of the header and entries sum to 0.
    checksum: u8,
    /// OEM id, space padded.
    oem_id: [u8; 8],
    /// Product id, space padded.
    product_id: [u8; 12],
    /// OEM table pointer (none).
    oem_table: u32,
    /// OEM table size (none).
    oem_table_size: u16,
    /// Number of base entries.
    entry_count: u16,
    /// Guest physical address of every local APIC.
    lapic_address: u32,
    /// Extended table length (none).
    ext_length: u16,
    /// Extended table checksum (none).
    ext_checksum: u8,
    /// Reserved.
    reserved: u8,
}

/// One CPU.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct ProcessorEntry {
    /// [`ENTRY_PROCESSOR`].
    entry_type: u8,
    /// Local APIC id.
    apic_id: u8,
    /// Local APIC version.
    apic_version: u8,
    /// [`CPU_ENABLED`], [`CPU_BOOTSTRAP`].
    flags: u8,
    /// CPUID.1:EAX family/model/stepping.
    signature: u32,
    /// CPUID.1:EDX feature flags.
    features: u32,
    /// Reserved.
    reserved: [u32; 2],
}

/// One bus.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct BusEntry {
    /// [`ENTRY_BUS`].
    entry_type: u8,
    /// Bus id interrupt entries refer to.
    bus_id: u8,
    /// Bus type string, space padded.
    bus_type: [u8; 6],
}

/// One IOAPIC.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct IoapicEntry {
    /// [`ENTRY_IOAPIC`].
    entry_type: u8,
    /// IOAPIC id.
    id: u8,
    /// IOAPIC version.
    version: u8,
    /// [`IOAPIC_ENABLED`].
    flags: u8,
    /// Guest physical address of its registers.
    address: u32,
}

/// An interrupt line: I/O interrupt entries wire a bus IRQ to an IOAPIC pin, local
/// interrupt entries wire one to a local APIC's LINT pin. Both have this layout.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
struct InterruptEntry {
    /// [`ENTRY_IO_INTERRUPT`] or [`ENTRY_LOCAL_INTERRUPT`].
    entry_type: u8,
    /// INT, NMI, SMI or ExtINT.
    int_type: u8,
    /// Polarity (bits 0-1) and trigger mode (bits 2-3).
    flags: u16,
    /// Source bus id.
    source_bus: u8,
    /// IRQ on the source bus.
    source_irq: u8,
    /// Destination IOAPIC id, or local APIC id (0xff: all).
    dest_id: u8,
    /// Destination IOAPIC pin, or LINT pin.
    dest_pin: u8,
}

// The specification fixes these sizes; `packed` must leave no padding.
const _: () = assert!(size_of::<FloatingPointer>() == 16);
const _: () = assert!(size_of::<ConfigHeader>() == 44);
const _: () = assert!(size_of::<ProcessorEntry>() == 20);
const _: () = assert!(size_of::<BusEntry>() == 8);
const _: () = assert!(size_of::<IoapicEntry>() == 8);
const _: () = assert!(size_of::<InterruptEntry>() == 8);

// SAFETY: plain data of integers and byte arrays; `repr(C, packed)` leaves no padding and
// every bit pattern is a valid value.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: plain data of integers and byte arrays; `repr(C, packed)` leaves no padding and
// every bit pattern is a valid value.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: plain data of integers and byte arrays; `repr(C, packed)` leaves no padding and
// every bit pattern is a valid value.
unsafe impl ByteValued for ProcessorEntry {}
// SAFETY: plain data of integers and byte arrays; `repr(C, packed)` leaves no padding and
// every bit pattern is a valid value.
unsafe impl ByteValued for BusEntry {}
// SAFETY: plain data of integers and byte arrays; `repr(C, packed)` leaves no padding and
// every bit pattern is a valid value.
unsafe impl ByteValued for IoapicEntry {}
// SAFETY: plain data of integers and byte arrays; `repr(C, packed)` leaves no padding and
// every bit pattern is a valid value.
unsafe impl ByteValued for InterruptEntry {}

/// Number of configuration table entries other than the processors.
const FIXED_ENTRIES: usize = 1 + 1 + ISA_IRQS as usize + 2;

/// Size in bytes of the whole table (floating pointer included) for `num_cpus` vCPUs.
fn table_size(num_cpus: u8) -> usize {
    size_of::<FloatingPointer>()
        + size_of::<ConfigHeader>()
        + usize::from(num_cpus) * size_of::<ProcessorEntry>()
        + size_of::<BusEntry>()
        + size_of::<IoapicEntry>()
        + (FIXED_ENTRIES - 2) * size_of::<InterruptEntry>()
}

// Even the largest table stays in low memory, clear of the kernel at 1 MiB.
const _: () = assert!(EBDA_START + (16 + 44 + 254 * 20 + 8 + 8 + 18 * 8) <= HIMEM_START);

/// The value that makes `bytes` sum to 0 (mod 256) once added.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The configuration table (header and entries) for `num_cpus` vCPUs, checksummed.
fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries: Vec<u8> = Vec::with_capacity(table_size(num_cpus));
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };

    for cpu in 0..num_cpus {
        let bootstrap = if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        push(
            ProcessorEntry {
                entry_type: ENTRY_PROCESSOR,
                apic_id: cpu,
                apic_version: APIC_VERSION,
                flags: CPU_ENABLED | bootstrap,
                signature: CPU_SIGNATURE,
                features: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        BusEntry {
            entry_type: ENTRY_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: ISA_BUS_TYPE,
        }
        .as_slice(),
    );
    push(
        IoapicEntry {
            entry_type: ENTRY_IOAPIC,
            id: ioapic_id,
            version: IOAPIC_VERSION,
            flags: IOAPIC_ENABLED,
            // Below 4 GiB by construction of the layout.
            address: IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for irq in 0..ISA_IRQS {
        push(
            InterruptEntry {
                entry_type: ENTRY_IO_INTERRUPT,
                int_type: INT_TYPE_INT,
                flags: INT_FLAGS_CONFORMING,
                source_bus: ISA_BUS_ID,
                source_irq: irq,
                dest_id: ioapic_id,
                dest_pin: irq,
            }
            .as_slice(),
        );
    }
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        push(
            InterruptEntry {
                entry_type: ENTRY_LOCAL_INTERRUPT,
                int_type,
                flags: INT_FLAGS_CONFORMING,
                source_bus: ISA_BUS_ID,
                source_irq: 0,
                dest_id: ALL_LOCAL_APICS,
                dest_pin: lint,
            }
            .as_slice(),
        );
    }

    let mut header = ConfigHeader {
        signature: MPC_SIGNATURE,
        // At most 44 + 254 * 20 + 160 bytes: fits in a u16.
        base_length: (size_of::<ConfigHeader>() + entries.len()) as u16,
        spec_rev: SPEC_REV_1_4,
        checksum: 0,
        oem_id: OEM_ID,
        product_id: PRODUCT_ID,
        oem_table: 0,
        oem_table_size: 0,
        entry_count: count,
        lapic_address: APIC_START as u32,
        ext_length: 0,
        ext_checksum: 0,
        reserved: 0,
    };
    let entries_sum = checksum(&entries);
    header.checksum = checksum(header.as_slice()).wrapping_add(entries_sum);

    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    table
}

/// Write the MP table for `num_cpus` vCPUs (1..=[`MAX_CPUS`]) at [`EBDA_START`].
///
/// vCPU `i` gets local APIC id `i`; vCPU 0 is the bootstrap processor. The IOAPIC gets id
/// `num_cpus`. Guest memory must cover the whole table, whose end for many vCPUs lies
/// above 0xa0000 (see the module docs).
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let start = GuestAddress(EBDA_START);
    let size = table_size(num_cpus);
    if !mem.check_range(start, size) {
        return Err(MptableError::DoesNotFit {
            start: EBDA_START,
            size,
        });
    }

    let config = config_table(num_cpus);
    debug_assert_eq!(size_of::<FloatingPointer>() + config.len(), size);
    let mut pointer = FloatingPointer {
        signature: MPF_SIGNATURE,
        // Below 1 MiB by the assertion on the table's end.
        config_table: (EBDA_START + size_of::<FloatingPointer>() as u64) as u32,
        length: 1,
        spec_rev: SPEC_REV_1_4,
        checksum: 0,
        feature1: 0,
        feature2: 0,
        feature3_5: [0; 3],
    };
    pointer.checksum = checksum(pointer.as_slice());

    let mut table = pointer.as_slice().to_vec();
    table.extend_from_slice(&config);
    mem.write_slice(&table, start).map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const CONFIG_START: u64 = EBDA_START + 16;

    fn memory(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    fn byte_sum(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> u8 {
        let mut bytes = vec![0u8; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
    }

    /// Every entry after the header, as (type, address).
    fn entries(mem: &GuestMemoryMmap<()>) -> Vec<(u8, u64)> {
        let header: ConfigHeader = mem.read_obj(GuestAddress(CONFIG_START)).unwrap();
        let mut addr = CONFIG_START + size_of::<ConfigHeader>() as u64;
        let mut found = Vec::new();
        for _ in 0..header.entry_count {
            let entry_type: u8 = mem.read_obj(GuestAddress(addr)).unwrap();
            found.push((entry_type, addr));
            addr += if entry_type == ENTRY_PROCESSOR { 20 } else { 8 };
        }
        assert_eq!(addr, CONFIG_START + u64::from(header.base_length));
        found
    }

    fn of_type<T: ByteValued>(mem: &GuestMemoryMmap<()>, wanted: u8) -> Vec<T> {
        entries(mem)
            .into_iter()
            .filter(|(t, _)| *t == wanted)
            .map(|(_, addr)| mem.read_obj(GuestAddress(addr)).unwrap())
            .collect()
    }

    fn check_table(num_cpus: u8) {
        let mem = memory(1 << 20);
        setup_mptable(&mem, num_cpus).unwrap();

        let pointer: FloatingPointer = mem.read_obj(GuestAddress(EBDA_START)).unwrap();
        assert_eq!(pointer.signature, *b"_MP_");
        assert_eq!({ pointer.config_table }, CONFIG_START as u32);
        assert_eq!(pointer.length, 1);
        assert_eq!(pointer.spec_rev, 4);
        assert_eq!(byte_sum(&mem, EBDA_START, 16), 0);

        let header: ConfigHeader = mem.read_obj(GuestAddress(CONFIG_START)).unwrap();
        assert_eq!(header.signature, *b"PCMP");
        assert_eq!(header.spec_rev, 4);
        assert_eq!(header.oem_id, *b"VIREO   ");
        assert_eq!({ header.lapic_address }, APIC_START as u32);
        assert_eq!(usize::from(header.entry_count), usize::from(num_cpus) + 20);
        let length = usize::from(header.base_length);
        assert_eq!(length, table_size(num_cpus) - 16);
        assert_eq!(byte_sum(&mem, CONFIG_START, length), 0);

        let cpus: Vec<ProcessorEntry> = of_type(&mem, ENTRY_PROCESSOR);
        assert_eq!(cpus.len(), usize::from(num_cpus));
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(usize::from(cpu.apic_id), i);
            assert_eq!(cpu.apic_version, 0x14);
            let bsp = if i == 0 { CPU_BOOTSTRAP } else { 0 };
            assert_eq!(cpu.flags, CPU_ENABLED | bsp);
            assert_eq!({ cpu.signature }, 0x600);
            assert_eq!({ cpu.features }, 0x201);
        }

        let buses: Vec<BusEntry> = of_type(&mem, ENTRY_BUS);
        assert_eq!(buses.len(), 1);
        assert_eq!((buses[0].bus_id, buses[0].bus_type), (0, *b"ISA   "));

        let ioapics: Vec<IoapicEntry> = of_type(&mem, ENTRY_IOAPIC);
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!(ioapic.id, num_cpus);
        assert_eq!(ioapic.version, 0x11);
        assert_eq!(ioapic.flags, IOAPIC_ENABLED);
        assert_eq!({ ioapic.address }, 0xfec0_0000);

        let irqs: Vec<InterruptEntry> = of_type(&mem, ENTRY_IO_INTERRUPT);
        assert_eq!(irqs.len(), 16);
        for (i, irq) in irqs.iter().enumerate() {
            assert_eq!(irq.int_type, INT_TYPE_INT);
            assert_eq!({ irq.flags }, 0);
            assert_eq!((irq.source_bus, usize::from(irq.source_irq)), (0, i));
            assert_eq!((irq.dest_id, usize::from(irq.dest_pin)), (num_cpus, i));
        }

        let lints: Vec<InterruptEntry> = of_type(&mem, ENTRY_LOCAL_INTERRUPT);
        assert_eq!(lints.len(), 2);
        assert_eq!(
            (lints[0].int_type, lints[0].dest_id, lints[0].dest_pin),
            (3, 0xff, 0)
        );
        assert_eq!(
            (lints[1].int_type, lints[1].dest_id, lints[1].dest_pin),
            (1, 0xff, 1)
        );

        // Nothing beyond the table was touched.
        let end = EBDA_START + table_size(num_cpus) as u64;
        assert_eq!(mem.read_obj::<u64>(GuestAddress(end)).unwrap(), 0);
    }

    #[test]
    fn one_cpu() {
        check_table(1);
    }

    #[test]
    fn some_cpus() {
        check_table(4);
        // The most that fit inside the 1 KiB EBDA, and the first that does not.
        check_table(40);
        check_table(41);
    }

    #[test]
    fn most_cpus() {
        check_table(254);
        assert!(EBDA_START + table_size(254) as u64 <= HIMEM_START);
    }

    #[test]
    fn refuses_cpu_counts_without_apic_ids() {
        let mem = memory(1 << 20);
        assert!(matches!(
            setup_mptable(&mem, 255),
            Err(MptableError::TooManyCpus(255))
        ));
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
        // Nothing was written.
        assert_eq!(mem.read_obj::<u32>(GuestAddress(EBDA_START)).unwrap(), 0);
    }

    #[test]
    fn refuses_memory_that_does_not_cover_the_table() {
        // Ends before the EBDA.
        let mem = memory(0x9_0000);
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(MptableError::DoesNotFit {
                start: EBDA_START,
                ..
            })
        ));
        // Holds a small table but ends inside a large one.
        let mem = memory(0xa_0000);
        setup_mptable(&mem, 8).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 64),
            Err(MptableError::DoesNotFit { size, .. }) if size == table_size(64)
        ));
    }
}
