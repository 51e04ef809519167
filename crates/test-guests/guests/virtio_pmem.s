/*
 * virtio_pmem - drive a virtio-pmem device through virtio-mmio and use its
 * region as memory. Run with `vireo run --kernel virtio_pmem --pmem
 * path=FILE[,readonly]` as the only virtio device (MMIO window 0xd0000000,
 * IOAPIC pin 5) in a guest of at most 3 GiB, whose pmem region is at 4 GiB.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s); it uses the boot stack
 * (RSP = 0x8ff0) for calls and interrupts. The driver steps are in
 * virtio.inc; scratch memory is 0x30000-0x38fff.
 *
 *   1. IDT, LAPIC, IOAPIC pin 5 -> vector 0x40 (virtio.inc: irq_init).
 *   2. Probe: magic "virt", version 2, device ID 27.       "probe ok"
 *   3. Reset, ACKNOWLEDGE, DRIVER, accept VERSION_1 only, FEATURES_OK
 *      read back.                                           "features ok"
 *   4. The configuration space: start and size (le64 each), printed as
 *      16 hex digits.            "start 0x0000000100000000" / "size 0x..."
 *      Both must be multiples of 2 MiB, the size not 0, and the region
 *      within one 1 GiB-aligned gigabyte below 512 GiB (what step 6 maps).
 *   5. Queue 0: 8 entries, QueueReady, DRIVER_OK.           "queue ok"
 *   6. Maps that gigabyte: a page directory of 2 MiB pages at 0x38000,
 *      entered in the boot PDPT (0xa000, which maps 0-4 GiB), CR3 reloaded.
 *   7. Reads the region's first 16 bytes and prints them as 32 hex digits,
 *      in memory order.                                     "data <hex>"
 *   8. Stores PMEM_MARK (16 bytes, two quadwords) at start + PMEM_MARK_OFFSET
 *      and reads them back: "wrote mark" if they read back, "mark not kept"
 *      if not (a read-only region: the stores are dropped).
 *   9. A flush request: descriptor 0 = le32 type 0 (FLUSH) at BUF_A,
 *      device-readable; descriptor 1 = le32 status at BUF_B (preset to
 *      0xffffffff), device-writable. Kick, wait for the interrupt, used len
 *      must be 4, status 0.                                 "flush ok"
 * then an i8042 reset. Every line starts with "virtio-pmem: ". On the first
 * failure it prints what went wrong instead and resets.
 */
    .include "common.inc"
    .include "virtio.inc"

    .set VIRTIO_ID_PMEM,    27
    .set PMEM_START,        VIRTIO_CONFIG
    .set PMEM_SIZE,         VIRTIO_CONFIG + 8

    .set PMEM_MARK_OFFSET,  0x1000
    .set PAGE_DIR,          0x38000     /* 512 entries of 2 MiB pages */
    .set BOOT_PDPT,         0xa000      /* the VMM's identity map: PDPT */
    .set PDE_FLAGS,         0x83        /* present, writable, 2 MiB page */
    .set PDPTE_FLAGS,       0x03        /* present, writable */
    .set TWO_MIB_MASK,      0x1fffff

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    mov     $VIRTIO_BASE, %ebx              /* zero-extends into rbx */
    call    irq_init
    mov     $VIRTIO_ID_PMEM, %edi
    call    virtio_init

    /* Step 4: r12 = start, r13 = size. */
    mov     PMEM_START(%rbx), %r12d
    mov     PMEM_START + 4(%rbx), %eax
    shl     $32, %rax
    or      %rax, %r12
    mov     PMEM_SIZE(%rbx), %r13d
    mov     PMEM_SIZE + 4(%rbx), %eax
    shl     $32, %rax
    or      %rax, %r13
    SAY     msg_start
    mov     %r12, %rsi
    call    puthex64
    SAY     msg_size
    mov     %r13, %rsi
    call    puthex64

    test    $TWO_MIB_MASK, %r12
    jz      1f
    FAIL    msg_unaligned
1:  test    %r13, %r13
    jz      2f
    test    $TWO_MIB_MASK, %r13
    jz      1f
2:  FAIL    msg_bad_size
1:  mov     %r12, %rax                      /* first byte's gigabyte ... */
    shr     $30, %rax
    lea     -1(%r12, %r13), %rcx            /* ... and the last byte's */
    shr     $30, %rcx
    cmp     %rax, %rcx
    jne     1f
    cmp     $512, %rax
    jb      2f
