//! Changing the devices of a running VM (the API's `PATCH /drives/{id}`,
//! `PATCH /network-interfaces/{id}` and `PATCH /pmem/{id}`): a drive's image and rate
//! limits, a NIC's rate limits, a pmem device's flush limits.
//!
//! A device is found by its id in the VM's [`api::VmConfig`] (`DiskConfig::id`,
//! `NetConfig::id`, by default `disk<N>` and `net<N>`); its slot follows from the order
//! the models were built in (disks, then NICs; see [`crate::device_models`]). The device
//! makes the change on its own worker thread ([`block::Block::replace_disk`],
//! [`net::Net::set_rate_limits`]); the stored config, which a snapshot carries and a
//! restore builds from, is changed only when the device took the change.

use std::path::Path;

use block::Block;
use net::Net;

use crate::builder::Vmm;

/// Why a running device could not be changed. The device is as it was.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// No drive has this id.
    #[error("no drive has the id {0:?}")]
    UnknownDrive(String),
    /// No network interface has this id.
    #[error("no network interface has the id {0:?}")]
    UnknownNet(String),
    /// No pmem device has this id.
    #[error("no pmem device has the id {0:?}")]
    UnknownPmem(String),
    /// The drive refused: the new image cannot be opened, a zero rate...
    #[error("drive {id}: {source}")]
    Disk {
        /// The drive.
        id: String,
        /// Why.
        #[source]
        source: block::BlockError,
    },
    /// The network interface refused.
    #[error("network interface {id}: {source}")]
    Net {
        /// The interface.
        id: String,
        /// Why.
        #[source]
        source: net::NetError,
    },
    /// The device's slot could not be reached (a poisoned lock, another kind of device).
    #[error("{0}")]
    Device(String),
}

/// The index among `ids` (each `Some(id)` or the default `<prefix><N>`) of `id`.
fn find(ids: impl Iterator<Item = Option<String>>, prefix: &str, id: &str) -> Option<usize> {
    ids.enumerate()
        .find(|(i, name)| match name {
            Some(name) => name == id,
            None => format!("{prefix}{i}") == id,
        })
        .map(|(i, _)| i)
}

/// A zero rate never refills: refused before anything changes.
fn check_rates(limit: Option<&api::RateLimit>) -> Result<(), String> {
    match limit {
        Some(l) if l.ops_per_sec == Some(0) || l.bytes_per_sec == Some(0) => {
            Err("a rate limit must be positive".into())
        }
        _ => Ok(()),
    }
}

impl Vmm {
    /// The VM's configuration as it is now: what it was built from, with the changes
    /// made since ([`Vmm::update_drive`], [`Vmm::update_net`]). Snapshots carry it.
    pub fn vm_config(&self) -> &api::VmConfig {
        &self.parts.config
    }

    /// Give the drive `id` the image at `path` (opened as the drive's format, read-only
    /// if the drive is) and/or the rate limits `rate_limit` (the whole new limit; `None`
    /// rates are unlimited), in that order. The guest is told of a new capacity through
    /// a configuration-change interrupt. An image that cannot be opened changes nothing:
    /// the drive keeps its image and its limits.
    pub fn update_drive(
        &mut self,
        id: &str,
        path: Option<&Path>,
        rate_limit: Option<&api::RateLimit>,
    ) -> Result<(), UpdateError> {
        let index = find(
            self.parts.config.disks.iter().map(|d| d.id.clone()),
            "disk",
            id,
        )
        .ok_or_else(|| UpdateError::UnknownDrive(id.to_string()))?;
        check_rates(rate_limit).map_err(|e| UpdateError::Device(format!("drive {id}: {e}")))?;
        let format = self.parts.config.disks[index].format;
        if let Some(path) = path {
            let capacity = self.on_disk(index, id, |disk| disk.replace_disk(path, format))?;
            log::info!("drive {id}: now {} ({capacity} sectors)", path.display());
            self.parts.config.disks[index].path = path.to_path_buf();
        }
        if let Some(limit) = rate_limit {
            self.on_disk(index, id, |disk| disk.set_rate_limit(limit))?;
            self.parts.config.disks[index].rate_limit = *limit;
        }
        Ok(())
    }

