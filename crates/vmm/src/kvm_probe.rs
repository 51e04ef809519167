//! Probes of the host's KVM: whether it runs the instructions Linux needs (by capability),
//! and how fast it runs guest code (by timing), reported separately.
//!
//! Some KVMs answer every ioctl but run guest code through KVM's instruction emulator
//! (nested KVM without hardware support), which lacks instructions a Linux kernel uses
//! early: `xrstor` (the FPU state on every context switch), `cmpxchg16b` (SLUB's lockless
//! freelists), `int3` through the IDT (text patching of jump labels and alternatives).
//! Speed does not tell such a KVM from a complete but slow one (a nested host under a
//! software CPU is slow too); running those instructions does. [`probe_capabilities`]
//! builds a throwaway VM of one 64-bit vCPU that runs each of them in turn, announcing each
//! step on an I/O port, and checks their results in guest memory.

use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::x86_64::regs::{self, EntryMode};

/// Per-iteration time of the speed loop above which guest code is taken to be emulated:
/// hardware KVM runs the two-instruction loop in about a nanosecond, an instruction
/// emulator takes microseconds (~2.2 µs on the project's machines).
const EMULATED_NS_PER_ITERATION: u128 = 100;

/// How fast this host's KVM runs guest code.
#[derive(Debug, Clone, Copy)]
pub struct GuestSpeed {
    /// Iterations of the probe loop.
    pub iterations: u32,
    /// Time KVM_RUN took for them, entry and exit included.
    pub elapsed: Duration,
}

impl GuestSpeed {
    /// Whether guest instructions look emulated (microseconds each) rather than run by the
    /// CPU. Slow is not incomplete: see [`probe_capabilities`].
    pub fn is_emulated(&self) -> bool {
        self.elapsed.as_nanos() > EMULATED_NS_PER_ITERATION * u128::from(self.iterations.max(1))
    }

    /// Nanoseconds per loop iteration.
    pub fn ns_per_iteration(&self) -> u128 {
        self.elapsed.as_nanos() / u128::from(self.iterations.max(1))
    }
}

/// Why a probe could not run at all (as opposed to finding KVM incomplete).
#[derive(Debug, thiserror::Error)]
#[error("KVM probe: {0}")]
pub struct ProbeError(String);

fn ioctl_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> ProbeError {
    move |e| ProbeError(format!("{what}: {e}"))
}

/// Time `iterations` of a two-instruction loop (`dec ecx; jnz`) in a throwaway VM of one
/// page, in real mode.
pub fn probe_guest_speed(kvm: &Kvm, iterations: u32) -> Result<GuestSpeed, ProbeError> {
    // mov ecx, iterations; l: dec ecx; jnz l; hlt
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xf4]);

    let vm = ProbeVm::new(kvm, 0x1000)?;
    vm.write(0, &code)?;
    let mut vcpu = vm.vm.create_vcpu(0).map_err(ioctl_err("create vCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(ioctl_err("get sregs"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(ioctl_err("set sregs"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: 0,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl_err("set regs"))?;
    let start = Instant::now();
    loop {
        match vcpu.run().map_err(ioctl_err("run"))? {
            VcpuExit::Hlt => break,
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {}
            other => return Err(ProbeError(format!("unexpected exit {other:?}"))),
        }
    }
    Ok(GuestSpeed {
        iterations,
        elapsed: start.elapsed(),
    })
}

/// A step of the capability probe: an instruction (or group) Linux needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// `lock cmpxchg16b`: SLUB's lockless freelists.
    Cmpxchg16b,
    /// `xsetbv` and `xgetbv`: enabling the XSAVE features.
    Xsetbv,
    /// `xsave`: saving the FPU/SSE state.
    Xsave,
    /// `xrstor`: restoring it, at every context switch.
    Xrstor,
    /// `fxsave`: saving the FPU/SSE state where CPUID offers no XSAVE.
    Fxsave,
    /// `fxrstor`: restoring it.
    Fxrstor,
    /// `int3` delivered through a 64-bit IDT and `iretq`: text patching.
    Int3,
}

