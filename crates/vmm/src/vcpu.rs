//! vCPUs: their boot configuration, and the thread that runs each one.
//!
//! Each vCPU runs on its own thread (`fc_vcpu N`, Firecracker's name, which launchers
//! such as Kata look for to put vCPUs in their own cgroups) as an explicit state machine:
//! `Running` (in and out of KVM_RUN, dispatching exits to the buses), `Paused` (waiting for a
//! command), `Exited`. Commands arrive on a channel; the sender kicks the thread with a
//! signal whose handler sets `immediate_exit`, so a command sent just before KVM_RUN is
//! entered is not missed. A vCPU that sees the guest stop (reset, triple fault, KVM error)
//! reports it through [`StopSignal`] and waits for `Exit`.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_run};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{Killable, register_signal_handler};

use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::arch::x86_64::{cpu_template, interrupts, msr, regs};
use crate::bus::Bus;
use crate::metrics::VcpuMetrics;
use crate::snapshot::cpu::{CpuStateError, VcpuState};
pub use crate::stop::{StopReason, StopSignal};

/// What every vCPU thread's name starts with (Firecracker's: `fc_vcpu 0`, `fc_vcpu 1`...).
pub const THREAD_PREFIX: &str = "fc_vcpu ";

/// The name of vCPU `index`'s thread.
pub fn thread_name(index: u32) -> String {
    format!("{THREAD_PREFIX}{index}")
}

/// Why a vCPU could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {0}: {1}")]
    Create(u32, #[source] kvm_ioctls::Error),
    /// A KVM_SET_* call failed while setting up a vCPU.
    #[error("cannot set up vCPU {index} ({what}): {source}")]
    Setup {
        /// The vCPU.
        index: u32,
        /// Which state.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Fewer MSRs were accepted than given.
    #[error("vCPU {index}: KVM accepted {set} of {wanted} boot MSRs")]
    Msrs {
        /// The vCPU.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// The CPU template's MSRs could not be set.
    #[error("vCPU {index}: {source}")]
    Template {
        /// The vCPU.
        index: u32,
        /// Why.
        #[source]
        source: crate::arch::x86_64::cpu_template::TemplateError,
    },
    /// The vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {0}: {1}")]
    Spawn(u32, #[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// Unknown PIO/MMIO addresses already reported, so each is logged once per VM.
#[derive(Default)]
pub struct UnhandledLog(Mutex<HashSet<(bool, u64)>>);

impl UnhandledLog {
    /// Log an access nobody owns, the first time it is seen.
    fn report(&self, pio: bool, addr: u64, write: bool, len: usize) {
        let first = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pio, addr));
        if first {
            let space = if pio { "port" } else { "MMIO address" };
            let (dir, effect) = if write {
                ("write to", "dropped")
            } else {
                ("read from", "all-ones")
            };
            log::info!(
                "unhandled {len}-byte {dir} {space} {addr:#x}: {effect} (further accesses to it not logged)"
            );
        }
    }
}

/// What the vCPU thread is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuCommand {
    /// Leave KVM_RUN and wait.
    Pause,
    /// Go on running.
    Resume,
    /// Read the vCPU's state (answered only while paused); the MSRs to save.
    SaveState(Arc<[u32]>),
    /// Stop for good; the thread ends.
    Exit,
}

/// What the vCPU thread answers to a command.
#[derive(Debug)]
pub enum VcpuResponse {
    /// Now paused, outside KVM_RUN.
    Paused,
    /// Now running.
    Resumed,
    /// The state asked by `SaveState`.
    State(Box<Result<VcpuState, CpuStateError>>),
    /// `SaveState` while running: refused.
    NotPaused,
}

/// The state of the vCPU thread's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    /// The guest stopped (reported through [`StopSignal`]); waiting for `Exit`.
    Stopped,
}

/// A configured vCPU, ready to be started on its thread.
pub struct Vcpu {
    index: u32,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    unhandled: Arc<UnhandledLog>,
    stop: Arc<StopSignal>,
    metrics: Arc<VcpuMetrics>,
}

