//! Device configuration: disks, NICs, vsock, entropy, balloon and pmem, and their
//! `key=value,...` text form as the command line takes it
//! (`--disk path=root.img,readonly,serial=ID`).
//!
//! Parsing refuses unknown keys, repeated keys and malformed values with a message that
//! names the option and the key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

/// A device option that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {option} '{text}': {reason}")]
pub struct DeviceOptionError {
    /// The option ("--disk", "--net"...).
    pub option: &'static str,
    /// What the user wrote.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// `key=value,flag,...` split into a map; a flag has no value.
struct Options {
    option: &'static str,
    text: String,
    map: BTreeMap<String, Option<String>>,
}

impl Options {
    fn parse(option: &'static str, text: &str, known: &[&str]) -> Result<Self, DeviceOptionError> {
        let mut o = Self {
            option,
            text: text.to_string(),
            map: BTreeMap::new(),
        };
        if text.trim().is_empty() {
            return Err(o.err("empty"));
        }
        for part in text.split(',') {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (part, None),
            };
            if !known.contains(&k) {
                return Err(o.err(format!("unknown key '{k}' (known: {})", known.join(", "))));
            }
            if o.map.insert(k.to_string(), v).is_some() {
                return Err(o.err(format!("'{k}' given twice")));
            }
        }
        Ok(o)
    }

    fn err(&self, reason: impl Into<String>) -> DeviceOptionError {
        DeviceOptionError {
            option: self.option,
            text: self.text.clone(),
            reason: reason.into(),
        }
    }

    /// A `key=value` that must have a non-empty value.
    fn value(&mut self, key: &str) -> Result<Option<String>, DeviceOptionError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Some(v)) if !v.is_empty() => Ok(Some(v)),
            Some(_) => Err(self.err(format!("'{key}' needs a value ({key}=...)"))),
        }
    }

    fn required(&mut self, key: &str) -> Result<String, DeviceOptionError> {
        self.value(key)?
            .ok_or_else(|| self.err(format!("'{key}=' is required")))
    }

    /// A bare flag (`readonly`); `flag=on|off|true|false` is accepted too.
    fn flag(&mut self, key: &str) -> Result<bool, DeviceOptionError> {
        match self.map.remove(key) {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) => match v.as_str() {
                "on" | "true" | "yes" => Ok(true),
                "off" | "false" | "no" => Ok(false),
                _ => Err(self.err(format!("'{key}' is on or off, not '{v}'"))),
            },
        }
    }

    fn number(&mut self, key: &str) -> Result<Option<u64>, DeviceOptionError> {
        let Some(v) = self.value(key)? else {
            return Ok(None);
        };
        v.parse::<u64>()
            .map(Some)
            .map_err(|_| self.err(format!("'{key}' must be a whole number, not '{v}'")))
    }

    /// A rate in units per second; `/s` may be written after the number, and a size
    /// suffix (K, M, G) multiplies by 1024s: `bandwidth=100M/s`.
    fn rate(&mut self, key: &str) -> Result<Option<u64>, DeviceOptionError> {
        let Some(v) = self.value(key)? else {
            return Ok(None);
        };
        let digits = v.strip_suffix("/s").unwrap_or(&v);
        let (num, mult) = match digits.char_indices().last() {
            Some((i, 'K' | 'k')) => (&digits[..i], 1u64 << 10),
            Some((i, 'M' | 'm')) => (&digits[..i], 1 << 20),
            Some((i, 'G' | 'g')) => (&digits[..i], 1 << 30),
            _ => (digits, 1),
        };
        match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
            Some(0) | None => Err(self.err(format!(
                "'{key}' must be a positive number per second, not '{v}'"
            ))),
            Some(n) => Ok(Some(n)),
        }
    }
}

/// A limit on operations and bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimit {
    /// Requests (disk) or packets (network) per second.
    pub ops_per_sec: Option<u64>,
    /// Bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// The operations bucket's size and one-time burst.
    #[serde(default, skip_serializing_if = "Burst::is_default")]
    pub ops_burst: Burst,
    /// The bytes bucket's size and one-time burst.
    #[serde(default, skip_serializing_if = "Burst::is_default")]
    pub bytes_burst: Burst,
}