impl Instruction {
    const ALL: [Instruction; 7] = [
        Instruction::Cmpxchg16b,
        Instruction::Xsetbv,
        Instruction::Xsave,
        Instruction::Xrstor,
        Instruction::Fxsave,
        Instruction::Fxrstor,
        Instruction::Int3,
    ];

    /// The instruction's name, as the user sees it.
    pub fn name(self) -> &'static str {
        match self {
            Instruction::Cmpxchg16b => "cmpxchg16b",
            Instruction::Xsetbv => "xsetbv/xgetbv",
            Instruction::Xsave => "xsave",
            Instruction::Xrstor => "xrstor",
            Instruction::Fxsave => "fxsave",
            Instruction::Fxrstor => "fxrstor",
            Instruction::Int3 => "int3 through the IDT",
        }
    }

    /// A one-word name for machine-readable output (`missing=xrstor`).
    pub fn id(self) -> &'static str {
        match self {
            Instruction::Cmpxchg16b => "cmpxchg16b",
            Instruction::Xsetbv => "xsetbv",
            Instruction::Xsave => "xsave",
            Instruction::Xrstor => "xrstor",
            Instruction::Fxsave => "fxsave",
            Instruction::Fxrstor => "fxrstor",
            Instruction::Int3 => "int3",
        }
    }

    /// What Linux uses it for.
    pub fn linux_use(self) -> &'static str {
        match self {
            Instruction::Cmpxchg16b => "SLUB's lockless allocator",
            Instruction::Xsetbv | Instruction::Xsave | Instruction::Xrstor => {
                "the FPU state (XSAVE) at boot and on every context switch"
            }
            Instruction::Fxsave | Instruction::Fxrstor => {
                "the FPU state at boot and on every context switch"
            }
            Instruction::Int3 => "patching its own code at boot (jump labels, alternatives)",
        }
    }

    /// Step number announced on [`STEP_PORT`] before the instruction runs.
    fn step(self) -> u8 {
        Self::ALL.iter().position(|i| *i == self).unwrap_or(0) as u8 + 1
    }

    fn from_step(step: u8) -> Option<Self> {
        Self::ALL.get(usize::from(step).checked_sub(1)?).copied()
    }
}

/// What the capability probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Every instruction ran and gave the right result.
    Complete,
    /// These instructions failed, in the order the probe ran them, each with how
    /// (emulation failure, fault, wrong result...).
    Incomplete(Vec<(Instruction, String)>),
}

impl Capability {
    fn from_failures(failures: Vec<(Instruction, String)>) -> Self {
        if failures.is_empty() {
            Capability::Complete
        } else {
            Capability::Incomplete(failures)
        }
    }

    /// Whether KVM ran every probed instruction correctly.
    pub fn is_complete(&self) -> bool {
        matches!(self, Capability::Complete)
    }

