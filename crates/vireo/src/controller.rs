//! The VMM side of the API: owns the pre-boot configuration and, after InstanceStart, the
//! running [`Vmm`]; answers each [`VmmAction`] the API thread sends. It runs on the main
//! thread, so a request never races the VM's own stop handling.
//!
//! Pre-boot requests after the start, and runtime requests before it, get Firecracker's
//! refusals. Configuration bodies are checked by [`FullVmConfig`]'s `set_*` methods, the
//! same checks `--config-file` goes through.

use std::path::Path;
use std::time::Instant;

use api::action::{ActionError, ActionResult, VmmAction, VmmData};
use api::firecracker::{
    Balloon, BalloonHintingStatus, BalloonStatistics, BootSource, ConfigError, Drive, FullVmConfig,
    InstanceInfo, MachineConfig, MemoryBackendType, NetworkInterface, PartialDrive,
    PartialNetworkInterface, PartialPmem, RateLimiter, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, TokenBucket,
};
use vmm::builder::Vmm;
use vmm::snapshot_vm::{MemoryBackend, RestoreOptions, SnapshotKind};

use crate::metrics::{Metrics, Operation};

/// The API's view of the machine.
pub struct Controller {
    id: String,
    config: FullVmConfig,
    vmm: Option<Vmm>,
    started_at: Option<Instant>,
    /// Firecracker's boot timer (`--boot-timer`, a process flag, not in the config).
    boot_timer: bool,
    /// The metadata service (`/mmds`): its document lives here from the start, whether
    /// or not a NIC answers it yet.
    mmds: mmds::Service,
    /// Metrics counters and destination.
    pub metrics: Metrics,
}

fn file_check(path: &str, what: &str) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::BootSource(format!("The {what} file cannot be opened: {e}")))
}

/// Firecracker opens a drive's file at `PUT /drives` and refuses one it cannot open (read
/// and write unless the drive is read-only); Vireo checks the same there and opens it
/// again at InstanceStart.
fn drive_check(drive: &Drive) -> Result<(), ConfigError> {
    let Some(path) = &drive.path_on_host else {
        return Ok(()); // the config's own check names it
    };
    let writable = drive.is_read_only != Some(true);
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map(drop)
        .map_err(|e| {
            ConfigError::Drive(format!(
                "Unable to create the block device: cannot open {path}{}: {e}",
                if writable { " for writing" } else { "" }
            ))
        })
}

/// Firecracker opens the TAP at `PUT /network-interfaces`; Vireo checks that it opens
/// (attaching to it, or creating it as the VM would) and opens it again at InstanceStart.
fn tap_check(nic: &NetworkInterface) -> Result<(), ConfigError> {
    net::tap::Tap::open(&nic.host_dev_name)
        .map(drop)
        .map_err(|e| ConfigError::Net(format!("Could not create the network device: {e}")))
}

impl Controller {
    /// A controller with no VM yet, for instance `id`, whose metadata service holds at
    /// most `mmds_size_limit` bytes.
    pub fn new(id: String, mmds_size_limit: usize) -> Self {
        let mmds = mmds::Service::new(mmds_size_limit);
        let mut metrics = Metrics::default();
        metrics.mmds = mmds.metrics.clone();
        Self {
            id,
            config: FullVmConfig::default(),
            vmm: None,
            started_at: None,
            boot_timer: false,
            mmds,
            metrics,
        }
    }

    /// Serve the guest the metadata service's version and format of `config`.
    fn configure_mmds(&self, config: Option<&api::MmdsConfig>) {
        if let Some(c) = config {
            self.mmds.lock().configure(c.version, c.imds_compat);
        }
    }

    /// Replace the metadata service's document (`PUT /mmds`, `--metadata`).
    pub fn put_mmds(&self, value: serde_json::Value) -> Result<(), ActionError> {
        self.mmds.lock().put(value).map_err(mmds_error)
    }

    /// Give the VM Firecracker's boot timer device when it starts.
    pub fn set_boot_timer(&mut self, on: bool) {
        self.boot_timer = on;
    }