impl RateLimit {
    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        self.ops_per_sec.is_some() || self.bytes_per_sec.is_some()
    }

    /// Per-second limits with buckets of one second's worth and no burst.
    pub fn per_second(ops_per_sec: Option<u64>, bytes_per_sec: Option<u64>) -> Self {
        Self {
            ops_per_sec,
            bytes_per_sec,
            ..Self::default()
        }
    }
}

/// A token bucket's shape beyond its rate, as Firecracker's buckets have it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Burst {
    /// Tokens the bucket holds at most (Firecracker's `size`); `None`: one second's
    /// worth, the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Tokens spent once, before the bucket's, and never refilled (Firecracker's
    /// `one_time_burst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time: Option<u64>,
}

impl Burst {
    /// One second's worth, no one-time burst.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Disk image format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiskFormat {
    /// A plain image: guest sector n is file offset n * 512.
    #[default]
    Raw,
    /// QEMU's copy-on-write format, with optional backing files.
    Qcow2,
}

/// How disk requests reach the host kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IoEngine {
    /// io_uring if the host kernel allows it, else synchronous.
    #[default]
    Auto,
    /// Blocking reads and writes on the device's worker thread.
    Sync,
    /// io_uring; refused at start if the host does not allow it.
    IoUring,
}

/// One virtio-blk disk: `--disk path=FILE[,readonly][,format=raw|qcow2][,serial=ID]
/// [,iops=N][,bandwidth=BYTES/s][,io=auto|sync|uring][,id=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// Name of the drive (Firecracker's `drive_id`); `disk<N>` when not given.
    pub id: Option<String>,
    /// The image file (or block device) on the host.
    pub path: PathBuf,
    /// The guest may only read.
    pub readonly: bool,
    /// Image format.
    pub format: DiskFormat,
    /// What `VIRTIO_BLK_T_GET_ID` answers (at most 20 bytes).
    pub serial: Option<String>,
    /// Limits on requests and bytes per second.
    pub rate_limit: RateLimit,
    /// I/O engine.
    pub io_engine: IoEngine,
}

/// Longest serial virtio-blk can return (`VIRTIO_BLK_ID_BYTES`).
pub const DISK_SERIAL_MAX: usize = 20;

impl FromStr for DiskConfig {
    type Err = DeviceOptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut o = Options::parse(
            "--disk",
            s,
            &[
                "id",
                "path",
                "readonly",
                "format",
                "serial",
                "iops",
                "bandwidth",
                "io",
            ],
        )?;
        let format = match o.value("format")?.as_deref() {
            None | Some("raw") => DiskFormat::Raw,
            Some("qcow2") => DiskFormat::Qcow2,
            Some(f) => return Err(o.err(format!("format is raw or qcow2, not '{f}'"))),
        };
        let io_engine = match o.value("io")?.as_deref() {
            None | Some("auto") => IoEngine::Auto,
            Some("sync") => IoEngine::Sync,
            Some("uring") | Some("io_uring") => IoEngine::IoUring,
            Some(e) => return Err(o.err(format!("io is auto, sync or uring, not '{e}'"))),
        };
        let serial = o.value("serial")?;
        if let Some(s) = &serial
            && (s.len() > DISK_SERIAL_MAX || !s.is_ascii())
        {
            return Err(o.err(format!(
                "serial is at most {DISK_SERIAL_MAX} ASCII characters"
            )));
        }
        Ok(Self {
            id: o.value("id")?,
            path: PathBuf::from(o.required("path")?),
            readonly: o.flag("readonly")?,
            format,
            serial,
            rate_limit: RateLimit {
                ops_per_sec: o.rate("iops")?,
                bytes_per_sec: o.rate("bandwidth")?,
                ..Default::default()
            },
            io_engine,
        })
    }
}

