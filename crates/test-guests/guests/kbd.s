/*
 * kbd - the i8042 keyboard, end to end: the VMM presses Ctrl+Alt+Del
 * (`PUT /actions {"action_type": "SendCtrlAltDel"}`), the i8042 raises IRQ 1,
 * the guest's interrupt handler reads the scan codes from port 0x60.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s); it uses the boot stack
 * (RSP = 0x8ff0) for calls and its interrupt handler. Scratch memory:
 * IDT at 0x36000, variables at 0x37000.
 *
 *   1. Probe, polling the status port (0x64) for OBF: empty the output
 *      buffer; controller self-test 0xaa -> 0x55; keyboard reset 0xff ->
 *      0xfa, 0xaa.
 *   2. Interrupts: IDT (vector 0x21 -> kbd_isr, 0xff spurious, any other
 *      vector prints "kbd: unexpected interrupt or exception"), both 8259
 *      PICs masked, LAPIC LINT0 masked, LAPIC software-enabled, IOAPIC pin 1
 *      -> vector 0x21, fixed, physical destination APIC ID 0, edge, unmasked.
 *   3. Command byte (0x20 read, 0x60 write): keyboard interrupt on, keyboard
 *      port enabled; read back. Prints "kbd ready".
 *   4. `sti; hlt` until the handler has stored bytes: it reads 0x60 while
 *      the status port shows OBF (at most 64 bytes a turn), then EOIs. Each
 *      byte is printed as two hex digits, separated by spaces. Once Delete's
 *      break code (0xe0 0xd3 in scan code set 1) has been printed and nothing
 *      more waits (none stored, OBF clear), it ends the line and resets.
 *
 * Output, for Vireo's Ctrl+Alt+Del:
 *     kbd ready
 *     1d 38 e0 53 e0 d3 b8 9d
 * A failed probe step prints "kbd: <what> 0x<byte>" (or "kbd: no reply to
 * <what>") and resets. About 300 instructions plus 30 per byte.
 */
    .include "common.inc"

.set I8042_DATA,        0x60
.set I8042_STATUS,      0x64        /* read; I8042_CMD (same port) to write */
.set STS_OBF,           0x01
.set CMD_READ_CB,       0x20
.set CMD_WRITE_CB,      0x60
.set CMD_SELF_TEST,     0xaa
.set KBD_RESET,         0xff
.set CB_KBD_INT,        0x01
.set CB_KBD_DISABLED,   0x10
.set POLL_MAX,          1000        /* status reads before a reply is missing */
.set ISR_MAX,           64          /* bytes the handler takes in one turn */

.set IDT,               0x36000     /* 256 gates of 16 bytes */
.set VARS,              0x37000
.set STORED,            VARS + 0x00 /* u32: bytes the handler has stored */
.set IDTR,              VARS + 0x10 /* limit u16, base u64 */
.set RING,              VARS + 0x100 /* 256 bytes, byte n at n & 0xff */

.set VEC_KBD,           0x21
.set VEC_SPURIOUS,      0xff
.set KBD_PIN,           1           /* ISA IRQ 1 = GSI 1 = IOAPIC pin 1 */
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

/* EXPECT byte, msg - the reply just read (al) must be `byte`, else fail. */
.macro EXPECT byte, msg
    cmp     $\byte, %al
    je      .Lexpect_ok\@
    movzbl  %al, %esi
    lea     \msg(%rip), %rcx
    jmp     fail_val
.Lexpect_ok\@:
.endm

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    /* 1. Probe, polled. */
    call    flush
    mov     $CMD_SELF_TEST, %al
    outb    %al, $I8042_CMD
    lea     msg_self_test(%rip), %rcx
    call    read_reply
    EXPECT  0x55, msg_self_test
    mov     $KBD_RESET, %al
    outb    %al, $I8042_DATA
    lea     msg_reset_ack(%rip), %rcx
    call    read_reply
    EXPECT  0xfa, msg_reset_ack
    lea     msg_reset_bat(%rip), %rcx
    call    read_reply
    EXPECT  0xaa, msg_reset_bat

    /* 2. Interrupts. */
    call    irq_init

    /* 3. Keyboard interrupt on, keyboard port enabled, read back. */
    mov     $CMD_READ_CB, %al
    outb    %al, $I8042_CMD
    lea     msg_command_byte(%rip), %rcx
    call    read_reply
    or      $CB_KBD_INT, %al
    and     $~CB_KBD_DISABLED, %al
    mov     %al, %bl
    mov     $CMD_WRITE_CB, %al
    outb    %al, $I8042_CMD
    mov     %bl, %al
    outb    %al, $I8042_DATA
    mov     $CMD_READ_CB, %al
    outb    %al, $I8042_CMD
    lea     msg_command_byte(%rip), %rcx
    call    read_reply
    cmp     %bl, %al
    je      1f
    movzbl  %al, %esi
    lea     msg_command_byte(%rip), %rcx
    jmp     fail_val