/// Boot state shared by every vCPU.
pub struct BootState<'a> {
    /// KVM's supported CPUID with the CPU template's changes, before per-vCPU
    /// normalisation.
    pub supported_cpuid: &'a CpuId,
    /// The CPU template's MSR changes, applied to each vCPU's MSRs once it has its CPUID
    /// and before the boot MSRs (which win).
    pub msr_modifiers: &'a [api::cpu_template::MsrModifier],
    /// Number of vCPUs.
    pub cpu_count: u32,
    /// Threads per core in the guest's CPU topology: 1, or 2 with SMT.
    pub threads_per_core: u32,
    /// Whether KVM has the TSC deadline timer.
    pub tsc_deadline: bool,
    /// Entry mode.
    pub mode: regs::EntryMode,
    /// Entry address.
    pub entry: u64,
}

impl Vcpu {
    /// Create vCPU `index` and give it the boot state (CPUID, MSRs, registers, FPU, LAPIC).
    /// Application processors get the same registers but KVM keeps them waiting for
    /// INIT/SIPI, as on real hardware.
    pub fn new(
        vm: &VmFd,
        index: u32,
        boot: &BootState<'_>,
        buses: (Arc<Bus>, Arc<Bus>),
        unhandled: Arc<UnhandledLog>,
        stop: Arc<StopSignal>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        let setup = |what: &'static str| {
            move |source| VcpuError::Setup {
                index,
                what,
                source,
            }
        };