/// One virtio-net NIC on a host TAP device: `--net tap=NAME[,mac=MAC][,id=NAME]
/// [,mtu=N][,bandwidth=BYTES/s][,pps=N]` (limits apply to each direction; `rx_`/`tx_`
/// prefixed keys set one direction).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// Name of the interface (Firecracker's `iface_id`); `net<N>` when not given.
    pub id: Option<String>,
    /// Host TAP device name (created if missing and permitted).
    pub tap: String,
    /// Guest MAC address; a locally administered one is made up when not given.
    pub mac: Option<[u8; 6]>,
    /// Limits on what the guest receives.
    pub rx_rate_limit: RateLimit,
    /// Limits on what the guest sends.
    pub tx_rate_limit: RateLimit,
    /// The MTU offered to the guest (`VIRTIO_NET_F_MTU`, 68 to 65535); without it the
    /// guest chooses (1500).
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// The MTUs virtio-net can offer: IPv4's least to the largest frame.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=65535;

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl FromStr for NetConfig {
    type Err = DeviceOptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut o = Options::parse(
            "--net",
            s,
            &[
                "id",
                "tap",
                "mac",
                "mtu",
                "bandwidth",
                "pps",
                "rx_bandwidth",
                "rx_pps",
                "tx_bandwidth",
                "tx_pps",
            ],
        )?;
        let tap = o.required("tap")?;
        if tap.len() >= 16 {
            return Err(o.err("a TAP name is at most 15 characters"));
        }
        let mac = match o.value("mac")? {
            None => None,
            Some(m) => {
                Some(parse_mac(&m).ok_or_else(|| o.err(format!("'{m}' is not a MAC address")))?)
            }
        };
        let both = RateLimit {
            ops_per_sec: o.rate("pps")?,
            bytes_per_sec: o.rate("bandwidth")?,
            ..Default::default()
        };
        let rx = RateLimit {
            ops_per_sec: o.rate("rx_pps")?.or(both.ops_per_sec),
            bytes_per_sec: o.rate("rx_bandwidth")?.or(both.bytes_per_sec),
            ..Default::default()
        };
        let tx = RateLimit {
            ops_per_sec: o.rate("tx_pps")?.or(both.ops_per_sec),
            bytes_per_sec: o.rate("tx_bandwidth")?.or(both.bytes_per_sec),
            ..Default::default()
        };
        let mtu = match o.number("mtu")? {
            None => None,
            Some(m) => Some(
                u16::try_from(m)
                    .ok()
                    .filter(|m| MTU_RANGE.contains(m))
                    .ok_or_else(|| o.err(format!("mtu {m} is outside 68..=65535")))?,
            ),
        };
        Ok(Self {
            id: o.value("id")?,
            tap,
            mac,
            rx_rate_limit: rx,
            tx_rate_limit: tx,
            mtu,
        })
    }
}

/// The vsock device: `--vsock cid=N,socket=PATH`. The host side is a Unix socket, as
/// Firecracker's: host-initiated connections connect to PATH and send `CONNECT <port>\n`;
/// guest-initiated connections to port P go to `PATH_P`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u32,
    /// The host-side Unix socket.
    pub socket: PathBuf,
}

impl FromStr for VsockConfig {
    type Err = DeviceOptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut o = Options::parse("--vsock", s, &["cid", "socket"])?;
        let cid = o
            .number("cid")?
            .ok_or_else(|| o.err("'cid=' is required"))?;
        let cid = u32::try_from(cid)
            .ok()
            .filter(|&c| (3..u32::MAX).contains(&c))
            .ok_or_else(|| o.err("cid must be at least 3 (0-2 are reserved) and below 2^32-1"))?;
        Ok(Self {
            cid,
            socket: PathBuf::from(o.required("socket")?),
        })
    }
}

