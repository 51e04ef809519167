/*
 * hello_pvh - the "PVH entry" smoke test.
 *
 * Boot ABI (see README.md): an ELF64 whose PT_NOTE segment holds a Xen
 * note of type XEN_ELFNOTE_PHYS32_ENTRY (18) giving the 32-bit physical
 * entry `pvh_start` (0x200000). The VMM enters there in 32-bit protected
 * mode, paging off, flat 4 GiB segments, interrupts off, with EBX = the
 * physical address of `struct hvm_start_info`. No stack is promised, and
 * this guest needs none.
 *
 * struct hvm_start_info (the fields used here):
 *     0x00 u32 magic          0x336ec578
 *     0x04 u32 version
 *     0x18 u64 cmdline_paddr  NUL-terminated command line, 0 if none
 *
 * Serial output on success (the last line carries the VMM's command line):
 *     vireo-guest: hello from PVH entry
 *     start_info ok
 *     cmdline: <the command line>
 * then an i8042 reset.
 *
 * With a bad magic it prints "start_info bad" and resets without trusting
 * anything else in the structure (no cmdline line). A cmdline_paddr of 0
 * prints just "cmdline: \n"; one above 4 GiB (unreachable without paging)
 * prints "cmdline: <above 4G>\n". At most 4096 bytes of it are printed.
 *
 * e_entry is a separate 64-bit stub, `_start`: if a VMM ignores the note
 * and enters as for a plain 64-bit ELF, the guest says so and resets,
 * instead of running 32-bit code in long mode.
 */
    .include "common.inc"

    .set START_INFO_MAGIC,  0x336ec578
    .set SI_MAGIC,          0x00    /* u32 */
    .set SI_CMDLINE_PADDR,  0x18    /* u64 */
    .set CMDLINE_MAX,       4096    /* print at most this many bytes */

/* ------------------------------------------------------------------------ */
/* The PVH note: name "Xen", type 18, desc = 32-bit entry address.          */
/* pvh.ld puts this section in the PT_NOTE program header.                  */
/* ------------------------------------------------------------------------ */
    .section .note.Xen, "a", @note
    .balign 4
    .long   2f - 1f                 /* n_namesz = 4 ("Xen" and its NUL) */
    .long   4f - 3f                 /* n_descsz = 4 */
    .long   18                      /* n_type = XEN_ELFNOTE_PHYS32_ENTRY */
1:  .asciz  "Xen"
2:  .balign 4
3:  .long   pvh_start               /* desc: physical 32-bit entry point */
4:  .balign 4

/* ------------------------------------------------------------------------ */
/* 32-bit PVH entry.                                                        */
/* ------------------------------------------------------------------------ */
    .section .text.entry, "ax"
    .code32
    .globl  pvh_start
pvh_start:
    cli
    mov     %ebx, %esi              /* start_info in ESI: the PUTS macros keep it */

    PUTS32  msg_hello

    cmpl    $START_INFO_MAGIC, SI_MAGIC(%esi)
    jne     start_info_bad
    PUTS32  msg_si_ok

    PUTS32  msg_cmdline
    /* Paging is off, so only a command line below 4 GiB is reachable. */
    cmpl    $0, SI_CMDLINE_PADDR+4(%esi)
    jne     cmdline_high
    mov     SI_CMDLINE_PADDR(%esi), %ecx
    test    %ecx, %ecx
    jz      cmdline_end             /* no command line: print nothing */
    PUTS32_AT_ECX CMDLINE_MAX
    jmp     cmdline_end
cmdline_high:
    PUTS32  msg_cmdline_high
cmdline_end:
    PUTS32  msg_newline
    jmp     done

start_info_bad:
    PUTS32  msg_si_bad
done:
    RESET

/* ------------------------------------------------------------------------ */
/* 64-bit e_entry, only reached if the VMM ignored the PVH note.            */
/* ------------------------------------------------------------------------ */
    .section .text, "ax"
    .code64
    .globl  _start
_start:
    cli
    PUTS64  msg_wrong_entry
    RESET

    .section .rodata
msg_hello:        .asciz "vireo-guest: hello from PVH entry\n"
msg_si_ok:        .asciz "start_info ok\n"
msg_si_bad:       .asciz "start_info bad\n"
msg_cmdline:      .asciz "cmdline: "
msg_cmdline_high: .asciz "<above 4G>"
msg_newline:      .asciz "\n"
msg_wrong_entry:  .asciz "vireo-guest: hello_pvh entered at its 64-bit e_entry: PVH note ignored\n"