1:  FAIL    msg_not_mappable
2:  mov     %rax, %r14                      /* r14 = the gigabyte */

    call    virtio_queue_init

    /* Step 6: PD entries for the gigabyte, then PDPT[r14]. */
    mov     %r14, %rax
    shl     $30, %rax
    or      $PDE_FLAGS, %rax
    mov     $PAGE_DIR, %edi
    mov     $512, %ecx
1:  mov     %rax, (%rdi)
    add     $(2 << 20), %rax
    add     $8, %rdi
    dec     %ecx
    jnz     1b
    movq    $(PAGE_DIR | PDPTE_FLAGS), BOOT_PDPT(,%r14,8)
    mov     %cr3, %rax
    mov     %rax, %cr3

    /* Step 7: the first 16 bytes. */
    SAY     msg_data
    mov     $COM1, %dx
    xor     %ecx, %ecx
1:  movzbl  (%r12, %rcx), %eax
    push    %rcx
    call    puthex8
    pop     %rcx
    inc     %ecx
    cmp     $16, %ecx
    jne     1b
    lea     msg_newline(%rip), %rcx
    call    puts

    /* Step 8: the mark. */
    lea     PMEM_MARK_OFFSET(%r12), %rdi
    mov     pmem_mark(%rip), %rax
    mov     pmem_mark + 8(%rip), %rdx
    mov     %rax, (%rdi)
    mov     %rdx, 8(%rdi)
    cmp     (%rdi), %rax
    jne     1f
    cmp     8(%rdi), %rdx
    jne     1f
    SAY     msg_wrote
    jmp     2f
1:  SAY     msg_not_kept
2:

    /* Step 9: the flush. */
    movl    $0, BUF_A                       /* VIRTIO_PMEM_REQ_TYPE_FLUSH */
    movl    $0xffffffff, BUF_B
    movq    $BUF_A, VQ_DESC
    movl    $4, VQ_DESC + 8
    movw    $DESC_F_NEXT, VQ_DESC + 12
    movw    $1, VQ_DESC + 14
    movq    $BUF_B, VQ_DESC + 16
    movl    $4, VQ_DESC + 24
    movw    $DESC_F_WRITE, VQ_DESC + 28
    movw    $0, VQ_DESC + 30
    xor     %edi, %edi
    call    virtio_kick_wait
    xor     %edi, %edi
    call    virtio_used
    mov     %eax, %esi
    cmp     $4, %esi
    je      1f
    FAIL_VAL msg_used_len
1:  mov     BUF_B, %esi
    test    %esi, %esi
    jz      1f
    FAIL_VAL msg_flush_status
1:  SAY     msg_flush_ok
    RESET

/* puthex64: print rsi as "0x", 16 hex digits and "\n". Clobbers rax, rcx, rdx. */
puthex64:
    mov     $COM1, %dx
    mov     $'0', %al
    outb    %al, %dx
    mov     $'x', %al
    outb    %al, %dx
    mov     $16, %ecx
1:  rol     $4, %rsi                /* top nibble first; 16 turns restore rsi */
    mov     %esi, %eax
    and     $0xf, %eax
    cmp     $10, %al
    jb      2f
    add     $('a' - '0' - 10), %al
2:  add     $'0', %al
    outb    %al, %dx
    dec     %ecx
    jnz     1b
    mov     $'\n', %al
    outb    %al, %dx
    ret

/* puthex8: print al as two hex digits (dx = COM1). Clobbers rax, rcx. */
puthex8:
    mov     %al, %cl
    shr     $4, %al
    call    putnibble
    mov     %cl, %al
    and     $0xf, %al
putnibble:                          /* al = 0..15: one hex digit to port dx */
    cmp     $10, %al
    jb      1f
    add     $('a' - '0' - 10), %al
1:  add     $'0', %al
    outb    %al, %dx
    ret

    .section .rodata
guest_prefix:       .asciz "virtio-pmem: "
pmem_mark:          .ascii "written by guest"  /* 16 bytes, no NUL */
msg_start:          .asciz "start "
msg_size:           .asciz "size "
msg_unaligned:      .asciz "start is not a multiple of 2 MiB\n"
msg_bad_size:       .asciz "size is 0 or not a multiple of 2 MiB\n"
msg_not_mappable:   .asciz "region not within one gigabyte below 512 GiB\n"
msg_data:           .asciz "data "
msg_wrote:          .asciz "wrote mark\n"
msg_not_kept:       .asciz "mark not kept\n"
msg_used_len:       .asciz "used len "
msg_flush_status:   .asciz "flush status "
msg_flush_ok:       .asciz "flush ok\n"
