/*
 * vmgenid - the VM generation ID and its change notification, as a guest
 * driver sees them: the 16-byte ID at 0xdf000 (where Vireo's DSDT `ADDR`
 * method says it is), and an edge on IOAPIC pin 23 (the Generic Event
 * Device's interrupt) when a restored VM got a new one.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s); it uses the boot stack
 * (RSP = 0x8ff0) for calls and its interrupt handler. Scratch memory:
 * IDT at 0x36000, variables at 0x37000.
 *
 *   1. Interrupts: IDT (vector 0x42 -> vmgenid_isr, 0xff spurious, any
 *      other vector prints "vmgenid: unexpected interrupt or exception"),
 *      both 8259 PICs masked, LAPIC LINT0 masked, LAPIC software-enabled,
 *      IOAPIC pin 23 -> vector 0x42, fixed, physical destination APIC ID 0,
 *      active high, edge, unmasked.
 *   2. Prints "vmgenid: id " and the 16 bytes at 0xdf000 as 32 hex digits,
 *      in memory order, then "vmgenid: ready".
 *   3. Waits with `sti; hlt` for ever. Its handler counts the interrupts and
 *      EOIs; for each one counted, the guest prints "vmgenid: notified, id "
 *      and the 16 bytes read again.
 *
 * Output at boot:
 *     vmgenid: id 0123456789abcdef0123456789abcdef
 *     vmgenid: ready
 * and after each notification:
 *     vmgenid: notified, id fedcba9876543210fedcba9876543210
 * About 200 instructions, then about 150 per notification.
 */
    .include "common.inc"

.set VMGENID_ADDR,      0xdf000     /* the ID's 16 bytes */
.set VMGENID_PIN,       23          /* GSI 23 = IOAPIC pin 23 */

.set IDT,               0x36000     /* 256 gates of 16 bytes */
.set VARS,              0x37000
.set NOTIFIED,          VARS + 0x00 /* u32: interrupts the handler counted */
.set IDTR,              VARS + 0x10 /* limit u16, base u64 */

.set VEC_VMGENID,       0x42
.set VEC_SPURIOUS,      0xff
.set GATE_TYPE,         0x8e        /* present, DPL 0, 64-bit interrupt gate */
.set KERNEL_CS,         0x08

.set LAPIC_BASE,        0xfee00000
.set LAPIC_TPR,         0x080
.set LAPIC_EOI,         0x0b0
.set LAPIC_SVR,         0x0f0
.set LAPIC_LVT_LINT0,   0x350
.set SVR_ENABLE,        0x100
.set LVT_MASKED,        0x10000
.set IOAPIC_BASE,       0xfec00000
.set IOAPIC_REGSEL,     0x00
.set IOAPIC_WIN,        0x10
.set IOAPIC_REDTBL,     0x10        /* pin n: low dword 0x10+2n, high 0x11+2n */

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    call    irq_init
    PUTS64  msg_id
    call    print_id
    PUTS64  msg_ready

    /* r12d: notifications printed. */
    xor     %r12d, %r12d
next:
    cli                             /* check, then sti; hlt: no lost wake-up */
    cmp     NOTIFIED, %r12d
    jne     report
    sti                             /* takes effect after the next instruction, */
    hlt                             /* so an interrupt pending now ends the hlt */
    jmp     next
report:
    inc     %r12d
    PUTS64  msg_notified
    call    print_id
    jmp     next

/* print_id: the 16 bytes at VMGENID_ADDR as hex, then "\n".
 * Clobbers rax, rbx, rdx, rsi. */
print_id:
    mov     $COM1, %dx
    mov     $VMGENID_ADDR, %esi
1:  movzbl  (%rsi), %ebx
    call    puthex8
    inc     %esi
    cmp     $(VMGENID_ADDR + 16), %esi
    jne     1b
    mov     $'\n', %al
    outb    %al, %dx
    ret

