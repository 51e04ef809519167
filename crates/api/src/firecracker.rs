//! Firecracker's API bodies as serde types, and the VM they describe.
//!
//! Every body refuses unknown fields and wrong types (`deny_unknown_fields`), so a typo in a
//! field name is a 400, not a silently ignored setting. [`FullVmConfig`] is Firecracker's
//! `FullVmConfiguration`: what `GET /vm/config` returns and `--config-file` reads, and the
//! pre-boot state the API edits through its `set_*` methods, which check each body the
//! same way whichever front end it came from. [`FullVmConfig::to_vm_config`] turns it into
//! the [`VmConfig`] the VMM builds. No I/O here: whether a kernel or image can be opened is
//! the VMM's to find out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DISK_SERIAL_MAX, RateLimit, SerialConfig, parse_mac};

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

/// Firecracker's token bucket: `size` tokens per `refill_time` milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens the bucket holds (its capacity; it starts full).
    pub size: u64,
    /// Tokens spent first, once, never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

impl TokenBucket {
    /// The rate in tokens per second; `None` (unlimited) for a zero size or refill time,
    /// as Firecracker treats those buckets.
    pub fn per_second(&self) -> Option<u64> {
        if self.size == 0 || self.refill_time == 0 {
            return None;
        }
        let rate = u128::from(self.size) * 1000 / u128::from(self.refill_time);
        Some(u64::try_from(rate).unwrap_or(u64::MAX).max(1))
    }

    /// Its size (when it is not one second's worth) and one-time burst, for Vireo's
    /// buckets.
    pub fn burst(&self) -> crate::Burst {
        let Some(rate) = self.per_second() else {
            return crate::Burst::default();
        };
        crate::Burst {
            size: (self.size != rate).then_some(self.size),
            one_time: self.one_time_burst.filter(|&n| n > 0),
        }
    }

    /// The bucket of `rate` tokens per second shaped `burst`: `size` tokens (one second's
    /// worth by default) refilled over the milliseconds that takes at that rate.
    pub fn from_rate(rate: u64, burst: crate::Burst) -> Self {
        let rate = rate.max(1);
        let size = burst.size.unwrap_or(rate).max(1);
        let refill_ms = (u128::from(size) * 1000).div_ceil(u128::from(rate));
        Self {
            size,
            one_time_burst: burst.one_time,
            refill_time: u64::try_from(refill_ms).unwrap_or(u64::MAX).max(1),
        }
    }
}

/// Firecracker's rate limiter: a bandwidth (bytes) bucket and an operations bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Requests or packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// The limits Vireo's devices apply: each bucket's rate, its size and its one-time
    /// burst, as Firecracker's.
    pub fn to_rate_limit(&self) -> RateLimit {
        RateLimit {
            ops_per_sec: self.ops.and_then(|b| b.per_second()),
            bytes_per_sec: self.bandwidth.and_then(|b| b.per_second()),
            ops_burst: self.ops.map(|b| b.burst()).unwrap_or_default(),
            bytes_burst: self.bandwidth.map(|b| b.burst()).unwrap_or_default(),
        }
    }
}

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
    fn validate(&self) -> Result<(), ConfigError> {
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

/// A drive's cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are not passed to the host.
    Unsafe,
    /// Flushes reach the host file.
    Writeback,
}

/// A drive's I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriveIoEngine {
    /// Blocking I/O on the device thread.
    Sync,
    /// io_uring.
    Async,
    /// Vireo extension: io_uring where the host allows it, else Sync.
    Auto,
}