        let mut entries = boot.supported_cpuid.as_slice().to_vec();
        cpuid::normalize(
            &mut entries,
            VcpuTopology {
                cpu_index: index,
                cpu_count: boot.cpu_count,
                threads_per_core: boot.threads_per_core,
                tsc_deadline: boot.tsc_deadline,
            },
        );
        let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuError::Setup {
            index,
            what: "CPUID",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(setup("CPUID"))?;

        if !boot.msr_modifiers.is_empty() {
            cpu_template::set_msrs(&fd, boot.msr_modifiers)
                .map_err(|source| VcpuError::Template { index, source })?;
        }
        let msrs = msr::boot_msrs();
        let set = fd.set_msrs(&msrs).map_err(setup("MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        fd.set_regs(&regs::boot_regs(boot.mode, boot.entry))
            .map_err(setup("registers"))?;
        let mut sregs = fd.get_sregs().map_err(setup("special registers"))?;
        regs::set_boot_sregs(&mut sregs, boot.mode);
        fd.set_sregs(&sregs).map_err(setup("special registers"))?;
        fd.set_fpu(&regs::boot_fpu()).map_err(setup("FPU"))?;
        let mut lapic = fd.get_lapic().map_err(setup("LAPIC"))?;
        interrupts::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(setup("LAPIC"))?;

        Ok(Self {
            index,
            fd,
            pio: buses.0,
            mmio: buses.1,
            unhandled,
            stop,
            metrics: Arc::default(),
        })
    }

    /// Create vCPU `state.index` with the state of a snapshot instead of the boot state.
    pub fn restore(
        vm: &VmFd,
        state: &VcpuState,
        buses: (Arc<Bus>, Arc<Bus>),
        unhandled: Arc<UnhandledLog>,
        stop: Arc<StopSignal>,
    ) -> Result<Self, VcpuError> {
        let index = state.index;
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        state.restore(&fd).map_err(|e| VcpuError::Setup {
            index,
            what: e.what,
            source: e.source,
        })?;
        Ok(Self {
            index,
            fd,
            pio: buses.0,
            mmio: buses.1,
            unhandled,
            stop,
            metrics: Arc::default(),
        })
    }

    /// Start the vCPU on its own thread, running.
    pub fn start(self) -> Result<VcpuHandle, VcpuError> {
        self.start_in(true)
    }

    /// Start the vCPU on its own thread, running or paused.
    pub fn start_in(self, running: bool) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        let (commands, command_rx) = channel();
        let (response_tx, responses) = channel();
        let thread = std::thread::Builder::new()
            .name(thread_name(index))
            .spawn(move || self.run(command_rx, response_tx, running))
            .map_err(|e| VcpuError::Spawn(index, e))?;
        Ok(VcpuHandle {
            index,
            thread,
            commands,
            responses,
        })
    }

    fn run(
        mut self,
        commands: Receiver<VcpuCommand>,
        responses: Sender<VcpuResponse>,
        running: bool,
    ) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|p| p.set(run_ptr));
        let mut state = if running {
            State::Running
        } else {
            State::Paused
        };
        loop {
            let command = match state {
                State::Running => match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(VcpuCommand::Exit),
                },
                State::Paused | State::Stopped => {
                    Some(commands.recv().unwrap_or(VcpuCommand::Exit))
                }
            };
            match command {
                Some(VcpuCommand::Exit) => break,
                Some(VcpuCommand::Pause) => {
                    if state == State::Running {
                        state = State::Paused;
                    }
                    let _ = responses.send(VcpuResponse::Paused);
                    continue;
                }
                Some(VcpuCommand::Resume) => {
                    if state == State::Paused {
                        state = State::Running;
                    }
                    let _ = responses.send(VcpuResponse::Resumed);
                    continue;
                }
                Some(VcpuCommand::SaveState(msrs)) => {
                    let response = if state == State::Paused {
                        VcpuResponse::State(Box::new(VcpuState::save(&self.fd, self.index, &msrs)))
                    } else {
                        VcpuResponse::NotPaused
                    };
                    let _ = responses.send(response);
                    continue;
                }
                None => {}
            }
            if let Some(reason) = self.run_once() {
                self.stop.stop(reason);
                state = State::Stopped;
            } else if self.stop.is_requested() {
                // A device this vCPU just wrote to (reset, power-off) stopped the machine:
                // the guest must not run past that write.
                state = State::Stopped;
            }
        }
        // The mapping of kvm_run goes away with the fd; the handler must not touch it after.
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
    }

    /// Count this vCPU's exits into `metrics` (shared by the VM's vCPUs).
    pub fn set_metrics(&mut self, metrics: Arc<VcpuMetrics>) {
        self.metrics = metrics;
    }

    /// One KVM_RUN and the handling of its exit; `Some` when the VM must stop.
    fn run_once(&mut self) -> Option<StopReason> {
        let stop = self.run_and_serve();
        if matches!(stop, Some(StopReason::VcpuError { .. })) {
            self.metrics.failures.inc();
        }
        stop
    }

    fn run_and_serve(&mut self) -> Option<StopReason> {
        let index = self.index;
        let m = &self.metrics;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                let started = Instant::now();
                m.exit_io_in.inc();
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    self.unhandled.report(true, u64::from(port), false, data.len());
                }
                m.exit_io_in_agg.record_since(started);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let started = Instant::now();
                m.exit_io_out.inc();
                if !self.pio.write(u64::from(port), data) {
                    self.unhandled.report(true, u64::from(port), true, data.len());
                }
                m.exit_io_out_agg.record_since(started);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let started = Instant::now();
                m.exit_mmio_read.inc();
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                    self.unhandled.report(false, addr, false, data.len());
                }
                m.exit_mmio_read_agg.record_since(started);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let started = Instant::now();
                m.exit_mmio_write.inc();
                if !self.mmio.write(addr, data) {
                    self.unhandled.report(false, addr, true, data.len());
                }
                m.exit_mmio_write_agg.record_since(started);
                None
            }
            Ok(VcpuExit::Shutdown) => Some(StopReason::TripleFault {
                vcpu: index,
                registers: self.dump_registers(),
            }),
            Ok(VcpuExit::SystemEvent(kind, _))
                if kind == KVM_SYSTEM_EVENT_RESET || kind == KVM_SYSTEM_EVENT_SHUTDOWN =>
            {
                Some(StopReason::GuestReset)
            }
            Ok(VcpuExit::Hlt) => {
                // With the in-kernel LAPIC, HLT is handled in KVM; an exit here means the vCPU
                // can never be woken again.
                Some(self.error("halted with no interrupt controller to wake it".into()))
            }
            Ok(VcpuExit::InternalError) => {
                let what = self.internal_error();
                Some(self.error(what))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(self.error(format!(
                "KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})"
            ))),
            Ok(other) => {
                log::debug!("vcpu{index}: ignored exit {other:?}");
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: clear the flag and let the loop look at the commands.
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(self.error(format!("KVM_RUN failed: {e}"))),
        }
    }

    fn error(&self, what: String) -> StopReason {
        StopReason::VcpuError {
            vcpu: self.index,
            what,
            registers: self.dump_registers(),
        }
    }

    /// Describe a KVM_EXIT_INTERNAL_ERROR from the kvm_run data.
    fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which the kernel filled the
        // `internal` member of the union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let kind = match internal.suberror {
            1 => "instruction emulation failed (the instruction is not emulated by this KVM)",
            2 => "simultaneous exceptions",
            3 => "exception during event delivery",
            4 => "unexpected exit during event delivery",
            _ => "unknown suberror",
        };
        let count = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..count]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        format!(
            "KVM internal error {}: {kind} [data: {}]",
            internal.suberror,
            data.join(" ")
        )
    }

    /// The registers as text, for the log of a vCPU that stopped the VM.
    fn dump_registers(&self) -> String {
        let mut out = String::new();
        match self.fd.get_regs() {
            Ok(r) => {
                let _ = write!(
                    out,
                    "rip={:#018x} rsp={:#018x} rflags={:#010x}\n\
                     rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n\
                     rsi={:#018x} rdi={:#018x} rbp={:#018x}\n\
                     r8={:#018x} r9={:#018x} r10={:#018x} r11={:#018x}\n\
                     r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}",
                    r.rip,
                    r.rsp,
                    r.rflags,
                    r.rax,
                    r.rbx,
                    r.rcx,
                    r.rdx,
                    r.rsi,
                    r.rdi,
                    r.rbp,
                    r.r8,
                    r.r9,
                    r.r10,
                    r.r11,
                    r.r12,
                    r.r13,
                    r.r14,
                    r.r15
                );
            }
            Err(e) => {
                let _ = write!(out, "(registers unavailable: {e})");
            }
        }
        if let Ok(s) = self.fd.get_sregs() {
            let _ = write!(
                out,
                "\ncr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}\n\
                 cs={:#06x} (base {:#x}, l={} db={}) ss={:#06x} idt={:#x}+{:#x} gdt={:#x}+{:#x}",
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.cs.base,
                s.cs.l,
                s.cs.db,
                s.ss.selector,
                s.idt.base,
                s.idt.limit,
                s.gdt.base,
                s.gdt.limit
            );
        }
        out
    }
}

