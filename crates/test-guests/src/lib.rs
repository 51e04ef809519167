//! Tiny guest programs for Vireo's KVM integration tests.
//!
//! Each guest is a few dozen instructions of GNU assembler in
//! `crates/test-guests/guests/<name>.s`, assembled and linked at build time
//! by `build.rs` (GNU `as` and `ld` from binutils) into `$OUT_DIR/<name>`.
//! [`path`] gives the file; [`ALL`] lists every guest. The guests talk to
//! the test only through the serial port (COM1, I/O port 0x3f8) and end with
//! an i8042 reset (a write of 0xfe to port 0x64), which the VMM turns into a
//! clean exit, unless said otherwise. The exact serial output of each guest
//! on success is in [`expected`].
//!
//! # Boot ABI the VMM provides
//!
//! All of them need guest RAM from address 0 (128 MiB in the tests), COM1 at
//! 0x3f8 (the guests only write the THR; they never poll LSR) and the i8042
//! reset. The ELF guests are linked at 0x200000 (one `PT_LOAD`, physical =
//! virtual address); 0x10000..0x1ffff is scratch memory some guests use at
//! run time. Three entry conventions are used:
//!
//! * **64-bit ELF entry** (plain ELF64, no PVH note): the vCPU starts at
//!   `e_entry` in long mode, paging on, first 4 GiB identity mapped with
//!   2 MiB pages, CS = 0x08 (64-bit code), DS/ES/SS = 0x10, RSI = 0x7000
//!   (the zero page, `struct boot_params`, whose `hdr.header` must be
//!   `"HdrS"`), RSP = 0x8ff0, interrupts off, IDT limit 0. Only the virtio
//!   guests use that stack (for calls and their own interrupt handlers).
//! * **PVH entry**: an ELF whose `PT_NOTE` segment holds a `"Xen"` note of
//!   type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`) with the 32-bit entry address. The
//!   vCPU starts there in 32-bit protected mode, paging off, flat 4 GiB
//!   segments, interrupts off, EBX = address of `struct hvm_start_info`.
//! * **bzImage entry**: a raw Linux bzImage (not ELF). The VMM loads the
//!   protected-mode part at `code32_start` (0x100000), copies the setup
//!   header into the zero page and enters at load address + 0x200 with the
//!   same state as the 64-bit ELF entry.
//!
//! See `crates/test-guests/README.md` for the details.
//!
//! # Example
//!
//! ```
//! let elf = test_guests::path(test_guests::HELLO64);
//! assert!(elf.is_file());
//! assert_eq!(
//!     test_guests::expected::HELLO64,
//!     "vireo-guest: hello from 64-bit entry\nzero page ok\n"
//! );
//! ```

use std::path::PathBuf;

/// 64-bit ELF entry at 0x200000. Prints
/// `"vireo-guest: hello from 64-bit entry\n"`, then checks that the zero page
/// at RSI has `"HdrS"` (0x53726448) at offset 0x202 and prints
/// `"zero page ok\n"` (or `"zero page bad\n"`, also for an RSI at or above
/// 4 GiB). Then resets.
pub const HELLO64: &str = "hello64";

/// PVH entry: ELF64 with a `XEN_ELFNOTE_PHYS32_ENTRY` note giving the 32-bit
/// entry 0x200000. Prints `"vireo-guest: hello from PVH entry\n"`, checks the
/// `hvm_start_info` magic (0x336ec578) at EBX and prints
/// `"start_info ok\n"`, then `"cmdline: "`, the NUL-terminated string at
/// `cmdline_paddr` (at most 4096 bytes; nothing if the address is 0,
/// `"<above 4G>"` if it is not reachable without paging), and `"\n"`. With a
/// bad magic it prints `"start_info bad\n"` and no cmdline line. Then
/// resets.
///
/// Its `e_entry` is a separate 64-bit stub that prints
/// `"vireo-guest: hello_pvh entered at its 64-bit e_entry: PVH note ignored\n"`
/// and resets, so a VMM that misses the note fails clearly.
pub const HELLO_PVH: &str = "hello_pvh";