    /// Take a whole configuration (`--config-file`), logger and metrics included.
    pub fn load(&mut self, config: FullVmConfig) -> Result<(), ActionError> {
        if let Some(boot) = &config.boot_source {
            self.check_boot_source(boot)?;
        }
        for drive in &config.drives {
            drive_check(drive)?;
        }
        for nic in &config.network_interfaces {
            tap_check(nic)?;
        }
        if let Some(logger) = &config.logger {
            crate::logger::configure(logger).map_err(ConfigError::Logger)?;
        }
        if let Some(metrics) = &config.metrics {
            self.metrics
                .configure(metrics)
                .map_err(ConfigError::Metrics)?;
        }
        self.configure_mmds(config.mmds_config.as_ref());
        self.config = config;
        Ok(())
    }

    /// The running VM, if started.
    pub fn vmm(&self) -> Option<&Vmm> {
        self.vmm.as_ref()
    }

    /// Hand the VM over (the guest stopped).
    pub fn take_vmm(&mut self) -> Option<Vmm> {
        self.vmm.take()
    }

    /// Whether the guest's console is the terminal (neither a file nor a socket).
    pub fn console_on_stdio(&self) -> bool {
        self.config.serial_config() == api::SerialConfig::Stdio
    }

    fn state(&self) -> &'static str {
        match &self.vmm {
            None => "Not started",
            Some(vmm) if vmm.is_paused() => "Paused",
            Some(_) => "Running",
        }
    }

    fn check_boot_source(&self, boot: &BootSource) -> Result<(), ConfigError> {
        file_check(&boot.kernel_image_path, "kernel")?;
        if let Some(initrd) = &boot.initrd_path {
            file_check(initrd, "initrd")?;
        }
        Ok(())
    }

    /// Answer one action.
    pub fn handle(&mut self, action: VmmAction) -> ActionResult {
        let timed = match &action {
            VmmAction::Pause => Some(Operation::Pause),
            VmmAction::Resume => Some(Operation::Resume),
            VmmAction::LoadSnapshot(_) => Some(Operation::LoadSnapshot),
            VmmAction::CreateSnapshot(p) if p.snapshot_type == SnapshotType::Diff => {
                Some(Operation::DiffSnapshot)
            }
            VmmAction::CreateSnapshot(_) => Some(Operation::FullSnapshot),
            _ => None,
        };
        let counted = action.clone();
        let started = Instant::now();
        let result = self.dispatch(action);
        if let (Some(op), Ok(_)) = (timed, &result) {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.metrics.set_latency(op, us);
        }
        self.metrics.count_request(&counted, result.is_err());
        if counted == VmmAction::InstanceStart && result.is_ok() {
            // As Firecracker: a first line once the VM runs.
            if let Err(e) = self.flush_metrics() {
                log::warn!("metrics: {e}");
            }
        }
        result
    }

    /// Write a metrics line now.
    pub fn flush_metrics(&mut self) -> Result<(), String> {
        let vm = self.vmm.as_ref().map(Vmm::metrics);
        self.metrics.flush(&self.id, vm)
    }

    /// Write a metrics line now with the counters of a VM that has stopped (it was taken
    /// with [`Controller::take_vmm`]).
    pub fn flush_metrics_of(&mut self, vm: &vmm::metrics::VmMetrics) -> Result<(), String> {
        self.metrics.flush(&self.id, Some(vm))
    }

    fn dispatch(&mut self, action: VmmAction) -> ActionResult {
        use VmmAction as A;
        let started = self.vmm.is_some();
        let empty = |r: Result<(), ConfigError>| r.map(|()| VmmData::Empty).map_err(Into::into);
        match action {
            A::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                id: self.id.clone(),
                state: self.state().into(),
                started: self.vmm.is_some(),
                vmm_version: env!("CARGO_PKG_VERSION").into(),
                app_name: "Vireo".into(),
            })),
            A::GetVersion => Ok(VmmData::Version(
                api::firecracker::FIRECRACKER_API_VERSION.into(),
            )),
            A::GetFullVmConfig => Ok(VmmData::FullVmConfig(Box::new(self.config.clone()))),
            A::GetMachineConfig => Ok(VmmData::MachineConfig(self.config.machine_config.clone())),
            A::GetBalloon => self.balloon_config().map(VmmData::Balloon),
            A::LoadSnapshot(_) if started => Err(ActionError::NotSupportedPostBoot),
            A::LoadSnapshot(p) => self.load_snapshot(&p).map(|()| VmmData::Empty),
            A::CreateSnapshot(_) if !started => Err(ActionError::NotSupportedPreBoot),
            A::CreateSnapshot(p) => self.create_snapshot(&p).map(|()| VmmData::Empty),
            // The document, before and after the start.
            A::GetMmds => Ok(VmmData::Mmds(self.mmds.lock().document())),
            A::PutMmds(v) => self.put_mmds(v).map(|()| VmmData::Empty),
            A::PatchMmds(v) => self
                .mmds
                .lock()
                .patch(&v)
                .map(|()| VmmData::Empty)
                .map_err(mmds_error),

            // Pre-boot only.
            A::PutMachineConfig(_)
            | A::PatchMachineConfig(_)
            | A::PutCpuConfig(_)
            | A::PutBootSource(_)
            | A::PutDrive(_)
            | A::PutNetworkInterface(_)
            | A::PutPmem(_)
            | A::PutVsock(_)
            | A::PutEntropy(_)
            | A::PutBalloon(_)
            | A::PutLogger(_)
            | A::PutMetrics(_)
            | A::PutSerial(_)
            | A::PutMmdsConfig(_)
            | A::InstanceStart
                if started =>
            {
                Err(ActionError::NotSupportedPostBoot)
            }
            A::PutMachineConfig(c) => empty(self.config.set_machine_config(c)),
            A::PatchMachineConfig(u) => empty(self.config.update_machine_config(u)),
            A::PutCpuConfig(t) => empty(self.config.set_cpu_config(t)),
            A::PutBootSource(b) => {
                self.check_boot_source(&b)?;
                empty(self.config.set_boot_source(b))
            }
            // The body's checks first, then the host's (the file, the TAP); nothing
            // changes unless both pass.
            A::PutDrive(d) => {
                let mut next = self.config.clone();
                next.set_drive(d.clone())?;
                drive_check(&d)?;
                self.config = next;
                Ok(VmmData::Empty)
            }
            A::PutNetworkInterface(n) => {
                let mut next = self.config.clone();
                next.set_network_interface(n.clone())?;
                tap_check(&n)?;
                self.config = next;
                Ok(VmmData::Empty)
            }
            // The file is opened at InstanceStart, as Firecracker does.
            A::PutPmem(p) => empty(self.config.set_pmem(p)),
            A::PutVsock(v) => empty(self.config.set_vsock(v)),
            A::PutEntropy(e) => empty(self.config.set_entropy(e)),
            A::PutBalloon(b) => empty(self.config.set_balloon(b)),
            A::PutSerial(s) => empty(self.config.set_serial(s)),
            A::PutMmdsConfig(c) => {
                self.config.set_mmds_config(c.clone())?;
                self.configure_mmds(Some(&c));
                Ok(VmmData::Empty)
            }
            A::PutLogger(l) => {
                crate::logger::configure(&l).map_err(ConfigError::Logger)?;
                self.config.logger = Some(l);
                Ok(VmmData::Empty)
            }
            A::PutMetrics(m) => {
                self.metrics.configure(&m).map_err(ConfigError::Metrics)?;
                self.config.metrics = Some(m);
                Ok(VmmData::Empty)
            }
            A::InstanceStart => self.start().map(|()| VmmData::Empty),

            // Runtime only.
            A::PatchDrive(_)
            | A::PatchNetworkInterface(_)
            | A::PatchPmem(_)
            | A::PatchBalloon(_)
            | A::GetBalloonStats
            | A::PatchBalloonStats(_)
            | A::StartBalloonHinting(_)
            | A::GetBalloonHintingStatus
            | A::StopBalloonHinting
            | A::SendCtrlAltDel
            | A::FlushMetrics
            | A::Pause
            | A::Resume
                if !started =>
            {
                Err(ActionError::NotSupportedPreBoot)
            }
            A::PatchDrive(d) => self.patch_drive(&d),
            A::PatchNetworkInterface(n) => self.patch_network_interface(&n),
            A::PatchPmem(p) => self.patch_pmem(&p),
            A::PatchBalloon(u) => self.patch_balloon(u.amount_mib),
            A::GetBalloonStats => self.balloon_stats().map(VmmData::BalloonStats),
            A::PatchBalloonStats(u) => self.patch_balloon_stats(u.stats_polling_interval_s),
            A::StartBalloonHinting(cmd) => self
                .balloon_handle()?
                .start_hinting(cmd.acknowledge_on_stop)
                .map(|_| VmmData::Empty)
                .map_err(hinting_error),
            A::GetBalloonHintingStatus => {
                let s = self
                    .balloon_handle()?
                    .hinting_status()
                    .map_err(hinting_error)?;
                Ok(VmmData::BalloonHintingStatus(BalloonHintingStatus {
                    host_cmd: s.host_cmd,
                    guest_cmd: s.guest_cmd,
                }))
            }
            A::StopBalloonHinting => self
                .balloon_handle()?
                .stop_hinting()
                .map(|()| VmmData::Empty)
                .map_err(hinting_error),
            A::SendCtrlAltDel => {
                let Some(vmm) = self.vmm.as_ref() else {
                    return Err(ActionError::NotSupportedPreBoot);
                };
                vmm.send_ctrl_alt_del()
                    .map_err(|e| ActionError::Internal(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            A::FlushMetrics => self
                .flush_metrics()
                .map(|()| VmmData::Empty)
                .map_err(|e| ConfigError::Metrics(e).into()),
            A::Pause | A::Resume => {
                let pause = action == A::Pause;
                let Some(vmm) = self.vmm.as_mut() else {
                    return Err(ActionError::NotSupportedPreBoot);
                };
                let result = if pause { vmm.pause() } else { vmm.resume() };
                result.map_err(|e| ActionError::Internal(e.to_string()))?;
                Ok(VmmData::Empty)
            }
        }
    }

    fn start(&mut self) -> Result<(), ActionError> {
        let mut config = self.config.to_vm_config()?;
        config.boot_timer = self.boot_timer;
        crate::signals::warn_if_kvm_is_incomplete(self.console_on_stdio());
        let vmm = vmm::builder::build_and_boot_with(&config, &self.mmds)
            .map_err(|e| ActionError::StartMicrovm(e.to_string()))?;
        self.vmm = Some(vmm);
        self.started_at = Some(Instant::now());
        Ok(())
    }

    /// `PUT /snapshot/create` on the running VM: it must be paused.
    fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<(), ActionError> {
        let config = serde_json::to_value(&self.config)
            .map_err(|e| ActionError::CreateSnapshot(e.to_string()))?;
        let Some(vmm) = self.vmm.as_mut() else {
            return Err(ActionError::NotSupportedPreBoot);
        };
        let kind = match p.snapshot_type {
            SnapshotType::Full => SnapshotKind::Full,
            SnapshotType::Diff => SnapshotKind::Diff,
        };
        vmm.set_frontend_config(config);
        let started = Instant::now();
        let info = vmm
            .snapshot(
                kind,
                Path::new(&p.snapshot_path),
                Path::new(&p.mem_file_path),
            )
            .map_err(|e| ActionError::CreateSnapshot(e.to_string()))?;
        log::info!(
            "snapshot {:?} written in {:?}: state {} bytes, {} bytes of memory",
            p.snapshot_type,
            started.elapsed(),
            info.state_bytes,
            info.memory_bytes_written
        );
        Ok(())
    }

    /// `PUT /snapshot/load`: only logger, metrics and serial may be configured before.
    fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<(), ActionError> {
        let c = &self.config;
        if c.boot_source.is_some()
            || !c.drives.is_empty()
            || !c.network_interfaces.is_empty()
            || c.vsock.is_some()
            || c.entropy.is_some()
            || c.balloon.is_some()
            || !c.pmem.is_empty()
            || c.machine_config != MachineConfig::default()
        {
            return Err(ActionError::LoadSnapshot(
                "Loading a microVM snapshot not allowed after configuring boot-specific \
                 resources."
                    .into(),
            ));
        }
        let backend = match p.memory_backend()? {
            (MemoryBackendType::File, path) => MemoryBackend::File(path.into()),
            (MemoryBackendType::Uffd, socket) => MemoryBackend::Uffd(socket.into()),
        };
        if p.clock_realtime == Some(true) {
            return Err(ActionError::NotSupported(
                "clock_realtime on snapshot load.".into(),
            ));
        }
        let options = RestoreOptions {
            // The console of this process (PUT /serial before the load), not the saved one.
            serial: c.serial_config(),
            serial_rate_limit: c.serial_rate_limit(),
            resume: p.resume_vm.unwrap_or(false),
            track_dirty_pages: p.tracks_dirty_pages(),
            net_overrides: p
                .network_overrides
                .iter()
                .flatten()
                .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
                .collect(),
            vsock_override: p.vsock_override.as_ref().map(|o| o.uds_path.clone().into()),
            mmds: self.mmds.clone(),
        };
        let state = Path::new(&p.snapshot_path);
        let started = Instant::now();
        crate::signals::warn_if_kvm_is_incomplete(self.console_on_stdio());
        let vmm = vmm::snapshot_vm::restore_from(state, &backend, &options)
            .map_err(|e| ActionError::LoadSnapshot(e.to_string()))?;
        let mut restored = match vmm.frontend_config() {
            Some(v) => serde_json::from_value::<FullVmConfig>(v.clone()).map_err(|e| {
                ActionError::LoadSnapshot(format!("the snapshot's configuration: {e}"))
            })?,
            None => FullVmConfig::default(),
        };
        // The overrides are in the restored VM; keep GET /vm/config true to it.
        for o in p.network_overrides.iter().flatten() {
            if let Some(nic) = restored
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
            {
                nic.host_dev_name = o.host_dev_name.clone();
            }
        }
        if let (Some(o), Some(vsock)) = (&p.vsock_override, restored.vsock.as_mut()) {
            vsock.uds_path = o.uds_path.clone();
        }
        log::info!("snapshot loaded in {:?}", started.elapsed());
        restored.logger = self.config.logger.clone();
        restored.metrics = self.config.metrics.clone();
        restored.serial = self.config.serial.clone();
        // The service's version and address come with the snapshot, its document not
        // (as Firecracker: a clone may need other data; PUT /mmds gives it).
        self.configure_mmds(restored.mmds_config.as_ref());
        self.config = restored;
        self.vmm = Some(vmm);
        self.started_at = Some(Instant::now());
        Ok(())
    }

    /// `PATCH /drives/{id}` on the running VM: a new image and/or new rate limits.
    fn patch_drive(&mut self, d: &PartialDrive) -> ActionResult {
        let Some(pos) = self
            .config
            .drives
            .iter()
            .position(|x| x.drive_id == d.drive_id)
        else {
            return Err(ConfigError::Drive("Invalid block device ID!".into()).into());
        };
        let limiter = d
            .rate_limiter
            .as_ref()
            .map(|patch| merge_limiter(self.config.drives[pos].rate_limiter, patch));
        let limit = limiter.map(|l| l.unwrap_or_default().to_rate_limit());
        let Some(vmm) = self.vmm.as_mut() else {
            return Err(ActionError::NotSupportedPreBoot);
        };
        let path = d.path_on_host.as_deref().map(Path::new);
        let result = vmm.update_drive(&d.drive_id, path, limit.as_ref());
        // GET /vm/config follows the VM: a new image stays even if new limits were then
        // refused, so look at what the VM holds rather than at the outcome alone.
        let now = vmm
            .vm_config()
            .disks
            .iter()
            .find(|x| x.id.as_deref() == Some(d.drive_id.as_str()))
            .map(|x| x.path.clone());
        let drive = &mut self.config.drives[pos];
        if let (Some(new), Some(now)) = (path, now)
            && new == now
        {
            drive.path_on_host = d.path_on_host.clone();
        }
        result.map_err(|e| ConfigError::Drive(format!("Unable to patch the block device: {e}")))?;
        if let Some(l) = limiter {
            drive.rate_limiter = l;
        }
        Ok(VmmData::Empty)
    }

    /// `PATCH /network-interfaces/{id}` on the running VM: new rate limits.
    fn patch_network_interface(&mut self, n: &PartialNetworkInterface) -> ActionResult {
        let Some(pos) = self
            .config
            .network_interfaces
            .iter()
            .position(|x| x.iface_id == n.iface_id)
        else {
            return Err(
                ConfigError::Net(format!("The interface {} does not exist.", n.iface_id)).into(),
            );
        };
        let nic = &self.config.network_interfaces[pos];
        let rx = n
            .rx_rate_limiter
            .as_ref()
            .map(|patch| merge_limiter(nic.rx_rate_limiter, patch));
        let tx = n
            .tx_rate_limiter
            .as_ref()
            .map(|patch| merge_limiter(nic.tx_rate_limiter, patch));
        let rx_limit = rx.map(|l| l.unwrap_or_default().to_rate_limit());
        let tx_limit = tx.map(|l| l.unwrap_or_default().to_rate_limit());
        let Some(vmm) = self.vmm.as_mut() else {
            return Err(ActionError::NotSupportedPreBoot);
        };
        vmm.update_net(&n.iface_id, rx_limit.as_ref(), tx_limit.as_ref())
            .map_err(|e| {
                ConfigError::Net(format!("Unable to update the network interface: {e}"))
            })?;
        let nic = &mut self.config.network_interfaces[pos];
        if let Some(l) = rx {
            nic.rx_rate_limiter = l;
        }
        if let Some(l) = tx {
            nic.tx_rate_limiter = l;
        }
        Ok(VmmData::Empty)
    }

    /// `PATCH /pmem/{id}` on the running VM: new flush limits, merged as a drive's.
    fn patch_pmem(&mut self, p: &PartialPmem) -> ActionResult {
        let Some(pos) = self.config.pmem.iter().position(|x| x.id == p.id) else {
            return Err(ConfigError::Pmem(format!(
                "Unable to patch the pmem device: no pmem device has the id {}. Please \
                 verify the request arguments.",
                p.id
            ))
            .into());
        };
        let Some(patch) = &p.rate_limiter else {
            return Ok(VmmData::Empty);
        };
        let limiter = merge_limiter(self.config.pmem[pos].rate_limiter, patch);
        let limit = limiter.unwrap_or_default().to_rate_limit();
        let Some(vmm) = self.vmm.as_mut() else {
            return Err(ActionError::NotSupportedPreBoot);
        };
        vmm.update_pmem(&p.id, &limit).map_err(|e| {
            ConfigError::Pmem(format!(
                "Unable to patch the pmem device: {e}. Please verify the request arguments."
            ))
        })?;
        self.config.pmem[pos].rate_limiter = limiter;
        Ok(VmmData::Empty)
    }

    fn balloon_config(&self) -> Result<Balloon, ActionError> {
        let mut config = self
            .config
            .balloon
            .clone()
            .ok_or_else(|| ConfigError::Balloon("No balloon device found.".into()))?;
        if let Some(handle) = self.vmm.as_ref().and_then(Vmm::balloon) {
            config.amount_mib = u32::try_from(handle.target_mib()).unwrap_or(u32::MAX);
            config.stats_polling_interval_s =
                u16::try_from(handle.stats_interval_s()).unwrap_or(u16::MAX);
        }
        Ok(config)
    }

    fn balloon_handle(&self) -> Result<&balloon::BalloonHandle, ActionError> {
        self.vmm
            .as_ref()
            .and_then(Vmm::balloon)
            .ok_or_else(|| ActionError::BalloonUpdate("No balloon device found.".into()))
    }

    fn patch_balloon(&mut self, amount_mib: u32) -> ActionResult {
        if u64::from(amount_mib) > self.config.machine_config.mem_size_mib {
            return Err(ActionError::BalloonUpdate(format!(
                "The balloon cannot hold {amount_mib} MiB: the guest has {} MiB.",
                self.config.machine_config.mem_size_mib
            )));
        }
        self.balloon_handle()?
            .set_target_mib(u64::from(amount_mib))
            .map_err(|e| ActionError::BalloonUpdate(e.to_string()))?;
        if let Some(b) = self.config.balloon.as_mut() {
            b.amount_mib = amount_mib;
        }
        Ok(VmmData::Empty)
    }

    fn patch_balloon_stats(&mut self, seconds: u16) -> ActionResult {
        let handle = self.balloon_handle()?;
        if !handle.stats_enabled() || seconds == 0 {
            return Err(ActionError::BalloonUpdate(
                "Statistics cannot be turned on or off after boot; the interval can change.".into(),
            ));
        }
        handle
            .set_stats_interval(u64::from(seconds))
            .map_err(|e| ActionError::BalloonUpdate(e.to_string()))?;
        if let Some(b) = self.config.balloon.as_mut() {
            b.stats_polling_interval_s = seconds;
        }
        Ok(VmmData::Empty)
    }

    fn balloon_stats(&self) -> Result<BalloonStatistics, ActionError> {
        let handle = self.balloon_handle()?;
        if !handle.stats_enabled() {
            return Err(ActionError::BalloonUpdate(
                "Statistics for the balloon device are not enabled.".into(),
            ));
        }
        let mut out = BalloonStatistics {
            target_pages: handle.target_pages(),
            actual_pages: handle.actual_pages(),
            target_mib: handle.target_mib(),
            actual_mib: handle.actual_mib(),
            ..Default::default()
        };
        if let Some(s) = handle.statistics() {
            out.swap_in = s.swap_in;
            out.swap_out = s.swap_out;
            out.major_faults = s.major_faults;
            out.minor_faults = s.minor_faults;
            out.free_memory = s.free_memory;
            out.total_memory = s.total_memory;
            out.available_memory = s.available_memory;
            out.disk_caches = s.disk_caches;
            out.hugetlb_allocations = s.hugetlb_allocations;
            out.hugetlb_failures = s.hugetlb_failures;
            out.oom_kill = s.oom_kill;
            out.alloc_stall = s.alloc_stall;
            out.async_scan = s.async_scan;
            out.direct_scan = s.direct_scan;
            out.async_reclaim = s.async_reclaim;
            out.direct_reclaim = s.direct_reclaim;
        }
        Ok(out)
    }
}