1:  PUTS64  msg_ready

    /* 4. Print what the handler stores. r12d: bytes printed; r13b: the
     *    previous byte; r14d: 1 once Delete's break code was printed. */
    xor     %r12d, %r12d
    xor     %r13d, %r13d
    xor     %r14d, %r14d
next:
    cli                             /* check, then sti; hlt: no lost wake-up */
    cmp     STORED, %r12d
    jne     print_byte
    test    %r14d, %r14d
    jz      wait
    inb     $I8042_STATUS, %al
    test    $STS_OBF, %al
    jz      done                    /* Delete released, nothing more waits */
wait:
    sti                             /* takes effect after the next instruction, */
    hlt                             /* so an interrupt pending now ends the hlt */
    jmp     next
print_byte:
    mov     %r12d, %eax
    movzbl  %al, %eax
    movzbl  RING(%rax), %ebx
    mov     $COM1, %dx
    test    %r12d, %r12d
    jz      1f
    mov     $' ', %al
    outb    %al, %dx
1:  call    puthex8
    inc     %r12d
    cmp     $0xd3, %bl
    jne     2f
    cmp     $0xe0, %r13b
    jne     2f
    mov     $1, %r14d
2:  mov     %bl, %r13b
    jmp     next
done:
    mov     $COM1, %dx
    mov     $'\n', %al
    outb    %al, %dx
    RESET

/* flush: read port 0x60 while the status port shows OBF (at most 32 times). */
flush:
    mov     $32, %ecx
1:  inb     $I8042_STATUS, %al
    test    $STS_OBF, %al
    jz      2f
    inb     $I8042_DATA, %al
    dec     %ecx
    jnz     1b
2:  ret

/* read_reply: wait for OBF, return the byte in al. rcx names the step, for
 * "kbd: no reply to <step>". Clobbers rax, rdx, rdi. */
read_reply:
    mov     $POLL_MAX, %edi
1:  inb     $I8042_STATUS, %al
    test    $STS_OBF, %al
    jnz     2f
    dec     %edi
    jnz     1b
    push    %rcx
    lea     msg_no_reply(%rip), %rcx
    call    puts
    pop     %rcx
    call    puts
    mov     $COM1, %dx
    mov     $'\n', %al
    outb    %al, %dx
    RESET
2:  inb     $I8042_DATA, %al
    ret

/* puts: print the NUL-terminated string at rcx. Clobbers rax, rcx, rdx. */
puts:
    PUTS64_AT_RCX
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

/* fail_val: print "kbd: " + the string at rcx + " 0x" + hex(sil) + "\n",
 * then reset. */
fail_val:
    push    %rcx
    lea     msg_prefix(%rip), %rcx
    call    puts
    pop     %rcx
    call    puts
    mov     $COM1, %dx
    mov     $' ', %al
    outb    %al, %dx
    mov     $'0', %al
    outb    %al, %dx
    mov     $'x', %al
    outb    %al, %dx
    mov     %esi, %ebx
    call    puthex8
    mov     $'\n', %al
    outb    %al, %dx
    RESET

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

/* irq_init: step 2 above. Interrupts stay off (IF = 0).
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
    lea     kbd_isr(%rip), %rax
    call    make_gate
    mov     %rax, IDT + VEC_KBD * 16
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
    movl    $(IOAPIC_REDTBL + 2 * KBD_PIN + 1), IOAPIC_REGSEL(%r9)
    movl    $(0 << 24), IOAPIC_WIN(%r9)     /* destination APIC ID 0 */
    movl    $(IOAPIC_REDTBL + 2 * KBD_PIN), IOAPIC_REGSEL(%r9)
    movl    $VEC_KBD, IOAPIC_WIN(%r9)       /* fixed, physical, high, edge, unmasked */
    ret

/* kbd_isr: IRQ 1. Store every byte waiting (OBF), then EOI. An interrupt
 * that finds nothing (its byte was taken in an earlier turn) just EOIs. */
kbd_isr:
    push    %rax
    push    %rcx
    push    %rdx
    mov     $ISR_MAX, %edx
1:  inb     $I8042_STATUS, %al
    test    $STS_OBF, %al
    jz      2f
    inb     $I8042_DATA, %al
    mov     STORED, %ecx
    movzbl  %cl, %ecx
    mov     %al, RING(%rcx)
    incl    STORED
    dec     %edx
    jnz     1b
2:  mov     $LAPIC_BASE, %edx
    movl    $0, LAPIC_EOI(%rdx)
    pop     %rdx
    pop     %rcx
    pop     %rax
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
msg_ready:          .asciz "kbd ready\n"
msg_prefix:         .asciz "kbd: "
msg_no_reply:       .asciz "kbd: no reply to "
msg_self_test:      .asciz "controller self-test"
msg_reset_ack:      .asciz "keyboard reset ack"
msg_reset_bat:      .asciz "keyboard reset self-test"
msg_command_byte:   .asciz "command byte"
msg_unexpected:     .asciz "kbd: unexpected interrupt or exception\n"