/// bzImage entry: a raw bzImage file (setup header at 0x1f1, protocol
/// 2.15, one setup sector, 4 KiB protected-mode part, `code32_start`
/// 0x100000, `XLF_KERNEL_64`). The 64-bit entry at load address + 0x200
/// prints `"vireo-guest: hello from bzImage entry\n"`, then
/// `"zero page ok\n"` / `"zero page bad\n"` like [`HELLO64`], and resets.
/// The code is position independent. The 32-bit entry (load address + 0)
/// prints a line saying it is unsupported, assuming the default load
/// address, and resets.
pub const HELLO_BZIMAGE: &str = "hello_bzimage";

/// Two-vCPU start, 64-bit ELF entry at 0x200000; run with 2 vCPUs. The BSP
/// prints `"bsp up\n"`, copies a real-mode trampoline to 0x10000, sends INIT
/// and then two STARTUP IPIs (vector 0x10) to APIC ID 1 through the xAPIC ICR
/// at 0xfee00300. The AP, at 0x1000:0000 in real mode, prints `"ap up\n"`,
/// sets the byte at 0x11000 to 1 and halts for good. The BSP polls that byte
/// (up to 1,000,000 times) and prints `"smp ok: 2 cpus\n"` or
/// `"smp timeout\n"`, then resets. The output order is deterministic. The
/// timeout path takes a few seconds here.
pub const SMP: &str = "smp";

/// Triple fault, 64-bit ELF entry at 0x200000. Prints
/// `"about to triple fault\n"`, loads an IDT with limit 0 and reads from a
/// non-canonical address: #GP, then #DF, then a triple fault, so the vCPU
/// shuts down (`KVM_EXIT_SHUTDOWN`). Prints nothing more and never resets;
/// `"triple fault did not happen\n"` means the read completed.
pub const TRIPLE_FAULT: &str = "triple_fault";

/// Unclaimed I/O, 64-bit ELF entry at 0x200000. Reads port 0x1234 (byte;
/// must be 0xff), PCI config data 0xcfc after writing 0x80000000 to 0xcf8
/// (u32; must be 0xffffffff, i.e. no PCI), MMIO 0xd0000000 (u32; must be
/// 0xffffffff); writes bytes to ports 0x80 and 0x5678 and a u32 to
/// 0xd0000000; reads CMOS register 0x0a (`out 0x70`, `in 0x71`) without
/// checking it. Prints `"ports ok\n"`, or `"ports bad:"` followed by
/// ` pio-0x1234`, ` pci-0xcfc`, ` mmio-0xd0000000` for each failed check and
/// `"\n"`. Then resets.
pub const PORTS: &str = "ports";

/// Endless counter, 64-bit ELF entry at 0x200000, for pause/resume and
/// snapshot tests. Loops for ever: increments the u64 at
/// [`COUNT_COUNTER_ADDR`], writes its low 32 bits with `out dx, eax` to
/// [`COUNT_DEBUG_PORT`], and prints `"."` each time the counter reaches a
/// multiple of 256. Prints nothing else and never resets.
pub const COUNT: &str = "count";

/// Powers off through the ACPI sleep control register (S5), 64-bit ELF entry
/// at 0x200000: prints `"vireo-guest: powering off via ACPI S5\n"`, writes
/// SLP_TYP=5|SLP_EN to port 0x600, and parks if the write was ignored.
pub const ACPI_POWEROFF: &str = "acpi_poweroff";

/// Serial input, 64-bit ELF entry at 0x200000: prints `"echo ready\n"`, then
/// echoes each byte it receives on COM1 as `"got: <byte>\n"`, polling the line
/// status register; resets after echoing `q`.
pub const ECHO: &str = "echo";

/// KVM internal error on purpose, 64-bit ELF entry at 0x200000: prints
/// `"jumping into MMIO\n"` and jumps to 0xd0000000 (no memory there), which KVM
/// cannot fetch from.
pub const MMIO_EXEC: &str = "mmio_exec";

/// virtio-rng driver, 64-bit ELF entry at 0x200000; run with `--rng` as the only
/// virtio device (MMIO window 0xd000_0000, IOAPIC pin 5). Probes, negotiates
/// `VERSION_1`, sets up queue 0 (8 entries), submits one device-writable 32-byte
/// buffer, waits halted for the interrupt (IDT, LAPIC and IOAPIC set up by the
/// guest), acknowledges it, checks the used ring and that the buffer is not all
/// zero. Prints [`expected::VIRTIO_RNG`], or the first failure (e.g.
/// [`expected::VIRTIO_RNG_NO_DEVICE`]), then resets.
pub const VIRTIO_RNG: &str = "virtio_rng";

