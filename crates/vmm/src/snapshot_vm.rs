//! Pause, resume, snapshot and restore of a whole VM.
//!
//! - [`Vmm::pause`] stops every vCPU at a safe point (outside KVM_RUN, acknowledged) and
//!   [`Vmm::resume`] lets them go on.
//! - [`Vmm::snapshot`] writes a paused VM to a state file and a memory file (see
//!   [`crate::snapshot`]). `Full` writes all of memory (zero pages as holes). `Diff`
//!   needs dirty-page tracking (KVM's dirty log, on from the VM's creation) and writes
//!   only the pages dirtied since the previous snapshot, in place into that snapshot's
//!   memory file, which then holds the new state; a Diff to a path that does not exist
//!   is refused rather than leaving a memory file that cannot be restored alone. The
//!   dirtied pages are those of KVM's log (the vCPUs' writes) and those of guest
//!   memory's dirty bitmap (the virtio devices' writes through the VMM's mapping, which
//!   KVM does not see), so a VM with devices can take Diffs too.
//! - [`restore`] builds a new VM from the two files: guest memory mapped privately from
//!   the memory file (lazy: nothing is read until the guest touches it), KVM's state and
//!   the devices' registers written back, vCPUs started paused or running.
//!   [`restore_from`] takes the memory from a [`MemoryBackend`] instead: the file, or a
//!   userfaultfd page-fault handler on a Unix socket (Firecracker's `Uffd` backend, see
//!   [`crate::snapshot::uffd`]), which alone restores a `huge_pages` guest. A VM restored
//!   from a handler takes Full snapshots (every page is read, the handler serving those
//!   the guest has not touched) and, with dirty-page tracking, Diffs.
//!
//! Snapshots cover the vCPUs, the in-kernel irqchip, PIT and clock, the legacy devices,
//! the VM generation ID (a restore writes a new one and notifies the guest once its
//! vCPUs run) and the virtio transports with their queues and each device's own state,
//! if it has any; the devices are opened again from the saved configuration on restore
//! (a NIC's TAP and the vsock socket may be overridden), then given their state before
//! they are activated again. virtio-rng, virtio-blk (requests taken by the worker are finished
//! first; throttled ones stay in the ring), virtio-net (frames in flight may be lost, as
//! on a wire), virtio-vsock (connections are not kept: the restored device sends the
//! driver a transport reset event, and the driver drops them) and the balloon (target,
//! `actual`, polling interval and the statistics buffer it holds; its handle reports the
//! restored target) can be snapshotted, and virtio-pmem: its region is not guest RAM but
//! its backing file's pages, which a snapshot syncs (`msync`) and does not copy; it keeps
//! each device's configuration and region, and a restore maps the same files at the same
//! places (as Firecracker does: the files must be there, of the same size rounded up to
//! 2 MiB). The regions' KVM slots log no dirty pages and a Uffd handler never serves them.

use std::path::Path;
use std::sync::Arc;

use api::{SerialConfig, VmConfig};
use serde::{Deserialize, Serialize};

use crate::builder::{BuildError, LegacyDevices, LegacyState, Parts, Vmm, msrs_to_save, start_vm};
use crate::device_manager::VirtioDevices;
use crate::devices::vmgenid::{VmGenId, VmGenIdState};
use crate::kvm::KvmContext;
use crate::snapshot::cpu::VcpuState;
use crate::snapshot::format::{self, FormatError};
use crate::snapshot::memory::{self, MemoryFileError, RegionInfo};
use crate::snapshot::uffd::{self, UffdError};
use crate::snapshot::vm_state::{VmState, VmStateError};
use crate::stop::StopSignal;
use crate::vcpu::{UnhandledLog, Vcpu, VcpuCommand, VcpuResponse};
use crate::vm;
use virtio_devices::mmio::MmioState;

