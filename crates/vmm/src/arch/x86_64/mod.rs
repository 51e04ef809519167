//! x86-64 machine set-up: memory map, boot structures, vCPU registers, CPUID and MSRs.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