    /// The failed instructions' one-word names, comma-separated (`cmpxchg16b,int3`).
    pub fn missing_ids(&self) -> String {
        match self {
            Capability::Complete => String::new(),
            Capability::Incomplete(failures) => failures
                .iter()
                .map(|(i, _)| i.id())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The one message users see when KVM is incomplete (`vireo probe-kvm` and the
    /// start-up warning of `vireo run`); `None` when it is complete.
    pub fn message(&self) -> Option<String> {
        let Capability::Incomplete(failures) = self else {
            return None;
        };
        let each: Vec<String> = failures
            .iter()
            .map(|(i, how)| {
                format!(
                    "`{}` ({how}; Linux uses it for {})",
                    i.name(),
                    i.linux_use()
                )
            })
            .collect();
        Some(format!(
            "this host's KVM is incomplete: it cannot run {}. A Linux guest stops early \
             here; small guests that avoid these instructions run. Run Linux guests on a \
             host with a complete KVM, or in the nested test host (scripts/nested-host.sh).",
            each.join(", ")
        ))
    }
}

/// Port the probe guest writes its step number to; [`DONE`] when finished.
const STEP_PORT: u16 = 0x80;
const DONE: u8 = 0xff;

// The probe VM's memory (1 MiB; the boot GDT, page tables and stack of `arch::regs` at
// their usual places below 0x10000).
const MEM_SIZE: usize = 0x10_0000;
const IDT: u64 = 0x1000;
const CODE: u64 = 0x10000;
const HANDLER: u64 = 0x10800;
const DATA: u64 = 0x11000;
const XSAVE_AREA: u64 = 0x12000;

// DATA layout: the cmpxchg16b operand and its expected/new values, an SSE pattern and where
// it comes back after xsave/xrstor, the int3 handler's counter, xgetbv's answer.
const CX_MEM: u64 = DATA;
const CX_NEW: u64 = DATA + 16;
const XMM_IN: u64 = DATA + 32;
const XMM_OUT: u64 = DATA + 48;
const INT3_COUNT: u64 = DATA + 64;
const XCR0_OUT: u64 = DATA + 72;

const CX_OLD_VALUE: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
const CX_NEW_VALUE: [u64; 2] = [0x1111_2222_3333_4444, 0x5555_6666_7777_8888];
const XMM_PATTERN: [u64; 2] = [0xdead_beef_cafe_f00d, 0x0bad_c0de_feed_face];
/// XCR0 as the guest sets it: x87 and SSE state.
const XCR0: u32 = 0x3;

const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;

/// The probe guest: 64-bit code for [`CODE`] (hand-assembled; each line is one
/// instruction), and where each step starts in it (the last entry: the final `hlt`).
/// Every step announces itself on [`STEP_PORT`] and loads its own pointers, so the probe
/// can resume at the next step when one fails.
///
/// With `xsave` (CPUID offers XSAVE, so Linux uses it) the FPU state goes through
/// xsetbv/xsave/xrstor, otherwise through fxsave/fxrstor, as Linux would do; in the 64-bit
/// (REX.W) forms Linux uses.
fn probe_code(xsave: bool) -> (Vec<u8>, Vec<(Option<Instruction>, usize)>) {
    let mut c = Vec::new();
    let mut starts = Vec::new();
    let mut step = |c: &mut Vec<u8>, i: Option<Instruction>| {
        starts.push((i, c.len()));
        // mov al, n; out 0x80, al
        c.extend_from_slice(&[
            0xb0,
            i.map_or(DONE, Instruction::step),
            0xe6,
            STEP_PORT as u8,
        ]);
        c.push(0xbf); // mov edi, DATA
        c.extend_from_slice(&(DATA as u32).to_le_bytes());
        c.push(0xbe); // mov esi, XSAVE_AREA
        c.extend_from_slice(&(XSAVE_AREA as u32).to_le_bytes());
    };
    let set_mask = |c: &mut Vec<u8>| {
        c.push(0xb8); // mov eax, XCR0 (also the features to save/restore)
        c.extend_from_slice(&XCR0.to_le_bytes());
        c.extend_from_slice(&[0x31, 0xd2]); // xor edx, edx
    };

    step(&mut c, Some(Instruction::Cmpxchg16b));
    c.extend_from_slice(&[0x48, 0x8b, 0x07]); // mov rax, [rdi]
    c.extend_from_slice(&[0x48, 0x8b, 0x57, 0x08]); // mov rdx, [rdi+8]
    c.extend_from_slice(&[0x48, 0x8b, 0x5f, 0x10]); // mov rbx, [rdi+16]
    c.extend_from_slice(&[0x48, 0x8b, 0x4f, 0x18]); // mov rcx, [rdi+24]
    c.extend_from_slice(&[0xf0, 0x48, 0x0f, 0xc7, 0x0f]); // lock cmpxchg16b [rdi]
    if xsave {
        step(&mut c, Some(Instruction::Xsetbv));
        c.extend_from_slice(&[0x31, 0xc9]); // xor ecx, ecx
        set_mask(&mut c);
        c.extend_from_slice(&[0x0f, 0x01, 0xd1]); // xsetbv
        c.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax
        c.extend_from_slice(&[0x0f, 0x01, 0xd0]); // xgetbv
        c.extend_from_slice(&[0x89, 0x47, 0x48]); // mov [rdi+72], eax
        step(&mut c, Some(Instruction::Xsave));
        c.extend_from_slice(&[0xf3, 0x0f, 0x6f, 0x47, 0x20]); // movdqu xmm0, [rdi+32]
        set_mask(&mut c);
        c.extend_from_slice(&[0x48, 0x0f, 0xae, 0x26]); // xsave64 [rsi]
        step(&mut c, Some(Instruction::Xrstor));
        c.extend_from_slice(&[0x66, 0x0f, 0xef, 0xc0]); // pxor xmm0, xmm0
        set_mask(&mut c);
        c.extend_from_slice(&[0x48, 0x0f, 0xae, 0x2e]); // xrstor64 [rsi]
    } else {
        step(&mut c, Some(Instruction::Fxsave));
        c.extend_from_slice(&[0xf3, 0x0f, 0x6f, 0x47, 0x20]); // movdqu xmm0, [rdi+32]
        c.extend_from_slice(&[0x48, 0x0f, 0xae, 0x06]); // fxsave64 [rsi]
        step(&mut c, Some(Instruction::Fxrstor));
        c.extend_from_slice(&[0x66, 0x0f, 0xef, 0xc0]); // pxor xmm0, xmm0
        c.extend_from_slice(&[0x48, 0x0f, 0xae, 0x0e]); // fxrstor64 [rsi]
    }
    c.extend_from_slice(&[0xf3, 0x0f, 0x7f, 0x47, 0x30]); // movdqu [rdi+48], xmm0
    step(&mut c, Some(Instruction::Int3));
    c.push(0xcc); // int3
    step(&mut c, None);
    c.push(0xf4); // hlt
    (c, starts)
}

/// The int3 handler at [`HANDLER`]: count, return.
fn handler_code() -> Vec<u8> {
    // inc qword [INT3_COUNT]
    let mut c = vec![0x48, 0xff, 0x04, 0x25];
    c.extend_from_slice(&(INT3_COUNT as u32).to_le_bytes());
    c.extend_from_slice(&[0x48, 0xcf]); // iretq
    c
}

/// A 64-bit interrupt gate to `handler` through the boot code segment.
fn interrupt_gate(handler: u64) -> [u8; 16] {
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&crate::arch::x86_64::gdt::CODE_SELECTOR.to_le_bytes());
    gate[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    gate
}

/// A throwaway VM with one memory region at guest address 0.
struct ProbeVm {
    // Declared first: dropped before the memory it maps.
    vm: kvm_ioctls::VmFd,
    mem: GuestMemoryMmap,
}

impl ProbeVm {
    fn new(kvm: &Kvm, size: usize) -> Result<Self, ProbeError> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
            .map_err(|e| ProbeError(format!("guest memory: {e}")))?;
        let vm = kvm.create_vm().map_err(ioctl_err("create VM"))?;
        let host = mem
            .iter()
            .next()
            .ok_or_else(|| ProbeError("guest memory: no region".into()))?
            .as_ptr();
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: size as u64,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `host` is the start of `mem`'s mapping of `size` bytes, which lives as
        // long as `vm` (the struct drops `vm` first).
        unsafe { vm.set_user_memory_region(region) }.map_err(ioctl_err("set memory"))?;
        Ok(Self { vm, mem })
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), ProbeError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| ProbeError(format!("write probe guest: {e}")))
    }
}