/// Why a pause, resume, snapshot or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot needs the VM paused first.
    #[error("the VM must be paused before a snapshot is taken")]
    NotPaused,
    /// What the VM has cannot be snapshotted yet.
    #[error("{0}")]
    Unsupported(String),
    /// A vCPU thread did not answer (it has ended).
    #[error("vCPU {0} did not answer")]
    VcpuGone(u32),
    /// A vCPU's state could not be read.
    #[error("vCPU {index}: {source}")]
    Vcpu {
        /// The vCPU.
        index: u32,
        /// Why.
        #[source]
        source: crate::snapshot::cpu::CpuStateError,
    },
    /// The VM-wide KVM state.
    #[error(transparent)]
    VmState(#[from] VmStateError),
    /// The state file.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The memory file.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// The page-fault handler (a Uffd memory backend).
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// The snapshot does not fit this host or this request.
    #[error("{0}")]
    Mismatch(String),
    /// A pmem file could not be synced.
    #[error("{0}")]
    DeviceMemory(String),
    /// Building the restored VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Full or diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages dirtied since the last snapshot, written into its memory file.
    Diff,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Bytes of the state file.
    pub state_bytes: u64,
    /// Bytes of guest memory written to the memory file (zero pages are holes).
    pub memory_bytes_written: u64,
}

/// The body of a state file.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// How the memory file was written.
    pub kind: SnapshotKind,
    /// Guest RAM in bytes, as configured.
    pub memory_bytes: u64,
    /// RAM regions, in the memory file's order.
    pub regions: Vec<RegionInfo>,
    /// Every vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// The in-kernel irqchip, PIT and clock.
    pub vm: VmState,
    /// The legacy devices' registers.
    pub legacy: LegacyState,
    /// The VM's configuration: the devices are built again from it on restore.
    pub config: VmConfig,
    /// Every virtio transport's registers and queues, in slot order.
    pub virtio: Vec<MmioState>,
    /// The front end's own description of the VM (the API's full configuration), given
    /// back on restore.
    #[serde(default)]
    pub frontend_config: Option<serde_json::Value>,
    /// The VM generation ID device: where it is and the ID the guest held. Absent from
    /// snapshots of VMs built before Vireo had the device: their guests' DSDTs describe
    /// none, so they are restored without one.
    #[serde(default)]
    pub vmgenid: Option<VmGenIdState>,
}

impl Vmm {
    /// The guest's memory.
    pub fn guest_memory(&self) -> &crate::memory::GuestMemory {
        &self.parts.memory
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Stop every vCPU outside KVM_RUN, then park every virtio worker thread at a request
    /// boundary; returns once all have acknowledged. Pausing a paused VM does nothing.
    pub fn pause(&mut self) -> Result<(), SnapshotError> {
        if self.paused {
            return Ok(());
        }
        for vcpu in &self.vcpus {
            vcpu.send(VcpuCommand::Pause);
        }
        for vcpu in &self.vcpus {
            match vcpu.response() {
                Some(VcpuResponse::Paused) => {}
                _ => return Err(SnapshotError::VcpuGone(vcpu.index())),
            }
        }
        // After the vCPUs: no new kicks come in while the workers park.
        self.parts.virtio.pause();
        self.paused = true;
        Ok(())
    }

    /// Let every virtio worker, then every vCPU, run again; then, for a VM restored
    /// paused, tell the guest its generation ID changed. Resuming a running VM does
    /// nothing.
    pub fn resume(&mut self) -> Result<(), SnapshotError> {
        if !self.paused {
            return Ok(());
        }
        self.parts.virtio.resume();
        for vcpu in &self.vcpus {
            vcpu.send(VcpuCommand::Resume);
        }
        for vcpu in &self.vcpus {
            match vcpu.response() {
                Some(VcpuResponse::Resumed) => {}
                _ => return Err(SnapshotError::VcpuGone(vcpu.index())),
            }
        }
        self.paused = false;
        self.notify_restored_guest();
        Ok(())
    }

    /// With the VM paused: let the virtio workers run (they serve what the rings already
    /// hold, and write guest memory) while `f` runs, then park them again; the vCPUs stay
    /// paused throughout, so the guest does not see the results until it resumes. For
    /// tests of what the devices alone write (a Diff snapshot must hold it); `None` if
    /// the VM is not paused.
    #[doc(hidden)]
    pub fn with_devices_running<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        if !self.paused {
            return None;
        }
        self.parts.virtio.resume();
        let result = f();
        self.parts.virtio.pause();
        Some(result)
    }

    /// The front end's configuration this VM was restored with, if it was restored
    /// from a snapshot that carried one.
    pub fn frontend_config(&self) -> Option<&serde_json::Value> {
        self.parts.frontend_config.as_ref()
    }