/// A drive's image format (Vireo extension: Firecracker's drives are raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveFormat {
    /// A plain image.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's name.
    pub drive_id: String,
    /// Root partition UUID, for `root=PARTUUID=...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// The guest boots from it (`root=` on the command line; it becomes `/dev/vda`).
    pub is_root_device: bool,
    /// Cache mode (accepted; Vireo's disks always pass flushes on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// The image on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine (default Sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<DriveIoEngine>,
    /// vhost-user-blk socket (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Vireo extension: the image format (default raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DriveFormat>,
    /// Vireo extension: what the guest reads as the disk's serial (`VIRTIO_BLK_T_GET_ID`,
    /// at most 20 ASCII bytes; `""` for none). Absent, it is the `drive_id` when that
    /// fits in 20 bytes, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// `PATCH /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's name.
    pub drive_id: String,
    /// A new image.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// New limits.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's name.
    pub iface_id: String,
    /// Host TAP device.
    pub host_dev_name: String,
    /// Guest MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU to advertise (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits on what the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on what the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's name.
    pub iface_id: String,
    /// New receive limits.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New send limits.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's CID (3 or more).
    pub guest_cid: u32,
    /// Host-side Unix socket.
    pub uds_path: String,
    /// Deprecated by Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /pmem/{id}`: a virtio-pmem device backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pmem {
    /// The device's name.
    pub id: String,
    /// The backing file on the host (opened at InstanceStart, as Firecracker does).
    pub path_on_host: String,
    /// The guest boots from it (`root=/dev/pmemN` on the command line, `ro` or `rw`).
    #[serde(default)]
    pub root_device: bool,
    /// Mapped read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Limits on flushes: one operation and the file's size in bytes each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PATCH /pmem/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialPmem {
    /// The device's name.
    pub id: String,
    /// New limits.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /entropy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Limits on requests (`ops`) and random bytes (`bandwidth`) the guest gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /balloon`, and what `GET /balloon` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target size in MiB.
    pub amount_mib: u32,
    /// The guest may take pages back under memory pressure.
    pub deflate_on_oom: bool,
    /// Statistics interval in seconds; 0 disables statistics.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting: runs started and stopped through `/balloon/hinting/*`.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Free page reporting.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// New target in MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// New interval in seconds.
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon/hinting/start` (Firecracker's `BalloonStartCmd`); no body is the
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    /// When the guest reports the end of the run, tell it at once that it may take its
    /// hinted pages back (otherwise that waits for `/balloon/hinting/stop`).
    #[serde(default = "default_true")]
    pub acknowledge_on_stop: bool,
}

fn default_true() -> bool {
    true
}

impl Default for BalloonStartCmd {
    fn default() -> Self {
        Self {
            acknowledge_on_stop: true,
        }
    }
}

/// `PATCH /balloon/hinting/stop`: Firecracker documents no body; one that is given must
/// be an empty object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStopCmd {}

/// What `GET /balloon/hinting/status` returns (Firecracker's `BalloonHintingStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonHintingStatus {
    /// The command id the host last set: 0 (STOP) before any run, a run's id (2 and up)
    /// while the host asks for hints, 1 (DONE) once the guest may take its pages back.
    pub host_cmd: u32,
    /// The command id the guest last sent: the id of the run it started, 0 (STOP) when it
    /// finished; `null` before it sent any.
    pub guest_cmd: Option<u32>,
}

/// What `GET /balloon/statistics` returns; optional fields are absent until the guest
/// reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct BalloonStatistics {
    pub target_pages: u64,
    pub actual_pages: u64,
    pub target_mib: u64,
    pub actual_mib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// A log level as Firecracker spells it (any case; `Warn` is taken for `Warning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors.
    Error,
    /// And warnings.
    Warning,
    /// And information.
    Info,
    /// And debugging.
    Debug,
    /// Everything.
    Trace,
}

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warning" | "warn" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(format!(
                    "unknown level '{s}': expected Error, Warning, Info, Debug, Trace or Off"
                ));
            }
        })
    }
}

impl From<LogLevel> for String {
    fn from(l: LogLevel) -> String {
        format!("{l:?}")
    }
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File or named pipe the log goes to (stderr when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Level (default Info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Print the level on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print the source file and line on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log messages from module paths starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File or named pipe the JSON lines go to.
    pub metrics_path: String,
    /// Add the instance id as `"id"` to each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
    /// Extra key-value pairs under `"properties"` on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

/// `PUT /serial`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDevice {
    /// File or named pipe the console output goes to (stdout when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
    /// Output limit in bytes: what the guest writes past it is dropped (counted in
    /// `uart.rate_limiter_dropped_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
    /// Vireo extension: a Unix socket Vireo listens on for the console
    /// ([`SerialConfig::Socket`]); exclusive with `serial_out_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// Longest path a Unix socket can be bound to (`sun_path` less its NUL).
pub const UNIX_PATH_MAX: usize = 107;

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

fn check_id(id: &str, what: fn(String) -> ConfigError) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(what("The ID cannot be empty.".into()));
    }
    if !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(what(
            "API Resource IDs can only contain alphanumeric characters and underscores.".into(),
        ));
    }
    if id.len() > 64 {
        return Err(what("An ID is at most 64 characters.".into()));
    }
    Ok(())
}