/// virtio-blk driver, 64-bit ELF entry at 0x200000; run with one `--disk` as the
/// only virtio device (MMIO window 0xd000_0000, IOAPIC pin 5) of at least 2
/// sectors. Reads the capacity, writes [`virtio_blk_pattern`] to sector
/// [`VIRTIO_BLK_SECTOR`], reads it back and compares, then reads the sector just
/// past the end and expects `VIRTIO_BLK_S_IOERR`. Each request is a 3-descriptor
/// chain completed by a real interrupt. Prints [`expected::virtio_blk`], or the
/// first failure, then resets.
pub const VIRTIO_BLK: &str = "virtio_blk";

/// virtio-balloon driver, 64-bit ELF entry at 0x200000; run with `--balloon size=MIB`
/// as the only virtio device (MMIO window 0xd000_0000, IOAPIC pin 5). Probes,
/// negotiates `VERSION_1` only (so the queues are inflate 0 and deflate 1, whatever
/// else the device offers), prints `num_pages` from the configuration space, sets up
/// both queues, fills the page at [`VIRTIO_BALLOON_PAGE`] and the one after it with a
/// pattern, gives that one page (frame number 0x40) to the balloon on the inflate
/// queue, waits for the interrupt, checks the used ring, that the page now reads as
/// zero (the host released it) and that its neighbour kept the pattern, then writes
/// `actual` = 1. Prints [`expected::virtio_balloon`], or the first failure, then
/// resets.
pub const VIRTIO_BALLOON: &str = "virtio_balloon";

/// The i8042 keyboard with a real interrupt, 64-bit ELF entry at 0x200000. Probes the
/// controller by polling (self-test 0xaa must answer 0x55, keyboard reset 0xff must
/// answer 0xfa 0xaa), takes IRQ 1 through the IOAPIC (pin 1, vector 0x21; IDT and LAPIC
/// set up by the guest), turns the keyboard interrupt on in the command byte and prints
/// `"kbd ready\n"`. Then it waits halted; its interrupt handler reads every byte the
/// controller has, and the guest prints each as two hex digits, separated by spaces.
/// Once Delete's break code (0xe0 0xd3) has come and nothing more waits, it ends the
/// line and resets: [`expected::KBD_CTRL_ALT_DEL`] after the VMM's Ctrl+Alt+Del. A failed
/// probe step prints `"kbd: ..."` and resets.
pub const KBD: &str = "kbd";

/// Every guest, in the order above.
pub const ALL: &[&str] = &[
    HELLO64,
    HELLO_PVH,
    HELLO_BZIMAGE,
    SMP,
    TRIPLE_FAULT,
    PORTS,
    COUNT,
    ACPI_POWEROFF,
    ECHO,
    MMIO_EXEC,
    VIRTIO_RNG,
    VIRTIO_BLK,
    VIRTIO_BALLOON,
    KBD,
    BOOT_TIMER,
    IDLE,
    VMGENID,
    CPUID,
    VIRTIO_PMEM,
];

/// Firecracker's boot-done signal, 64-bit ELF entry at 0x200000: writes the byte 123
/// to 0xd0000000 (the boot timer of `--boot-timer`), prints
/// [`expected::BOOT_TIMER`] and resets.
pub const BOOT_TIMER: &str = "boot_timer";

/// A guest that runs for ever without using the host's CPU, 64-bit ELF entry at
/// 0x200000: prints [`IDLE_OUTPUT`], then halts with interrupts off (`cli; hlt`, again
/// after each wake-up), so its vCPU sleeps in KVM until the VMM kicks it (pause,
/// snapshot, stop). Never resets. For the published Firecracker clients' tests
/// (`scripts/fc-clients.sh`), which keep several VMs up at once.
pub const IDLE: &str = "idle";

/// All the serial output of [`IDLE`] (it never stops, so it has no [`expected`] entry).
pub const IDLE_OUTPUT: &str = "idle\n";

