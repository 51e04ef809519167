/*
 * virtio_blk - write, read back and read past the end of a virtio-blk disk
 * through virtio-mmio, with real interrupts. Run with
 * `vireo run --kernel virtio_blk --disk path=IMG` (one disk, so it is in the
 * first slot: MMIO window 0xd0000000, IOAPIC pin 5). IMG needs at least
 * 2 sectors; sector 1 is overwritten.
 *
 * Boot ABI: 64-bit ELF entry (see hello64.s); it uses the boot stack
 * (RSP = 0x8ff0) for calls and interrupts. The driver steps are in
 * virtio.inc; scratch memory is 0x30000-0x37fff.
 *
 *   1. IDT, LAPIC, IOAPIC pin 5 -> vector 0x40 (virtio.inc: irq_init).
 *   2. Probe: magic "virt", version 2, device ID 2.        "probe ok"
 *   3. Reset, ACKNOWLEDGE, DRIVER, accept VERSION_1 only, FEATURES_OK
 *      read back.                                           "features ok"
 *   4. capacity (u64, 512-byte sectors) from configuration space 0x100,
 *      read as two u32 between two equal ConfigGeneration reads.
 *                                                           "capacity N sectors"
 *   5. Queue 0: 8 entries, QueueReady, DRIVER_OK.           "queue ok"
 *   6. Write sector 1 with PATTERN (512 bytes: u16 little-endian words
 *      k ^ 0xb10c for k = 0..255) as a 3-descriptor chain: header
 *      {type 1 (OUT), reserved 0, sector 1} readable, data readable, status
 *      byte writable (preset to 0xff). Kick, wait for the interrupt; used
 *      element {id 0, len 1}, status 0 (OK).                "write sector 1 ok"
 *   7. Read sector 1 (type 0, IN; data writable) into another buffer:
 *      interrupt, used {id 0, len 513}, status 0.           "read sector 1 ok"
 *   8. The buffer read equals PATTERN.                      "data ok"
 *   9. Read sector N (= capacity, one past the last): interrupt, status 1
 *      (IOERR).                             "read sector N past the end: IOERR ok"
 * then an i8042 reset. Every line starts with "virtio-blk: ". On the first
 * failure it prints what went wrong instead and resets.
 */
    .include "common.inc"
    .include "virtio.inc"

    /* virtio-blk request types and statuses (virtio 1.2, 5.2.6). */
    .set VIRTIO_BLK_T_IN,   0
    .set VIRTIO_BLK_T_OUT,  1
    .set VIRTIO_BLK_S_OK,   0
    .set VIRTIO_BLK_S_IOERR, 1
    .set SECTOR_SIZE,       512

    .set BLK_HDR,           BUF_A           /* type u32, reserved u32, sector u64 */
    .set BLK_STATUS,        BUF_A + 0x100   /* u8 */
    .set BLK_WBUF,          BUF_B           /* PATTERN */
    .set BLK_RBUF,          BUF_C           /* sector 1 read back */
    .set BLK_EBUF,          BUF_C + 0x800   /* the read past the end */
    .set CAPACITY,          VARS + 0x40     /* u64 */
    .set PATTERN_XOR,       0xb10c
    .set TEST_SECTOR,       1

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    mov     $VIRTIO_BASE, %ebx              /* zero-extends into rbx */
    call    irq_init
    mov     $VIRTIO_ID_BLOCK, %edi
    call    virtio_init

    call    read_capacity
    mov     %rax, CAPACITY
    SAY     msg_capacity
    mov     CAPACITY, %rax
    call    putdec
    lea     msg_sectors(%rip), %rcx
    call    puts
    cmpq    $(TEST_SECTOR + 1), CAPACITY
    jae     1f
    FAIL    msg_too_small
1:  call    virtio_queue_init

    /* PATTERN into the write buffer. */
    xor     %ecx, %ecx
1:  mov     %ecx, %eax
    xor     $PATTERN_XOR, %eax
    mov     %ax, BLK_WBUF(,%rcx,2)
    inc     %ecx
    cmp     $(SECTOR_SIZE / 2), %ecx
    jb      1b

    /* Write sector 1. */
    mov     $VIRTIO_BLK_T_OUT, %edi
    mov     $TEST_SECTOR, %esi
    mov     $BLK_WBUF, %edx
    mov     $DESC_F_NEXT, %ecx              /* data: device-readable */
    call    blk_request
    mov     %eax, %esi
    cmp     $1, %esi
    je      1f
    FAIL_VAL msg_write_len
1:  movzbl  BLK_STATUS, %esi
    cmp     $VIRTIO_BLK_S_OK, %esi
    je      1f
    FAIL_VAL msg_write_status
