//! From a [`VmConfig`] to a running VM.
//!
//! Everything that can fail on user input (vCPU count, memory size, kernel, initrd,
//! command line) is checked and set up before any vCPU thread starts, so a refused config
//! leaves nothing half-started.

use std::sync::{Arc, Mutex};

use api::cpu_template::MsrModifier;
use api::{CpuTemplate, SerialConfig, VmConfig};
use balloon::BalloonHandle;
use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::{self, AcpiConfig, AcpiError, DsdtDevice};
use crate::arch::x86_64::boot::{self, BootError};
use crate::arch::x86_64::cpu_template::{self, TemplateError};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::{self, EntryMode, RegsError};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::device_manager::{DeviceManagerError, VirtioDevices};
use crate::device_models::{self, DeviceModelError};
use crate::devices::legacy::acpi_pm::{ACPI_PM_BASE, ACPI_PM_LEN, AcpiPm, AcpiPmPorts};
use crate::devices::legacy::i8042::{I8042, I8042_BASE, I8042_LEN, I8042State, KeyboardError};
use crate::devices::legacy::ports::{AllOnes, PCI_CONFIG_BASE, PCI_CONFIG_LEN, POST_PORT};
use crate::devices::legacy::rtc::Rtc;
use crate::devices::legacy::serial::{
    COM1_BASE, COM1_IRQ, COM1_LEN, RateLimitedOutput, SerialDevice, SerialOutput, SerialSnapshot,
};
use crate::devices::legacy::serial_socket::{self, SocketConsole};
use crate::devices::read_only_pmem::ReadOnlyPmem;
use crate::devices::vmgenid::{GenerationId, VmGenId, VmGenIdError};
use crate::event_loop::{EventLoop, EventLoopError, SerialInput, SerialSocket, Stdin, Subscriber};
use crate::kvm::{KvmContext, KvmError};
use crate::loader::{self, LoaderError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::metrics::VmMetrics;
use crate::stop::{ResetTrigger, StopReason, StopSignal};
use crate::vcpu::{BootState, UnhandledLog, Vcpu, VcpuError, VcpuHandle};
use crate::vm::{self, VmError};

/// CMOS RTC ports.
const RTC_BASE: u64 = 0x70;
const RTC_LEN: u64 = 2;
/// ISA interrupt of the i8042's keyboard port (named in the DSDT, raised through an irqfd).
const I8042_IRQ: u32 = 1;
/// Most vCPUs Vireo builds: APIC ids 0..=253 (255 is broadcast, 254 the IOAPIC's at most).
pub const MAX_VCPUS: u32 = crate::arch::x86_64::MAX_VCPUS;
/// Entries asked of KVM_GET_SUPPORTED_CPUID (KVM_MAX_CPUID_ENTRIES).
const CPUID_ENTRIES: usize = 256;

/// Why a VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Zero vCPUs asked for.
    #[error("a VM needs at least 1 vCPU")]
    NoVcpus,
    /// More vCPUs than KVM or Vireo allows.
    #[error("{asked} vCPUs asked for; at most {max} are possible on this host")]
    TooManyVcpus {
        /// Asked for.
        asked: u32,
        /// The limit.
        max: u32,
    },
    /// KVM could not be used.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory was refused or could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The VM could not be created.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Kernel, initrd or command line.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// Boot structures.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// GDT or page tables.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// Device placement on a bus.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The CPU template does not fit this host.
    #[error(transparent)]
    CpuTemplate(#[from] TemplateError),
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// A virtio device model could not be built.
    #[error(transparent)]
    Device(#[from] DeviceModelError),
    /// A virtio device could not be placed.
    #[error(transparent)]
    DeviceManager(#[from] DeviceManagerError),
    /// The VM generation ID could not be set up.
    #[error(transparent)]
    VmGenId(#[from] VmGenIdError),
    /// Device memory (pmem regions) beyond what the guest's CPU can address.
    #[error(
        "the pmem regions end at {end:#x}, beyond the {bits}-bit physical addresses this \
         host's guests have"
    )]
    DeviceMemoryUnaddressable {
        /// Where the last region ends.
        end: u64,
        /// The guest's physical address width.
        bits: u32,
    },
    /// KVM refused a request while wiring devices or CPUID.
    #[error("{what}: {source}")]
    KvmCall {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The serial console's Unix socket could not be set up (in use by another process,
    /// a file that is not a socket, a path that cannot be bound).
    #[error("serial console: {0}")]
    SerialSocket(#[source] vsock::unix::UnixError),
    /// An eventfd or the serial output could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// A running VM: its vCPU threads, event loop, and what keeps guest memory and KVM alive.
pub struct Vmm {
    pub(crate) vcpus: Vec<VcpuHandle>,
    pub(crate) event_loop: Option<EventLoop>,
    /// Whether the vCPUs are paused.
    pub(crate) paused: bool,
    // Holds the VM fd and the memory: dropped after the threads.
    pub(crate) parts: Parts,
}

impl Vmm {
    /// What the VMM waits on; signal handlers may write its eventfd.
    pub fn stop_signal(&self) -> &Arc<StopSignal> {
        &self.parts.stop
    }

    /// The balloon's control handle, if the VM has one.
    pub fn balloon(&self) -> Option<&BalloonHandle> {
        self.parts.balloon.as_ref()
    }

    /// The counters of the vCPUs and every device.
    pub fn metrics(&self) -> &VmMetrics {
        &self.parts.metrics
    }

    /// Press and release Ctrl+Alt+Del on the guest's i8042 keyboard (Firecracker's
    /// `SendCtrlAltDel`). A Linux guest with the atkbd driver then reboots, which, with
    /// `reboot=k`, ends the VM.
    pub fn send_ctrl_alt_del(&self) -> Result<(), KeyboardError> {
        self.parts
            .legacy
            .i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_ctrl_alt_del()
    }

    /// The VM generation ID in guest memory: a new one at every restore. `None` for a VM
    /// restored from a snapshot taken before Vireo had the device (its guest's DSDT
    /// does not describe one).
    pub fn generation_id(&self) -> Option<GenerationId> {
        self.parts.vmgenid.as_ref().map(VmGenId::generation_id)
    }

    /// Tell a restored guest, once its vCPUs run, what happened while it did not: its
    /// generation ID changed (if it did since it was last told), and the interrupts its
    /// devices raised while they were restored. Nothing for a booted VM.
    pub(crate) fn notify_restored_guest(&mut self) {
        if let Some(vmgenid) = self.parts.vmgenid.as_mut() {
            vmgenid.notify_if_pending();
        }
        self.parts.virtio.reassert_restored_interrupts();
    }

    /// Block until the guest stops or a stop is requested.
    pub fn wait(&self) -> StopReason {
        self.parts.stop.wait()
    }

    /// Stop every vCPU thread and the event loop.
    pub fn shutdown(mut self) {
        for vcpu in self.vcpus.drain(..) {
            vcpu.exit();
        }
        if let Some(event_loop) = self.event_loop.take() {
            event_loop.stop();
        }
        self.parts.virtio.shutdown();
    }
}

/// Check the vCPU count against Vireo's and the host's limits.
pub fn check_vcpus(asked: u32, kvm_max: usize) -> Result<(), BuildError> {
    let max = MAX_VCPUS.min(u32::try_from(kvm_max).unwrap_or(u32::MAX));
    match asked {
        0 => Err(BuildError::NoVcpus),
        n if n > max => Err(BuildError::TooManyVcpus { asked: n, max }),
        _ => Ok(()),
    }
}

/// Where the UART's bytes go; for a socket console also its listening socket (bound
/// here, so a path in use fails the build) and the state the event loop serves.
struct SerialBackend {
    out: SerialOutput,
    socket: Option<(vsock::unix::HostListener, Arc<SocketConsole>)>,
}

/// The serial console's output for `config`.
fn serial_output(config: &SerialConfig) -> Result<SerialBackend, BuildError> {
    let plain = |out: SerialOutput| SerialBackend { out, socket: None };
    Ok(match config {
        SerialConfig::Stdio => plain(Box::new(std::io::stdout())),
        SerialConfig::None => plain(Box::new(std::io::sink())),
        SerialConfig::File(path) => plain(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_error(format!(
                    "cannot open serial output {}",
                    path.display()
                )))?,
        )),
        SerialConfig::Socket(path) => {
            if serial_socket::live_socket_at(path) {
                let in_use = vsock::unix::UnixError::InUse(path.clone());
                return Err(BuildError::SerialSocket(in_use));
            }
            let listener =
                vsock::unix::HostListener::bind(path).map_err(BuildError::SerialSocket)?;
            let console =
                SocketConsole::new().map_err(io_error("cannot create the console's eventfd"))?;
            SerialBackend {
                out: Box::new(console.output()),
                socket: Some((listener, console)),
            }
        }
    })
}

/// The legacy devices as the DSDT describes them. With hardware-reduced ACPI Linux has no
/// legacy PIC and maps no ISA interrupt by default: a device gets its IRQ only from its
/// `_CRS` here.
fn legacy_dsdt_devices() -> Result<Vec<DsdtDevice>, AcpiError> {
    Ok(vec![
        DsdtDevice::uart_16550("COM1", 1, COM1_BASE as u16, COM1_IRQ)?,
        DsdtDevice::i8042(I8042_BASE as u16, I8042_BASE as u16 + 4, Some(I8042_IRQ)),
        DsdtDevice::cmos_rtc(RTC_BASE as u16),
    ])
}

/// Build the VM described by `config` and start its vCPUs (with a metadata service of
/// its own, empty, if `config.mmds` asks for one).
pub fn build_and_boot(config: &VmConfig) -> Result<Vmm, BuildError> {
    build_and_boot_with(config, &mmds::Service::default())
}

/// [`build_and_boot`], the NICs `config.mmds` names answering from `mmds` (the API's
/// `/mmds` store).
pub fn build_and_boot_with(config: &VmConfig, mmds: &mmds::Service) -> Result<Vmm, BuildError> {
    let template = config.cpu_template.as_ref();
    let kvm = KvmContext::with_capabilities(template.map_or(&[], |t| t.kvm_capabilities()))?;
    check_vcpus(config.vcpus, kvm.max_vcpus())?;
    // The vCPUs' CPUID first: a template made for another host is refused before
    // anything is built.
    let supported_cpuid = kvm
        .kvm()
        .get_supported_cpuid(CPUID_ENTRIES)
        .map_err(|source| BuildError::KvmCall {
            what: "cannot read KVM's supported CPUID",
            source,
        })?;
    let (vcpu_cpuid, msr_modifiers) = templated_cpuid(&supported_cpuid, template)?;
    let mem_arc = Arc::new(memory::create_guest_memory(
        config.memory_bytes,
        config.huge_pages,
    )?);
    let mem: &GuestMemory = &mem_arc;
    let supported_cpuid = kvm
        .kvm()
        .get_supported_cpuid(CPUID_ENTRIES)
        .map_err(|source| BuildError::KvmCall {
            what: "cannot read KVM's supported CPUID",
            source,
        })?;

    // Virtio device models first: opening their backends (disk images, TAPs, sockets,
    // pmem files) is what fails most often on user input, and the VM's memory slots
    // include the pmem files' mappings.
    let models = device_models::build(config, mmds)?;
    check_device_memory(&models.device_memory, &supported_cpuid)?;
    let device_memory = models.device_memory.clone();
    let vm = vm::create_vm(kvm.kvm(), mem, config.track_dirty_pages, &device_memory)?;

    // The guest's command line and DSDT list the virtio devices.
    let mut mmio = Bus::new();
    let mut virtio = VirtioDevices::for_vm(config.boot_timer, &mut mmio)?;
    read_only_pmem_windows(&mut mmio, &device_memory)?;
    let balloon = models.balloon;
    for device in models.devices {
        virtio.add(&vm, &mut mmio, &mem_arc, device)?;
    }

    // The VM generation ID: a fresh one in its page, its notification line wired.
    let vmgenid = VmGenId::new(mem)?;
    wire_vmgenid(&vm, &vmgenid)?;

    // Guest software and what it is told at entry.
    let kernel = loader::load_kernel(mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(mem, path, &kernel)?),
        None => None,
    };
    let cmdline = match virtio.cmdline_entries() {
        entries if entries.is_empty() => config.cmdline().to_string(),
        entries => format!("{} {entries}", config.cmdline()),
    };
    let cmdline_len = loader::load_cmdline_for(mem, &cmdline, &kernel)?;
    // Both MP table (for kernels without ACPI) and ACPI (for kernels without MP-table
    // parsing, such as Debian's cloud kernel). At most MAX_VCPUS (254), checked above.
    mptable::setup_mptable(mem, config.vcpus as u8)?;
    let rsdp = acpi::setup_acpi_tables(
        mem,
        &AcpiConfig {
            num_cpus: config.vcpus,
            pm: AcpiPmPorts::default(),
            devices: &[legacy_dsdt_devices()?, virtio.dsdt_devices()?].concat(),
            vmgenid: Some(vmgenid.acpi()),
        },
    )?;
    match kernel.mode {
        EntryMode::Long64 => {
            boot::write_zero_page(mem, kernel.setup_header, cmdline_len, initrd, Some(rsdp))?;
            regs::write_page_tables(mem)?;
        }
        EntryMode::Pvh32 => {
            boot::write_pvh_start_info(mem, initrd, Some(rsdp))?;
        }
    }
    regs::write_gdt(mem, kernel.mode)?;

    // Devices.
    let stop = Arc::new(StopSignal::new().map_err(io_error("cannot create the stop event"))?);
    let mut legacy =
        LegacyDevices::new(&vm, &config.serial, &config.serial_rate_limit, &stop, None)?;
    let pio = legacy.pio.clone();
    let mmio = Arc::new(mmio);
    let subscribers = legacy.subscribers(&config.serial);

    // vCPUs: all created and configured before any runs.
    let boot_state = BootState {
        supported_cpuid: &vcpu_cpuid,
        msr_modifiers: &msr_modifiers,
        cpu_count: config.vcpus,
        // SMT pairs vCPUs into cores; the API refuses it with an odd count above one, and
        // one vCPU is one thread either way.
        threads_per_core: if config.smt && config.vcpus.is_multiple_of(2) {
            2
        } else {
            1
        },
        tsc_deadline: kvm.kvm().check_extension(Cap::TscDeadlineTimer),
        mode: kernel.mode,
        entry: vm_memory::Address::raw_value(&kernel.entry),
    };
    let unhandled = Arc::new(UnhandledLog::default());
    let metrics = legacy.with_metrics(models.metrics);
    let vcpus = (0..config.vcpus)
        .map(|index| {
            Vcpu::new(
                &vm,
                index,
                &boot_state,
                (pio.clone(), mmio.clone()),
                unhandled.clone(),
                stop.clone(),
            )
            .map(|mut vcpu| {
                vcpu.set_metrics(metrics.vcpu.clone());
                vcpu
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let msr_indices = msrs_to_save(&kvm, template)?;
    start_vm(
        vcpus,
        true,
        subscribers,
        Parts {
            virtio,
            balloon,
            metrics,
            stop,
            legacy,
            msr_indices,
            config: config.clone(),
            vm,
            memory: mem_arc,
            device_memory,
            frontend_config: None,
            uffd: None,
            vmgenid: Some(vmgenid),
        },
    )
}

/// The guest's physical address width: CPUID leaf 0x8000_0008's EAX[7:0] as KVM offers
/// it (36 bits, the architectural minimum, where the leaf is missing).
fn guest_phys_bits(cpuid: &kvm_bindings::CpuId) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| e.eax & 0xff)
}

/// The MMIO windows over read-only pmem regions, which take the guest's writes to them.
pub(crate) fn read_only_pmem_windows(
    mmio: &mut Bus,
    regions: &[vm::DeviceMemory],
) -> Result<(), BusError> {
    for r in regions.iter().filter(|r| r.backing.read_only()) {
        let window = ReadOnlyPmem::new(r.backing.clone());
        mmio.insert(Arc::new(Mutex::new(window)), r.guest_addr, r.backing.len())?;
    }
    Ok(())
}

/// Device memory must be addressable by the guest's CPU.
pub(crate) fn check_device_memory(
    regions: &[vm::DeviceMemory],
    cpuid: &kvm_bindings::CpuId,
) -> Result<(), BuildError> {
    let Some(end) = regions
        .iter()
        .map(|r| r.guest_addr.saturating_add(r.backing.len()))
        .max()
    else {
        return Ok(());
    };
    let bits = guest_phys_bits(cpuid);
    if bits < 64 && end > 1u64 << bits {
        return Err(BuildError::DeviceMemoryUnaddressable { end, bits });
    }
    Ok(())
}

/// Register the generation ID's notification eventfd as the irqfd of its GSI.
pub(crate) fn wire_vmgenid(vm: &VmFd, vmgenid: &VmGenId) -> Result<(), BuildError> {
    vm.register_irqfd(vmgenid.interrupt_evt(), vmgenid.gsi())
        .map_err(|source| BuildError::KvmCall {
            what: "cannot wire the VMGenID notification",
            source,
        })
}

/// What a [`Vmm`] holds besides its threads.
pub(crate) struct Parts {
    pub(crate) virtio: VirtioDevices,
    pub(crate) balloon: Option<BalloonHandle>,
    pub(crate) metrics: VmMetrics,
    pub(crate) stop: Arc<StopSignal>,
    pub(crate) legacy: LegacyDevices,
    pub(crate) msr_indices: Arc<[u32]>,
    pub(crate) config: VmConfig,
    pub(crate) vm: VmFd,
    pub(crate) memory: Arc<GuestMemory>,
    /// The pmem regions' mappings, KVM memory slots of the VM: dropped after `vm`.
    pub(crate) device_memory: Vec<vm::DeviceMemory>,
    pub(crate) frontend_config: Option<serde_json::Value>,
    /// The page-fault handler serving guest memory (a VM restored from a Uffd backend).
    pub(crate) uffd: Option<crate::snapshot::uffd::UffdBackend>,
    /// The VM generation ID (`None` only when restored from a snapshot without one).
    pub(crate) vmgenid: Option<VmGenId>,
}

/// Start the event loop and every vCPU thread (`running`, or paused until resumed); once
/// they run, a restored VM's guest is told its generation ID changed.
pub(crate) fn start_vm(
    vcpus: Vec<Vcpu>,
    running: bool,
    subscribers: Vec<Subscriber>,
    parts: Parts,
) -> Result<Vmm, BuildError> {
    let event_loop = EventLoop::start(subscribers)?;
    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        match vcpu.start_in(running) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                // Stop what already runs before reporting.
                handles.into_iter().for_each(VcpuHandle::exit);
                event_loop.stop();
                return Err(e.into());
            }
        }
    }
    let mut vmm = Vmm {
        vcpus: handles,
        event_loop: Some(event_loop),
        paused: !running,
        parts,
    };
    if running {
        vmm.notify_restored_guest();
    }
    Ok(vmm)
}

/// KVM's supported CPUID as `template` changes it (a static template only on a host it
/// was made for), and the template's MSR changes.
fn templated_cpuid(
    supported: &CpuId,
    template: Option<&CpuTemplate>,
) -> Result<(CpuId, Vec<MsrModifier>), BuildError> {
    let Some(template) = template else {
        return Ok((supported.clone(), Vec::new()));
    };
    let mut entries = supported.as_slice().to_vec();
    let custom = cpu_template::resolve(template, &entries)?;
    cpu_template::apply_cpuid(&mut entries, &custom)?;
    // As many entries as KVM gave: it fits.
    let cpuid = CpuId::from_entries(&entries).map_err(|_| BuildError::KvmCall {
        what: "the CPU template's CPUID",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    Ok((cpuid, custom.msr_modifiers.clone()))
}

/// The MSRs a snapshot saves: KVM's list of MSRs to save and restore, and those the CPU
/// template changes.
pub(crate) fn msrs_to_save(
    kvm: &KvmContext,
    template: Option<&CpuTemplate>,
) -> Result<Arc<[u32]>, BuildError> {
    let list = kvm
        .kvm()
        .get_msr_index_list()
        .map_err(|source| BuildError::KvmCall {
            what: "cannot read KVM's MSR list",
            source,
        })?;
    let mut indices = list.as_slice().to_vec();
    for addr in template
        .map(cpu_template::msr_addresses)
        .unwrap_or_default()
    {
        if !indices.contains(&addr) {
            indices.push(addr);
        }
    }
    Ok(indices.into())
}

/// The devices on the PIO bus, and the handles a snapshot needs.
pub(crate) struct LegacyDevices {
    pub(crate) pio: Arc<Bus>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) rtc: Arc<Mutex<Rtc>>,
    pub(crate) acpi_pm: Arc<Mutex<AcpiPm<ResetTrigger>>>,
    pub(crate) i8042: Arc<Mutex<I8042<ResetTrigger>>>,
    input_ready: EventFd,
    /// A socket console's server, until the event loop takes it (dropped unstarted, it
    /// removes the socket file).
    socket_console: Option<SerialSocket>,
}

impl LegacyDevices {
    /// `devices`' counters with the UART's and the i8042's.
    pub(crate) fn with_metrics(&self, mut devices: VmMetrics) -> VmMetrics {
        if let Ok(serial) = self.serial.lock() {
            devices.uart = serial.metrics();
        }
        if let Ok(i8042) = self.i8042.lock() {
            devices.i8042 = i8042.metrics();
        }
        devices
    }

    /// The UART and the i8042 (interrupts wired through irqfds), RTC, PCI config and
    /// POST ports and ACPI PM device on a new PIO bus; with the registers of `state` if
    /// given.
    pub(crate) fn new(
        vm: &VmFd,
        serial_config: &SerialConfig,
        serial_limit: &api::RateLimit,
        stop: &Arc<StopSignal>,
        state: Option<&LegacyState>,
    ) -> Result<Self, BuildError> {
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("cannot create an eventfd"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|source| BuildError::KvmCall {
                what: "cannot wire the serial interrupt",
                source,
            })?;
        let i8042_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("cannot create an eventfd"))?;
        vm.register_irqfd(&i8042_irq, I8042_IRQ)
            .map_err(|source| BuildError::KvmCall {
                what: "cannot wire the i8042 interrupt",
                source,
            })?;
        let input_ready =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_error("cannot create an eventfd"))?;
        let input_clone = input_ready
            .try_clone()
            .map_err(io_error("cannot clone an eventfd"))?;
        let backend = serial_output(serial_config)?;
        let metrics = Arc::new(crate::metrics::UartMetrics::default());
        let out = RateLimitedOutput::wrap(backend.out, serial_limit, metrics.clone());
        let serial = match state {
            None => SerialDevice::with_metrics(serial_irq, input_clone, out, metrics),
            Some(state) => {
                SerialDevice::from_state(&state.serial, serial_irq, input_clone, out, metrics)
                    .map_err(io_error("cannot restore the serial port"))?
            }
        };
        let serial = Arc::new(Mutex::new(serial));
        let socket_console = match backend.socket {
            Some((listener, console)) => Some(SerialSocket::new(
                listener,
                console,
                serial.clone(),
                input_ready
                    .try_clone()
                    .map_err(io_error("cannot clone an eventfd"))?,
            )),
            None => None,
        };
        let mut rtc = Rtc::new();
        let mut acpi_pm = AcpiPm::new(ResetTrigger(stop.clone()));
        let mut i8042 = I8042::new(ResetTrigger(stop.clone())).with_interrupt(i8042_irq);
        if let Some(state) = state {
            i8042.restore(&state.i8042).map_err(|e| BuildError::Io {
                what: "cannot restore the i8042".into(),
                source: std::io::Error::other(e),
            })?;
            rtc.restore(&state.rtc).map_err(|e| BuildError::Io {
                what: "cannot restore the RTC".into(),
                source: std::io::Error::other(e),
            })?;
            acpi_pm.set_woken(state.acpi_woken);
        }
        let rtc = Arc::new(Mutex::new(rtc));
        let acpi_pm = Arc::new(Mutex::new(acpi_pm));
        let i8042 = Arc::new(Mutex::new(i8042));

        let mut pio = Bus::new();
        let serial_dev: SharedDevice = serial.clone();
        pio.insert(serial_dev, COM1_BASE, COM1_LEN)?;
        let i8042_dev: SharedDevice = i8042.clone();
        pio.insert(i8042_dev, I8042_BASE, I8042_LEN)?;
        let rtc_dev: SharedDevice = rtc.clone();
        pio.insert(rtc_dev, RTC_BASE, RTC_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(AllOnes)),
            PCI_CONFIG_BASE,
            PCI_CONFIG_LEN,
        )?;
        pio.insert(Arc::new(Mutex::new(AllOnes)), POST_PORT, 1)?;
        let acpi_dev: SharedDevice = acpi_pm.clone();
        pio.insert(acpi_dev, ACPI_PM_BASE, ACPI_PM_LEN)?;
        Ok(Self {
            pio: Arc::new(pio),
            serial,
            rtc,
            acpi_pm,
            i8042,
            input_ready,
            socket_console,
        })
    }

    /// The event-loop subscribers: host stdin to the UART when the console is on stdio;
    /// the console's socket server (taken: once) when it is on a socket.
    pub(crate) fn subscribers(&mut self, serial_config: &SerialConfig) -> Vec<Subscriber> {
        let mut subscribers: Vec<Subscriber> = Vec::new();
        if let Some(server) = self.socket_console.take() {
            subscribers.push(Box::new(server));
        }
        if *serial_config == SerialConfig::Stdio {
            match self.input_ready.try_clone() {
                Ok(ready) => {
                    subscribers.push(Box::new(SerialInput::new(
                        Stdin,
                        self.serial.clone(),
                        ready,
                    )));
                }
                Err(e) => log::warn!("console input disabled: cannot clone an eventfd: {e}"),
            }
        }
        subscribers
    }

    /// The registers a snapshot keeps.
    pub(crate) fn state(&self) -> LegacyState {
        // A poisoned lock means a device call panicked; its registers are still whole.
        LegacyState {
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(),
            rtc: self.rtc.lock().unwrap_or_else(|e| e.into_inner()).state(),
            acpi_woken: self
                .acpi_pm
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .woken(),
            i8042: self.i8042.lock().unwrap_or_else(|e| e.into_inner()).state(),
        }
    }
}

