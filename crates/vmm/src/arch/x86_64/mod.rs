//! x86-64 machine set-up: memory map, boot structures, vCPU registers, CPUID and MSRs,
//! and the CPU templates that change the last two.

pub mod acpi;
pub mod boot;
pub mod cpu_template;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
pub mod static_templates;

/// Most vCPUs an x86 VM of Vireo's has: vCPU `i` gets APIC id `i`, the IOAPIC takes the
/// next id, and 255 is the broadcast id. The MP table and the MADT both describe this many.
pub const MAX_VCPUS: u32 = 254;