/// The VM generation ID as a driver sees it, 64-bit ELF entry at 0x200000: takes IOAPIC
/// pin 23 (the Generic Event Device's interrupt; vector 0x42, IDT and LAPIC set up by
/// the guest), prints `"vmgenid: id "` and the 16 bytes at [`VMGENID_ADDR`] as 32 hex
/// digits in memory order, then `"vmgenid: ready\n"`, and waits halted for ever. For
/// each interrupt it prints `"vmgenid: notified, id "` and the 16 bytes read again.
pub const VMGENID: &str = "vmgenid";

/// virtio-pmem driver, 64-bit ELF entry at 0x200000; run with `--pmem path=FILE` (or
/// `path=FILE,readonly`) as the only virtio device (MMIO window 0xd000_0000, IOAPIC pin
/// 5) in a guest of at most 3 GiB. Probes, negotiates `VERSION_1`, prints the region's
/// `start` and `size` from the configuration space, sets up the queue, maps the region
/// (a page directory of its gigabyte at 0x38000 in the boot page tables), prints its
/// first 16 bytes, stores [`VIRTIO_PMEM_MARK`] at [`VIRTIO_PMEM_MARK_OFFSET`] in it and
/// reads it back, then sends a flush request and checks its status. Prints
/// [`expected::virtio_pmem`], or the first failure, then resets.
pub const VIRTIO_PMEM: &str = "virtio_pmem";

/// What the [`VIRTIO_PMEM`] guest stores in its region.
pub const VIRTIO_PMEM_MARK: &[u8; 16] = b"written by guest";

/// Where in the region (bytes from its start) the [`VIRTIO_PMEM`] guest stores
/// [`VIRTIO_PMEM_MARK`].
pub const VIRTIO_PMEM_MARK_OFFSET: u64 = 0x1000;

/// Where the [`VMGENID`] guest reads the generation ID (Vireo's DSDT says so).
pub const VMGENID_ADDR: u64 = 0xd_f000;

/// What CPUID and an MSR tell the guest (for CPU templates), 64-bit ELF entry at
/// 0x200000: runs CPUID leaf 1 and leaf 7 subleaf 0 and reads IA32_PAT (MSR 0x277), and
/// prints them as [`expected::cpuid`] formats them (parse them back with
/// [`parse_cpuid_report`]). Then it polls COM1 for a byte: `q` resets, any other byte
/// prints the report again (CPUID and RDMSR run again).
pub const CPUID: &str = "cpuid";

/// What the [`CPUID`] guest reports: leaf 1 ECX, EDX; leaf 7.0 EBX, ECX, EDX; IA32_PAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidReport {
    /// CPUID leaf 1 ECX.
    pub leaf1_ecx: u32,
    /// CPUID leaf 1 EDX.
    pub leaf1_edx: u32,
    /// CPUID leaf 7 subleaf 0 EBX.
    pub leaf7_ebx: u32,
    /// CPUID leaf 7 subleaf 0 ECX.
    pub leaf7_ecx: u32,
    /// CPUID leaf 7 subleaf 0 EDX.
    pub leaf7_edx: u32,
    /// MSR 0x277.
    pub pat: u64,
}

/// The first whole report of the [`CPUID`] guest in `console`, and the rest of it.
pub fn parse_cpuid_report(console: &str) -> Option<(CpuidReport, &str)> {
    let start = console.find("cpuid 1 ")?;
    let mut lines = console[start..].splitn(4, '\n');
    let (l1, l7, msr) = (lines.next()?, lines.next()?, lines.next()?);
    let rest = lines.next()?; // the third line ended
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        let hex: String = line[at..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        u64::from_str_radix(&hex, 16).ok()
    };
    let r32 = |line: &str, name: &str| field(line, name).and_then(|v| u32::try_from(v).ok());
    Some((
        CpuidReport {
            leaf1_ecx: r32(l1, "ecx")?,
            leaf1_edx: r32(l1, "edx")?,
            leaf7_ebx: r32(l7.strip_prefix("cpuid 7 ")?, "ebx")?,
            leaf7_ecx: r32(l7, "ecx")?,
            leaf7_edx: r32(l7, "edx")?,
            pat: field(msr.strip_prefix("msr ")?, "0x277")?,
        },
        rest,
    ))
}