/// The VMM's handle on a running vCPU thread.
pub struct VcpuHandle {
    index: u32,
    thread: JoinHandle<()>,
    commands: Sender<VcpuCommand>,
    responses: Receiver<VcpuResponse>,
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Send `command` and kick the thread out of KVM_RUN so it sees it.
    pub fn send(&self, command: VcpuCommand) {
        // A send fails only when the thread has ended, and then there is nothing to tell it.
        let _ = self.commands.send(command);
        let _ = self.thread.kill(kick_signal());
    }

    /// Wait for the thread's answer to a Pause or Resume.
    pub fn response(&self) -> Option<VcpuResponse> {
        self.responses.recv().ok()
    }

    /// Tell the thread to exit and wait for it.
    pub fn exit(self) {
        self.send(VcpuCommand::Exit);
        if self.thread.join().is_err() {
            log::error!("vcpu{} thread panicked", self.index);
        }
    }
}

thread_local! {
    /// The kvm_run area of the vCPU on this thread, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = KVM_RUN_PTR.with(|p| p.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's live kvm_run mapping (cleared before the vCPU
        // fd is dropped); setting immediate_exit makes the current or next KVM_RUN return
        // EINTR at once.
        unsafe { (*ptr).immediate_exit = 1 };
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::Signal);
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhandled_accesses_are_remembered_per_address() {
        let log = UnhandledLog::default();
        log.report(true, 0x1234, false, 1);
        log.report(true, 0x1234, true, 1);
        log.report(false, 0x1234, false, 4);
        assert_eq!(log.0.lock().unwrap().len(), 2);
    }
}