fn read_u64s<const N: usize>(mem: &GuestMemoryMmap, addr: u64) -> Result<[u64; N], ProbeError> {
    let mut out = [0u64; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = mem
            .read_obj(GuestAddress(addr + 8 * i as u64))
            .map_err(|e| ProbeError(format!("read probe guest: {e}")))?;
    }
    Ok(out)
}

/// Most exits the probe guest may take (one `out` per step, the `hlt`, a failure per
/// step): more means it is not running the program it was given.
const MAX_EXITS: usize = 64;

/// Run the instructions Linux needs in a throwaway 64-bit VM and check their results.
/// A failing instruction does not end the probe: it resumes at the next step, so every
/// failure is reported.
pub fn probe_capabilities(kvm: &Kvm) -> Result<Capability, ProbeError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl_err("get supported CPUID"))?;
    // CPUID.1:ECX.XSAVE[26]; Linux uses FXSAVE without it.
    let xsave = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0);
    let (code, starts) = probe_code(xsave);

    let vm = ProbeVm::new(kvm, MEM_SIZE)?;
    regs::write_gdt(&vm.mem, EntryMode::Long64).map_err(|e| ProbeError(e.to_string()))?;
    regs::write_page_tables(&vm.mem).map_err(|e| ProbeError(e.to_string()))?;
    vm.write(IDT + 3 * 16, &interrupt_gate(HANDLER))?;
    vm.write(CODE, &code)?;
    vm.write(HANDLER, &handler_code())?;
    let words = |w: [u64; 2]| [w[0].to_le_bytes(), w[1].to_le_bytes()].concat();
    vm.write(CX_MEM, &words(CX_OLD_VALUE))?;
    vm.write(CX_NEW, &words(CX_NEW_VALUE))?;
    vm.write(XMM_IN, &words(XMM_PATTERN))?;

    let mut vcpu = vm.vm.create_vcpu(0).map_err(ioctl_err("create vCPU"))?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl_err("set CPUID"))?;
    let mut sregs = vcpu.get_sregs().map_err(ioctl_err("get sregs"))?;
    regs::set_boot_sregs(&mut sregs, EntryMode::Long64);
    sregs.idt.base = IDT;
    sregs.idt.limit = 4 * 16 - 1;
    sregs.cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
    if xsave {
        sregs.cr4 |= CR4_OSXSAVE;
    }
    // (Re)start the vCPU at `offset` in the code, in a clean state (after a triple fault
    // KVM has reset it).
    let start_at = |vcpu: &mut kvm_ioctls::VcpuFd, offset: usize| -> Result<(), ProbeError> {
        vcpu.set_sregs(&sregs).map_err(ioctl_err("set sregs"))?;
        vcpu.set_fpu(&regs::boot_fpu())
            .map_err(ioctl_err("set FPU"))?;
        vcpu.set_regs(&regs::boot_regs(EntryMode::Long64, CODE + offset as u64))
            .map_err(ioctl_err("set regs"))?;
        let mp = kvm_bindings::kvm_mp_state {
            mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
        };
        vcpu.set_mp_state(mp).map_err(ioctl_err("set MP state"))
    };
    start_at(&mut vcpu, 0)?;

    let mut step = 0u8;
    let mut failures = Vec::new();
    for _ in 0..MAX_EXITS {
        let how = match vcpu.run() {
            Ok(VcpuExit::IoOut(STEP_PORT, data)) => {
                step = data.first().copied().unwrap_or(0);
                continue;
            }
            Ok(VcpuExit::Hlt) if step == DONE => {
                // A result is checked only where the instruction itself did not fail.
                let wrong: Vec<_> = check_results(&vm.mem, xsave)?
                    .into_iter()
                    .filter(|(i, _)| !failures.iter().any(|(f, _)| f == i))
                    .collect();
                failures.extend(wrong);
                return Ok(Capability::from_failures(failures));
            }
            Ok(VcpuExit::InternalError) => "KVM's instruction emulator failed on it".to_string(),
            Ok(VcpuExit::Shutdown) => "the vCPU took a fault on it (triple fault)".to_string(),
            Ok(other) => format!("unexpected VM exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => format!("KVM_RUN failed: {e}"),
        };
        let Some(failed) = Instruction::from_step(step) else {
            return Err(ProbeError(format!(
                "the probe guest failed outside a step: {how}"
            )));
        };
        failures.push((failed, how));
        // Resume at the step after the failed one.
        let next = starts
            .iter()
            .skip_while(|(i, _)| *i != Some(failed))
            .nth(1)
            .map(|(_, offset)| *offset)
            .ok_or_else(|| ProbeError("the probe guest has no step after a failure".into()))?;
        start_at(&mut vcpu, next)?;
    }
    Err(ProbeError(format!("no end after {MAX_EXITS} VM exits")))
}