    /// Keep `config` (the front end's description of the VM) in the next snapshots.
    pub fn set_frontend_config(&mut self, config: serde_json::Value) {
        self.parts.frontend_config = Some(config);
    }

    /// Write the paused VM to `state_path` and `mem_path`.
    pub fn snapshot(
        &mut self,
        kind: SnapshotKind,
        state_path: &Path,
        mem_path: &Path,
    ) -> Result<SnapshotInfo, SnapshotError> {
        if !self.paused {
            return Err(SnapshotError::NotPaused);
        }
        let tracking = self.parts.config.track_dirty_pages;
        if kind == SnapshotKind::Diff {
            if !tracking {
                return Err(SnapshotError::Unsupported(
                    "a Diff snapshot needs dirty-page tracking: set track_dirty_pages in the machine config (or enable_diff_snapshots when loading a snapshot)".into(),
                ));
            }
            if !mem_path.exists() {
                return Err(SnapshotError::Unsupported(format!(
                    "a Diff snapshot writes the dirtied pages into the memory file of the previous snapshot, in place; {} does not exist",
                    mem_path.display()
                )));
            }
        }
        // The pmem files hold what the guest wrote to them (a snapshot keeps their
        // configuration and places, not their contents): on disk as of the snapshot.
        for region in &self.parts.device_memory {
            region.backing.sync().map_err(|e| {
                SnapshotError::DeviceMemory(format!(
                    "cannot write the guest's changes back to the pmem file {}: {e}",
                    region.backing.path().display()
                ))
            })?;
        }
        // Devices first: finishing the requests they had taken writes guest memory and
        // raises interrupts, which the vCPU and irqchip state below must include.
        let virtio = self
            .parts
            .virtio
            .states()
            .map_err(SnapshotError::Unsupported)?;
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for vcpu in &self.vcpus {
            vcpu.send(VcpuCommand::SaveState(self.parts.msr_indices.clone()));
            match vcpu.response() {
                Some(VcpuResponse::State(state)) => {
                    vcpus.push((*state).map_err(|source| SnapshotError::Vcpu {
                        index: vcpu.index(),
                        source,
                    })?)
                }
                Some(VcpuResponse::NotPaused) => return Err(SnapshotError::NotPaused),
                _ => return Err(SnapshotError::VcpuGone(vcpu.index())),
            }
        }
        let snapshot = VmSnapshot {
            kind,
            memory_bytes: self.parts.config.memory_bytes,
            regions: memory::regions(&self.parts.memory),
            vcpus,
            vm: VmState::save(&self.parts.vm)?,
            legacy: self.parts.legacy.state(),
            config: self.parts.config.clone(),
            virtio,
            frontend_config: self.parts.frontend_config.clone(),
            vmgenid: self.parts.vmgenid.as_ref().map(VmGenId::state),
        };
        let memory_bytes_written = match kind {
            SnapshotKind::Full => {
                // The next Diff is relative to this snapshot: forget what was dirtied
                // before it, in KVM's log and in the devices' bitmap.
                if tracking {
                    vm::take_dirty_log(&self.parts.vm, &self.parts.memory)
                        .map_err(BuildError::from)?;
                }
                memory::reset_device_dirty(&self.parts.memory);
                // Memory a handler serves has missing pages that are not zeros.
                let trust_page_table = self.parts.uffd.is_none();
                memory::write_memory_file_from(&self.parts.memory, mem_path, trust_page_table)?
            }
            SnapshotKind::Diff => {
                // The vCPUs' writes (KVM's log) and the devices' (the bitmap: writes
                // through the VMM's mapping, which KVM does not see). The workers are
                // parked and have finished their requests: nothing writes meanwhile.
                let kvm = vm::take_dirty_log(&self.parts.vm, &self.parts.memory)
                    .map_err(BuildError::from)?;
                let devices = memory::take_device_dirty(&self.parts.memory);
                let dirty = memory::merge_dirty(&kvm, &devices);
                memory::write_dirty_pages(&self.parts.memory, mem_path, &dirty)?
            }
        };
        format::write_file(state_path, &snapshot)?;
        let state_bytes = std::fs::metadata(state_path).map_or(0, |m| m.len());
        Ok(SnapshotInfo {
            state_bytes,
            memory_bytes_written,
        })
    }
}