    /// Give the network interface `id` new receive and/or transmit limits (each the
    /// whole new limit, `None` rates unlimited; `None` leaves a direction as it is):
    /// both or neither. A frame held back by an old limit is looked at again at once.
    pub fn update_net(
        &mut self,
        id: &str,
        rx: Option<&api::RateLimit>,
        tx: Option<&api::RateLimit>,
    ) -> Result<(), UpdateError> {
        let index = find(
            self.parts.config.nets.iter().map(|n| n.id.clone()),
            "net",
            id,
        )
        .ok_or_else(|| UpdateError::UnknownNet(id.to_string()))?;
        let slot = self.parts.config.disks.len() + index;
        let result = self
            .parts
            .virtio
            .with_device(slot, |nic: &mut Net| nic.set_rate_limits(rx, tx))
            .map_err(UpdateError::Device)?
            .ok_or_else(|| {
                UpdateError::Device(format!("network interface {id}: slot {slot} is not a NIC"))
            })?;
        result.map_err(|source| UpdateError::Net {
            id: id.to_string(),
            source,
        })?;
        let cfg = &mut self.parts.config.nets[index];
        if let Some(l) = rx {
            cfg.rx_rate_limit = *l;
        }
        if let Some(l) = tx {
            cfg.tx_rate_limit = *l;
        }
        Ok(())
    }

    /// Give the pmem device `id` new flush limits (the whole new limit; `None` rates are
    /// unlimited). A flush held back by the old limit is looked at again at once.
    pub fn update_pmem(
        &mut self,
        id: &str,
        rate_limit: &api::RateLimit,
    ) -> Result<(), UpdateError> {
        let config = &self.parts.config;
        let index = find(config.pmem.iter().map(|p| p.id.clone()), "pmem", id)
            .ok_or_else(|| UpdateError::UnknownPmem(id.to_string()))?;
        check_rates(Some(rate_limit))
            .map_err(|e| UpdateError::Device(format!("pmem {id}: {e}")))?;
        let slot = crate::device_models::pmem_slot(config, index);
        self.parts
            .virtio
            .with_device(slot, |p: &mut pmem::Pmem| p.set_rate_limit(rate_limit))
            .map_err(UpdateError::Device)?
            .ok_or_else(|| UpdateError::Device(format!("pmem {id}: slot {slot} is not pmem")))?
            .map_err(|e| UpdateError::Device(e.to_string()))?;
        self.parts.config.pmem[index].rate_limit = *rate_limit;
        Ok(())
    }

    /// Run `f` on the disk in slot `index`.
    fn on_disk<R>(
        &self,
        index: usize,
        id: &str,
        f: impl FnOnce(&mut Block) -> Result<R, block::BlockError>,
    ) -> Result<R, UpdateError> {
        self.parts
            .virtio
            .with_device(index, f)
            .map_err(UpdateError::Device)?
            .ok_or_else(|| UpdateError::Device(format!("drive {id}: slot {index} is not a disk")))?
            .map_err(|source| UpdateError::Disk {
                id: id.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_by_name_or_by_default_name() {
        let ids = || vec![Some("root".to_string()), None, Some("disk0".to_string())];
        assert_eq!(find(ids().into_iter(), "disk", "root"), Some(0));
        assert_eq!(find(ids().into_iter(), "disk", "disk1"), Some(1));
        assert_eq!(find(ids().into_iter(), "disk", "disk0"), Some(2));
        assert_eq!(find(ids().into_iter(), "disk", "disk3"), None);
        assert_eq!(find(ids().into_iter(), "net", "disk1"), None);
    }

    #[test]
    fn zero_rates_are_refused_first() {
        assert!(check_rates(None).is_ok());
        assert!(check_rates(Some(&api::RateLimit::default())).is_ok());
        let zero = api::RateLimit {
            ops_per_sec: None,
            bytes_per_sec: Some(0),
            ..Default::default()
        };
        assert!(check_rates(Some(&zero)).is_err());
    }
}
