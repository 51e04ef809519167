/*
 * count - a guest that runs for ever, for pause/resume and snapshot tests.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s). It never resets.
 *
 * Loop:
 *   - increment the u64 counter at COUNTER (0x12000; memory starts zeroed,
 *     and the value in memory is the only state, so a snapshot of memory
 *     plus registers captures it)
 *   - write its low 32 bits with `out dx, eax` to DEBUG_PORT (0x510): one
 *     4-byte PIO exit per iteration, so the VMM sees it going up
 *   - each time the counter reaches a multiple of 256, print "." on COM1
 *
 * Serial output: "." every 256 iterations, no newline, no other text.
 * After a pause/resume or a snapshot restore the counter (and the dots)
 * continue from where they were.
 */
    .include "common.inc"

    .set COUNTER,    0x12000
    .set DEBUG_PORT, 0x510

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
loop:
    incq    COUNTER                     /* absolute address 0x12000 */
    mov     COUNTER, %rax
    mov     $DEBUG_PORT, %dx
    outl    %eax, %dx
    test    $0xff, %al
    jnz     loop
    mov     $'.', %al
    mov     $COM1, %dx
    outb    %al, %dx
    jmp     loop