/// The API's error for a refused hinting request, in Firecracker's words where it has
/// them.
fn hinting_error(e: balloon::BalloonError) -> ActionError {
    use balloon::BalloonError as E;
    ActionError::BalloonUpdate(match e {
        E::HintingDisabled => "Attempting to use hinting when not enabled: the balloon was \
                               configured without free_page_hinting."
            .into(),
        E::NotActive => "Device not activated yet: the guest's balloon driver has not \
                         started the device."
            .into(),
        other => other.to_string(),
    })
}

/// The API's error for a refused change of the metadata service's document.
fn mmds_error(e: mmds::StoreError) -> ActionError {
    match e {
        mmds::StoreError::TooLarge(_) => ActionError::MmdsLimitExceeded(e.to_string()),
        _ => ActionError::Mmds(e.to_string()),
    }
}

/// A rate limiter after a PATCH, as Firecracker merges one: a bucket the patch omits
/// stays as it was; a bucket with a zero `size` or `refill_time` removes that limit;
/// any other bucket replaces the old one. `None` when nothing is limited any more.
fn merge_limiter(old: Option<RateLimiter>, patch: &RateLimiter) -> Option<RateLimiter> {
    let merge = |old: Option<TokenBucket>, new: Option<TokenBucket>| match new {
        None => old,
        Some(b) if b.per_second().is_none() => None,
        Some(b) => Some(b),
    };
    let old = old.unwrap_or_default();
    let merged = RateLimiter {
        bandwidth: merge(old.bandwidth, patch.bandwidth),
        ops: merge(old.ops, patch.ops),
    };
    (merged != RateLimiter::default()).then_some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_time: u64) -> TokenBucket {
        TokenBucket {
            size,
            one_time_burst: None,
            refill_time,
        }
    }

    #[test]
    fn patched_limiters_merge_as_firecracker_does() {
        let old = RateLimiter {
            bandwidth: Some(bucket(1000, 100)),
            ops: Some(bucket(10, 1000)),
        };
        // An omitted bucket stays; a given one replaces.
        let patch = RateLimiter {
            bandwidth: None,
            ops: Some(bucket(50, 500)),
        };
        assert_eq!(
            merge_limiter(Some(old), &patch),
            Some(RateLimiter {
                bandwidth: Some(bucket(1000, 100)),
                ops: Some(bucket(50, 500)),
            })
        );
        // A zero size or refill time removes the bucket.
        let patch = RateLimiter {
            bandwidth: Some(bucket(0, 0)),
            ops: Some(bucket(10, 0)),
        };
        assert_eq!(merge_limiter(Some(old), &patch), None);
        let patch = RateLimiter {
            bandwidth: Some(bucket(0, 100)),
            ops: None,
        };
        assert_eq!(
            merge_limiter(Some(old), &patch),
            Some(RateLimiter {
                bandwidth: None,
                ops: Some(bucket(10, 1000)),
            })
        );
        // An empty patch changes nothing; a patch on no limiter adds one.
        assert_eq!(merge_limiter(Some(old), &RateLimiter::default()), Some(old));
        assert_eq!(merge_limiter(None, &RateLimiter::default()), None);
        let patch = RateLimiter {
            bandwidth: Some(bucket(4096, 1000)),
            ops: None,
        };
        let merged = merge_limiter(None, &patch).unwrap();
        assert_eq!(merged.to_rate_limit().bytes_per_sec, Some(4096));
        assert_eq!(merged.to_rate_limit().ops_per_sec, None);
    }
}
