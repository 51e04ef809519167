//! The control API as data: what a front end (the HTTP API thread) asks of the VMM, what
//! comes back, and why a request was refused. The thread that owns the VM answers each
//! [`VmmAction`] with an [`ActionResult`].

use crate::firecracker::{
    Balloon, BalloonHintingStatus, BalloonStartCmd, BalloonStatistics, BalloonStatsUpdate,
    BalloonUpdate, BootSource, ConfigError, Drive, EntropyDevice, FullVmConfig, InstanceInfo,
    Logger, MachineConfig, MachineConfigUpdate, Metrics, NetworkInterface, PartialDrive,
    PartialNetworkInterface, PartialPmem, Pmem, SerialDevice, SnapshotCreateParams,
    SnapshotLoadParams, Vsock,
};
use crate::{MmdsConfig, MmdsVersion};

/// One request to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`.
    GetFullVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /cpu-config`.
    PutCpuConfig(crate::CustomCpuTemplate),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(PartialDrive),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(PartialNetworkInterface),
    /// `PUT /pmem/{id}`.
    PutPmem(Pmem),
    /// `PATCH /pmem/{id}`.
    PatchPmem(PartialPmem),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `PUT /balloon`.
    PutBalloon(Balloon),
    /// `PATCH /balloon`.
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon`.
    GetBalloon,
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStats(BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`.
    StartBalloonHinting(BalloonStartCmd),
    /// `GET /balloon/hinting/status`.
    GetBalloonHintingStatus,
    /// `PATCH /balloon/hinting/stop`.
    StopBalloonHinting,
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /serial`.
    PutSerial(SerialDevice),
    /// `PUT /actions` InstanceStart.
    InstanceStart,
    /// `PUT /actions` SendCtrlAltDel.
    SendCtrlAltDel,
    /// `PUT /actions` FlushMetrics.
    FlushMetrics,
    /// `PATCH /vm` Paused.
    Pause,
    /// `PATCH /vm` Resumed.
    Resume,
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
    /// `GET /mmds`.
    GetMmds,
    /// `PUT /mmds`: the whole document.
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: a JSON Merge Patch of the document.
    PatchMmds(serde_json::Value),
    /// `PUT /mmds/config`.
    PutMmdsConfig(MmdsConfig),
}

impl VmmAction {
    /// What of this request Firecracker deprecates, as the warning it logs; the
    /// response then carries `Deprecation: true`.
    pub fn deprecation(&self) -> Option<&'static str> {
        match self {
            Self::PutMmdsConfig(c) if c.version == MmdsVersion::V1 => {
                Some("PUT /mmds/config: V1 is deprecated. Use V2 instead.")
            }
            Self::PutVsock(v) if v.vsock_id.is_some() => {
                Some("PUT /vsock: vsock_id field is deprecated.")
            }
            Self::LoadSnapshot(p)
                if p.mem_file_path.is_some() || p.enable_diff_snapshots.is_some() =>
            {
                Some(
                    "PUT /snapshot/load: mem_file_path and enable_diff_snapshots fields are deprecated.",
                )
            }
            Self::PutMachineConfig(c) if c.cpu_template.is_some() => {
                Some("PUT /machine-config: cpu_template field is deprecated.")
            }
            Self::PatchMachineConfig(c) if c.cpu_template.is_some() => {
                Some("PATCH /machine-config: cpu_template field is deprecated.")
            }
            _ => None,
        }
    }
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmData {
    /// Nothing (HTTP 204).
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /version`.
    Version(String),
    /// `GET /machine-config`.
    MachineConfig(MachineConfig),
    /// `GET /balloon`.
    Balloon(Balloon),
    /// `GET /balloon/statistics`.
    BalloonStats(BalloonStatistics),
    /// `GET /balloon/hinting/status`.
    BalloonHintingStatus(BalloonHintingStatus),
    /// `GET /vm/config`.
    FullVmConfig(Box<FullVmConfig>),
    /// `GET /mmds`.
    Mmds(serde_json::Value),
}

/// Why the VMM refused a request (HTTP 400, or [`ActionError::status`], with the message
/// as `fault_message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// A pre-boot request after InstanceStart.
    #[error("The requested operation is not supported after starting the microVM.")]
    NotSupportedPostBoot,
    /// A runtime request before InstanceStart.
    #[error("The requested operation is not supported before starting the microVM.")]
    NotSupportedPreBoot,
    /// Something Vireo does not do (yet).
    #[error("The requested operation is not supported: {0}")]
    NotSupported(String),
    /// A configuration body was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The VM could not be built or started.
    #[error("Start microvm error: {0}")]
    StartMicrovm(String),
    /// The running VM refused or failed.
    #[error("Internal VMM error: {0}")]
    Internal(String),
    /// `PUT /snapshot/create` failed.
    #[error("Create snapshot error: {0}")]
    CreateSnapshot(String),
    /// `PUT /snapshot/load` failed.
    #[error("Load snapshot error: {0}")]
    LoadSnapshot(String),
    /// A balloon update on the running VM failed.
    #[error("Balloon update error: {0}")]
    BalloonUpdate(String),
    /// `PUT`/`PATCH /mmds` refused (HTTP 400).
    #[error("MMDS error: {0}")]
    Mmds(String),
    /// `PUT`/`PATCH /mmds` would exceed the data store's size limit (HTTP 413).
    #[error("MMDS limit exceeded error: {0}")]
    MmdsLimitExceeded(String),
}

impl ActionError {
    /// The HTTP status the API answers this refusal with.
    pub fn status(&self) -> u16 {
        match self {
            Self::MmdsLimitExceeded(_) => 413,
            _ => 400,
        }
    }
}

/// The answer to one [`VmmAction`].
pub type ActionResult = Result<VmmData, ActionError>;
