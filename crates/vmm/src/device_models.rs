//! The virtio device models a [`VmConfig`] asks for, built from their configs.
//!
//! Building a model opens its backend (disk image, TAP, Unix socket, pmem file), so this
//! is where a wrong path or a busy TAP is reported, naming the option, before anything
//! runs. Models come in the order they get slots: disks, NICs, vsock, entropy, balloon,
//! pmem. A pmem device's file is mapped here and placed in guest physical memory above
//! RAM ([`crate::memory::device_memory_layout`]); the builder gives KVM those mappings
//! ([`DeviceModels::device_memory`]) when it creates the VM.

use api::VmConfig;
use balloon::{Balloon, BalloonHandle};
use block::Block;
use net::Net;
use virtio_devices::device::VirtioDevice;
use virtio_devices::rng::Rng;
use vsock::Vsock;

use crate::metrics::VmMetrics;
use crate::vm::DeviceMemory;

/// Why a device model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeviceModelError {
    /// A disk image could not be opened.
    #[error("--disk path={path}: {source}")]
    Disk {
        /// The image path.
        path: String,
        /// Why.
        #[source]
        source: block::BlockError,
    },
    /// A NIC's TAP could not be opened.
    #[error("--net tap={tap}: {source}")]
    Net {
        /// The TAP name.
        tap: String,
        /// Why.
        #[source]
        source: net::NetError,
    },
    /// The vsock's host socket could not be bound.
    #[error("--vsock: {source}")]
    Vsock {
        /// The socket path.
        socket: std::path::PathBuf,
        /// Why.
        #[source]
        source: vsock::VsockError,
    },
    /// The balloon config was refused.
    #[error("--balloon: {0}")]
    Balloon(String),
    /// The entropy device's rate limiter could not be set up.
    #[error("entropy device: rate limiter: {0}")]
    Entropy(#[source] std::io::Error),
    /// A pmem device's backing file could not be mapped (Firecracker's words first).
    #[error("Cannot create pmem device {id}: {source}")]
    PmemBacking {
        /// The device.
        id: String,
        /// Why.
        #[source]
        source: pmem::BackingError,
    },
    /// A pmem device could not be made, or its region does not fit.
    #[error("Cannot create pmem device {id}: {reason}")]
    Pmem {
        /// The device.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The device models, plus the handles the VMM keeps to control them.
#[derive(Default)]
pub struct DeviceModels {
    /// Every model, in slot order.
    pub devices: Vec<Box<dyn VirtioDevice>>,
    /// The balloon's control handle.
    pub balloon: Option<BalloonHandle>,
    /// The devices' counters (the VM's own parts are filled in by the builder).
    pub metrics: VmMetrics,
    /// The pmem devices' regions, in slot order: KVM memory slots for the VM.
    pub device_memory: Vec<DeviceMemory>,
}

/// The slot index of the `index`th pmem device of `config`: pmem devices come last.
pub fn pmem_slot(config: &VmConfig, index: usize) -> usize {
    config.disks.len()
        + config.nets.len()
        + usize::from(config.vsock.is_some())
        + usize::from(config.rng)
        + usize::from(config.balloon.is_some())
        + index
}

/// The name of the `index`th pmem device: its id, or `pmem<index>`.
pub fn pmem_id(cfg: &api::PmemConfig, index: usize) -> String {
    cfg.id.clone().unwrap_or_else(|| format!("pmem{index}"))
}

/// Build every device model `config` asks for; the NICs `config.mmds` names answer the
/// metadata service from `mmds`.
pub fn build(config: &VmConfig, mmds: &mmds::Service) -> Result<DeviceModels, DeviceModelError> {
    let mut models = DeviceModels::default();
    for (i, cfg) in config.disks.iter().enumerate() {
        let name = cfg.id.clone().unwrap_or_else(|| format!("disk{i}"));
        let device = Block::new(cfg, &name).map_err(|source| DeviceModelError::Disk {
            path: cfg.path.display().to_string(),
            source,
        })?;
        models.metrics.block.push((name, device.metrics()));
        models.devices.push(Box::new(device));
    }
    for (i, cfg) in config.nets.iter().enumerate() {
        let name = cfg.id.clone().unwrap_or_else(|| format!("net{i}"));
        let mut device = Net::new(cfg, &name).map_err(|source| DeviceModelError::Net {
            tap: cfg.tap.clone(),
            source,
        })?;
        if let Some(m) = config
            .mmds
            .as_ref()
            .filter(|m| m.network_interfaces.contains(&name))
        {
            device.set_mmds(net::MmdsLink {
                ip: m.address(),
                service: mmds.clone(),
            });
        }
        models.metrics.net.push((name, device.metrics()));
        models.devices.push(Box::new(device));
    }
    if let Some(cfg) = &config.vsock {
        let device = Vsock::new(cfg, "vsock").map_err(|source| DeviceModelError::Vsock {
            socket: cfg.socket.clone(),
            source,
        })?;
        models.metrics.vsock = Some(device.metrics());
        models.devices.push(Box::new(device));
    }
    if config.rng {
        let limiter = rate_limiter::RateLimiter::new(&config.rng_rate_limit)
            .map_err(DeviceModelError::Entropy)?;
        let device = Rng::with_limiter("virtio-rng", limiter);
        models.metrics.entropy = Some(device.metrics());
        models.devices.push(Box::new(device));
    }
    if let Some(cfg) = &config.balloon {
        if cfg.amount_mib.saturating_mul(1 << 20) > config.memory_bytes {
            return Err(DeviceModelError::Balloon(format!(
                "a target of {} MiB is more than the guest's memory",
                cfg.amount_mib
            )));
        }
        let (device, handle) = Balloon::new(cfg, "virtio-balloon")
            .map_err(|e| DeviceModelError::Balloon(e.to_string()))?;
        models.devices.push(Box::new(device));
        models.metrics.balloon = Some(handle.metrics());
        models.balloon = Some(handle);
    }
    build_pmem(config, &mut models)?;
    Ok(models)
}

/// Map every pmem device's file, place the regions above RAM, and make the devices.
fn build_pmem(config: &VmConfig, models: &mut DeviceModels) -> Result<(), DeviceModelError> {
    let mut backings = Vec::with_capacity(config.pmem.len());
    for (i, cfg) in config.pmem.iter().enumerate() {
        let id = pmem_id(cfg, i);
        let backing = pmem::Backing::open(&cfg.path, cfg.readonly).map_err(|source| {
            DeviceModelError::PmemBacking {
                id: id.clone(),
                source,
            }
        })?;
        backings.push((id, std::sync::Arc::new(backing)));
    }
    let sizes: Vec<u64> = backings.iter().map(|(_, b)| b.len()).collect();
    let addrs =
        crate::memory::device_memory_layout(config.memory_bytes, &sizes).ok_or_else(|| {
            DeviceModelError::Pmem {
                id: backings
                    .first()
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default(),
                reason: "the pmem regions do not fit in the guest's physical address space".into(),
            }
        })?;
    for ((cfg, (id, backing)), addr) in config.pmem.iter().zip(backings).zip(addrs) {
        let device = pmem::Pmem::new(&id, backing.clone(), addr, &cfg.rate_limit).map_err(|e| {
            DeviceModelError::Pmem {
                id: id.clone(),
                reason: e.to_string(),
            }
        })?;
        log::debug!(
            "pmem {id}: {} ({} bytes) at {addr:#x}, {} bytes{}",
            cfg.path.display(),
            backing.file_len(),
            backing.len(),
            if backing.read_only() {
                ", read-only"
            } else {
                ""
            }
        );
        models.metrics.pmem.push((id, device.metrics()));
        models.device_memory.push(DeviceMemory {
            guest_addr: addr,
            backing,
        });
        models.devices.push(Box::new(device));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_in_slot_order_with_the_balloon_handle() {
        let mut config = VmConfig::new("/k");
        config.rng = true;
        config.balloon = Some("size=16".parse().unwrap());
        let models = build(&config, &mmds::Service::default()).unwrap();
        let types: Vec<u32> = models.devices.iter().map(|d| d.device_type()).collect();
        assert_eq!(types, [4, 5]);
        assert_eq!(models.balloon.unwrap().target_mib(), 16);
    }

    #[test]
    fn disks_come_first_and_a_missing_image_names_its_path() {
        let dir = std::env::temp_dir().join(format!("vireo-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("d.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut config = VmConfig::new("/k");
        config.rng = true;
        config.disks = vec![format!("path={}", image.display()).parse().unwrap()];
        let types: Vec<u32> = build(&config, &mmds::Service::default())
            .unwrap()
            .devices
            .iter()
            .map(|d| d.device_type())
            .collect();
        assert_eq!(types, [2, 4]);

        config.disks = vec![
            format!("path={}/missing.img", dir.display())
                .parse()
                .unwrap(),
        ];
        let err = build(&config, &mmds::Service::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("--disk path="), "{err}");
        assert!(err.contains("missing.img"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pmem_devices_come_last_above_ram_and_a_bad_file_is_named() {
        let dir = std::env::temp_dir().join(format!("vireo-models-pmem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.img");
        let b = dir.join("b.img");
        std::fs::write(&a, vec![1u8; 4096]).unwrap();
        std::fs::write(&b, vec![2u8; 3 << 20]).unwrap();
        let mut config = VmConfig::new("/k");
        config.rng = true;
        config.pmem = vec![
            format!("path={},id=first", a.display()).parse().unwrap(),
            format!("path={},readonly", b.display()).parse().unwrap(),
        ];
        let models = build(&config, &mmds::Service::default()).unwrap();
        let types: Vec<u32> = models.devices.iter().map(|d| d.device_type()).collect();
        assert_eq!(types, [4, 27, 27]);
        assert_eq!(pmem_slot(&config, 1), 2);
        let regions: Vec<(u64, u64, bool)> = models
            .device_memory
            .iter()
            .map(|m| (m.guest_addr, m.backing.len(), m.backing.read_only()))
            .collect();
        assert_eq!(
            regions,
            [
                (4 << 30, 2 << 20, false),
                ((4 << 30) + (2 << 20), 4 << 20, true)
            ]
        );
        let ids: Vec<&str> = models
            .metrics
            .pmem
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(ids, ["first", "pmem1"]);
        // The device tells the driver the same place.
        let mut start = [0u8; 8];
        models.devices[2].read_config(0, &mut start);
        assert_eq!(u64::from_le_bytes(start), (4 << 30) + (2 << 20));

        std::fs::write(&a, b"").unwrap();
        let err = build(&config, &mmds::Service::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("Cannot create pmem device first: Error backing file size is 0"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn balloon_larger_than_memory_is_refused() {
        let mut config = VmConfig::new("/k");
        config.memory_bytes = 64 << 20;
        config.balloon = Some("size=65".parse().unwrap());
        let err = build(&config, &mmds::Service::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("more than the guest's memory"), "{err}");
    }
}
