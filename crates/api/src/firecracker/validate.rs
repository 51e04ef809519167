//! The checks of every body, as [`FullVmConfig`]'s `set_*` methods: each `PUT`/`PATCH`
//! of the API and each section of `--config-file` goes through them.

use super::*;

fn check_id(id: &str, what: fn(String) -> ConfigError) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(what("The ID cannot be empty.".into()));
    }
    if !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(what(
            "API Resource IDs can only contain alphanumeric characters and underscores.".into(),
        ));
    }
    if id.len() > 64 {
        return Err(what("An ID is at most 64 characters.".into()));
    }
    Ok(())
}

fn check_path(path: &str, what: fn(String) -> ConfigError, field: &str) -> Result<(), ConfigError> {
    if path.is_empty() || path.contains('\0') {
        return Err(what(format!("{field} must be a non-empty path.")));
    }
    Ok(())
}

impl FullVmConfig {
    /// Parse a `--config-file` (or any full config) and check every part as the API would.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let parsed: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        parsed.revalidated().map_err(|e| e.to_string())
    }

    /// The same config, built up again through the `set_*` checks.
    pub fn revalidated(&self) -> Result<Self, ConfigError> {
        self.unsupported_sections()?;
        let mut fresh = Self::default();
        fresh.set_machine_config(self.machine_config.clone())?;
        // After the machine config: as in Firecracker, the custom template wins.
        if let Some(t) = &self.cpu_config {
            fresh.set_cpu_config(t.clone())?;
        }
        if let Some(b) = &self.boot_source {
            fresh.set_boot_source(b.clone())?;
        }
        for d in &self.drives {
            fresh.set_drive(d.clone())?;
        }
        for n in &self.network_interfaces {
            fresh.set_network_interface(n.clone())?;
        }
        if let Some(v) = &self.vsock {
            fresh.set_vsock(v.clone())?;
        }
        if let Some(e) = &self.entropy {
            fresh.set_entropy(e.clone())?;
        }
        if let Some(b) = &self.balloon {
            fresh.set_balloon(b.clone())?;
        }
        if let Some(s) = &self.serial {
            fresh.set_serial(s.clone())?;
        }
        if let Some(m) = &self.mmds_config {
            fresh.set_mmds_config(m.clone())?;
        }
        for p in &self.pmem {
            fresh.set_pmem(p.clone())?;
        }
        fresh.logger = self.logger.clone();
        fresh.metrics = self.metrics.clone();
        Ok(fresh)
    }

    /// The first of Firecracker's sections Vireo lacks that asks for something, as an
    /// error naming it.
    pub fn unsupported_sections(&self) -> Result<(), ConfigError> {
        // An object asks for something when one of its fields does.
        fn asks(v: &serde_json::Value) -> bool {
            match v {
                serde_json::Value::Null => false,
                serde_json::Value::Object(m) => m.values().any(asks),
                serde_json::Value::Array(a) => !a.is_empty(),
                _ => true,
            }
        }
        for (section, value, what) in [(
            "memory-hotplug",
            &self.memory_hotplug,
            "memory hotplug (virtio-mem)",
        )] {
            if value.as_ref().is_some_and(asks) {
                return Err(ConfigError::Unsupported(format!(
                    "{section}: {what} are not supported by Vireo yet."
                )));
            }
        }
        Ok(())
    }

    /// `PUT /mmds/config`: at least one interface, each already configured, and a
    /// link-local address.
    pub fn set_mmds_config(&mut self, config: crate::MmdsConfig) -> Result<(), ConfigError> {
        config.check().map_err(ConfigError::Mmds)?;
        if let Some(id) = config
            .network_interfaces
            .iter()
            .find(|id| !self.network_interfaces.iter().any(|n| &n.iface_id == *id))
        {
            return Err(ConfigError::Mmds(format!(
                "The list of network interface IDs provided contains at least one ID that \
                 does not correspond to any existing network interface: {id}."
            )));
        }
        self.mmds_config = Some(config);
        Ok(())
    }

    /// `PUT /machine-config`. A CPU template given replaces the one set before, custom
    /// or static (`"None"` drops it); none given keeps it, as in Firecracker.
    pub fn set_machine_config(&mut self, mut config: MachineConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.check_balloon_fits(self.balloon.as_ref(), config.mem_size_mib)?;
        match config.cpu_template.as_deref() {
            None => config.cpu_template = self.machine_config.cpu_template.take(),
            Some(name) => {
                if name == "None" {
                    config.cpu_template = None;
                }
                self.cpu_config = None;
            }
        }
        self.machine_config = config;
        Ok(())
    }

    /// `PUT /cpu-config`: a custom CPU template, which replaces any template set before
    /// (a static one included). Its form is checked here; whether the host's KVM has
    /// what it changes, at InstanceStart.
    pub fn set_cpu_config(
        &mut self,
        template: crate::CustomCpuTemplate,
    ) -> Result<(), ConfigError> {
        template.validate().map_err(ConfigError::CpuConfig)?;
        self.cpu_config = Some(template.normalized());
        self.machine_config.cpu_template = None;
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn update_machine_config(
        &mut self,
        update: MachineConfigUpdate,
    ) -> Result<(), ConfigError> {
        let mut config = self.machine_config.clone();
        if let Some(v) = update.vcpu_count {
            config.vcpu_count = v;
        }
        if let Some(m) = update.mem_size_mib {
            config.mem_size_mib = m;
        }
        if let Some(s) = update.smt {
            config.smt = s;
        }
        if let Some(t) = update.cpu_template {
            config.cpu_template = Some(t);
        }
        if let Some(t) = update.track_dirty_pages {
            config.track_dirty_pages = t;
        }
        if let Some(h) = update.huge_pages {
            config.huge_pages = h;
        }
        self.set_machine_config(config)
    }

    /// `PUT /boot-source`.
    pub fn set_boot_source(&mut self, source: BootSource) -> Result<(), ConfigError> {
        check_path(
            &source.kernel_image_path,
            ConfigError::BootSource,
            "kernel_image_path",
        )?;
        if let Some(initrd) = &source.initrd_path {
            check_path(initrd, ConfigError::BootSource, "initrd_path")?;
        }
        if let Some(args) = &source.boot_args
            && args.contains('\0')
        {
            return Err(ConfigError::BootSource(
                "boot_args may not contain NUL.".into(),
            ));
        }
        self.boot_source = Some(source);
        Ok(())
    }

    /// `PUT /drives/{id}`: add a drive, or replace the one with the same id.
    pub fn set_drive(&mut self, drive: Drive) -> Result<(), ConfigError> {
        check_id(&drive.drive_id, ConfigError::Drive)?;
        if drive.socket.is_some() {
            return Err(ConfigError::Drive(
                "vhost-user block devices (socket) are not supported by Vireo.".into(),
            ));
        }
        let Some(path) = &drive.path_on_host else {
            return Err(ConfigError::Drive("path_on_host is required.".into()));
        };
        check_path(path, ConfigError::Drive, "path_on_host")?;
        if drive.partuuid.as_ref().is_some_and(|p| {
            p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }) {
            return Err(ConfigError::Drive(
                "partuuid must be letters, digits and '-'.".into(),
            ));
        }
        if drive.is_root_device
            && self
                .drives
                .iter()
                .any(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(ConfigError::Drive(
                "A root block device already exists!".into(),
            ));
        }
        if drive.is_root_device && self.pmem.iter().any(|p| p.root_device) {
            return Err(ConfigError::Drive(
                "Attempt to add block as a root device while the root device defined as a \
                 pmem device"
                    .into(),
            ));
        }
        if let Some(serial) = &drive.serial
            && (serial.len() > DISK_SERIAL_MAX || !serial.is_ascii() || serial.contains('\0'))
        {
            return Err(ConfigError::Drive(format!(
                "serial is at most {DISK_SERIAL_MAX} ASCII characters (no NUL)."
            )));
        }
        check_limiter(drive.rate_limiter.as_ref(), ConfigError::Drive)?;
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(slot) => *slot = drive,
            None => {
                if self.device_count() >= MAX_DEVICES {
                    return Err(ConfigError::Drive(too_many_devices()));
                }
                self.drives.push(drive);
            }
        }
        Ok(())
    }

    /// `PUT /pmem/{id}`: add a virtio-pmem device, or replace the one with the same id.
    /// Its file is opened at InstanceStart (as Firecracker does), not here.
    pub fn set_pmem(&mut self, pmem: Pmem) -> Result<(), ConfigError> {
        check_id(&pmem.id, ConfigError::Pmem)?;
        check_path(&pmem.path_on_host, ConfigError::Pmem, "path_on_host")?;
        if pmem.root_device && self.drives.iter().any(|d| d.is_root_device) {
            return Err(ConfigError::Pmem(
                "Attempt to add pmem as a root device while the root device defined as a \
                 block device"
                    .into(),
            ));
        }
        if pmem.root_device && self.pmem.iter().any(|p| p.root_device && p.id != pmem.id) {
            return Err(ConfigError::Pmem("A root pmem device already exist".into()));
        }
        check_limiter(pmem.rate_limiter.as_ref(), ConfigError::Pmem)?;
        match self.pmem.iter_mut().find(|p| p.id == pmem.id) {
            Some(slot) => *slot = pmem,
            None => {
                if self.device_count() >= MAX_DEVICES {
                    return Err(ConfigError::Pmem(too_many_devices()));
                }
                self.pmem.push(pmem);
            }
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: add a NIC, or replace the one with the same id.
    pub fn set_network_interface(&mut self, nic: NetworkInterface) -> Result<(), ConfigError> {
        check_id(&nic.iface_id, ConfigError::Net)?;
        if nic.host_dev_name.is_empty()
            || nic.host_dev_name.len() >= 16
            || nic.host_dev_name.contains(['/', '\0', ' '])
        {
            return Err(ConfigError::Net(format!(
                "host_dev_name '{}' is not a TAP name (1 to 15 characters, no '/').",
                nic.host_dev_name
            )));
        }
        if let Some(mac) = &nic.guest_mac {
            // Any address, as Firecracker takes it (a multicast one included).
            let parsed = parse_mac(mac)
                .ok_or_else(|| ConfigError::Net(format!("'{mac}' is not a MAC address.")))?;
            if let Some(other) = self.network_interfaces.iter().find(|n| {
                n.iface_id != nic.iface_id
                    && n.guest_mac.as_deref().and_then(parse_mac) == Some(parsed)
            }) {
                return Err(ConfigError::Net(format!(
                    "The MAC address is already in use by {}.",
                    other.iface_id
                )));
            }
        }
        if let Some(mtu) = nic.mtu
            && !crate::MTU_RANGE.contains(&mtu)
        {
            return Err(ConfigError::Net(format!(
                "mtu {mtu} is outside 68..=65535."
            )));
        }
        if let Some(other) = self
            .network_interfaces
            .iter()
            .find(|n| n.iface_id != nic.iface_id && n.host_dev_name == nic.host_dev_name)
        {
            return Err(ConfigError::Net(format!(
                "The host device {} is already used by {}.",
                nic.host_dev_name, other.iface_id
            )));
        }
        check_limiter(nic.rx_rate_limiter.as_ref(), ConfigError::Net)?;
        check_limiter(nic.tx_rate_limiter.as_ref(), ConfigError::Net)?;
        match self
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == nic.iface_id)
        {
            Some(slot) => *slot = nic,
            None => {
                if self.device_count() >= MAX_DEVICES {
                    return Err(ConfigError::Net(too_many_devices()));
                }
                self.network_interfaces.push(nic);
            }
        }
        Ok(())
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, vsock: Vsock) -> Result<(), ConfigError> {
        if !(3..u32::MAX).contains(&vsock.guest_cid) {
            return Err(ConfigError::Vsock(format!(
                "guest_cid {} is reserved (it must be at least 3).",
                vsock.guest_cid
            )));
        }
        check_path(&vsock.uds_path, ConfigError::Vsock, "uds_path")?;
        if vsock.uds_path.len() >= 100 {
            return Err(ConfigError::Vsock(
                "uds_path is too long for a Unix socket (at most 99 bytes, room for _PORT).".into(),
            ));
        }
        self.vsock = Some(vsock);
        Ok(())
    }

    /// `PUT /entropy`.
    pub fn set_entropy(&mut self, entropy: EntropyDevice) -> Result<(), ConfigError> {
        check_limiter(entropy.rate_limiter.as_ref(), ConfigError::Entropy)?;
        self.entropy = Some(entropy);
        Ok(())
    }

    /// `PUT /balloon`.
    pub fn set_balloon(&mut self, balloon: Balloon) -> Result<(), ConfigError> {
        self.check_balloon_fits(Some(&balloon), self.machine_config.mem_size_mib)?;
        self.balloon = Some(balloon);
        Ok(())
    }

    fn check_balloon_fits(
        &self,
        balloon: Option<&Balloon>,
        mem_mib: u64,
    ) -> Result<(), ConfigError> {
        match balloon {
            Some(b) if u64::from(b.amount_mib) > mem_mib => Err(ConfigError::Balloon(format!(
                "The balloon cannot hold {} MiB: the guest has {mem_mib} MiB.",
                b.amount_mib
            ))),
            _ => Ok(()),
        }
    }

    /// `PUT /serial`.
    pub fn set_serial(&mut self, serial: SerialDevice) -> Result<(), ConfigError> {
        if let Some(b) = serial.rate_limiter
            && b.size > 0
            && b.refill_time == 0
        {
            return Err(ConfigError::Serial(
                "A token bucket with a size needs a refill_time above 0.".into(),
            ));
        }
        if let Some(p) = &serial.serial_out_path {
            check_path(p, ConfigError::Serial, "serial_out_path")?;
        }
        if let Some(p) = &serial.socket {
            if serial.serial_out_path.is_some() {
                return Err(ConfigError::Serial(
                    "serial_out_path and socket are exclusive: give one of them.".into(),
                ));
            }
            check_path(p, ConfigError::Serial, "socket")?;
            if p.len() > UNIX_PATH_MAX {
                return Err(ConfigError::Serial(format!(
                    "socket is too long for a Unix socket (at most {UNIX_PATH_MAX} bytes)."
                )));
            }
        }
        self.serial = Some(serial);
        Ok(())
    }

    /// Where the console goes: `serial_out_path` (a file), `socket`, or stdio when
    /// neither is given (Firecracker's default).
    pub fn serial_config(&self) -> SerialConfig {
        let serial = self.serial.as_ref();
        match (
            serial.and_then(|s| s.serial_out_path.as_ref()),
            serial.and_then(|s| s.socket.as_ref()),
        ) {
            (Some(path), _) => SerialConfig::File(path.into()),
            (None, Some(path)) => SerialConfig::Socket(path.into()),
            (None, None) => SerialConfig::Stdio,
        }
    }

    /// The console's output limit (`rate_limiter` of `PUT /serial`), in Vireo's terms.
    pub fn serial_rate_limit(&self) -> crate::RateLimit {
        let bucket = self.serial.as_ref().and_then(|s| s.rate_limiter);
        crate::RateLimit {
            bytes_per_sec: bucket.and_then(|b| b.per_second()),
            bytes_burst: bucket.map(|b| b.burst()).unwrap_or_default(),
            ..Default::default()
        }
    }

    pub(super) fn device_count(&self) -> usize {
        self.drives.len()
            + self.network_interfaces.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.entropy.is_some())
            + usize::from(self.balloon.is_some())
            + self.pmem.len()
    }
}

/// Most virtio devices a VM can have (Firecracker's virtio-mmio on x86: 19); past the
/// 15th they share interrupt lines.
pub const MAX_DEVICES: usize = 32;

pub(super) fn too_many_devices() -> String {
    format!(
        "A VM has at most {MAX_DEVICES} virtio devices (drives, NICs, vsock, entropy, balloon, \
         pmem)."
    )
}

fn check_limiter(
    limiter: Option<&RateLimiter>,
    what: fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    let Some(l) = limiter else { return Ok(()) };
    for bucket in [l.bandwidth, l.ops].into_iter().flatten() {
        if bucket.size > 0 && bucket.refill_time == 0 {
            return Err(what(
                "A token bucket with a size needs a refill_time above 0.".into(),
            ));
        }
    }
    Ok(())
}
