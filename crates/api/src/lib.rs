//! Vireo's configuration types: what a VM is made of, before it is built.
//!
//! These are plain data shared by every front end (the command line, the HTTP API, the
//! host manager later). Parsing user text into them reports clear errors; checking
//! them against the host (KVM limits, memory) is the VMM's job. [`firecracker`] holds
//! the Firecracker-compatible API bodies and [`action`] the requests the API thread sends
//! to the VMM.

pub mod action;
pub mod cpu_template;
mod devices;
pub mod firecracker;
mod mmds;
mod size;

pub use cpu_template::{CpuTemplate, CustomCpuTemplate, StaticCpuTemplate};
pub use devices::{
    BalloonConfig, Burst, DISK_SERIAL_MAX, DeviceOptionError, DiskConfig, DiskFormat, IoEngine,
    MTU_RANGE, NetConfig, PmemConfig, RateLimit, VsockConfig, parse_mac,
};
pub use mmds::{DEFAULT_MMDS_IPV4, MmdsConfig, MmdsVersion};
pub use size::{SizeError, parse_size};

use std::path::PathBuf;

/// Default guest memory: 128 MiB, as Firecracker's default machine.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Default kernel command line when the user gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SerialConfig {
    /// The VMM's standard input and output (raw mode while a terminal).
    #[default]
    Stdio,
    /// Appended to a file; no input.
    File(PathBuf),
    /// Discarded; the port still exists so the guest sees a UART.
    None,
    /// A Unix socket the VMM listens on (replacing a stale socket file there, removed
    /// when the VMM shuts down). One client at a time, a new connection replacing the
    /// previous one: it gets the guest's output and its bytes are the guest's input.
    /// Output no client has taken yet (none connected, or one too slow) waits in a
    /// bounded buffer of the newest bytes and goes to the next client first.
    Socket(PathBuf),
}

impl std::str::FromStr for SerialConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(Self::Stdio),
            "none" => Ok(Self::None),
            _ => {
                let path = |prefix| s.strip_prefix(prefix).filter(|p: &&str| !p.is_empty());
                if let Some(p) = path("file:") {
                    Ok(Self::File(PathBuf::from(p)))
                } else if let Some(p) = path("socket:") {
                    Ok(Self::Socket(PathBuf::from(p)))
                } else {
                    Err(format!(
                        "invalid serial '{s}': expected stdio, none, file:PATH or socket:PATH"
                    ))
                }
            }
        }
    }
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// Kernel image: bzImage, ELF vmlinux, or ELF with a PVH entry note.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; [`DEFAULT_CMDLINE`] when `None`.
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Two threads per core in the CPU topology the guest sees (Firecracker's `smt`);
    /// `vcpus` is then 1 or even.
    #[serde(default)]
    pub smt: bool,
    /// Guest memory in bytes (whole 4 KiB pages).
    pub memory_bytes: u64,
    /// Serial console destination.
    pub serial: SerialConfig,
    /// Limit on the console's output (its bytes per second and burst; the rest of
    /// [`RateLimit`] is unused): bytes past it are dropped.
    #[serde(default)]
    pub serial_rate_limit: RateLimit,
    /// virtio-blk disks, in the order the guest sees them.
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs.
    pub nets: Vec<NetConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Whether the guest gets a virtio-rng entropy device.
    pub rng: bool,
    /// Limits on the entropy device: requests and bytes per second.
    #[serde(default)]
    pub rng_rate_limit: RateLimit,
    /// The memory balloon, if any.
    pub balloon: Option<BalloonConfig>,
    /// KVM logs the pages the guest dirties, so a diff snapshot can write only those.
    pub track_dirty_pages: bool,
    /// Firecracker's boot timer: a device in the first MMIO window (0xd000_0000) that
    /// logs the time since the VM was built when the guest writes 123 to it (its init,
    /// once booted); the virtio windows then start one page higher.
    #[serde(default)]
    pub boot_timer: bool,
    /// Guest RAM from the host's 2 MiB hugetlb pages (Firecracker's `huge_pages: "2M"`);
    /// the memory must be a whole number of them and the host must have them reserved
    /// (`vm.nr_hugepages`).
    #[serde(default)]
    pub huge_pages: bool,
    /// The metadata service: which NICs (by id) answer its address, and how.
    #[serde(default)]
    pub mmds: Option<MmdsConfig>,
    /// The CPU template each vCPU's CPUID and MSRs are built with (Firecracker's static
    /// `cpu_template` or a custom `cpu-config`); `None`: what KVM offers, normalised.
    #[serde(default)]
    pub cpu_template: Option<CpuTemplate>,
    /// virtio-pmem devices, in the order the guest numbers them (`/dev/pmem0`...).
    #[serde(default)]
    pub pmem: Vec<PmemConfig>,
}

impl VmConfig {
    /// A config with Vireo's defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            vcpus: 1,
            smt: false,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            serial: SerialConfig::default(),
            serial_rate_limit: RateLimit::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            rng: false,
            rng_rate_limit: RateLimit::default(),
            balloon: None,
            track_dirty_pages: false,
            boot_timer: false,
            huge_pages: false,
            mmds: None,
            cpu_template: None,
            pmem: Vec::new(),
        }
    }

    /// The command line the guest gets.
    pub fn cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_parses_each_form() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("none".parse(), Ok(SerialConfig::None));
        assert_eq!(
            "file:/tmp/x.log".parse(),
            Ok(SerialConfig::File("/tmp/x.log".into()))
        );
        assert_eq!(
            "socket:/run/vm/console.sock".parse(),
            Ok(SerialConfig::Socket("/run/vm/console.sock".into()))
        );
        assert_eq!(
            "socket:rel/c.sock".parse(),
            Ok(SerialConfig::Socket("rel/c.sock".into()))
        );
        for bad in [
            "",
            "file:",
            "socket:",
            "tty",
            "File:/x",
            "Socket:/x",
            "unix:/x",
        ] {
            let err = bad.parse::<SerialConfig>().unwrap_err();
            assert!(
                err.contains("expected stdio, none, file:PATH or socket:PATH"),
                "{err}"
            );
        }
    }

    #[test]
    fn default_cmdline_until_one_is_given() {
        let mut config = VmConfig::new("/k");
        assert_eq!(config.cmdline(), DEFAULT_CMDLINE);
        config.cmdline = Some("console=ttyS0".into());
        assert_eq!(config.cmdline(), "console=ttyS0");
    }
}