/// Guest-physical address of the u64 counter the [`COUNT`] guest increments.
pub const COUNT_COUNTER_ADDR: u64 = 0x12000;

/// I/O port the [`COUNT`] guest writes the counter's low 32 bits to.
pub const COUNT_DEBUG_PORT: u16 = 0x510;

/// Guest-physical address where the ELF guests are linked (their `e_entry`,
/// except [`HELLO_PVH`]'s, whose PVH entry is here).
pub const ELF_LOAD_ADDR: u64 = 0x20_0000;

/// Guest-physical address of the 4 KiB page the [`VIRTIO_BALLOON`] guest inflates
/// (page frame number 0x40).
pub const VIRTIO_BALLOON_PAGE: u64 = 0x4_0000;

/// The sector the [`VIRTIO_BLK`] guest overwrites (byte offset 512 in the image).
pub const VIRTIO_BLK_SECTOR: u64 = 1;

/// The 512 bytes the [`VIRTIO_BLK`] guest writes to [`VIRTIO_BLK_SECTOR`]:
/// little-endian u16 words `k ^ 0xb10c` for `k` in `0..256` (every word
/// differs, none is zero).
pub fn virtio_blk_pattern() -> [u8; 512] {
    let mut sector = [0u8; 512];
    for (k, word) in (0u16..).zip(sector.chunks_exact_mut(2)) {
        word.copy_from_slice(&(k ^ 0xb10c).to_le_bytes());
    }
    sector
}

/// Exact serial (COM1) output of each guest when everything the VMM does is
/// right. Guests that never stop have no entry.
pub mod expected {
    /// [`HELLO64`](crate::HELLO64).
    pub const HELLO64: &str = "vireo-guest: hello from 64-bit entry\nzero page ok\n";

    /// [`HELLO_PVH`](crate::HELLO_PVH) run with the command line
    /// `cmdline`.
    pub fn hello_pvh(cmdline: &str) -> String {
        format!("vireo-guest: hello from PVH entry\nstart_info ok\ncmdline: {cmdline}\n")
    }

    /// [`HELLO_BZIMAGE`](crate::HELLO_BZIMAGE).
    pub const HELLO_BZIMAGE: &str = "vireo-guest: hello from bzImage entry\nzero page ok\n";

    /// [`SMP`](crate::SMP), with 2 vCPUs.
    pub const SMP: &str = "bsp up\nap up\nsmp ok: 2 cpus\n";

    /// [`SMP`](crate::SMP) when the AP never starts (e.g. 1 vCPU).
    pub const SMP_TIMEOUT: &str = "bsp up\nsmp timeout\n";

    /// [`TRIPLE_FAULT`](crate::TRIPLE_FAULT): this, then a shutdown.
    pub const TRIPLE_FAULT: &str = "about to triple fault\n";

    /// [`PORTS`](crate::PORTS).
    pub const PORTS: &str = "ports ok\n";

    /// [`BOOT_TIMER`](crate::BOOT_TIMER).
    pub const BOOT_TIMER: &str = "boot timer signalled\n";

    /// One report of the [`CPUID`](crate::CPUID) guest.
    pub fn cpuid(r: &crate::CpuidReport) -> String {
        format!(
            "cpuid 1 ecx={:08x} edx={:08x}\ncpuid 7 ebx={:08x} ecx={:08x} edx={:08x}\nmsr 0x277={:016x}\n",
            r.leaf1_ecx, r.leaf1_edx, r.leaf7_ebx, r.leaf7_ecx, r.leaf7_edx, r.pat
        )
    }

    /// [`ACPI_POWEROFF`](crate::ACPI_POWEROFF).
    pub const ACPI_POWEROFF: &str = "vireo-guest: powering off via ACPI S5\n";

    /// [`VIRTIO_RNG`](crate::VIRTIO_RNG) with `--rng`.
    pub const VIRTIO_RNG: &str = "virtio-rng: probe ok\n\
                                  virtio-rng: features ok\n\
                                  virtio-rng: queue ok\n\
                                  virtio-rng: irq ok\n\
                                  virtio-rng: used len 32\n\
                                  virtio-rng: random ok\n";

