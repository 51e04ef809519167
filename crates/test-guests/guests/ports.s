/*
 * ports - touch I/O ports and MMIO that no device owns.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s).
 *
 * The VMM must complete every such access: reads of unclaimed ports and
 * MMIO return all ones, writes are dropped. The guest checks:
 *   pio-0x1234       `in al, 0x1234` reads 0xff
 *   pci-0xcfc        after `out 0xcf8, eax=0x80000000` (PCI config address:
 *                    enable, bus 0, dev 0, fn 0, reg 0), `in eax, 0xcfc`
 *                    reads 0xffffffff, i.e. there is no PCI host bridge
 *   mmio-0xd0000000  a u32 read at 0xd0000000 (32-bit MMIO hole) reads
 *                    0xffffffff
 * and makes unchecked writes: a byte to ports 0x80 (POST code) and 0x5678,
 * a u32 to 0xd0000000. Then it reads the CMOS RTC status register A
 * (`out 0x70, 0x0a; in 0x71`) without checking the value: it only has to
 * complete.
 *
 * Serial output, then an i8042 reset:
 *     ports ok
 * or, naming every check that failed, in the order above, e.g.
 *     ports bad: pio-0x1234 mmio-0xd0000000
 */
    .include "common.inc"

    .set MMIO_HOLE, 0xd0000000

    /* Bits in r8, one per failed check. */
    .set BAD_PIO,   1
    .set BAD_PCI,   2
    .set BAD_MMIO,  4

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    xor     %r8d, %r8d                      /* failures so far: none */

    /* 1. Byte read from an unclaimed port. */
    mov     $0x1234, %dx
    inb     %dx, %al
    cmp     $0xff, %al
    je      1f
    or      $BAD_PIO, %r8d
1:
    /* 2. PCI configuration mechanism #1 with nothing behind it. */
    mov     $0xcf8, %dx
    mov     $0x80000000, %eax
    outl    %eax, %dx
    mov     $0xcfc, %dx
    inl     %dx, %eax
    cmp     $0xffffffff, %eax
    je      1f
    or      $BAD_PCI, %r8d
1:
    /* Writes to unclaimed ports: must just be dropped. */
    mov     $0x55, %al
    outb    %al, $0x80
    mov     $0x5678, %dx
    outb    %al, %dx

    /*
     * 3. MMIO in the 32-bit hole. The address goes in a register: as a
     * 32-bit displacement it would be sign-extended above 4 GiB.
     */
    mov     $MMIO_HOLE, %ebx                /* zero-extends into rbx */
    mov     (%rbx), %eax
    cmp     $0xffffffff, %eax
    je      1f
    or      $BAD_MMIO, %r8d
1:
    movl    $0x12345678, (%rbx)             /* must be dropped */

    /* CMOS RTC status register A: only has to answer. */
    mov     $0x0a, %al
    outb    %al, $0x70
    inb     $0x71, %al

    /* Report. */
    test    %r8d, %r8d
    jnz     report_bad
    PUTS64  msg_ok
    jmp     done
report_bad:
    PUTS64  msg_bad
    test    $BAD_PIO, %r8d
    jz      1f
    PUTS64  name_pio
1:  test    $BAD_PCI, %r8d
    jz      1f
    PUTS64  name_pci
1:  test    $BAD_MMIO, %r8d
    jz      1f
    PUTS64  name_mmio
1:  PUTS64  msg_newline
done:
    RESET

    .section .rodata
msg_ok:      .asciz "ports ok\n"
msg_bad:     .asciz "ports bad:"
name_pio:    .asciz " pio-0x1234"
name_pci:    .asciz " pci-0xcfc"
name_mmio:   .asciz " mmio-0xd0000000"
msg_newline: .asciz "\n"
