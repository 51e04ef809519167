//! The devices' bodies: drives, network interfaces, vsock, pmem, entropy, the balloon
//! (with its statistics and hinting) and the serial console.

use super::*;

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
