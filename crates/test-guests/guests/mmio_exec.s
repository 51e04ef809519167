/*
 * mmio_exec - make KVM fail: jump into the 32-bit MMIO hole, where no memory
 * is mapped. KVM must fetch the instruction from an address with no memory
 * slot, cannot emulate that, and exits with KVM_EXIT_INTERNAL_ERROR
 * (emulation failure) on hardware and emulated KVM alike. Vireo must stop
 * the VM with a non-zero exit and log the error and the registers.
 *
 * Boot ABI: 64-bit ELF entry (see README.md); 0xd0000000 is identity mapped
 * by the boot page tables but is not RAM.
 *
 * Serial output: "jumping into MMIO\n"; nothing after.
 */
    .include "common.inc"

.set MMIO_TARGET, 0xd0000000

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    PUTS64  msg_jump
    mov     $MMIO_TARGET, %rax
    jmp     *%rax

    .section .rodata
msg_jump: .asciz "jumping into MMIO\n"
