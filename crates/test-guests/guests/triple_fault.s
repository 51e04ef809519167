/*
 * triple_fault - make the vCPU shut down (KVM_EXIT_SHUTDOWN).
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s).
 *
 * Prints "about to triple fault", loads an IDT with limit 0 (so no vector
 * can be delivered), then reads from a non-canonical address. That raises
 * #GP; delivering it needs IDT entry 13, which is past the limit, so the
 * CPU escalates to #DF; entry 8 is past the limit too, so it triple faults
 * and the vCPU shuts down. A non-canonical address faults whatever the
 * page tables map, unlike an unmapped one. No `int3` (not emulated here).
 *
 * Serial output:
 *     about to triple fault
 * and nothing else: "triple fault did not happen" (then the vCPU parks,
 * without a reset) means the read somehow completed.
 */
    .include "common.inc"

    .set NON_CANONICAL, 0x8000000000000000  /* bit 63 set, bits 62..47 clear */

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    PUTS64  msg_about

    lidt    null_idtr(%rip)                 /* IDT: base 0, limit 0 */
    movabs  $NON_CANONICAL, %rax
    mov     (%rax), %rax                    /* #GP -> #DF -> triple fault */

    PUTS64  msg_survived                    /* not reached */
    PARK

    .section .rodata
    .balign 16
null_idtr:
    .word   0                               /* limit */
    .quad   0                               /* base */
msg_about:    .asciz "about to triple fault\n"
msg_survived: .asciz "triple fault did not happen\n"