/* puthex8: print bl as two hex digits (dx = COM1). The second half falls
 * into putnibble, whose `ret` returns to the caller. Clobbers al. */
puthex8:
    mov     %bl, %al
    shr     $4, %al
    call    putnibble
    mov     %bl, %al
    and     $0xf, %al
putnibble:                          /* al = 0..15: one hex digit to port dx */
    cmp     $10, %al
    jb      1f
    add     $('a' - '0' - 10), %al
1:  add     $'0', %al
    outb    %al, %dx
    ret

/* puts: print the NUL-terminated string at rcx. Clobbers rax, rcx, rdx. */
puts:
    PUTS64_AT_RCX
    ret

/* make_gate: rax = handler address (below 4 GiB) -> rax = low quadword of a
 * 64-bit interrupt gate; the high quadword is 0. Clobbers rdx. */
make_gate:
    mov     %rax, %rdx
    and     $0xffff, %eax                   /* offset 15:0 */
    or      $(KERNEL_CS << 16), %eax        /* selector */
    shr     $16, %rdx                       /* offset 31:16 */
    shl     $48, %rdx
    or      %rdx, %rax
    mov     $GATE_TYPE, %edx
    shl     $40, %rdx
    or      %rdx, %rax
    ret

/* irq_init: step 1 above. Interrupts stay off (IF = 0).
 * Clobbers rax, rcx, rdx, rdi, r8, r9. */
irq_init:
    lea     unexpected_isr(%rip), %rax
    call    make_gate
    mov     $IDT, %edi
    mov     $256, %ecx
1:  mov     %rax, (%rdi)
    movq    $0, 8(%rdi)
    add     $16, %rdi
    dec     %ecx
    jnz     1b
    lea     vmgenid_isr(%rip), %rax
    call    make_gate
    mov     %rax, IDT + VEC_VMGENID * 16
    lea     spurious_isr(%rip), %rax
    call    make_gate
    mov     %rax, IDT + VEC_SPURIOUS * 16
    movw    $(256 * 16 - 1), IDTR
    movq    $IDT, IDTR + 2
    lidt    IDTR

    mov     $0xff, %al                      /* OCW1: mask all 8259 lines */
    outb    %al, $0x21
    outb    %al, $0xa1

    mov     $LAPIC_BASE, %r8d               /* zero-extends: 0xfee00000 */
    movl    $0, LAPIC_TPR(%r8)
    movl    $LVT_MASKED, LAPIC_LVT_LINT0(%r8)
    movl    $(SVR_ENABLE | VEC_SPURIOUS), LAPIC_SVR(%r8)

    mov     $IOAPIC_BASE, %r9d
    movl    $(IOAPIC_REDTBL + 2 * VMGENID_PIN + 1), IOAPIC_REGSEL(%r9)
    movl    $(0 << 24), IOAPIC_WIN(%r9)     /* destination APIC ID 0 */
    movl    $(IOAPIC_REDTBL + 2 * VMGENID_PIN), IOAPIC_REGSEL(%r9)
    movl    $VEC_VMGENID, IOAPIC_WIN(%r9)   /* fixed, physical, high, edge, unmasked */
    ret

/* vmgenid_isr: the change notification. Count it, EOI. */
vmgenid_isr:
    push    %rdx
    incl    NOTIFIED
    mov     $LAPIC_BASE, %edx
    movl    $0, LAPIC_EOI(%rdx)
    pop     %rdx
    iretq

/* spurious_isr: the LAPIC's spurious vector needs no EOI. */
spurious_isr:
    iretq

/* unexpected_isr: any other vector, exceptions included: report and reset. */
unexpected_isr:
    lea     msg_unexpected(%rip), %rcx
    call    puts
    RESET

    .section .rodata
msg_id:             .asciz "vmgenid: id "
msg_ready:          .asciz "vmgenid: ready\n"
msg_notified:       .asciz "vmgenid: notified, id "
msg_unexpected:     .asciz "vmgenid: unexpected interrupt or exception\n"
