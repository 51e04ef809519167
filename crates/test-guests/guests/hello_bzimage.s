/*
 * hello_bzimage - the "bzImage entry" smoke test (Linux 64-bit boot protocol).
 *
 * This is a raw file, not ELF, laid out like a Linux bzImage:
 *
 *   file 0x000  boot sector; the setup header is at 0x1f1..0x26c
 *   file 0x200  `jmp` over the header (16-bit entry, unused here)
 *   file 0x400  protected-mode part = (setup_sects + 1) * 512; the VMM
 *               loads everything from here at code32_start (0x100000)
 *        +0x000 32-bit entry (code32_start): not supported, says so
 *        +0x200 64-bit entry (startup_64): the real guest
 *   file 0x1400 end; the protected-mode part is padded to PM_SIZE (4 KiB)
 *
 * The VMM copies the setup header into the zero page and enters the 64-bit
 * entry at load address + 0x200 in long mode, paging on (first 4 GiB
 * identity mapped), interrupts off, RSI = zero page. The code uses only
 * RIP-relative addresses, so it runs wherever it is loaded.
 *
 * Serial output on success:
 *     vireo-guest: hello from bzImage entry
 *     zero page ok
 * then an i8042 reset. "zero page bad" means the word at RSI+0x202 is not
 * "HdrS", i.e. the VMM did not copy the setup header into the zero page.
 *
 * Header fields: Documentation/arch/x86/boot.rst in Linux, and
 * `setup_header` in linux-loader's bootparam.rs (what Vireo parses it with).
 * Every field below is preceded by `.org <its offset>`: the assembler
 * errors out if a field would land anywhere else.
 */
    .include "common.inc"

    .set SETUP_SECTS,   1                           /* setup sectors after the boot sector */
    .set SETUP_SIZE,    (SETUP_SECTS + 1) * 512     /* 0x400: file offset of the PM part */
    .set PM_SIZE,       0x1000                      /* the PM part, padded */
    .set LOAD_ADDR,     0x100000                    /* code32_start / pref_address */
    .set ENTRY64_OFF,   0x200                       /* 64-bit entry = load address + 0x200 */

    .section .text, "ax"

/* ------------------------------------------------------------------------ */
/* Real-mode part: boot sector and setup header.                            */
/* ------------------------------------------------------------------------ */
    .code16
    .globl  bzimage_file_start
bzimage_file_start:
    /* A BIOS would run this; nothing should. Halt if something does. */
    PARK

    .org 0x1f1
    .byte   SETUP_SECTS             /* 0x1f1 setup_sects */
    .org 0x1f2
    .word   0                       /* 0x1f2 root_flags */
    .org 0x1f4
    .long   PM_SIZE / 16            /* 0x1f4 syssize: PM part in 16-byte units */
    .org 0x1f8
    .word   0                       /* 0x1f8 ram_size (obsolete) */
    .org 0x1fa
    .word   0xffff                  /* 0x1fa vid_mode: NORMAL_VGA */
    .org 0x1fc
    .word   0                       /* 0x1fc root_dev */
    .org 0x1fe
    .word   0xaa55                  /* 0x1fe boot_flag */
    .org 0x200
    /*
     * 0x200 jump: a 2-byte `jmp short` to the end of the header. Its
     * displacement byte (0x201) also tells a loader how long the header
     * is: the header ends at 0x202 + byte[0x201].
     */
    .byte   0xeb, setup_header_end - 1f