fn check_path(path: &str, what: fn(String) -> ConfigError, field: &str) -> Result<(), ConfigError> {
    if path.is_empty() || path.contains('\0') {
        return Err(what(format!("{field} must be a non-empty path.")));
    }
    Ok(())
}

impl FullVmConfig {
    /// Parse a `--config-file` (or any full config) and check every part as the API would.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let parsed: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        parsed.revalidated().map_err(|e| e.to_string())
    }

    /// The same config, built up again through the `set_*` checks.
    pub fn revalidated(&self) -> Result<Self, ConfigError> {
        self.unsupported_sections()?;
        let mut fresh = Self::default();
        fresh.set_machine_config(self.machine_config.clone())?;
        // After the machine config: as in Firecracker, the custom template wins.
        if let Some(t) = &self.cpu_config {
            fresh.set_cpu_config(t.clone())?;
        }
        if let Some(b) = &self.boot_source {
            fresh.set_boot_source(b.clone())?;
        }
        for d in &self.drives {
            fresh.set_drive(d.clone())?;
        }
        for n in &self.network_interfaces {
            fresh.set_network_interface(n.clone())?;
        }
        if let Some(v) = &self.vsock {
            fresh.set_vsock(v.clone())?;
        }
        if let Some(e) = &self.entropy {
            fresh.set_entropy(e.clone())?;
        }
        if let Some(b) = &self.balloon {
            fresh.set_balloon(b.clone())?;
        }
        if let Some(s) = &self.serial {
            fresh.set_serial(s.clone())?;
        }
        if let Some(m) = &self.mmds_config {
            fresh.set_mmds_config(m.clone())?;
        }
        for p in &self.pmem {
            fresh.set_pmem(p.clone())?;
        }
        fresh.logger = self.logger.clone();
        fresh.metrics = self.metrics.clone();
        Ok(fresh)
    }

    /// The first of Firecracker's sections Vireo lacks that asks for something, as an
    /// error naming it.
    pub fn unsupported_sections(&self) -> Result<(), ConfigError> {
        // An object asks for something when one of its fields does.
        fn asks(v: &serde_json::Value) -> bool {
            match v {
                serde_json::Value::Null => false,
                serde_json::Value::Object(m) => m.values().any(asks),
                serde_json::Value::Array(a) => !a.is_empty(),
                _ => true,
            }
        }
        for (section, value, what) in [(
            "memory-hotplug",
            &self.memory_hotplug,
            "memory hotplug (virtio-mem)",
        )] {
            if value.as_ref().is_some_and(asks) {
                return Err(ConfigError::Unsupported(format!(
                    "{section}: {what} are not supported by Vireo yet."
                )));
            }
        }
        Ok(())
    }

    /// `PUT /mmds/config`: at least one interface, each already configured, and a
    /// link-local address.
    pub fn set_mmds_config(&mut self, config: crate::MmdsConfig) -> Result<(), ConfigError> {
        config.check().map_err(ConfigError::Mmds)?;
        if let Some(id) = config
            .network_interfaces
            .iter()
            .find(|id| !self.network_interfaces.iter().any(|n| &n.iface_id == *id))
        {
            return Err(ConfigError::Mmds(format!(
                "The list of network interface IDs provided contains at least one ID that \
                 does not correspond to any existing network interface: {id}."
            )));
        }
        self.mmds_config = Some(config);
        Ok(())
    }

    /// `PUT /machine-config`. A CPU template given replaces the one set before, custom
    /// or static (`"None"` drops it); none given keeps it, as in Firecracker.
    pub fn set_machine_config(&mut self, mut config: MachineConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.check_balloon_fits(self.balloon.as_ref(), config.mem_size_mib)?;
        match config.cpu_template.as_deref() {
            None => config.cpu_template = self.machine_config.cpu_template.take(),
            Some(name) => {
                if name == "None" {
                    config.cpu_template = None;
                }
                self.cpu_config = None;
            }
        }
        self.machine_config = config;
        Ok(())
    }

    /// `PUT /cpu-config`: a custom CPU template, which replaces any template set before
    /// (a static one included). Its form is checked here; whether the host's KVM has
    /// what it changes, at InstanceStart.
    pub fn set_cpu_config(
        &mut self,
        template: crate::CustomCpuTemplate,
    ) -> Result<(), ConfigError> {
        template.validate().map_err(ConfigError::CpuConfig)?;
        self.cpu_config = Some(template.normalized());
        self.machine_config.cpu_template = None;
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn update_machine_config(
        &mut self,
        update: MachineConfigUpdate,
    ) -> Result<(), ConfigError> {
        let mut config = self.machine_config.clone();
        if let Some(v) = update.vcpu_count {
            config.vcpu_count = v;
        }
        if let Some(m) = update.mem_size_mib {
            config.mem_size_mib = m;
        }
        if let Some(s) = update.smt {
            config.smt = s;
        }
        if let Some(t) = update.cpu_template {
            config.cpu_template = Some(t);
        }
        if let Some(t) = update.track_dirty_pages {
            config.track_dirty_pages = t;
        }
        if let Some(h) = update.huge_pages {
            config.huge_pages = h;
        }
        self.set_machine_config(config)
    }

    /// `PUT /boot-source`.
    pub fn set_boot_source(&mut self, source: BootSource) -> Result<(), ConfigError> {
        check_path(
            &source.kernel_image_path,
            ConfigError::BootSource,
            "kernel_image_path",
        )?;
        if let Some(initrd) = &source.initrd_path {
            check_path(initrd, ConfigError::BootSource, "initrd_path")?;
        }
        if let Some(args) = &source.boot_args
            && args.contains('\0')
        {
            return Err(ConfigError::BootSource(
                "boot_args may not contain NUL.".into(),
            ));
        }
        self.boot_source = Some(source);
        Ok(())
    }

    /// `PUT /drives/{id}`: add a drive, or replace the one with the same id.
    pub fn set_drive(&mut self, drive: Drive) -> Result<(), ConfigError> {
        check_id(&drive.drive_id, ConfigError::Drive)?;
        if drive.socket.is_some() {
            return Err(ConfigError::Drive(
                "vhost-user block devices (socket) are not supported by Vireo.".into(),
            ));
        }
        let Some(path) = &drive.path_on_host else {
            return Err(ConfigError::Drive("path_on_host is required.".into()));
        };
        check_path(path, ConfigError::Drive, "path_on_host")?;
        if drive.partuuid.as_ref().is_some_and(|p| {
            p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }) {
            return Err(ConfigError::Drive(
                "partuuid must be letters, digits and '-'.".into(),
            ));
        }
        if drive.is_root_device
            && self
                .drives
                .iter()
                .any(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(ConfigError::Drive(
                "A root block device already exists!".into(),
            ));
        }
        if drive.is_root_device && self.pmem.iter().any(|p| p.root_device) {
            return Err(ConfigError::Drive(
                "Attempt to add block as a root device while the root device defined as a \
                 pmem device"
                    .into(),
            ));
        }
        if let Some(serial) = &drive.serial
            && (serial.len() > DISK_SERIAL_MAX || !serial.is_ascii() || serial.contains('\0'))
        {
            return Err(ConfigError::Drive(format!(
                "serial is at most {DISK_SERIAL_MAX} ASCII characters (no NUL)."
            )));
        }
        check_limiter(drive.rate_limiter.as_ref(), ConfigError::Drive)?;
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(slot) => *slot = drive,
            None => {
                if self.device_count() >= MAX_DEVICES {
                    return Err(ConfigError::Drive(too_many_devices()));
                }
                self.drives.push(drive);
            }
        }
        Ok(())
    }

    /// `PUT /pmem/{id}`: add a virtio-pmem device, or replace the one with the same id.
    /// Its file is opened at InstanceStart (as Firecracker does), not here.
    pub fn set_pmem(&mut self, pmem: Pmem) -> Result<(), ConfigError> {
        check_id(&pmem.id, ConfigError::Pmem)?;
        check_path(&pmem.path_on_host, ConfigError::Pmem, "path_on_host")?;
        if pmem.root_device && self.drives.iter().any(|d| d.is_root_device) {
            return Err(ConfigError::Pmem(
                "Attempt to add pmem as a root device while the root device defined as a \
                 block device"
                    .into(),
            ));
        }
        if pmem.root_device && self.pmem.iter().any(|p| p.root_device && p.id != pmem.id) {
            return Err(ConfigError::Pmem("A root pmem device already exist".into()));
        }
        check_limiter(pmem.rate_limiter.as_ref(), ConfigError::Pmem)?;
        match self.pmem.iter_mut().find(|p| p.id == pmem.id) {
            Some(slot) => *slot = pmem,
            None => {
                if self.device_count() >= MAX_DEVICES {
                    return Err(ConfigError::Pmem(too_many_devices()));
                }
                self.pmem.push(pmem);
            }
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: add a NIC, or replace the one with the same id.
    pub fn set_network_interface(&mut self, nic: NetworkInterface) -> Result<(), ConfigError> {
        check_id(&nic.iface_id, ConfigError::Net)?;
        if nic.host_dev_name.is_empty()
            || nic.host_dev_name.len() >= 16
            || nic.host_dev_name.contains(['/', '\0', ' '])
        {
            return Err(ConfigError::Net(format!(
                "host_dev_name '{}' is not a TAP name (1 to 15 characters, no '/').",
                nic.host_dev_name
            )));
        }
        if let Some(mac) = &nic.guest_mac {
            // Any address, as Firecracker takes it (a multicast one included).
            let parsed = parse_mac(mac)
                .ok_or_else(|| ConfigError::Net(format!("'{mac}' is not a MAC address.")))?;
            if let Some(other) = self.network_interfaces.iter().find(|n| {
                n.iface_id != nic.iface_id
                    && n.guest_mac.as_deref().and_then(parse_mac) == Some(parsed)
            }) {
                return Err(ConfigError::Net(format!(
                    "The MAC address is already in use by {}.",
                    other.iface_id
                )));
            }
        }
        if let Some(mtu) = nic.mtu
            && !crate::MTU_RANGE.contains(&mtu)
        {
            return Err(ConfigError::Net(format!(
                "mtu {mtu} is outside 68..=65535."
            )));
        }
        if let Some(other) = self
            .network_interfaces
            .iter()
            .find(|n| n.iface_id != nic.iface_id && n.host_dev_name == nic.host_dev_name)
        {
            return Err(ConfigError::Net(format!(
                "The host device {} is already used by {}.",
                nic.host_dev_name, other.iface_id
            )));
        }
        check_limiter(nic.rx_rate_limiter.as_ref(), ConfigError::Net)?;
        check_limiter(nic.tx_rate_limiter.as_ref(), ConfigError::Net)?;
        match self
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == nic.iface_id)
        {
            Some(slot) => *slot = nic,
            None => {
                if self.device_count() >= MAX_DEVICES {
                    return Err(ConfigError::Net(too_many_devices()));
                }
                self.network_interfaces.push(nic);
            }
        }
        Ok(())
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, vsock: Vsock) -> Result<(), ConfigError> {
        if !(3..u32::MAX).contains(&vsock.guest_cid) {
            return Err(ConfigError::Vsock(format!(
                "guest_cid {} is reserved (it must be at least 3).",
                vsock.guest_cid
            )));
        }
        check_path(&vsock.uds_path, ConfigError::Vsock, "uds_path")?;
        if vsock.uds_path.len() >= 100 {
            return Err(ConfigError::Vsock(
                "uds_path is too long for a Unix socket (at most 99 bytes, room for _PORT).".into(),
            ));
        }
        self.vsock = Some(vsock);
        Ok(())
    }

    /// `PUT /entropy`.
    pub fn set_entropy(&mut self, entropy: EntropyDevice) -> Result<(), ConfigError> {
        check_limiter(entropy.rate_limiter.as_ref(), ConfigError::Entropy)?;
        self.entropy = Some(entropy);
        Ok(())
    }

    /// `PUT /balloon`.
    pub fn set_balloon(&mut self, balloon: Balloon) -> Result<(), ConfigError> {
        self.check_balloon_fits(Some(&balloon), self.machine_config.mem_size_mib)?;
        self.balloon = Some(balloon);
        Ok(())
    }

    fn check_balloon_fits(
        &self,
        balloon: Option<&Balloon>,
        mem_mib: u64,
    ) -> Result<(), ConfigError> {
        match balloon {
            Some(b) if u64::from(b.amount_mib) > mem_mib => Err(ConfigError::Balloon(format!(
                "The balloon cannot hold {} MiB: the guest has {mem_mib} MiB.",
                b.amount_mib
            ))),
            _ => Ok(()),
        }
    }

    /// `PUT /serial`.
    pub fn set_serial(&mut self, serial: SerialDevice) -> Result<(), ConfigError> {
        if let Some(b) = serial.rate_limiter
            && b.size > 0
            && b.refill_time == 0
        {
            return Err(ConfigError::Serial(
                "A token bucket with a size needs a refill_time above 0.".into(),
            ));
        }
        if let Some(p) = &serial.serial_out_path {
            check_path(p, ConfigError::Serial, "serial_out_path")?;
        }
        if let Some(p) = &serial.socket {
            if serial.serial_out_path.is_some() {
                return Err(ConfigError::Serial(
                    "serial_out_path and socket are exclusive: give one of them.".into(),
                ));
            }
            check_path(p, ConfigError::Serial, "socket")?;
            if p.len() > UNIX_PATH_MAX {
                return Err(ConfigError::Serial(format!(
                    "socket is too long for a Unix socket (at most {UNIX_PATH_MAX} bytes)."
                )));
            }
        }
        self.serial = Some(serial);
        Ok(())
    }

    /// Where the console goes: `serial_out_path` (a file), `socket`, or stdio when
    /// neither is given (Firecracker's default).
    pub fn serial_config(&self) -> SerialConfig {
        let serial = self.serial.as_ref();
        match (
            serial.and_then(|s| s.serial_out_path.as_ref()),
            serial.and_then(|s| s.socket.as_ref()),
        ) {
            (Some(path), _) => SerialConfig::File(path.into()),
            (None, Some(path)) => SerialConfig::Socket(path.into()),
            (None, None) => SerialConfig::Stdio,
        }
    }

    /// The console's output limit (`rate_limiter` of `PUT /serial`), in Vireo's terms.
    pub fn serial_rate_limit(&self) -> crate::RateLimit {
        let bucket = self.serial.as_ref().and_then(|s| s.rate_limiter);
        crate::RateLimit {
            bytes_per_sec: bucket.and_then(|b| b.per_second()),
            bytes_burst: bucket.map(|b| b.burst()).unwrap_or_default(),
            ..Default::default()
        }
    }

    fn device_count(&self) -> usize {
        self.drives.len()
            + self.network_interfaces.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.entropy.is_some())
            + usize::from(self.balloon.is_some())
            + self.pmem.len()
    }
}

/// Most virtio devices a VM can have (Firecracker's virtio-mmio on x86: 19); past the
/// 15th they share interrupt lines.
pub const MAX_DEVICES: usize = 32;

fn too_many_devices() -> String {
    format!(
        "A VM has at most {MAX_DEVICES} virtio devices (drives, NICs, vsock, entropy, balloon, \
         pmem)."
    )
}

fn check_limiter(
    limiter: Option<&RateLimiter>,
    what: fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    let Some(l) = limiter else { return Ok(()) };
    for bucket in [l.bandwidth, l.ops].into_iter().flatten() {
        if bucket.size > 0 && bucket.refill_time == 0 {
            return Err(what(
                "A token bucket with a size needs a refill_time above 0.".into(),
            ));
        }
    }
    Ok(())
}

#[path = "firecracker_convert.rs"]
mod convert;

#[cfg(test)]
#[path = "firecracker_tests.rs"]
mod tests;