    /// [`VIRTIO_RNG`](crate::VIRTIO_RNG) without any virtio device: the magic
    /// register reads all ones, like any MMIO nobody owns.
    pub const VIRTIO_RNG_NO_DEVICE: &str = "virtio-rng: no device, magic 0xffffffff\n";

    /// [`KBD`](crate::KBD) before any key.
    pub const KBD_READY: &str = "kbd ready\n";

    /// [`KBD`](crate::KBD) after the VMM pressed and released Ctrl+Alt+Del: Ctrl (0x1d),
    /// Alt (0x38), Delete (0xe0 0x53) down, then Delete, Alt, Ctrl up (bit 7 set), in
    /// scan code set 1 (the i8042 translates, as Linux expects).
    pub const KBD_CTRL_ALT_DEL: &str = "kbd ready\n1d 38 e0 53 e0 d3 b8 9d\n";

    /// [`VIRTIO_BLK`](crate::VIRTIO_BLK) with a disk of `capacity` 512-byte
    /// sectors (at least 2).
    pub fn virtio_blk(capacity: u64) -> String {
        format!(
            "virtio-blk: probe ok\n\
             virtio-blk: features ok\n\
             virtio-blk: capacity {capacity} sectors\n\
             virtio-blk: queue ok\n\
             virtio-blk: write sector 1 ok\n\
             virtio-blk: read sector 1 ok\n\
             virtio-blk: data ok\n\
             virtio-blk: read sector {capacity} past the end: IOERR ok\n"
        )
    }

    /// [`VIRTIO_PMEM`](crate::VIRTIO_PMEM) with a region of `size` bytes at `start`
    /// whose first 16 bytes are `head`; `kept` says whether its stores stay (not for a
    /// read-only region).
    pub fn virtio_pmem(start: u64, size: u64, head: &[u8; 16], kept: bool) -> String {
        let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
        let mark = if kept { "wrote mark" } else { "mark not kept" };
        format!(
            "virtio-pmem: probe ok\n\
             virtio-pmem: features ok\n\
             virtio-pmem: start {start:#018x}\n\
             virtio-pmem: size {size:#018x}\n\
             virtio-pmem: queue ok\n\
             virtio-pmem: data {hex}\n\
             virtio-pmem: {mark}\n\
             virtio-pmem: flush ok\n"
        )
    }

    /// [`VIRTIO_BALLOON`](crate::VIRTIO_BALLOON) with `--balloon size=MIB`:
    /// `num_pages` is the target in 4 KiB pages, `MIB * 256`.
    pub fn virtio_balloon(num_pages: u64) -> String {
        format!(
            "virtio-balloon: probe ok\n\
             virtio-balloon: features ok\n\
             virtio-balloon: num_pages {num_pages}\n\
             virtio-balloon: queue ok\n\
             virtio-balloon: pattern ok\n\
             virtio-balloon: inflate irq ok\n\
             virtio-balloon: used len 0\n\
             virtio-balloon: page released\n\
             virtio-balloon: actual 1\n"
        )
    }
}

