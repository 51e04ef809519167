//! Between Firecracker's [`FullVmConfig`] and Vireo's [`VmConfig`], both ways.
//!
//! [`FullVmConfig::to_vm_config`] is the VM the API's configuration describes;
//! [`FullVmConfig::from_vm_config`] writes a `VmConfig` in the API's terms (what a host
//! manager gives `vireo --config-file`), with Vireo's extensions where Firecracker has no
//! field (a drive's `format`, `serial` and `Auto` I/O engine, the serial `socket`), and
//! refuses what the API cannot express rather than dropping it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{
    Balloon, BootSource, ConfigError, DEFAULT_BOOT_ARGS, Drive, DriveFormat, DriveIoEngine,
    EntropyDevice, FullVmConfig, MAX_DEVICES, MachineConfig, NetworkInterface, Pmem, RateLimiter,
    SerialDevice, TokenBucket, Vsock, too_many_devices,
};
use crate::{
    BalloonConfig, CpuTemplate, DISK_SERIAL_MAX, DiskConfig, DiskFormat, IoEngine, NetConfig,
    PmemConfig, RateLimit, SerialConfig, StaticCpuTemplate, VmConfig, VsockConfig, parse_mac,
};

impl FullVmConfig {
    /// The VM this config describes: the root drive first (as `/dev/vda`, named on the
    /// command line with `root=`), then the other drives in order; pmem devices in order,
    /// a root one named on the command line as `root=/dev/pmemN` (N its index), as
    /// Firecracker does.
    pub fn to_vm_config(&self) -> Result<VmConfig, ConfigError> {
        let boot = self
            .boot_source
            .as_ref()
            .ok_or(ConfigError::MissingKernel)?;
        if self.device_count() > MAX_DEVICES {
            return Err(ConfigError::Drive(too_many_devices()));
        }
        let mut config = VmConfig::new(&boot.kernel_image_path);
        config.initrd = boot.initrd_path.as_ref().map(PathBuf::from);
        config.vcpus = self.machine_config.vcpu_count;
        config.smt = self.machine_config.smt;
        config.memory_bytes = self.machine_config.mem_size_mib << 20;
        config.track_dirty_pages = self.machine_config.track_dirty_pages;
        config.huge_pages = self.machine_config.huge_pages == "2M";
        config.serial = self.serial_config();
        config.serial_rate_limit = self.serial_rate_limit();

        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_string());
        let mut drives: Vec<&Drive> = self.drives.iter().filter(|d| d.is_root_device).collect();
        if let Some(root) = drives.first() {
            let ro = if root.is_read_only == Some(true) {
                "ro"
            } else {
                "rw"
            };
            match &root.partuuid {
                Some(uuid) => cmdline.push_str(&format!(" root=PARTUUID={uuid} {ro}")),
                None => cmdline.push_str(&format!(" root=/dev/vda {ro}")),
            }
        }
        if let Some((i, root)) = self.pmem.iter().enumerate().find(|(_, p)| p.root_device) {
            let ro = if root.read_only { "ro" } else { "rw" };
            cmdline.push_str(&format!(" root=/dev/pmem{i} {ro}"));
        }
        drives.extend(self.drives.iter().filter(|d| !d.is_root_device));
        config.cmdline = Some(cmdline);
        config.disks = drives.into_iter().map(disk_config).collect();
        config.nets = self
            .network_interfaces
            .iter()
            .map(|n| NetConfig {
                id: Some(n.iface_id.clone()),
                tap: n.host_dev_name.clone(),
                mac: n.guest_mac.as_deref().and_then(parse_mac),
                rx_rate_limit: n.rx_rate_limiter.unwrap_or_default().to_rate_limit(),
                tx_rate_limit: n.tx_rate_limiter.unwrap_or_default().to_rate_limit(),
                mtu: n.mtu,
            })
            .collect();
        config.vsock = self.vsock.as_ref().map(|v| VsockConfig {
            cid: v.guest_cid,
            socket: PathBuf::from(&v.uds_path),
        });
        config.rng = self.entropy.is_some();
        config.rng_rate_limit = self
            .entropy
            .as_ref()
            .and_then(|e| e.rate_limiter)
            .unwrap_or_default()
            .to_rate_limit();
        config.balloon = self.balloon.as_ref().map(|b| BalloonConfig {
            amount_mib: u64::from(b.amount_mib),
            deflate_on_oom: b.deflate_on_oom,
            stats_interval_s: u64::from(b.stats_polling_interval_s),
            free_page_hinting: b.free_page_hinting,
            free_page_reporting: b.free_page_reporting,
        });
        config.mmds = self.mmds_config.clone();
        config.cpu_template = match (&self.cpu_config, &self.machine_config.cpu_template) {
            (Some(custom), _) => Some(CpuTemplate::Custom(custom.clone())),
            (None, Some(name)) => StaticCpuTemplate::parse(name)
                .map_err(ConfigError::MachineConfig)?
                .map(CpuTemplate::Static),
            (None, None) => None,
        };
        config.pmem = self
            .pmem
            .iter()
            .map(|p| PmemConfig {
                id: Some(p.id.clone()),
                path: PathBuf::from(&p.path_on_host),
                readonly: p.read_only,
                rate_limit: p.rate_limiter.unwrap_or_default().to_rate_limit(),
            })
            .collect();
        Ok(config)
    }

    /// The API form of `config`: given to [`FullVmConfig::to_vm_config`], it builds the
    /// same VM. `boot_args` is the command line (Vireo's default when `config` has none);
    /// no drive or pmem device is the root device, since the command line already says
    /// what the guest boots from; a disk without an id is `disk<N>`, a NIC `net<N>` and a
    /// pmem device `pmem<N>` (N its index), as the VMM names them, so `to_vm_config`
    /// gives those ids back.
    ///
    /// `Err` says what cannot be expressed (a discarded console, a path that is not UTF-8,
    /// memory that is not a whole number of MiB, a rate of 0 per second, a balloon beyond
    /// Firecracker's field sizes) or what the API's own checks refuse (an id with a `-`,
    /// two NICs on one TAP...), naming the device.
    pub fn from_vm_config(config: &VmConfig) -> Result<FullVmConfig, String> {
        // Every field named: a field added to VmConfig must be added here too.
        let VmConfig {
            kernel,
            initrd,
            cmdline,
            vcpus,
            smt,
            memory_bytes,
            serial,
            serial_rate_limit,
            disks,
            nets,
            vsock,
            rng,
            rng_rate_limit,
            balloon,
            track_dirty_pages,
            // A process flag (`--boot-timer`) in Firecracker, not part of its config.
            boot_timer: _,
            huge_pages,
            mmds,
            cpu_template,
            pmem,
        } = config;
        let mut full = FullVmConfig::default();
        if !memory_bytes.is_multiple_of(1 << 20) {
            return Err(format!(
                "memory: {memory_bytes} bytes is not a whole number of MiB (mem_size_mib)"
            ));
        }
        full.set_machine_config(MachineConfig {
            vcpu_count: *vcpus,
            smt: *smt,
            mem_size_mib: memory_bytes >> 20,
            track_dirty_pages: *track_dirty_pages,
            huge_pages: if *huge_pages { "2M" } else { "None" }.into(),
            cpu_template: match cpu_template {
                Some(CpuTemplate::Static(t)) => Some(t.name().into()),
                _ => None,
            },
        })
        .map_err(|e| e.to_string())?;
        if let Some(CpuTemplate::Custom(t)) = cpu_template {
            full.set_cpu_config(t.clone()).map_err(|e| e.to_string())?;
        }
        full.set_boot_source(BootSource {
            kernel_image_path: utf8(kernel, "kernel")?,
            initrd_path: initrd.as_deref().map(|p| utf8(p, "initrd")).transpose()?,
            boot_args: Some(cmdline.as_deref().unwrap_or(DEFAULT_BOOT_ARGS).to_string()),
        })
        .map_err(|e| e.to_string())?;

        let mut ids = BTreeSet::new();
        for (i, disk) in disks.iter().enumerate() {
            let id = disk.id.clone().unwrap_or_else(|| format!("disk{i}"));
            if !ids.insert(id.clone()) {
                return Err(format!("disk {i}: another disk is also named {id}"));
            }
            let what = format!("disk {id}");
            full.set_drive(drive(&id, disk, &what)?)
                .map_err(|e| format!("{what}: {e}"))?;
        }
        let mut ids = BTreeSet::new();
        for (i, nic) in nets.iter().enumerate() {
            let id = nic.id.clone().unwrap_or_else(|| format!("net{i}"));
            if !ids.insert(id.clone()) {
                return Err(format!("NIC {i}: another NIC is also named {id}"));
            }
            let what = format!("NIC {id}");
            full.set_network_interface(network_interface(&id, nic, &what)?)
                .map_err(|e| format!("{what}: {e}"))?;
        }
        if let Some(VsockConfig { cid, socket }) = vsock {
            full.set_vsock(Vsock {
                guest_cid: *cid,
                uds_path: utf8(socket, "vsock socket")?,
                vsock_id: None,
            })
            .map_err(|e| e.to_string())?;
        }
        if *rng {
            full.set_entropy(EntropyDevice {
                rate_limiter: limiter(rng_rate_limit, "entropy device")?,
            })
            .map_err(|e| e.to_string())?;
        }
        if let Some(b) = balloon {
            full.set_balloon(balloon_body(b)?)
                .map_err(|e| e.to_string())?;
        }
        if serial_rate_limit.ops_per_sec.is_some() {
            return Err("serial: a console's limit is in bytes only".into());
        }
        let rate_limiter = serial_rate_limit
            .bytes_per_sec
            .map(|r| TokenBucket::from_rate(r, serial_rate_limit.bytes_burst));
        let console = |out: Option<String>, socket: Option<String>| SerialDevice {
            serial_out_path: out,
            rate_limiter,
            socket,
        };
        let device = match serial {
            SerialConfig::Stdio if rate_limiter.is_some() => Some(console(None, None)),
            SerialConfig::Stdio => None,
            SerialConfig::File(path) => Some(console(Some(utf8(path, "serial file")?), None)),
            SerialConfig::Socket(path) => Some(console(None, Some(utf8(path, "serial socket")?))),
            SerialConfig::None => {
                return Err(
                    "serial: none (output discarded) cannot be expressed: the API's \
                            console without a serial_out_path is stdout (use file:/dev/null)"
                        .into(),
                );
            }
        };
        if let Some(device) = device {
            full.set_serial(device).map_err(|e| e.to_string())?;
        }
        if let Some(m) = mmds {
            full.set_mmds_config(m.clone()).map_err(|e| e.to_string())?;
        }
        let mut ids = BTreeSet::new();
        for (i, p) in pmem.iter().enumerate() {
            let PmemConfig {
                id,
                path,
                readonly,
                rate_limit,
            } = p;
            let id = id.clone().unwrap_or_else(|| format!("pmem{i}"));
            if !ids.insert(id.clone()) {
                return Err(format!("pmem {i}: another pmem device is also named {id}"));
            }
            let what = format!("pmem {id}");
            full.set_pmem(Pmem {
                path_on_host: utf8(path, &what)?,
                id,
                root_device: false,
                read_only: *readonly,
                rate_limiter: limiter(rate_limit, &what)?,
            })
            .map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(full)
    }
}

