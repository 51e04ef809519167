//! The virtio device models a [`VmConfig`] asks for, built from their configs.
//!
//! Building a model opens its backend (disk image, TAP, Unix socket), so this is where a
//! wrong path or a busy TAP is reported, naming the option, before anything runs.
//! Models come in the order they get slots: disks, NICs, vsock, entropy, balloon.

use api::VmConfig;
use balloon::{Balloon, BalloonHandle};
use block::Block;
use net::Net;
use virtio_devices::device::VirtioDevice;
use virtio_devices::rng::Rng;
use vsock::Vsock;

use crate::metrics::VmMetrics;

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
    Ok(models)
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
