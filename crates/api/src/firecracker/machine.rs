//! `PUT`/`PATCH /machine-config` and `PUT /boot-source`.

use super::*;

/// `PUT /machine-config` (and the `machine-config` of a full config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading: two threads per core in the guest's CPU topology
    /// (then `vcpu_count` is 1 or even). Also taken under Firecracker 0.2x's name,
    /// `ht_enabled`, which older launchers (Kata's Go runtime) write.
    #[serde(default, alias = "ht_enabled")]
    pub smt: bool,
    /// Firecracker's static CPU template (C3, T2, T2S, T2CL, T2A, or `"None"` to drop
    /// any template); deprecated by Firecracker. Absent from a PUT, the template set
    /// before is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Dirty page tracking, for diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages backing guest memory; Vireo only has `"None"`.
    #[serde(default = "huge_pages_none")]
    pub huge_pages: String,
}

fn huge_pages_none() -> String {
    "None".into()
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: crate::DEFAULT_MEMORY_BYTES >> 20,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: huge_pages_none(),
        }
    }
}

impl MachineConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::MachineConfig(m));
        if !(1..=MAX_VCPUS).contains(&self.vcpu_count) {
            return err(format!(
                "The vCPU number is invalid: {} (1 to {MAX_VCPUS}).",
                self.vcpu_count
            ));
        }
        if self.mem_size_mib < MIN_MEM_MIB || self.mem_size_mib > (u64::MAX >> 20) {
            return err(format!(
                "The memory size (MiB) is invalid: {} (at least {MIN_MEM_MIB}).",
                self.mem_size_mib
            ));
        }
        if self.smt && self.vcpu_count > 1 && !self.vcpu_count.is_multiple_of(2) {
            return err(format!(
                "The vCPU number is invalid: {} (with SMT, 1 or an even number).",
                self.vcpu_count
            ));
        }
        if let Some(t) = self.cpu_template.as_deref() {
            crate::StaticCpuTemplate::parse(t).map_err(ConfigError::MachineConfig)?;
        }
        match self.huge_pages.as_str() {
            "None" => {}
            "2M" if !self.mem_size_mib.is_multiple_of(2) => {
                return err(format!(
                    "With huge_pages \"2M\" the memory size must be a multiple of 2 MiB, not {}.",
                    self.mem_size_mib
                ));
            }
            "2M" => {}
            other => {
                return err(format!(
                    "huge_pages '{other}' is not supported by Vireo (\"None\" or \"2M\")."
                ));
            }
        }
        Ok(())
    }
}

/// `PATCH /machine-config`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// vCPUs.
    pub vcpu_count: Option<u32>,
    /// Guest memory in MiB.
    pub mem_size_mib: Option<u64>,
    /// SMT.
    pub smt: Option<bool>,
    /// CPU template.
    pub cpu_template: Option<String>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<String>,
}

impl MachineConfigUpdate {
    /// Whether it changes nothing (Firecracker refuses such a PATCH).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image on the host.
    pub kernel_image_path: String,
    /// Initrd on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}
