/*
 * idle - a guest that runs for ever without using the host's CPU, for the published
 * Firecracker clients' tests (scripts/fc-clients.sh), which keep several VMs up at once.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s). It never resets.
 *
 * Prints "idle\n", then halts with interrupts off: the vCPU waits in KVM's HLT until
 * the VMM kicks it (pause, snapshot, stop) and halts again when resumed. Nothing but an
 * NMI or INIT wakes it.
 */
    .include "common.inc"

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    PUTS64  msg_idle
halt:
    hlt
    jmp     halt

    .section .rodata
msg_idle:   .asciz "idle\n"