/// How to bring a snapshot back.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Where the console goes.
    pub serial: SerialConfig,
    /// The console's output limit (this process's, as its destination).
    pub serial_rate_limit: api::RateLimit,
    /// Start the vCPUs running (else paused until resumed).
    pub resume: bool,
    /// Log dirtied pages from the start, so a Diff snapshot of the restored VM writes
    /// only what changed since this snapshot.
    pub track_dirty_pages: bool,
    /// New TAP devices for NICs: (interface id, TAP name). The id is the NIC's `id`, or
    /// `net<N>` for the N-th NIC without one.
    pub net_overrides: Vec<(String, String)>,
    /// A new host-side socket for the vsock device.
    pub vsock_override: Option<std::path::PathBuf>,
    /// The metadata service the NICs of the snapshot's `mmds` configuration answer
    /// (its document is not in the snapshot: the API fills it again).
    pub mmds: mmds::Service,
}

/// The snapshot's configuration with the overrides of `options` applied.
fn overridden_config(
    config: &VmConfig,
    options: &RestoreOptions,
) -> Result<VmConfig, SnapshotError> {
    let mut config = config.clone();
    for (id, tap) in &options.net_overrides {
        let nic = config
            .nets
            .iter_mut()
            .enumerate()
            .find(|(i, n)| n.id.clone().unwrap_or_else(|| format!("net{i}")) == *id)
            .map(|(_, n)| n)
            .ok_or_else(|| {
                SnapshotError::Mismatch(format!(
                    "network override: the snapshot has no interface {id}"
                ))
            })?;
        nic.tap = tap.clone();
    }
    if let Some(socket) = &options.vsock_override {
        let vsock = config.vsock.as_mut().ok_or_else(|| {
            SnapshotError::Mismatch("vsock override: the snapshot has no vsock device".into())
        })?;
        vsock.socket = socket.clone();
    }
    config.serial = options.serial.clone();
    config.track_dirty_pages = options.track_dirty_pages;
    Ok(config)
}

/// Where a restored guest's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBackend {
    /// The snapshot's memory file, mapped privately.
    File(std::path::PathBuf),
    /// A page-fault handler listening on this Unix socket, given a userfaultfd for guest
    /// memory (it serves the pages, from the memory file or anything else).
    Uffd(std::path::PathBuf),
}

/// Build a VM from a snapshot's state file and memory file.
pub fn restore(
    state_path: &Path,
    mem_path: &Path,
    options: &RestoreOptions,
) -> Result<Vmm, SnapshotError> {
    restore_from(
        state_path,
        &MemoryBackend::File(mem_path.to_path_buf()),
        options,
    )
}

