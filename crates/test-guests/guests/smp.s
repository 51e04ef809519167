/*
 * smp - start the second vCPU with INIT + STARTUP IPIs (run with 2 vCPUs).
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s). The VMM starts only the boot
 * CPU (APIC ID 0); the AP (APIC ID 1) waits for INIT/SIPI as on real
 * hardware (KVM's in-kernel LAPIC does this when the VMM leaves the AP's
 * mp_state alone).
 *
 * BSP:
 *   1. prints "bsp up"
 *   2. copies the 16-bit trampoline below to TRAMPOLINE (0x10000) and clears
 *      the AP flag at AP_FLAG (0x11000)
 *   3. software-enables its LAPIC (SVR), sends INIT (assert) to APIC ID 1,
 *      then STARTUP with vector 0x10 (the AP starts at 0x1000:0000 =
 *      0x10000) - twice, as the MP spec says; KVM ignores the second one if
 *      the AP is already running. After each IPI it waits (bounded) for the
 *      ICR delivery-status bit to clear.
 *   4. spins up to SPIN_MAX times on the flag, then prints "smp ok: 2 cpus"
 *      or "smp timeout" and resets.
 * AP (real mode, CS = 0x1000, IP = 0):
 *   prints "ap up", sets AP_FLAG to 1, parks (`cli; hlt` for ever).
 *
 * The BSP is silent between sending the SIPI and seeing the flag, and the AP
 * sets the flag only after its last byte went out, so the serial output is
 * always exactly:
 *     bsp up
 *     ap up
 *     smp ok: 2 cpus
 */
    .include "common.inc"

    .set TRAMPOLINE,    0x10000     /* free low memory; 4 KiB aligned (SIPI) */
    .set SIPI_VECTOR,   TRAMPOLINE >> 12            /* 0x10 */
    .set AP_FLAG,       0x11000     /* byte the AP sets to 1 */
    .set AP_FLAG_OFF,   AP_FLAG - TRAMPOLINE        /* the same, from DS = 0x1000 */
    .set AP_APIC_ID,    1
    .set SPIN_MAX,      1000000     /* flag polls before "smp timeout" */
    .set ICR_SPIN_MAX,  1000        /* delivery-status polls per IPI */

    /* xAPIC registers (MMIO, offsets from 0xfee00000). */
    .set LAPIC_BASE,    0xfee00000
    .set LAPIC_SVR,     0x0f0       /* spurious vector register */
    .set LAPIC_ICR_LO,  0x300
    .set LAPIC_ICR_HI,  0x310
    .set SVR_ENABLE,    0x100       /* bit 8: APIC software enable */
    .set ICR_BUSY,      0x1000      /* bit 12: delivery status (send pending) */
    .set ICR_INIT,      0x00004500  /* delivery mode INIT (101), level assert */
    .set ICR_STARTUP,   0x00004600  /* delivery mode STARTUP (110), level assert; | vector */

/*
 * SEND_IPI icr_low - send an IPI to AP_APIC_ID and wait for the ICR's
 * delivery-status bit to clear. Expects rbx = LAPIC_BASE. Clobbers ecx, eax.
 */
.macro SEND_IPI icr_low
    movl    $(AP_APIC_ID << 24), LAPIC_ICR_HI(%rbx)  /* destination field */
    movl    $(\icr_low), LAPIC_ICR_LO(%rbx)         /* writing the low dword sends */
    mov     $ICR_SPIN_MAX, %ecx
.Lsend_ipi_wait\@:
    mov     LAPIC_ICR_LO(%rbx), %eax
    test    $ICR_BUSY, %eax
    jz      .Lsend_ipi_done\@
    pause
    dec     %ecx
    jnz     .Lsend_ipi_wait\@
.Lsend_ipi_done\@:
.endm

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    PUTS64  msg_bsp_up

    /* Copy the trampoline to TRAMPOLINE and clear the flag. */
    lea     trampoline(%rip), %rsi
    mov     $TRAMPOLINE, %edi
    mov     $(trampoline_end - trampoline), %ecx
    cld
    rep movsb
    movb    $0, AP_FLAG

    /*
     * LAPIC base in a register: 0xfee00000 as a 32-bit displacement would be
     * sign-extended to 0xfffffffffee00000, which is not mapped.
     */
    mov     $LAPIC_BASE, %ebx               /* zero-extends into rbx */
    orl     $SVR_ENABLE, LAPIC_SVR(%rbx)

    SEND_IPI ICR_INIT
    SEND_IPI (ICR_STARTUP | SIPI_VECTOR)
    SEND_IPI (ICR_STARTUP | SIPI_VECTOR)

    /* Wait for the AP. */
    mov     $SPIN_MAX, %ecx
wait_ap:
    cmpb    $1, AP_FLAG
    je      ap_ok
    pause
    dec     %ecx
    jnz     wait_ap
    PUTS64  msg_timeout
    jmp     done
ap_ok:
    PUTS64  msg_smp_ok
done:
    RESET

/* ------------------------------------------------------------------------ */
/* AP trampoline: copied to TRAMPOLINE, runs in real mode at CS:IP =        */
/* 0x1000:0000. Position independent: it only uses offsets from its start.  */
/* ------------------------------------------------------------------------ */
    .code16
trampoline:
    cli
    mov     %cs, %ax
    mov     %ax, %ds                        /* DS = CS = 0x1000 */
    mov     $(ap_msg - trampoline), %si
    mov     $COM1, %dx
    cld
1:  lodsb                                   /* al = ds:[si++] */
    test    %al, %al
    jz      2f
    outb    %al, %dx
    jmp     1b
2:  movb    $1, AP_FLAG_OFF                 /* ds:0x1000 = linear AP_FLAG */
    PARK
ap_msg:
    .asciz  "ap up\n"
trampoline_end:

    .code64
    .section .rodata
msg_bsp_up:  .asciz "bsp up\n"
msg_smp_ok:  .asciz "smp ok: 2 cpus\n"
msg_timeout: .asciz "smp timeout\n"