/// The memory balloon: `--balloon [size=MIB][,deflate_on_oom][,stats=SECONDS]
/// [,free_page_hinting][,free_page_reporting]` (an empty value is accepted:
/// `--balloon ""`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonConfig {
    /// Target balloon size in MiB (how much memory the guest should give back).
    pub amount_mib: u64,
    /// The guest may take pages back from the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds; 0 disables the statistics queue.
    pub stats_interval_s: u64,
    /// The host may ask the guest for hints of its free pages (runs started through the
    /// API), and discards the hinted pages.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// The guest reports free pages, which the host discards.
    pub free_page_reporting: bool,
}

impl FromStr for BalloonConfig {
    type Err = DeviceOptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut o = Options::parse(
            "--balloon",
            s,
            &[
                "size",
                "deflate_on_oom",
                "stats",
                "free_page_hinting",
                "free_page_reporting",
            ],
        )?;
        Ok(Self {
            amount_mib: o.number("size")?.unwrap_or(0),
            deflate_on_oom: o.flag("deflate_on_oom")?,
            stats_interval_s: o.number("stats")?.unwrap_or(0),
            free_page_hinting: o.flag("free_page_hinting")?,
            free_page_reporting: o.flag("free_page_reporting")?,
        })
    }
}

/// One virtio-pmem device: `--pmem path=FILE[,readonly][,id=NAME][,iops=N]
/// [,bandwidth=BYTES/s]`. The host file is mapped into guest physical memory above RAM
/// (rounded up to 2 MiB); the guest sees it as `/dev/pmemN`. `iops` limits the guest's
/// flushes (`msync` calls) per second and `bandwidth` the bytes they cover (each counts
/// the whole file), as Firecracker's pmem `rate_limiter`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PmemConfig {
    /// Name of the device (Firecracker's `id`); `pmem<N>` when not given.
    pub id: Option<String>,
    /// The backing file (or block device) on the host.
    pub path: PathBuf,
    /// Mapped read-only: the guest's writes never reach the file.
    pub readonly: bool,
    /// Limits on flushes (operations) and the bytes they cover.
    #[serde(default)]
    pub rate_limit: RateLimit,
}

