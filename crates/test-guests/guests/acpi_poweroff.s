/*
 * acpi_poweroff - power off the way an ACPI guest does: write SLP_TYP=S5 with
 * SLP_EN to the FADT's sleep control register, as Linux's `poweroff` does on
 * a hardware-reduced ACPI machine.
 *
 * Boot ABI: 64-bit ELF entry (see README.md). The sleep control register is
 * Vireo's ACPI PM device at I/O port 0x600 (crates/vmm/src/devices/legacy/
 * acpi_pm.rs); the S5 value is SLP_TYP 5 << 2 | SLP_EN (bit 5) = 0x34, the
 * `\_S5` package in Vireo's DSDT.
 *
 * Serial output: "vireo-guest: powering off via ACPI S5\n", then the VMM
 * exits 0. Should the write be ignored, it prints "poweroff ignored\n" and
 * parks (the test then times out).
 */
    .include "common.inc"

.set ACPI_SLEEP_CONTROL, 0x600
.set S5_SLEEP_CONTROL,   0x34

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    PUTS64  msg_off
    mov     $ACPI_SLEEP_CONTROL, %dx
    mov     $S5_SLEEP_CONTROL, %al
    outb    %al, %dx
    PUTS64  msg_ignored
    PARK

    .section .rodata
msg_off:     .asciz "vireo-guest: powering off via ACPI S5\n"
msg_ignored: .asciz "poweroff ignored\n"
