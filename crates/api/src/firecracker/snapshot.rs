//! `PUT /snapshot/create` and `PUT /snapshot/load`, with the memory backends and the
//! overrides a clone takes.

use super::*;

/// `PUT /snapshot/create`: which kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages dirtied since the previous snapshot (needs `track_dirty_pages`).
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where the guest memory goes.
    pub mem_file_path: String,
    /// Where the VM state goes.
    pub snapshot_path: String,
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

/// `PUT /snapshot/load`: where guest memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file, mapped privately.
    File,
    /// A userfaultfd page-fault handler listening on a Unix socket.
    Uffd,
}

/// `PUT /snapshot/load`: the memory backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// File or Uffd.
    pub backend_type: MemoryBackendType,
    /// The memory file (or the page server's socket).
    pub backend_path: String,
}

/// `PUT /snapshot/load`: a NIC's new TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load`: the vsock device's new socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new Unix socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: String,
    /// The memory file (deprecated form; exclusive with `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// The memory backend (exclusive with `mem_file_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Log dirtied pages from the start, for Diff snapshots of the restored VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Run the VM once loaded (else it stays paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// New TAPs for NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A new vsock socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

impl SnapshotLoadParams {
    /// The memory backend and its path (the memory file, or the page-fault handler's
    /// socket), from whichever of the two forms was given; exactly one must be.
    pub fn memory_backend(&self) -> Result<(MemoryBackendType, &str), ConfigError> {
        let err = |m: &str| Err(ConfigError::Snapshot(m.into()));
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(_), Some(_)) => err("Only one of mem_file_path and mem_backend may be given."),
            (None, None) => err("One of mem_file_path and mem_backend must be given."),
            (Some(path), None) => Ok((MemoryBackendType::File, path)),
            (None, Some(b)) => Ok((b.backend_type, &b.backend_path)),
        }
    }

    /// Whether dirty-page tracking was asked, by either name.
    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages
            .or(self.enable_diff_snapshots)
            .unwrap_or(false)
    }
}