/// The legacy devices' registers in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LegacyState {
    /// The UART.
    pub serial: SerialSnapshot,
    /// The CMOS RTC.
    pub rtc: crate::devices::legacy::rtc::RtcState,
    /// The ACPI PM device's WAK_STS.
    pub acpi_woken: bool,
    /// The i8042 and its keyboard: command byte, status, output buffer and FIFO (the
    /// power-on state for snapshots taken before Vireo kept it).
    #[serde(default)]
    pub i8042: I8042State,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_count_limits() {
        assert!(matches!(check_vcpus(0, 288), Err(BuildError::NoVcpus)));
        assert!(check_vcpus(1, 288).is_ok());
        assert!(check_vcpus(254, 288).is_ok());
        let err = check_vcpus(255, 288).unwrap_err();
        assert_eq!(
            err.to_string(),
            "255 vCPUs asked for; at most 254 are possible on this host"
        );
        let err = check_vcpus(9, 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "9 vCPUs asked for; at most 8 are possible on this host"
        );
    }

    #[test]
    fn pmem_regions_must_be_within_the_guests_physical_address_width() {
        let dir = std::env::temp_dir().join(format!("vireo-builder-pmem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.img");
        std::fs::write(&path, [1u8; 4096]).unwrap();
        let backing = Arc::new(pmem::Backing::open(&path, true).unwrap());
        let leaf = |eax| kvm_bindings::kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax,
            ..Default::default()
        };
        let cpuid = |entries: &[kvm_bindings::kvm_cpuid_entry2]| {
            kvm_bindings::CpuId::from_entries(entries).unwrap()
        };
        let at = |guest_addr| {
            vec![vm::DeviceMemory {
                guest_addr,
                backing: backing.clone(),
            }]
        };
        // 39 bits: 512 GiB. A 2 MiB region ending there fits; one more byte does not.
        let bits39 = cpuid(&[leaf(0x3027)]);
        assert_eq!(guest_phys_bits(&bits39), 39);
        assert!(check_device_memory(&at(4 << 30), &bits39).is_ok());
        assert!(check_device_memory(&at((512 << 30) - (2 << 20)), &bits39).is_ok());
        let err = check_device_memory(&at(512 << 30), &bits39).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the pmem regions end at 0x8000200000, beyond the 39-bit physical addresses \
             this host's guests have"
        );
        // No leaf: 36 bits, 64 GiB.
        let none = cpuid(&[]);
        assert_eq!(guest_phys_bits(&none), 36);
        assert!(check_device_memory(&at(64 << 30), &none).is_err());
        assert!(check_device_memory(&[], &none).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn serial_file_that_cannot_be_opened_is_named() {
        let err = match serial_output(&SerialConfig::File("/nonexistent/dir/log".into())) {
            Err(e) => e,
            Ok(_) => panic!("opened a file in a missing directory"),
        };
        assert!(err.to_string().contains("/nonexistent/dir/log"), "{err}");
    }

    #[test]
    fn serial_socket_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = std::env::temp_dir().join(format!("vireo-builder-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let config = SerialConfig::Socket(path.clone());
        let refused = |what: &str| match serial_output(&config) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("bound over {what}"),
        };

        std::fs::write(&path, b"not ours").unwrap();
        let err = refused("a regular file");
        assert!(err.starts_with("serial console: "), "{err}");
        assert!(err.contains("exists and is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not ours", "left alone");
        std::fs::remove_file(&path).unwrap();

        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = refused("a live listener");
        assert!(err.contains("in use by another process"), "{err}");
        assert!(err.contains("console.sock"), "{err}");
        // Found without connecting: a console server would take a probe for a client.
        live.set_nonblocking(true).unwrap();
        assert_eq!(
            live.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        drop(live);

        // The listener above is gone and left its file behind: replaced.
        assert!(path.exists());
        let backend = serial_output(&config).unwrap();
        assert!(backend.socket.is_some());
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(backend);
        assert!(!path.exists(), "removed with the listener");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