1:
    .org 0x202
    .ascii  "HdrS"                  /* 0x202 header magic */
    .org 0x206
    .word   0x020f                  /* 0x206 version: boot protocol 2.15 */
    .org 0x208
    .long   0                       /* 0x208 realmode_swtch */
    .org 0x20c
    .word   0x1000                  /* 0x20c start_sys_seg (obsolete) */
    .org 0x20e
    .word   0                       /* 0x20e kernel_version: no version string */
    .org 0x210
    .byte   0                       /* 0x210 type_of_loader: filled by the loader */
    .org 0x211
    .byte   0x01                    /* 0x211 loadflags: LOADED_HIGH (PM part at 1 MiB) */
    .org 0x212
    .word   0                       /* 0x212 setup_move_size */
    .org 0x214
    .long   LOAD_ADDR               /* 0x214 code32_start */
    .org 0x218
    .long   0                       /* 0x218 ramdisk_image */
    .org 0x21c
    .long   0                       /* 0x21c ramdisk_size */
    .org 0x220
    .long   0                       /* 0x220 bootsect_kludge */
    .org 0x224
    .word   0                       /* 0x224 heap_end_ptr */
    .org 0x226
    .byte   0                       /* 0x226 ext_loader_ver */
    .org 0x227
    .byte   0                       /* 0x227 ext_loader_type */
    .org 0x228
    .long   0                       /* 0x228 cmd_line_ptr: filled by the loader */
    .org 0x22c
    .long   0x7fffffff              /* 0x22c initrd_addr_max */
    .org 0x230
    .long   0x200000                /* 0x230 kernel_alignment */
    .org 0x234
    .byte   1                       /* 0x234 relocatable_kernel: yes (PIC code) */
    .org 0x235
    .byte   12                      /* 0x235 min_alignment: 2^12 = 4 KiB */
    .org 0x236
    .word   0x0001                  /* 0x236 xloadflags: XLF_KERNEL_64 (entry at +0x200) */
    .org 0x238
    .long   2047                    /* 0x238 cmdline_size: max length without NUL */
    .org 0x23c
    .long   0                       /* 0x23c hardware_subarch: default PC */
    .org 0x240
    .quad   0                       /* 0x240 hardware_subarch_data */
    .org 0x248
    .long   0                       /* 0x248 payload_offset: nothing compressed */
    .org 0x24c
    .long   0                       /* 0x24c payload_length */
    .org 0x250
    .quad   0                       /* 0x250 setup_data: filled by the loader */
    .org 0x258
    .quad   LOAD_ADDR               /* 0x258 pref_address */
    .org 0x260
    .long   PM_SIZE                 /* 0x260 init_size: memory needed from the load address */
    .org 0x264
    .long   0                       /* 0x264 handover_offset: no EFI handover */
    .org 0x268
    .long   kernel_info - pm_start  /* 0x268 kernel_info_offset (from the PM part's start) */
    .org 0x26c
setup_header_end:

    /* 16-bit entry (real-mode boot protocol, jumped to from 0x200): unsupported. */
    PARK

/* ------------------------------------------------------------------------ */
/* Protected-mode part, loaded at code32_start.                             */
/* ------------------------------------------------------------------------ */
    .org SETUP_SIZE
pm_start:
    /*
     * +0x000: 32-bit entry (32-bit boot protocol). This guest supports only
     * the 64-bit one; say so and reset. 32-bit code has no RIP-relative
     * addressing, so this assumes the default load address.
     */
    .code32
    cli
    PUTS32  (LOAD_ADDR + msg_entry32 - pm_start)
    RESET

    .org SETUP_SIZE + ENTRY64_OFF
    /* +0x200: 64-bit entry. */
    .code64
startup_64:
    cli
    PUTS64  msg_hello               /* does not touch RSI */

    /* Zero page (RSI) must hold "HdrS" at 0x202; refuse pointers >= 4 GiB. */
    mov     %rsi, %rax
    shr     $32, %rax
    jnz     zero_page_bad
    cmpl    $HDRS_MAGIC, ZP_HDR_MAGIC(%rsi)
    jne     zero_page_bad
    PUTS64  msg_zp_ok
    jmp     done
zero_page_bad:
    PUTS64  msg_zp_bad
done:
    RESET

msg_hello:   .asciz "vireo-guest: hello from bzImage entry\n"
msg_zp_ok:   .asciz "zero page ok\n"
msg_zp_bad:  .asciz "zero page bad\n"
msg_entry32: .asciz "vireo-guest: hello_bzimage entered at its 32-bit entry: use the 64-bit entry at +0x200\n"

    /* kernel_info (protocol 2.15), pointed to by kernel_info_offset. */
    .balign 4
kernel_info:
    .ascii  "LToP"                          /* header: "Linux top" */
    .long   kernel_info_end - kernel_info   /* size */
    .long   kernel_info_end - kernel_info   /* size_total */
    .long   0                               /* setup_type_max: setup_data is ignored */
kernel_info_end:

    /* Pad the protected-mode part to PM_SIZE (errors if the code outgrew it). */
    .org SETUP_SIZE + PM_SIZE
