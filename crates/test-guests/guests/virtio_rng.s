/*
 * virtio_rng - drive a virtio-rng device through virtio-mmio, with a real
 * interrupt. Run with `vireo run --kernel virtio_rng --rng` (and no disk,
 * NIC or vsock, so the entropy device is in the first slot: MMIO window
 * 0xd0000000, IOAPIC pin 5).
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s); it uses the boot stack
 * (RSP = 0x8ff0) for calls and interrupts. The driver steps are in
 * virtio.inc; scratch memory is 0x30000-0x37fff.
 *
 *   1. IDT, LAPIC, IOAPIC pin 5 -> vector 0x40 (virtio.inc: irq_init).
 *   2. Probe: magic "virt", version 2, device ID 4.        "probe ok"
 *   3. Reset, ACKNOWLEDGE, DRIVER, accept VERSION_1 only, FEATURES_OK
 *      read back.                                           "features ok"
 *   4. Queue 0: 8 entries, QueueReady, DRIVER_OK.           "queue ok"
 *   5. One device-writable 32-byte buffer (descriptor 0, at BUF_B) in the
 *      avail ring, kick, `sti; hlt` until the interrupt handler has read
 *      and acknowledged InterruptStatus (used-ring bit set).   "irq ok"
 *   6. used.idx = 1, used.ring[0] = {id 0, len 32}.          "used len 32"
 *   7. The 32 bytes are not all zero, and the 32 bytes after the buffer
 *      are still zero (the device wrote no more than it was given).
 *                                                           "random ok"
 * then an i8042 reset. Every line starts with "virtio-rng: ". On the first
 * failure it prints what went wrong instead (for example
 * "virtio-rng: no device, magic 0xffffffff" when there is no device: the
 * VMM answers unclaimed MMIO with all ones) and resets.
 */
    .include "common.inc"
    .include "virtio.inc"

    .set RNG_BUF,       BUF_B
    .set RNG_LEN,       32

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    mov     $VIRTIO_BASE, %ebx              /* zero-extends into rbx */
    call    irq_init
    mov     $VIRTIO_ID_RNG, %edi
    call    virtio_init
    call    virtio_queue_init

    /* Descriptor 0: RNG_LEN bytes at RNG_BUF, device-writable, no next. */
    movq    $RNG_BUF, VQ_DESC
    movl    $RNG_LEN, VQ_DESC + 8
    movw    $DESC_F_WRITE, VQ_DESC + 12
    movw    $0, VQ_DESC + 14
    xor     %edi, %edi
    call    virtio_kick_wait
    SAY     msg_irq_ok

    xor     %edi, %edi
    call    virtio_used
    mov     %eax, %esi
    cmp     $RNG_LEN, %esi
    je      1f
    FAIL_VAL msg_used_len
1:  SAY     msg_used_len_ok

    /* Some bit of the buffer is set ... */
    mov     RNG_BUF, %rax
    or      RNG_BUF + 8, %rax
    or      RNG_BUF + 16, %rax
    or      RNG_BUF + 24, %rax
    jnz     1f
    FAIL    msg_all_zero
    /* ... and none of the bytes after it. */
1:  mov     RNG_BUF + 32, %rax
    or      RNG_BUF + 40, %rax
    or      RNG_BUF + 48, %rax
    or      RNG_BUF + 56, %rax
    jz      1f
    FAIL    msg_overrun
1:  SAY     msg_random_ok
    RESET

    .section .rodata
guest_prefix:       .asciz "virtio-rng: "
msg_irq_ok:         .asciz "irq ok\n"
msg_used_len:       .asciz "used len "
msg_used_len_ok:    .asciz "used len 32\n"
msg_all_zero:       .asciz "random buffer is all zero\n"
msg_overrun:        .asciz "device wrote past the 32-byte buffer\n"
msg_random_ok:      .asciz "random ok\n"