/// After the guest's `hlt`: the instructions that did not do what they should, and how.
fn check_results(
    mem: &GuestMemoryMmap,
    xsave: bool,
) -> Result<Vec<(Instruction, String)>, ProbeError> {
    let mut wrong = Vec::new();
    let cx: [u64; 2] = read_u64s(mem, CX_MEM)?;
    if cx != CX_NEW_VALUE {
        wrong.push((
            Instruction::Cmpxchg16b,
            format!("memory holds {cx:x?}, expected {CX_NEW_VALUE:x?}"),
        ));
    }
    let [xcr0]: [u64; 1] = read_u64s(mem, XCR0_OUT)?;
    if xsave && xcr0 as u32 != XCR0 {
        wrong.push((
            Instruction::Xsetbv,
            format!("xgetbv read {xcr0:#x}, expected {XCR0:#x}"),
        ));
    }
    let (save, restore) = if xsave {
        (Instruction::Xsave, Instruction::Xrstor)
    } else {
        (Instruction::Fxsave, Instruction::Fxrstor)
    };
    // The FXSAVE image (the legacy area of an XSAVE one) holds XMM0 at byte 160.
    let saved: [u64; 2] = read_u64s(mem, XSAVE_AREA + 160)?;
    if saved != XMM_PATTERN {
        wrong.push((
            save,
            format!("saved XMM0 is {saved:x?}, expected {XMM_PATTERN:x?}"),
        ));
    }
    let restored: [u64; 2] = read_u64s(mem, XMM_OUT)?;
    if restored != XMM_PATTERN {
        wrong.push((
            restore,
            format!("restored XMM0 is {restored:x?}, expected {XMM_PATTERN:x?}"),
        ));
    }
    let [count]: [u64; 1] = read_u64s(mem, INT3_COUNT)?;
    if count != 1 {
        wrong.push((
            Instruction::Int3,
            format!("the handler ran {count} times, expected once"),
        ));
    }
    Ok(wrong
        .into_iter()
        .map(|(i, how)| (i, format!("wrong result: {how}")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speed(ns_per_iteration: u64) -> GuestSpeed {
        GuestSpeed {
            iterations: 1000,
            elapsed: Duration::from_nanos(1000 * ns_per_iteration),
        }
    }

    #[test]
    fn emulation_threshold() {
        assert!(!speed(2).is_emulated(), "hardware: ~1 ns an iteration");
        assert!(speed(2000).is_emulated(), "emulated: ~2 µs an iteration");
        assert_eq!(speed(2000).ns_per_iteration(), 2000);
    }

    #[test]
    fn steps_round_trip_and_done_is_no_step() {
        for i in Instruction::ALL {
            assert_eq!(Instruction::from_step(i.step()), Some(i));
        }
        assert_eq!(Instruction::from_step(0), None);
        assert_eq!(Instruction::from_step(DONE), None);
    }

    #[test]
    fn the_gate_points_at_the_handler() {
        let gate = interrupt_gate(0x1234_5678_9abc);
        assert_eq!(u16::from_le_bytes([gate[0], gate[1]]), 0x9abc);
        assert_eq!(u16::from_le_bytes([gate[6], gate[7]]), 0x5678);
        assert_eq!(
            u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]),
            0x1234
        );
        assert_eq!(gate[5], 0x8e);
    }

    #[test]
    fn the_message_names_each_instruction_and_what_follows() {
        assert_eq!(Capability::from_failures(vec![]), Capability::Complete);
        assert_eq!(Capability::Complete.message(), None);
        let incomplete = Capability::from_failures(vec![
            (
                Instruction::Cmpxchg16b,
                "KVM's instruction emulator failed on it".into(),
            ),
            (
                Instruction::Int3,
                "the vCPU took a fault on it (triple fault)".into(),
            ),
        ]);
        assert!(!incomplete.is_complete());
        assert_eq!(incomplete.missing_ids(), "cmpxchg16b,int3");
        let text = incomplete.message().unwrap();
        assert!(
            text.contains("`cmpxchg16b` (KVM's instruction emulator"),
            "{text}"
        );
        assert!(text.contains("`int3 through the IDT`"), "{text}");
        assert!(text.contains("SLUB"), "{text}");
        assert!(text.contains("scripts/nested-host.sh"), "{text}");
    }

    #[test]
    fn every_step_has_a_start_and_the_code_ends_in_hlt() {
        for xsave in [true, false] {
            let (code, starts) = probe_code(xsave);
            assert_eq!(code.last(), Some(&0xf4));
            assert_eq!(starts.last().map(|s| s.0), Some(None));
            let steps: Vec<_> = starts.iter().filter_map(|s| s.0).collect();
            let fpu = if xsave {
                vec![Instruction::Xsetbv, Instruction::Xsave, Instruction::Xrstor]
            } else {
                vec![Instruction::Fxsave, Instruction::Fxrstor]
            };
            let mut want = vec![Instruction::Cmpxchg16b];
            want.extend(fpu);
            want.push(Instruction::Int3);
            assert_eq!(steps, want);
            assert!(starts.windows(2).all(|w| w[0].1 < w[1].1));
            assert!(code.len() < (HANDLER - CODE) as usize);
        }
    }

    /// Guest memory as the probe guest leaves it when every instruction worked.
    fn memory_after_a_good_run() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let put = |addr: u64, words: &[u64]| {
            for (i, w) in words.iter().enumerate() {
                mem.write_obj(*w, GuestAddress(addr + 8 * i as u64))
                    .unwrap();
            }
        };
        put(CX_MEM, &CX_NEW_VALUE);
        put(XCR0_OUT, &[u64::from(XCR0)]);
        put(XSAVE_AREA + 160, &XMM_PATTERN);
        put(XMM_OUT, &XMM_PATTERN);
        put(INT3_COUNT, &[1]);
        mem
    }

    #[test]
    fn results_are_checked_one_by_one() {
        for xsave in [true, false] {
            assert!(
                check_results(&memory_after_a_good_run(), xsave)
                    .unwrap()
                    .is_empty()
            );
        }
        let cases: [(u64, bool, Instruction); 7] = [
            (CX_MEM, true, Instruction::Cmpxchg16b),
            (XCR0_OUT, true, Instruction::Xsetbv),
            (XSAVE_AREA + 160, true, Instruction::Xsave),
            (XMM_OUT, true, Instruction::Xrstor),
            (XSAVE_AREA + 160, false, Instruction::Fxsave),
            (XMM_OUT, false, Instruction::Fxrstor),
            (INT3_COUNT, false, Instruction::Int3),
        ];
        for (addr, xsave, instruction) in cases {
            let mem = memory_after_a_good_run();
            mem.write_obj(0x5au64, GuestAddress(addr)).unwrap();
            let wrong = check_results(&mem, xsave).unwrap();
            assert_eq!(wrong.len(), 1, "{wrong:?}");
            assert_eq!(wrong[0].0, instruction);
            assert!(wrong[0].1.starts_with("wrong result"), "{wrong:?}");
        }
    }
}