/// The serial the VMM gives a drive that has no `serial` field: its id, if it fits.
fn derived_serial(drive_id: &str) -> Option<String> {
    (drive_id.len() <= DISK_SERIAL_MAX).then(|| drive_id.to_string())
}

fn disk_config(d: &Drive) -> DiskConfig {
    let serial = match d.serial.as_deref() {
        Some("") => None,
        Some(s) => Some(s.to_string()),
        None => derived_serial(&d.drive_id),
    };
    DiskConfig {
        id: Some(d.drive_id.clone()),
        path: PathBuf::from(d.path_on_host.as_deref().unwrap_or_default()),
        readonly: d.is_read_only.unwrap_or(false),
        format: match d.format {
            None | Some(DriveFormat::Raw) => DiskFormat::Raw,
            Some(DriveFormat::Qcow2) => DiskFormat::Qcow2,
        },
        serial,
        rate_limit: d.rate_limiter.unwrap_or_default().to_rate_limit(),
        io_engine: match d.io_engine {
            None | Some(DriveIoEngine::Sync) => IoEngine::Sync,
            Some(DriveIoEngine::Async) => IoEngine::IoUring,
            Some(DriveIoEngine::Auto) => IoEngine::Auto,
        },
    }
}

/// The `PUT /drives` body of `disk`, named `id`.
fn drive(id: &str, disk: &DiskConfig, what: &str) -> Result<Drive, String> {
    let DiskConfig {
        id: _,
        path,
        readonly,
        format,
        serial,
        rate_limit,
        io_engine,
    } = disk;
    // Only what differs from the drive_id's serial is written; "" stands for none.
    let serial = match (serial.as_deref(), derived_serial(id)) {
        (Some(""), None) | (None, None) => None,
        (given, derived) if given == derived.as_deref() => None,
        (Some(s), _) => Some(s.to_string()),
        (None, Some(_)) => Some(String::new()),
    };
    Ok(Drive {
        drive_id: id.to_string(),
        partuuid: None,
        is_root_device: false,
        cache_type: None,
        is_read_only: Some(*readonly),
        path_on_host: Some(utf8(path, what)?),
        rate_limiter: limiter(rate_limit, what)?,
        io_engine: Some(match io_engine {
            IoEngine::Auto => DriveIoEngine::Auto,
            IoEngine::Sync => DriveIoEngine::Sync,
            IoEngine::IoUring => DriveIoEngine::Async,
        }),
        socket: None,
        format: match format {
            DiskFormat::Raw => None,
            DiskFormat::Qcow2 => Some(DriveFormat::Qcow2),
        },
        serial,
    })
}

