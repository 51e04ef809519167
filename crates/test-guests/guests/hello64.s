/*
 * hello64 - the "64-bit ELF entry" smoke test.
 *
 * Boot ABI (see README.md): a plain ELF64 with no PVH note. The vCPU starts
 * at e_entry (`_start`, 0x200000) in 64-bit long mode with paging on and the
 * first 4 GiB identity mapped, interrupts off, and RSI pointing at the Linux
 * zero page (`struct boot_params`, at 0x7000).
 *
 * Serial output on success:
 *     vireo-guest: hello from 64-bit entry
 *     zero page ok
 * then an i8042 reset (the VMM exits 0).
 *
 * "zero page bad" instead means the 32-bit word at RSI+0x202
 * (boot_params.hdr.header) is not "HdrS".
 */
    .include "common.inc"

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli                             /* already off per the ABI; be sure */
    PUTS64  msg_hello               /* does not touch RSI */

    /*
     * The zero page must carry the setup header magic "HdrS" at 0x202.
     * Only the first 4 GiB are mapped: refuse a pointer above that rather
     * than fault on it.
     */
    mov     %rsi, %rax
    shr     $32, %rax
    jnz     zero_page_bad
    cmpl    $HDRS_MAGIC, ZP_HDR_MAGIC(%rsi)
    jne     zero_page_bad
    PUTS64  msg_zp_ok
    jmp     done
zero_page_bad:
    PUTS64  msg_zp_bad
done:
    RESET

    .section .rodata
msg_hello:  .asciz "vireo-guest: hello from 64-bit entry\n"
msg_zp_ok:  .asciz "zero page ok\n"
msg_zp_bad: .asciz "zero page bad\n"
