/*
 * virtio_balloon - drive a virtio-balloon device through virtio-mmio, with a
 * real interrupt, and watch the host take a page away. Run with
 * `vireo run --kernel virtio_balloon --balloon size=MIB` (and no disk, NIC,
 * vsock or rng, so the balloon is in the first slot: MMIO window 0xd0000000,
 * IOAPIC pin 5).
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s); it uses the boot stack
 * (RSP = 0x8ff0) for calls and interrupts. The driver steps shared with the
 * other virtio guests are in virtio.inc; scratch memory is 0x30000-0x37fff
 * plus the two test pages at 0x40000 and 0x41000.
 *
 *   1. IDT, LAPIC, IOAPIC pin 5 -> vector 0x40 (virtio.inc: irq_init).
 *   2. Probe: magic "virt", version 2, device ID 5.        "probe ok"
 *   3. Reset, ACKNOWLEDGE, DRIVER, accept VERSION_1 only (so no statistics
 *      or reporting queue: the queues are inflate 0 and deflate 1),
 *      FEATURES_OK read back.                               "features ok"
 *   4. num_pages (le32 at configuration offset 0, register 0x100) between
 *      two equal ConfigGeneration reads.                    "num_pages N"
 *   5. Queue 1 (deflate): 8 entries at DQ_*, QueueReady. The device starts
 *      only when every queue of its layout is ready, so it is set up even
 *      though nothing is deflated. Then queue 0 (inflate) and DRIVER_OK
 *      (virtio.inc: virtio_queue_init).                     "queue ok"
 *   6. Fill the pages at 0x40000 (the one given away) and 0x41000 (its
 *      neighbour, kept) with a pattern (each u64 = its address ^ PATTERN)
 *      and check that it reads back.                        "pattern ok"
 *   7. Descriptor 0: the le32 page frame number 0x40 at BUF_A, 4 bytes,
 *      device-readable. Kick queue 0, wait for the interrupt (used-ring
 *      bit).                                                "inflate irq ok"
 *   8. used.idx = 1, used.ring[0] = {id 0, len 0}: the device writes
 *      nothing into inflate buffers.                        "used len 0"
 *   9. The page at 0x40000 now reads as all zero (the host released the
 *      memory behind it: private anonymous memory faults back in as zero),
 *      and the page at 0x41000 still holds the pattern.     "page released"
 *  10. actual = 1 (le32 at configuration offset 4, register 0x104), read
 *      back.                                                "actual 1"
 * then an i8042 reset. Every line starts with "virtio-balloon: ". On the
 * first failure it prints what went wrong instead and resets.
 */
    .include "common.inc"
    .include "virtio.inc"

    .set VIRTIO_ID_BALLOON, 5
    .set CFG_NUM_PAGES,     VIRTIO_CONFIG + 0       /* le32, read-only */
    .set CFG_ACTUAL,        VIRTIO_CONFIG + 4       /* le32, written by the driver */

    /* The deflate queue's rings, inside BUF_C (alignments 16, 2, 4). */
    .set DQ_DESC,           BUF_C
    .set DQ_AVAIL,          BUF_C + 0x400
    .set DQ_USED,           BUF_C + 0x800

    .set PFN_BUF,           BUF_A                   /* le32 page frame numbers */
    .set PAGE,              0x40000                 /* the page given to the balloon */
    .set PAGE_PFN,          PAGE >> 12
    .set NEIGHBOUR,         PAGE + 0x1000           /* the page kept */
    .set PAGES_END,         NEIGHBOUR + 0x1000
    .set PATTERN,           0xba110075ba110075
    .set NUM_PAGES,         VARS + 0x40             /* u32 */

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    mov     $VIRTIO_BASE, %ebx              /* zero-extends into rbx */
    call    irq_init
    mov     $VIRTIO_ID_BALLOON, %edi
    call    virtio_init

    /* num_pages, consistent with ConfigGeneration. */
    mov     $4, %r8d
1:  mov     VIRTIO_CONFIG_GEN(%rbx), %r9d
    mov     CFG_NUM_PAGES(%rbx), %eax
    cmp     VIRTIO_CONFIG_GEN(%rbx), %r9d
    je      2f
    dec     %r8d
    jnz     1b
    FAIL    msg_config_gen
2:  mov     %eax, NUM_PAGES
    SAY     msg_num_pages
    mov     NUM_PAGES, %eax                 /* zero-extends into rax */
    call    putdec
    lea     msg_newline(%rip), %rcx
    call    puts

    call    deflate_queue_init
    call    virtio_queue_init

    /* The pattern into both pages, then read it back. */
    movabs  $PATTERN, %r8
    mov     $PAGE, %edi
