/*
 * cpuid - what CPUID and an MSR tell the guest, for the CPU template tests.
 *
 * Boot ABI: 64-bit ELF entry (see README.md). Executes CPUID leaf 1 and leaf 7
 * subleaf 0 and reads IA32_PAT (MSR 0x277, which every x86-64 CPU has), then
 * prints, in lower-case hex with leading zeros:
 *     cpuid 1 ecx=XXXXXXXX edx=XXXXXXXX
 *     cpuid 7 ebx=XXXXXXXX ecx=XXXXXXXX edx=XXXXXXXX
 *     msr 0x277=XXXXXXXXXXXXXXXX
 * Then it polls COM1 for a byte (like echo.s): 'q' resets, any other byte runs
 * CPUID and RDMSR again and prints the three lines again, so that a test can
 * look once more after a snapshot of it was restored.
 */
    .include "common.inc"

.set COM1_LSR,     0x3fd
.set LSR_DR,       0x01
.set MSR_PAT,      0x277

/*
 * PUTHEX digits - print the low `digits` hex digits of %r9 on COM1, most
 * significant first. Clobbers: rax, rcx, rdx, r10.
 */
.macro PUTHEX digits
    mov     $COM1, %dx
    mov     $(\digits * 4), %r10d
.Lhex_loop\@:
    sub     $4, %r10d
    mov     %r10d, %ecx
    mov     %r9, %rax
    shr     %cl, %rax
    and     $0xf, %eax
    cmp     $10, %al
    jb      .Lhex_digit\@
    add     $('a' - '0' - 10), %al
.Lhex_digit\@:
    add     $'0', %al
    outb    %al, %dx
    test    %r10d, %r10d
    jnz     .Lhex_loop\@
.endm

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
report:
    /* Leaf 1: ECX and EDX. */
    mov     $1, %eax
    xor     %ecx, %ecx
    cpuid
    mov     %ecx, %r12d
    mov     %edx, %r13d
    PUTS64  msg_leaf1
    mov     %r12, %r9
    PUTHEX  8
    PUTS64  msg_edx
    mov     %r13, %r9
    PUTHEX  8
    PUTS64  msg_newline

    /* Leaf 7 subleaf 0: EBX, ECX, EDX. */
    mov     $7, %eax
    xor     %ecx, %ecx
    cpuid
    mov     %ebx, %r12d
    mov     %ecx, %r13d
    mov     %edx, %r14d
    PUTS64  msg_leaf7
    mov     %r12, %r9
    PUTHEX  8
    PUTS64  msg_ecx
    mov     %r13, %r9
    PUTHEX  8
    PUTS64  msg_edx
    mov     %r14, %r9
    PUTHEX  8
    PUTS64  msg_newline

    /* IA32_PAT: EDX:EAX into r9. */
    mov     $MSR_PAT, %ecx
    rdmsr
    shl     $32, %rdx
    mov     %eax, %eax                /* zero-extends */
    or      %rax, %rdx
    mov     %rdx, %r9
    PUTS64  msg_msr
    PUTHEX  16
    PUTS64  msg_newline

    /* Wait for a byte: 'q' ends, anything else reports again. */
    mov     $COM1_LSR, %dx
wait_data:
    inb     %dx, %al
    test    $LSR_DR, %al
    jz      wait_data
    mov     $COM1, %dx
    inb     %dx, %al
    cmp     $'q', %al
    jne     report
    RESET

    .section .rodata
msg_leaf1:   .asciz "cpuid 1 ecx="
msg_leaf7:   .asciz "cpuid 7 ebx="
msg_ecx:     .asciz " ecx="
msg_edx:     .asciz " edx="
msg_msr:     .asciz "msr 0x277="
msg_newline: .asciz "\n"
