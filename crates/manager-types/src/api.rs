//! The bodies of vireod's REST API (`docs/api/vireod-api.json` is its OpenAPI document).
//!
//! Every route is under `/v1`. Every error, whatever the route, is an [`ErrorBody`]:
//! `{"error": {"code": "conflict", "message": "..."}}` with the status its code names.

use serde::{Deserialize, Serialize};

/// What went wrong, as a machine-readable word; the HTTP status follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is malformed (not JSON, an unknown field, a bad value).
    BadRequest,
    /// 404: no such VM, snapshot or route.
    NotFound,
    /// 405: the route exists, not with that method.
    MethodNotAllowed,
    /// 409: the VM's state does not allow it, or another change to it is under way.
    Conflict,
    /// 422: a definition that does not parse or check (the message names file, line
    /// and field), or a start that the VMM refused (its message).
    InvalidDefinition,
    /// 500: the host failed (a full disk, a cgroup write refused...).
    Internal,
}

impl ErrorCode {
    /// The HTTP status of an error with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::InvalidDefinition => 422,
            ErrorCode::Internal => 500,
        }
    }
}

/// An error's detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Its kind.
    pub code: ErrorCode,
    /// For a human.
    pub message: String,
}

impl ApiError {
    /// An error of `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// `POST /v1/vms` (define, or create with `start`) and `PUT /v1/vms/{name}` (edit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefineRequest {
    /// The definition's TOML text.
    pub definition: String,
    /// The file it came from, named in errors (`definition.toml` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Start it once defined (`vireoctl create`). Ignored by `PUT`.
    #[serde(default)]
    pub start: bool,
}

/// One VM in `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSummary {
    /// Its name.
    pub name: String,
    /// `stopped`, `starting`, `running`, `paused`, `stopping`, `crashed`.
    pub state: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// CPU use of its `vireo` process over the last seconds, in percent of one CPU;
    /// absent when not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Seconds since its `vireo` started; absent when not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// Its `vireo` process, when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Started with vireod.
    pub autostart: bool,
}

/// `GET /v1/vms/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: VmSummary,
    /// `no`, `on-failure` or `always`.
    pub restart: String,
    /// The definition's TOML text as stored (with `set --config` changes).
    pub definition: String,
    /// How its last `vireo` ended (`exit 1`, `signal 9`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<String>,
    /// The last console lines of a VM that crashed (or of its last run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_console: Vec<String>,
    /// Times vireod restarted it by policy since it was last started by hand.
    pub restarts: u32,
    /// Its `vireo`'s API socket (Firecracker's API), when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<String>,
    /// Its cgroup, when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// A long operation under way (a snapshot written, a disk copied), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// How far a long operation on a VM is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What is being done ("writing the memory", "copying /images/web1.img").
    pub what: String,
    /// Bytes done.
    pub done_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
}

/// `POST /v1/vms/{name}/shutdown`: how long the guest gets before it is killed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

/// `PUT /v1/vms/{name}/autostart`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutostartRequest {
    /// Started with vireod or not.
    pub enabled: bool,
}

/// `PATCH /v1/vms/{name}/resources`: `vireoctl set`. Each field given is changed; the
/// others are kept. Values use the definition's syntax (`"50%"`, `"1G"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    /// Change the running VM (default: when it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// Change the stored definition (default: when it does not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<bool>,
    /// cgroup CPU weight, 1..=10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// `"50%"` of one CPU; `"none"` removes the quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<String>,
    /// Host CPUs (`"0-1"`), also the vCPU threads' affinity; `"none"`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// Hard memory limit (`"1G"`); `"none"` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<String>,
    /// Reclaim threshold; `"none"` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_high: Option<String>,
    /// I/O weight, 1..=10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u32>,
    /// Most processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u32>,
    /// The `vireo` process's nice value, -20..=19.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i32>,
    /// Bytes read per second from each host device holding a disk ("100M"), or "none".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_read_bps: Option<String>,
    /// Bytes written per second ("50M"), or "none".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_write_bps: Option<String>,
    /// Read operations per second ("2000"), or "none".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_read_iops: Option<String>,
    /// Write operations per second ("1000"), or "none".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_write_iops: Option<String>,
    /// The balloon's target size (`"256M"`: that much memory taken from the guest);
    /// live only, the VM needs a balloon device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<String>,
}

/// What `PATCH /v1/vms/{name}/resources` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetResult {
    /// Applied to the running VM.
    pub live: bool,
    /// Written to the stored definition.
    pub config: bool,
}

/// One entry of the event log (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing; `?since=ID` gives what came after.
    pub id: i64,
    /// Seconds since the epoch.
    pub at: i64,
    /// The VM.
    pub vm: String,
    /// `defined`, `redefined`, `undefined`, `state`, `restart`, `resources`...
    pub kind: String,
    /// For a human.
    pub detail: String,
}

/// `GET /v1/vms/{name}/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStats {
    /// CPU time of the VM's cgroup (or process), microseconds.
    pub cpu_time_us: u64,
    /// CPU use over the last seconds, percent of one CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Memory charged to the VM's cgroup, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_current: Option<u64>,
    /// The balloon's target in MiB and what the guest reports
    /// (Firecracker's `GET /balloon/statistics` body), when it has a balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<serde_json::Value>,
    /// Each disk's totals since its `vireo` started.
    #[serde(default)]
    pub disks: Vec<DiskStats>,
    /// Each NIC's totals since its `vireo` started.
    #[serde(default)]
    pub nics: Vec<NicStats>,
}

/// One disk's figures (from Firecracker's `block_ID` metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    /// The drive's id.
    pub id: String,
    /// Bytes the guest read.
    pub read_bytes: u64,
    /// Bytes the guest wrote.
    pub write_bytes: u64,
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Requests that failed (host I/O errors, malformed requests).
    pub errors: u64,
    /// Times the I/O limits held requests back.
    pub throttled: u64,
}

/// One NIC's figures (from Firecracker's `net_ID` metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStats {
    /// The interface's id.
    pub id: String,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Frames that could not be delivered to the guest.
    pub rx_dropped: u64,
    /// Frames from the guest that were malformed or refused by the host.
    pub tx_dropped: u64,
    /// Times the rate limiters held frames back.
    pub throttled: u64,
}

/// `POST /v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name (as a VM name).
    pub name: String,
}

/// One snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Bytes on disk (state, memory and disk copies).
    pub size_bytes: u64,
    /// The VM's state when it was taken (`running` or `paused`): what a revert gives back.
    pub vm_state: String,
    /// Writable disks copied with it.
    pub disks: u32,
}

/// The protocol name a console attach asks for in its `Upgrade` header.
pub const CONSOLE_PROTOCOL: &str = "vireo-console";
