//! Firecracker's API bodies as serde types, and the VM they describe.
//!
//! Every body refuses unknown fields and wrong types (`deny_unknown_fields`), so a typo in a
//! field name is a 400, not a silently ignored setting. [`FullVmConfig`] is Firecracker's
//! `FullVmConfiguration`: what `GET /vm/config` returns and `--config-file` reads, and the
//! pre-boot state the API edits through its `set_*` methods, which check each body the
//! same way whichever front end it came from. [`FullVmConfig::to_vm_config`] turns it into
//! the [`crate::VmConfig`] the VMM builds. No I/O here: whether a kernel or image can be opened is
//! the VMM's to find out.
//!
//! By concern, in files of their own: `machine`, `devices`, `limits`, `logging`,
//! `actions` and `snapshot` hold the bodies (all re-exported here); `validate` the
//! `set_*` checks; `convert` the way to and from [`crate::VmConfig`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DISK_SERIAL_MAX, RateLimit, SerialConfig, parse_mac};

mod actions;
mod convert;
mod devices;
mod limits;
mod logging;
mod machine;
mod snapshot;
mod validate;

pub use actions::*;
pub use devices::*;
pub use limits::*;
pub use logging::*;
pub use machine::*;
pub use snapshot::*;
pub use validate::MAX_DEVICES;
use validate::too_many_devices;

/// Most vCPUs a VM may ask for (the VMM's limit; the host may allow fewer).
pub const MAX_VCPUS: u32 = 254;
/// Smallest guest memory the VMM builds, in MiB.
pub const MIN_MEM_MIB: u64 = 16;
/// Default kernel command line of an API-configured VM (Vireo's, with a serial console).
pub const DEFAULT_BOOT_ARGS: &str = crate::DEFAULT_CMDLINE;

/// A body that was understood but refused. The text says what to change; the prefix names
/// the resource, as Firecracker's messages do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `machine-config`.
    #[error("Machine config error: {0}")]
    MachineConfig(String),
    /// `boot-source`.
    #[error("Boot source error: {0}")]
    BootSource(String),
    /// `drives`.
    #[error("Drive config error: {0}")]
    Drive(String),
    /// `network-interfaces`.
    #[error("Network config error: {0}")]
    Net(String),
    /// `vsock`.
    #[error("Vsock config error: {0}")]
    Vsock(String),
    /// `entropy`.
    #[error("Entropy device error: {0}")]
    Entropy(String),
    /// `balloon`.
    #[error("Balloon config error: {0}")]
    Balloon(String),
    /// `pmem`.
    #[error("Pmem config error: {0}")]
    Pmem(String),
    /// `serial`.
    #[error("Serial config error: {0}")]
    Serial(String),
    /// `logger`.
    #[error("Logger error: {0}")]
    Logger(String),
    /// `metrics`.
    #[error("Metrics error: {0}")]
    Metrics(String),
    /// `mmds/config`.
    #[error("MMDS config error: {0}")]
    Mmds(String),
    /// `snapshot/load` parameters.
    #[error("Load snapshot error: {0}")]
    Snapshot(String),
    /// `cpu-config`: a custom CPU template.
    #[error("CPU config error: {0}")]
    CpuConfig(String),
    /// InstanceStart without a boot source.
    #[error("Start microvm error: Cannot start microvm without kernel configuration.")]
    MissingKernel,
    /// A section of Firecracker's configuration Vireo does not implement, which asks for
    /// something.
    #[error("{0}")]
    Unsupported(String),
}

/// Firecracker's `FullVmConfiguration`: `GET /vm/config` and `--config-file`.
/// `serial` is Vireo's addition, so that `PUT /serial` survives the round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfig {
    /// Memory balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    /// Disks in the order they were added.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Kernel, initrd, command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// Logger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// NICs in the order they were added.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// vsock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// Entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    /// Serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialDevice>,
    /// `cpu-config`: a custom CPU template (`PUT /cpu-config`). Firecracker leaves it
    /// out of `GET /vm/config`; Vireo shows it, so that the file boots the same VM.
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<crate::CustomCpuTemplate>,
    /// `mmds-config`: the metadata service (`PUT /mmds/config`).
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<crate::MmdsConfig>,
    /// Firecracker's section that Vireo does not implement yet, taken so that its config
    /// files parse and refused by name when it asks for anything (`null`, `{}` and `[]`
    /// ask for nothing; [`FullVmConfig::unsupported_sections`]): `memory-hotplug`,
    /// virtio-mem.
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<serde_json::Value>,
    /// `pmem`: virtio-pmem devices in the order they were added.
    #[serde(default)]
    pub pmem: Vec<Pmem>,
}

#[cfg(test)]
mod tests;