/// Build a VM from a snapshot's state file, its memory from `backend`.
pub fn restore_from(
    state_path: &Path,
    backend: &MemoryBackend,
    options: &RestoreOptions,
) -> Result<Vmm, SnapshotError> {
    let serial = &options.serial;
    let snapshot: VmSnapshot = format::read_file(state_path)?;
    let count = u32::try_from(snapshot.vcpus.len()).unwrap_or(u32::MAX);
    if snapshot.vcpus.is_empty()
        || count > crate::builder::MAX_VCPUS
        || snapshot
            .vcpus
            .iter()
            .enumerate()
            .any(|(i, v)| v.index as usize != i)
    {
        return Err(SnapshotError::Mismatch(format!(
            "{}: the vCPU list is not 0..{count}",
            state_path.display()
        )));
    }
    let ram: u64 = snapshot.regions.iter().map(|r| r.size).sum();
    let expected: Vec<RegionInfo> = crate::memory::ram_regions(ram)
        .into_iter()
        .map(|(addr, size)| RegionInfo {
            guest_addr: addr.0,
            size,
        })
        .collect();
    if ram != snapshot.memory_bytes || snapshot.regions != expected {
        return Err(SnapshotError::Mismatch(format!(
            "{}: the memory regions do not match a {} MiB guest",
            state_path.display(),
            snapshot.memory_bytes >> 20
        )));
    }

    let config = overridden_config(&snapshot.config, options)?;
    // Firecracker restores a huge-page guest only from a userfaultfd handler; its File
    // backend maps 4 KiB pages, so such a snapshot is refused by name there.
    if config.huge_pages && matches!(backend, MemoryBackend::File(_)) {
        return Err(SnapshotError::Unsupported(format!(
            "{}: the guest's memory was 2 MiB huge pages, which only a Uffd memory backend \
             restores (not the File backend)",
            state_path.display()
        )));
    }
    if config.vcpus != count || config.memory_bytes != snapshot.memory_bytes {
        return Err(SnapshotError::Mismatch(format!(
            "{}: the configuration does not match the saved vCPUs and memory",
            state_path.display()
        )));
    }

    // The KVM capabilities the template asked for are still asked for (as Firecracker
    // does); its CPUID and MSRs are in the vCPUs' state.
    let template = config.cpu_template.as_ref();
    let kvm = KvmContext::with_capabilities(template.map_or(&[], |t| t.kvm_capabilities()))
        .map_err(BuildError::from)?;
    crate::builder::check_vcpus(count, kvm.max_vcpus())?;
    let (mem, uffd) = match backend {
        MemoryBackend::File(path) => (memory::map_memory_file(path, &snapshot.regions)?, None),
        MemoryBackend::Uffd(socket) => {
            let (mem, backend) = uffd::guest_memory(socket, &snapshot.regions, config.huge_pages)?;
            (mem, Some(backend))
        }
    };
    let mem = Arc::new(mem);
    // The devices again, from the saved configuration (backends opened again: a disk
    // image, TAP or pmem file that went away is reported here); the pmem files' mappings
    // are memory slots of the VM, at the same places (each device checks its own against
    // the snapshot's when given its state).
    let models = crate::device_models::build(&config, &options.mmds).map_err(BuildError::from)?;
    let device_memory = models.device_memory.clone();
    let vm = vm::create_vm(kvm.kvm(), &mem, options.track_dirty_pages, &device_memory)
        .map_err(BuildError::from)?;
    snapshot.vm.restore(&vm)?;
    // A new generation ID over the snapshot's, before any vCPU runs; the guest is told
    // once they do (`start_vm`, or the first resume).
    let vmgenid = match &snapshot.vmgenid {
        Some(state) => {
            let device = VmGenId::restore(&*mem, state).map_err(BuildError::from)?;
            crate::builder::wire_vmgenid(&vm, &device)?;
            Some(device)
        }
        None => {
            log::info!(
                "{}: a snapshot without a VM generation ID device: restored without one",
                state_path.display()
            );
            None
        }
    };

    let stop = Arc::new(StopSignal::new().map_err(|source| BuildError::Io {
        what: "cannot create the stop event".into(),
        source,
    })?);
    let mut legacy = LegacyDevices::new(
        &vm,
        serial,
        &options.serial_rate_limit,
        &stop,
        Some(&snapshot.legacy),
    )?;
    // The devices in the same slots.
    let mut mmio = crate::bus::Bus::new();
    let mut virtio =
        VirtioDevices::for_vm(config.boot_timer, &mut mmio).map_err(BuildError::from)?;
    crate::builder::read_only_pmem_windows(&mut mmio, &device_memory).map_err(BuildError::from)?;
    for device in models.devices {
        virtio
            .add(&vm, &mut mmio, &mem, device)
            .map_err(BuildError::from)?;
    }
    // The balloon's handle (`models.balloon`) shares the device's state, so it reports
    // the restored target, `actual` and polling interval from here on.
    virtio
        .restore(&snapshot.virtio)
        .map_err(SnapshotError::Mismatch)?;
    if !options.resume {
        virtio.pause();
    }
    let mmio = Arc::new(mmio);
    let unhandled = Arc::new(UnhandledLog::default());
    let metrics = legacy.with_metrics(models.metrics);
    let vcpus = snapshot
        .vcpus
        .iter()
        .map(|state| {
            Vcpu::restore(
                &vm,
                state,
                (legacy.pio.clone(), mmio.clone()),
                unhandled.clone(),
                stop.clone(),
            )
            .map(|mut vcpu| {
                vcpu.set_metrics(metrics.vcpu.clone());
                vcpu
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::from)?;
    let subscribers = legacy.subscribers(serial);
    let msr_indices = msrs_to_save(&kvm, template)?;
    Ok(start_vm(
        vcpus,
        options.resume,
        subscribers,
        Parts {
            virtio,
            balloon: models.balloon,
            metrics,
            stop,
            legacy,
            msr_indices,
            config,
            vm,
            memory: mem,
            device_memory,
            frontend_config: snapshot.frontend_config,
            uffd,
            vmgenid,
        },
    )?)
}