1:  mov     %rdi, %rax
    xor     %r8, %rax
    mov     %rax, (%rdi)
    add     $8, %rdi
    cmp     $PAGES_END, %edi
    jb      1b
    mov     $PAGE, %edi
    mov     $PAGES_END, %r9d
    call    check_pattern
    SAY     msg_pattern_ok

    /* Inflate: one page frame number, device-readable. */
    movl    $PAGE_PFN, PFN_BUF
    movq    $PFN_BUF, VQ_DESC
    movl    $4, VQ_DESC + 8
    movw    $0, VQ_DESC + 12
    movw    $0, VQ_DESC + 14
    xor     %edi, %edi
    call    virtio_kick_wait
    SAY     msg_inflate_irq_ok

    xor     %edi, %edi
    call    virtio_used
    mov     %eax, %esi
    test    %esi, %esi
    jz      1f
    FAIL_VAL msg_used_len
1:  SAY     msg_used_len_ok

    /* The page the balloon took reads as zero ... */
    xor     %eax, %eax
    mov     $PAGE, %edi
1:  or      (%rdi), %rax
    add     $8, %rdi
    cmp     $NEIGHBOUR, %edi
    jb      1b
    test    %rax, %rax
    jz      1f
    FAIL    msg_not_released
    /* ... and its neighbour is untouched. */
1:  mov     $NEIGHBOUR, %edi
    mov     $PAGES_END, %r9d
    call    check_pattern
    SAY     msg_released

    /* Tell the device the balloon holds one page. */
    movl    $1, CFG_ACTUAL(%rbx)
    mov     CFG_ACTUAL(%rbx), %esi
    cmp     $1, %esi
    je      1f
    FAIL_VAL msg_actual
1:  SAY     msg_actual_ok
    RESET

/*
 * check_pattern: every u64 in [rdi, r9) must equal its address ^ PATTERN
 * (r8 = PATTERN). Fails with the address of the first wrong one.
 * Clobbers rax, rdi.
 */
check_pattern:
1:  mov     %rdi, %rax
    xor     %r8, %rax
    cmp     (%rdi), %rax
    je      2f
    mov     %edi, %esi
    FAIL_VAL msg_pattern_bad
2:  add     $8, %rdi
    cmp     %r9, %rdi
    jb      1b
    ret

/*
 * deflate_queue_init: queue 1 with QSIZE entries at DQ_DESC / DQ_AVAIL /
 * DQ_USED, QueueReady (read back). Prints nothing; virtio_queue_init then
 * sets up queue 0 and DRIVER_OK.
 */
deflate_queue_init:
    movl    $1, VIRTIO_QUEUE_SEL(%rbx)
    mov     VIRTIO_QUEUE_READY(%rbx), %esi
    test    %esi, %esi
    jz      1f
    FAIL_VAL msg_dq_busy
1:  mov     VIRTIO_QUEUE_NUM_MAX(%rbx), %esi
    cmp     $QSIZE, %esi
    jae     1f
    FAIL_VAL msg_dq_small
1:  movl    $QSIZE, VIRTIO_QUEUE_NUM(%rbx)
    movl    $DQ_DESC, VIRTIO_QUEUE_DESC_LO(%rbx)
    movl    $0, VIRTIO_QUEUE_DESC_HI(%rbx)
    movl    $DQ_AVAIL, VIRTIO_QUEUE_AVAIL_LO(%rbx)
    movl    $0, VIRTIO_QUEUE_AVAIL_HI(%rbx)
    movl    $DQ_USED, VIRTIO_QUEUE_USED_LO(%rbx)
    movl    $0, VIRTIO_QUEUE_USED_HI(%rbx)
    movl    $1, VIRTIO_QUEUE_READY(%rbx)
    mov     VIRTIO_QUEUE_READY(%rbx), %esi
    cmp     $1, %esi
    je      1f
    FAIL_VAL msg_dq_not_ready
1:  ret

    .section .rodata
guest_prefix:       .asciz "virtio-balloon: "
msg_config_gen:     .asciz "ConfigGeneration keeps changing\n"
msg_num_pages:      .asciz "num_pages "
msg_dq_busy:        .asciz "queue 1 already ready: "
msg_dq_small:       .asciz "queue 1 too small, max "
msg_dq_not_ready:   .asciz "queue 1: QueueReady did not stick: "
msg_pattern_ok:     .asciz "pattern ok\n"
msg_pattern_bad:    .asciz "pattern wrong at "
msg_inflate_irq_ok: .asciz "inflate irq ok\n"
msg_used_len:       .asciz "used len "
msg_used_len_ok:    .asciz "used len 0\n"
msg_not_released:   .asciz "page 0x40000 still holds data: not released\n"
msg_released:       .asciz "page released\n"
msg_actual:         .asciz "actual reads back "
msg_actual_ok:      .asciz "actual 1\n"
