/*
 * boot_timer - signal the end of boot as Firecracker's guests do.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s).
 *
 * Writes the byte 123 to 0xd0000000, where a VMM run with `--boot-timer` has
 * Firecracker's boot timer device (the VMM then logs "Guest-boot-time = ...");
 * without one the write is dropped. Then prints and resets.
 *
 * Serial output, then an i8042 reset:
 *     boot timer signalled
 */
    .include "common.inc"

    .set BOOT_TIMER, 0xd0000000
    .set BOOT_DONE, 123

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    mov     $BOOT_TIMER, %rax
    movb    $BOOT_DONE, (%rax)
    PUTS64  msg_done
    RESET

    .section .rodata
msg_done:   .asciz "boot timer signalled\n"
