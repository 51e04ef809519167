//! `PUT /actions`, `PATCH /vm`, and what `GET /` returns.

use super::*;

/// `PUT /actions`: which action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Write the metrics now.
    FlushMetrics,
    /// Build and boot the configured VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's keyboard.
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `PATCH /vm`: the state asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs and device threads.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state.
    pub state: VmState,
}

/// The version of Firecracker's API Vireo serves (its swagger's), which `GET /version`
/// and `vireo --version` give where Firecracker gives its own version: launchers check
/// it (Kata wants at least 0.21.1).
pub const FIRECRACKER_API_VERSION: &str = "1.17.0";

/// What `GET /` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// Instance id (`--id`).
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// Whether the VM was started: Firecracker's field before `state` (0.2x), which
    /// launchers built on that API (Kata's Go runtime) still poll.
    pub started: bool,
    /// Vireo's version.
    pub vmm_version: String,
    /// `Vireo`.
    pub app_name: String,
}