impl FromStr for PmemConfig {
    type Err = DeviceOptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut o = Options::parse(
            "--pmem",
            s,
            &["id", "path", "readonly", "iops", "bandwidth"],
        )?;
        Ok(Self {
            id: o.value("id")?,
            path: PathBuf::from(o.required("path")?),
            readonly: o.flag("readonly")?,
            rate_limit: RateLimit {
                ops_per_sec: o.rate("iops")?,
                bytes_per_sec: o.rate("bandwidth")?,
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_form() {
        let d: DiskConfig =
            "path=/r.img,readonly,format=qcow2,serial=ABC,iops=100,bandwidth=10M/s,io=sync,id=root"
                .parse()
                .unwrap();
        assert_eq!(d.path, PathBuf::from("/r.img"));
        assert!(d.readonly);
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.serial.as_deref(), Some("ABC"));
        assert_eq!(d.rate_limit.ops_per_sec, Some(100));
        assert_eq!(d.rate_limit.bytes_per_sec, Some(10 << 20));
        assert_eq!(d.io_engine, IoEngine::Sync);
        assert_eq!(d.id.as_deref(), Some("root"));
    }

    #[test]
    fn disk_defaults() {
        let d: DiskConfig = "path=a.img".parse().unwrap();
        assert!(!d.readonly);
        assert_eq!(d.format, DiskFormat::Raw);
        assert_eq!(d.io_engine, IoEngine::Auto);
        assert!(!d.rate_limit.is_limited());
        assert!(
            !"path=a.img,readonly=off"
                .parse::<DiskConfig>()
                .unwrap()
                .readonly
        );
    }

    #[test]
    fn disk_errors_name_the_problem() {
        for (text, needle) in [
            ("", "empty"),
            ("readonly", "'path=' is required"),
            ("path=", "needs a value"),
            ("path=a,colour=red", "unknown key 'colour'"),
            ("path=a,path=b", "given twice"),
            ("path=a,format=vmdk", "raw or qcow2"),
            ("path=a,iops=0", "positive"),
            ("path=a,iops=x", "positive"),
            ("path=a,readonly=maybe", "on or off"),
            ("path=a,serial=123456789012345678901", "at most 20"),
            ("path=a,io=aio", "auto, sync or uring"),
        ] {
            let e = text.parse::<DiskConfig>().unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert!(e.to_string().starts_with("invalid --disk"), "{e}");
        }
    }

    #[test]
    fn net_forms() {
        let n: NetConfig = "tap=vt0,mac=02:00:00:00:00:01,bandwidth=1G,tx_pps=5000"
            .parse()
            .unwrap();
        assert_eq!(n.tap, "vt0");
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(n.rx_rate_limit.bytes_per_sec, Some(1 << 30));
        assert_eq!(n.rx_rate_limit.ops_per_sec, None);
        assert_eq!(n.tx_rate_limit.ops_per_sec, Some(5000));
        assert_eq!(n.mtu, None);
        assert_eq!(
            "tap=x,mtu=9000".parse::<NetConfig>().unwrap().mtu,
            Some(9000)
        );
        for (text, needle) in [
            ("tap=x,mtu=67", "outside 68..=65535"),
            ("tap=x,mtu=65536", "outside 68..=65535"),
            ("mac=02:00:00:00:00:01", "'tap=' is required"),
            ("tap=x,mac=02:00:00:00:00", "not a MAC"),
            ("tap=x,mac=02:00:00:00:00:0g", "not a MAC"),
            ("tap=sixteen-chars-xy", "15 characters"),
        ] {
            let e = text.parse::<NetConfig>().unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn vsock_forms() {
        let v: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!(v.cid, 3);
        assert_eq!(v.socket, PathBuf::from("/tmp/v.sock"));
        for (text, needle) in [
            ("cid=2,socket=/x", "at least 3"),
            ("socket=/x", "'cid=' is required"),
            ("cid=3", "'socket=' is required"),
            ("cid=99999999999,socket=/x", "at least 3"),
        ] {
            let e = text.parse::<VsockConfig>().unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn balloon_forms() {
        assert_eq!(
            "".parse::<BalloonConfig>().unwrap(),
            BalloonConfig::default()
        );
        let b: BalloonConfig = "deflate_on_oom,stats=5,size=64".parse().unwrap();
        assert!(b.deflate_on_oom);
        assert_eq!(b.stats_interval_s, 5);
        assert_eq!(b.amount_mib, 64);
        assert!(!b.free_page_reporting);
        assert!(!b.free_page_hinting);
        let b: BalloonConfig = "free_page_hinting,free_page_reporting".parse().unwrap();
        assert!(b.free_page_hinting && b.free_page_reporting);
        assert!("stats=x".parse::<BalloonConfig>().is_err());
        // A VmConfig saved before hinting existed (a snapshot's) still reads.
        let old: BalloonConfig = serde_json::from_str(
            r#"{"amount_mib": 1, "deflate_on_oom": false, "stats_interval_s": 0, "free_page_reporting": true}"#,
        )
        .unwrap();
        assert!(!old.free_page_hinting && old.free_page_reporting);
    }

    #[test]
    fn pmem_forms() {
        let p: PmemConfig = "path=/p.img,readonly,id=root,iops=10,bandwidth=1G"
            .parse()
            .unwrap();
        assert_eq!(p.path, PathBuf::from("/p.img"));
        assert!(p.readonly);
        assert_eq!(p.id.as_deref(), Some("root"));
        assert_eq!(p.rate_limit.ops_per_sec, Some(10));
        assert_eq!(p.rate_limit.bytes_per_sec, Some(1 << 30));
        let plain: PmemConfig = "path=p".parse().unwrap();
        assert!(!plain.readonly);
        assert_eq!(plain.id, None);
        assert!(!plain.rate_limit.is_limited());
        for (text, needle) in [
            ("readonly", "'path=' is required"),
            ("path=a,format=raw", "unknown key 'format'"),
            ("path=a,iops=0", "positive"),
        ] {
            let e = text.parse::<PmemConfig>().unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert!(e.to_string().starts_with("invalid --pmem"), "{e}");
        }
    }
}