/// The `PUT /network-interfaces` body of `nic`, named `id`.
fn network_interface(id: &str, nic: &NetConfig, what: &str) -> Result<NetworkInterface, String> {
    let NetConfig {
        id: _,
        tap,
        mac,
        rx_rate_limit,
        tx_rate_limit,
        mtu,
    } = nic;
    Ok(NetworkInterface {
        iface_id: id.to_string(),
        host_dev_name: tap.clone(),
        guest_mac: mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        }),
        mtu: *mtu,
        rx_rate_limiter: limiter(rx_rate_limit, &format!("{what} rx"))?,
        tx_rate_limiter: limiter(tx_rate_limit, &format!("{what} tx"))?,
    })
}

/// Firecracker's buckets for Vireo's limits: by default `size` tokens every 1000 ms,
/// which [`TokenBucket::per_second`] reads back as `size`; a bucket of another size is
/// refilled over the time that takes at the rate ([`TokenBucket::from_rate`]).
fn limiter(limit: &RateLimit, what: &str) -> Result<Option<RateLimiter>, String> {
    let RateLimit {
        ops_per_sec,
        bytes_per_sec,
        ops_burst,
        bytes_burst,
    } = limit;
    let bucket = |rate: &Option<u64>, burst: &crate::Burst, unit: &str| match rate {
        None => Ok(None),
        Some(0) => Err(format!(
            "{what}: a limit of 0 {unit} per second cannot be expressed (a bucket of size 0 \
             is no limit)"
        )),
        Some(rate) => Ok(Some(TokenBucket::from_rate(*rate, *burst))),
    };
    let l = RateLimiter {
        bandwidth: bucket(bytes_per_sec, bytes_burst, "bytes")?,
        ops: bucket(ops_per_sec, ops_burst, "operations")?,
    };
    Ok((l != RateLimiter::default()).then_some(l))
}

fn balloon_body(b: &BalloonConfig) -> Result<Balloon, String> {
    let BalloonConfig {
        amount_mib,
        deflate_on_oom,
        stats_interval_s,
        free_page_hinting,
        free_page_reporting,
    } = b;
    Ok(Balloon {
        amount_mib: u32::try_from(*amount_mib)
            .map_err(|_| format!("balloon: {amount_mib} MiB does not fit amount_mib (u32)"))?,
        deflate_on_oom: *deflate_on_oom,
        stats_polling_interval_s: u16::try_from(*stats_interval_s).map_err(|_| {
            format!(
                "balloon: a statistics interval of {stats_interval_s} s does not fit \
                 stats_polling_interval_s (at most {} s)",
                u16::MAX
            )
        })?,
        free_page_hinting: *free_page_hinting,
        free_page_reporting: *free_page_reporting,
    })
}

/// `path` as JSON can carry it.
fn utf8(path: &Path, what: &str) -> Result<String, String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{what}: the path {} is not UTF-8", path.display()))
}
