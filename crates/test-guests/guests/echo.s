/*
 * echo - serial console input, end to end: host stdin -> Vireo's event loop
 * -> the 16550A receive FIFO -> the guest.
 *
 * Boot ABI: 64-bit ELF entry (see README.md). Prints "echo ready\n", then
 * polls the UART's line status register (LSR, 0x3fd) for Data Ready (bit 0),
 * reads each byte from the receive buffer (RBR, 0x3f8) and prints
 * "got: <byte>\n". After echoing 'q' it resets (the VMM exits 0).
 * Polling, not interrupts: the test is about the data path.
 */
    .include "common.inc"

.set COM1_LSR,     0x3fd
.set LSR_DR,       0x01

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    PUTS64  msg_ready
next_byte:
    mov     $COM1_LSR, %dx
wait_data:
    inb     %dx, %al
    test    $LSR_DR, %al
    jz      wait_data
    mov     $COM1, %dx
    inb     %dx, %al
    mov     %al, %bl                /* PUTS64 uses al/dx/rcx; keep the byte in bl */
    PUTS64  msg_got
    mov     $COM1, %dx
    mov     %bl, %al
    outb    %al, %dx
    mov     $'\n', %al
    outb    %al, %dx
    cmp     $'q', %bl
    jne     next_byte
    RESET

    .section .rodata
msg_ready:  .asciz "echo ready\n"
msg_got:    .asciz "got: "