1:  SAY     msg_write_ok

    /* Read it back. */
    mov     $VIRTIO_BLK_T_IN, %edi
    mov     $TEST_SECTOR, %esi
    mov     $BLK_RBUF, %edx
    mov     $(DESC_F_NEXT | DESC_F_WRITE), %ecx
    call    blk_request
    mov     %eax, %esi
    cmp     $(SECTOR_SIZE + 1), %esi
    je      1f
    FAIL_VAL msg_read_len
1:  movzbl  BLK_STATUS, %esi
    cmp     $VIRTIO_BLK_S_OK, %esi
    je      1f
    FAIL_VAL msg_read_status
1:  SAY     msg_read_ok

    /* Compare, 8 bytes at a time. */
    xor     %ecx, %ecx
1:  mov     BLK_WBUF(,%rcx,8), %rax
    cmp     BLK_RBUF(,%rcx,8), %rax
    jne     2f
    inc     %ecx
    cmp     $(SECTOR_SIZE / 8), %ecx
    jb      1b
    SAY     msg_data_ok
    jmp     3f
2:  lea     (,%rcx,8), %esi
    FAIL_VAL msg_data_bad

    /* One sector past the end. */
3:  mov     $VIRTIO_BLK_T_IN, %edi
    mov     CAPACITY, %rsi
    mov     $BLK_EBUF, %edx
    mov     $(DESC_F_NEXT | DESC_F_WRITE), %ecx
    call    blk_request
    movzbl  BLK_STATUS, %esi
    cmp     $VIRTIO_BLK_S_IOERR, %esi
    je      1f
    FAIL_VAL msg_end_status
1:  SAY     msg_end_1
    mov     CAPACITY, %rax
    call    putdec
    lea     msg_end_2(%rip), %rcx
    call    puts
    RESET

/*
 * blk_request: edi = type, rsi = sector, rdx = data buffer (SECTOR_SIZE
 * bytes), ecx = the data descriptor's flags. Builds the chain in
 * descriptors 0 -> 1 -> 2, submits it, waits for the interrupt and checks
 * the used element; returns its len in eax. The status byte is BLK_STATUS.
 */
blk_request:
    mov     %edi, BLK_HDR
    movl    $0, BLK_HDR + 4
    mov     %rsi, BLK_HDR + 8
    movb    $0xff, BLK_STATUS               /* the device must overwrite it */

    movq    $BLK_HDR, VQ_DESC + 0           /* 0: header, readable */
    movl    $16, VQ_DESC + 8
    movw    $DESC_F_NEXT, VQ_DESC + 12
    movw    $1, VQ_DESC + 14
    mov     %rdx, VQ_DESC + 16              /* 1: data */
    movl    $SECTOR_SIZE, VQ_DESC + 24
    mov     %cx, VQ_DESC + 28
    movw    $2, VQ_DESC + 30
    movq    $BLK_STATUS, VQ_DESC + 32       /* 2: status, writable */
    movl    $1, VQ_DESC + 40
    movw    $DESC_F_WRITE, VQ_DESC + 44
    movw    $0, VQ_DESC + 46

    xor     %edi, %edi
    call    virtio_kick_wait
    xor     %edi, %edi
    call    virtio_used
    ret

/*
 * read_capacity: rax = the u64 at configuration offset 0, read as two u32
 * with ConfigGeneration unchanged around them (a few tries).
 */
read_capacity:
    mov     $4, %r8d
1:  mov     VIRTIO_CONFIG_GEN(%rbx), %r9d
    mov     VIRTIO_CONFIG(%rbx), %eax
    mov     VIRTIO_CONFIG + 4(%rbx), %edx
    cmp     VIRTIO_CONFIG_GEN(%rbx), %r9d
    je      2f
    dec     %r8d
    jnz     1b
    FAIL    msg_config_gen
2:  shl     $32, %rdx
    or      %rdx, %rax
    ret

    .section .rodata
guest_prefix:       .asciz "virtio-blk: "
msg_capacity:       .asciz "capacity "
msg_sectors:        .asciz " sectors\n"
msg_too_small:      .asciz "disk too small: sector 1 must exist\n"
msg_config_gen:     .asciz "ConfigGeneration keeps changing\n"
msg_write_len:      .asciz "write sector 1: used len "
msg_write_status:   .asciz "write sector 1: status "
msg_write_ok:       .asciz "write sector 1 ok\n"
msg_read_len:       .asciz "read sector 1: used len "
msg_read_status:    .asciz "read sector 1: status "
msg_read_ok:        .asciz "read sector 1 ok\n"
msg_data_ok:        .asciz "data ok\n"
msg_data_bad:       .asciz "data read back differs in the 8 bytes at "
msg_end_status:     .asciz "read past the end: status "
msg_end_1:          .asciz "read sector "
msg_end_2:          .asciz " past the end: IOERR ok\n"