/// Path of the built guest `name` (one of [`ALL`]).
///
/// # Panics
///
/// If `name` is not a known guest.
pub fn path(name: &str) -> PathBuf {
    assert!(
        ALL.contains(&name),
        "test-guests: unknown guest {name:?}; the guests are {ALL:?}"
    );
    PathBuf::from(env!("OUT_DIR")).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What build.rs actually built.
    const BUILT: &[&str] = include!(concat!(env!("OUT_DIR"), "/built_guests.rs"));

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const MIB: u64 = 1 << 20;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// The fields of an ELF64 program header that matter here.
    #[derive(Debug)]
    struct Phdr {
        p_type: u32,
        offset: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    }

    /// Checks the ELF header; returns (e_entry, program headers).
    fn parse_elf(b: &[u8]) -> (u64, Vec<Phdr>) {
        assert_eq!(&b[..4], b"\x7fELF", "not ELF");
        assert_eq!(b[4], 2, "not ELFCLASS64");
        assert_eq!(b[5], 1, "not little-endian");
        assert_eq!(u16_at(b, 16), 2, "not ET_EXEC");
        assert_eq!(u16_at(b, 18), 62, "not EM_X86_64");
        let entry = u64_at(b, 24);
        let phoff = u64_at(b, 32) as usize;
        assert_eq!(u16_at(b, 54), 56, "e_phentsize");
        let phnum = u16_at(b, 56) as usize;
        let phdrs = (0..phnum)
            .map(|i| {
                let p = &b[phoff + i * 56..phoff + (i + 1) * 56];
                Phdr {
                    p_type: u32_at(p, 0),
                    offset: u64_at(p, 8),
                    paddr: u64_at(p, 24),
                    filesz: u64_at(p, 32),
                    memsz: u64_at(p, 40),
                }
            })
            .collect();
        (entry, phdrs)
    }

    /// Every PT_LOAD sits in [1 MiB, 128 MiB) and `addr` is inside one.
    fn check_loads(name: &str, phdrs: &[Phdr], addr: u64) {
        let loads: Vec<&Phdr> = phdrs.iter().filter(|p| p.p_type == PT_LOAD).collect();
        assert!(!loads.is_empty(), "{name}: no PT_LOAD");
        for p in &loads {
            assert!(p.paddr >= MIB, "{name}: PT_LOAD below 1 MiB: {p:?}");
            assert!(
                p.paddr + p.memsz <= 128 * MIB,
                "{name}: PT_LOAD above 128 MiB"
            );
        }
        assert!(
            loads
                .iter()
                .any(|p| (p.paddr..p.paddr + p.filesz).contains(&addr)),
            "{name}: {addr:#x} is not in a loaded segment"
        );
    }

    /// The (name, type, desc) of every note in a PT_NOTE segment.
    fn notes<'a>(b: &'a [u8], p: &Phdr) -> Vec<(&'a [u8], u32, &'a [u8])> {
        let align4 = |n: usize| (n + 3) & !3;
        let seg = &b[p.offset as usize..(p.offset + p.filesz) as usize];
        let mut out = Vec::new();
        let mut at = 0;
        while at < seg.len() {
            let namesz = u32_at(seg, at) as usize;
            let descsz = u32_at(seg, at + 4) as usize;
            let ty = u32_at(seg, at + 8);
            let name = &seg[at + 12..at + 12 + namesz];
            let desc_at = at + 12 + align4(namesz);
            out.push((name, ty, &seg[desc_at..desc_at + descsz]));
            at = desc_at + align4(descsz);
        }
        out
    }

    fn read(name: &str) -> Vec<u8> {
        let p = path(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn all_guests_are_built() {
        let mut all = ALL.to_vec();
        let mut built = BUILT.to_vec();
        all.sort_unstable();
        built.sort_unstable();
        assert_eq!(all, built, "ALL and build.rs's GUESTS differ");
        for name in ALL {
            assert!(!read(name).is_empty(), "{name} is empty");
        }
    }

    #[test]
    #[should_panic(expected = "unknown guest")]
    fn unknown_guest_panics() {
        path("no_such_guest");
    }

    #[test]
    fn elf64_entry_guests() {
        for name in [
            HELLO64,
            SMP,
            TRIPLE_FAULT,
            PORTS,
            COUNT,
            ACPI_POWEROFF,
            ECHO,
            VIRTIO_RNG,
            VIRTIO_BLK,
            VIRTIO_BALLOON,
            KBD,
            VMGENID,
            CPUID,
            VIRTIO_PMEM,
        ] {
            let b = read(name);
            let (entry, phdrs) = parse_elf(&b);
            assert_eq!(entry, ELF_LOAD_ADDR, "{name}: e_entry");
            check_loads(name, &phdrs, entry);
            // No PT_NOTE at all, so no VMM can mistake it for a PVH kernel.
            assert!(
                phdrs.iter().all(|p| p.p_type != PT_NOTE),
                "{name}: unexpected PT_NOTE"
            );
        }
    }

    #[test]
    fn cpuid_reports_parse_back() {
        let r = CpuidReport {
            leaf1_ecx: 0xfffa_3203,
            leaf1_edx: 0x178b_fbff,
            leaf7_ebx: 0x0000_07a9,
            leaf7_ecx: 0,
            leaf7_edx: 0x8000_0400,
            pat: 0x0007_0406_0007_0406,
        };
        let text = expected::cpuid(&r);
        let console = format!("noise{text}{text}");
        let (first, rest) = parse_cpuid_report(&console).unwrap();
        assert_eq!(first, r);
        assert_eq!(parse_cpuid_report(rest).unwrap(), (r, ""));
        // A report cut short is not one yet.
        assert_eq!(parse_cpuid_report(&text[..text.len() - 1]), None);
    }

    #[test]
    fn virtio_blk_pattern_is_the_guests_and_has_no_repeats() {
        let p = virtio_blk_pattern();
        // What virtio_blk.s computes: word k = k ^ 0xb10c, little-endian.
        assert_eq!(&p[..4], &[0x0c, 0xb1, 0x0d, 0xb1]);
        assert_eq!(&p[510..], &[0xf3, 0xb1]);
        let mut words: Vec<u16> = p
            .chunks_exact(2)
            .map(|w| u16::from_le_bytes([w[0], w[1]]))
            .collect();
        assert!(words.iter().all(|&w| w != 0), "zero word");
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), 256, "repeated word");
    }

    #[test]
    fn pvh_note() {
        let b = read(HELLO_PVH);
        let (entry, phdrs) = parse_elf(&b);
        let note_segs: Vec<&Phdr> = phdrs.iter().filter(|p| p.p_type == PT_NOTE).collect();
        assert_eq!(note_segs.len(), 1, "exactly one PT_NOTE");
        let notes = notes(&b, note_segs[0]);
        let pvh: Vec<_> = notes
            .iter()
            .filter(|(name, ty, _)| *name == b"Xen\0" && *ty == 18)
            .collect();
        assert_eq!(pvh.len(), 1, "one XEN_ELFNOTE_PHYS32_ENTRY note: {notes:?}");
        let desc = pvh[0].2;
        assert_eq!(desc.len(), 4);
        let pvh_entry = u64::from(u32_at(desc, 0));
        assert_eq!(pvh_entry, ELF_LOAD_ADDR, "PVH entry");
        check_loads(HELLO_PVH, &phdrs, pvh_entry);
        // e_entry: the 64-bit "note ignored" stub, also loaded, also >= 1 MiB.
        assert_ne!(entry, pvh_entry);
        check_loads(HELLO_PVH, &phdrs, entry);
    }

    #[test]
    fn bzimage_header() {
        let b = read(HELLO_BZIMAGE);
        let setup_sects = b[0x1f1];
        assert_eq!(setup_sects, 1);
        let setup_size = (usize::from(setup_sects) + 1) * 512;
        let syssize = u32_at(&b, 0x1f4) as usize;
        assert_eq!(u16_at(&b, 0x1fe), 0xaa55, "boot_flag");
        assert_eq!(b[0x200], 0xeb, "jump: jmp short");
        assert_eq!(0x202 + usize::from(b[0x201]), 0x26c, "header end");
        assert_eq!(&b[0x202..0x206], b"HdrS");
        assert_eq!(u32_at(&b, 0x202), 0x5372_6448);
        assert_eq!(u16_at(&b, 0x206), 0x020f, "version");
        assert_eq!(b[0x211] & 1, 1, "loadflags LOADED_HIGH");
        assert_eq!(u32_at(&b, 0x214), 0x10_0000, "code32_start");
        assert_eq!(u32_at(&b, 0x230), 0x20_0000, "kernel_alignment");
        assert_eq!(b[0x234], 1, "relocatable_kernel");
        assert_eq!(u16_at(&b, 0x236) & 1, 1, "xloadflags XLF_KERNEL_64");
        assert_eq!(u64_at(&b, 0x258), 0x10_0000, "pref_address");
        // The protected-mode part is the rest of the file.
        let pm = &b[setup_size..];
        assert_eq!(pm.len(), syssize * 16, "syssize");
        let init_size = u32_at(&b, 0x260) as usize;
        assert!(
            init_size >= pm.len() && init_size.is_multiple_of(4096),
            "init_size"
        );
        // kernel_info, relative to the protected-mode part.
        let ki = u32_at(&b, 0x268) as usize;
        assert_eq!(&pm[ki..ki + 4], b"LToP", "kernel_info");
        // The 64-bit entry at +0x200 starts with `cli`, as does the 32-bit one.
        assert_eq!(pm[0x200], 0xfa, "64-bit entry");
        assert_eq!(pm[0], 0xfa, "32-bit entry");
    }
}
