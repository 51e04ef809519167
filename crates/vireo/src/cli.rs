//! The command line: `vireo run ...` (parsed into a [`VmConfig`]), `vireo probe-kvm` and
//! `vireo vhost-user <device> ...` (one device model served to a vhost-user frontend).

use std::path::PathBuf;

use api::{
    BalloonConfig, DiskConfig, NetConfig, PmemConfig, SerialConfig, VmConfig, VsockConfig,
    parse_size,
};
use clap::{Args, Parser, Subcommand};

/// `vireo --version`: first the version of Firecracker's API Vireo serves, where
/// Firecracker prints its own (`Firecracker v1.17.0`; launchers such as Kata parse that
/// word), then Vireo's own version.
pub const VERSION: &str = concat!(
    "v1.17.0 (the Firecracker API it serves; Vireo ",
    env!("CARGO_PKG_VERSION"),
    ")"
);

/// Vireo: a KVM virtual machine monitor. One process runs one VM.
///
/// Without a subcommand Vireo is a drop-in for Firecracker: it serves Firecracker's API on
/// --api-sock (default /run/firecracker.socket) and takes Firecracker's flags.
#[derive(Parser, Debug)]
#[command(name = "vireo", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    /// Log level: off, error, warn (Warning), info, debug or trace, any case [default:
    /// warn on stderr, info with --log-path].
    #[arg(long, visible_alias = "level", global = true, env = "VIREO_LOG", value_parser = parse_level)]
    pub log_level: Option<log::LevelFilter>,
    /// Write the log to this file or named pipe (appended to) instead of stderr.
    #[arg(long, global = true, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Log only what this module (a Rust path prefix, e.g. `api_server`) logs.
    #[arg(long, global = true, value_name = "MODULE")]
    pub module: Option<String>,
    /// Put each line's level in it.
    #[arg(long, global = true)]
    pub show_level: bool,
    /// Put each line's source file and line in it.
    #[arg(long, global = true)]
    pub show_log_origin: bool,

    /// Serve Firecracker's API on this Unix socket; the VM is configured and started
    /// through it (no subcommand) [default: /run/firecracker.socket].
    #[arg(long, value_name = "PATH", conflicts_with = "no_api")]
    pub api_sock: Option<PathBuf>,
    /// Configure the VM from this JSON file (what `GET /vm/config` returns) and boot it
    /// at once (no subcommand).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// No API socket: boot from --config-file alone.
    #[arg(long, requires = "config_file")]
    pub no_api: bool,
    /// The instance id `GET /` reports and log lines carry.
    #[arg(long, default_value = "anonymous-instance", value_name = "ID")]
    pub id: String,
    /// Largest API request body, in bytes.
    #[arg(long, default_value_t = 51_200, value_name = "BYTES")]
    pub http_api_max_payload_size: usize,

    /// Firecracker's other flags (no subcommand).
    #[command(flatten)]
    pub firecracker: FirecrackerArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The flags Firecracker's launchers (its jailer, SDKs, Kata) pass, for the API mode.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Firecracker's flags")]
pub struct FirecrackerArgs {
    /// Write metrics here (as `PUT /metrics` does): a JSON line per flush.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Firecracker's boot timer device at 0xd0000000 (the guest's init writes 123 there);
    /// the boot time is logged at info level.
    #[arg(long = "boot-timer", id = "fc_boot_timer")]
    pub boot_timer: bool,
    /// When the launcher started this process, in µs of CLOCK_MONOTONIC (the jailer
    /// passes it): the API server's startup time is measured from it.
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// The process CPU time when the launcher started it, in µs.
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// CPU time the launcher spent before this process, in µs (added to the startup CPU
    /// time).
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// Run without seccomp filters (Vireo installs none yet: accepted, changes nothing).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// Seccomp filters to install (refused: Vireo has no seccomp support yet, and running
    /// unfiltered when filters were asked for would be wrong).
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
    /// The metadata service's document at start: a JSON file (as `PUT /mmds`).
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Largest metadata service document, in bytes of JSON (default: the API's
    /// largest request body, --http-api-max-payload-size).
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<usize>,
    /// Firecracker's PCI transport (refused: Vireo's devices are virtio-mmio).
    #[arg(long)]
    pub enable_pci: bool,
}

impl FirecrackerArgs {
    /// Whether any of these flags was given.
    pub fn any(&self) -> bool {
        self.metrics_path.is_some()
            || self.boot_timer
            || self.start_time_us.is_some()
            || self.start_time_cpu_us.is_some()
            || self.parent_cpu_time_us.is_some()
            || self.no_seccomp
            || self.seccomp_filter.is_some()
            || self.metadata.is_some()
            || self.mmds_size_limit.is_some()
            || self.enable_pci
    }

    /// What Vireo cannot do of what these flags ask, as an error to exit with.
    pub fn refusal(&self) -> Option<String> {
        if self.seccomp_filter.is_some() {
            return Some(
                "--seccomp-filter: Vireo does not install seccomp filters yet; \
                 run with --no-seccomp to go on without them"
                    .into(),
            );
        }
        if self.enable_pci {
            return Some("--enable-pci: Vireo's devices are virtio-mmio; it has no PCI".into());
        }
        None
    }
}

/// The logger the flags ask for: `None` keeps stderr in Vireo's own short format.
pub fn logger_config(cli: &Cli) -> Option<api::firecracker::Logger> {
    if cli.log_path.is_none() && cli.module.is_none() && !cli.show_level && !cli.show_log_origin {
        return None;
    }
    Some(api::firecracker::Logger {
        log_path: cli
            .log_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        level: Some(level_of(cli.log_level.unwrap_or(log::LevelFilter::Info))),
        show_level: Some(cli.show_level),
        show_log_origin: Some(cli.show_log_origin),
        module: cli.module.clone(),
    })
}

fn level_of(filter: log::LevelFilter) -> api::firecracker::LogLevel {
    use api::firecracker::LogLevel;
    match filter {
        log::LevelFilter::Off => LogLevel::Off,
        log::LevelFilter::Error => LogLevel::Error,
        log::LevelFilter::Warn => LogLevel::Warning,
        log::LevelFilter::Info => LogLevel::Info,
        log::LevelFilter::Debug => LogLevel::Debug,
        log::LevelFilter::Trace => LogLevel::Trace,
    }
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a Linux kernel (bzImage, ELF vmlinux or PVH ELF) in a new VM.
    Run(Box<RunArgs>),
    /// Check that KVM runs the instructions Linux needs (complete or incomplete), and time
    /// a tiny guest loop (hardware-fast or emulated-slow).
    ProbeKvm(ProbeArgs),
    /// Serve one virtio device to a vhost-user frontend (QEMU...) on a Unix socket, until
    /// the frontend disconnects.
    #[command(subcommand)]
    VhostUser(Box<VhostUserCommand>),
    /// Serve the guest memory of a snapshot loaded with the Uffd memory backend (by Vireo
    /// or Firecracker) from its memory file, until the VMM goes; then print what was
    /// served as a JSON line.
    UffdHandler(UffdHandlerArgs),
}

/// `vireo uffd-handler`.
#[derive(Args, Debug)]
pub struct UffdHandlerArgs {
    /// Listen here (the `backend_path` of the load); it must not exist.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The snapshot's memory file.
    #[arg(long, value_name = "FILE")]
    pub mem_file: PathBuf,
}

/// `vireo vhost-user` devices.
#[derive(Subcommand, Debug)]
pub enum VhostUserCommand {
    /// A virtio-blk disk.
    Blk {
        /// The socket options.
        #[command(flatten)]
        socket: SocketArg,
        /// The disk: path=FILE[,readonly][,format=raw|qcow2][,serial=ID][,iops=N]
        /// [,bandwidth=BYTES/s][,io=auto|sync|uring].
        #[arg(long, value_name = "path=FILE,...")]
        disk: DiskConfig,
    },
    /// A virtio-net NIC on a host TAP device.
    Net {
        /// The socket options.
        #[command(flatten)]
        socket: SocketArg,
        /// The NIC: tap=NAME[,mac=MAC][,id=NAME][,bandwidth=BYTES/s][,pps=N]
        /// [,rx_/tx_ variants].
        #[arg(long, value_name = "tap=NAME,...")]
        net: NetConfig,
    },
    /// A virtio-vsock device whose host side is a Unix socket (as `vireo run --vsock`).
    Vsock {
        /// The socket options.
        #[command(flatten)]
        socket: SocketArg,
        /// The guest CID and the host-side socket: cid=N,socket=PATH.
        #[arg(long, value_name = "cid=N,socket=PATH")]
        vsock: VsockConfig,
    },
    /// A virtio-rng entropy device fed from the host's getrandom.
    Rng {
        /// The socket options.
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// Where a vhost-user backend listens.
#[derive(Args, Debug)]
pub struct SocketArg {
    /// The Unix socket to create and listen on (a stale socket there is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
}

/// A level as Vireo or Firecracker spells it (`Warning`), in any case.
fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    let level = if text.eq_ignore_ascii_case("warning") {
        "warn"
    } else {
        text
    };
    level.parse().map_err(|_| {
        format!("invalid log level '{text}': expected off, error, warn, info, debug or trace")
    })
}

/// `vireo run` options.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel image: bzImage, ELF vmlinux, or ELF with a PVH entry note.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Guest memory: a number of MiB, or with a K, M, G or T suffix.
    #[arg(long, default_value = "128M", value_name = "SIZE")]
    pub memory: String,
    /// Serial console: stdio, file:PATH, socket:PATH (a Unix socket vireo listens on, one
    /// client at a time; output waits for it in a 64 KiB buffer) or none.
    #[arg(
        long,
        default_value = "stdio",
        value_name = "stdio|file:PATH|socket:PATH|none"
    )]
    pub serial: SerialConfig,
    /// A virtio-blk disk (repeatable): path=FILE[,readonly][,format=raw|qcow2][,serial=ID]
    /// [,iops=N][,bandwidth=BYTES/s][,io=auto|sync|uring][,id=NAME].
    #[arg(long = "disk", value_name = "path=FILE,...")]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net NIC on a host TAP device (repeatable): tap=NAME[,mac=MAC][,id=NAME]
    /// [,bandwidth=BYTES/s][,pps=N][,rx_/tx_ variants].
    #[arg(long = "net", value_name = "tap=NAME,...")]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device whose host side is a Unix socket: cid=N,socket=PATH.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<VsockConfig>,
    /// A virtio-rng entropy device fed from the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-balloon: [size=MIB][,deflate_on_oom][,stats=SECONDS][,free_page_hinting]
    /// [,free_page_reporting] (hinting runs are started through the API only).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "")]
    pub balloon: Option<BalloonConfig>,
    /// A virtio-pmem device (repeatable): path=FILE[,readonly][,id=NAME][,iops=N]
    /// [,bandwidth=BYTES/s]. The file is mapped above guest RAM (its size rounded up to
    /// 2 MiB); the guest sees /dev/pmem0, /dev/pmem1... in this order.
    #[arg(long = "pmem", value_name = "path=FILE,...")]
    pub pmem: Vec<PmemConfig>,
    /// Firecracker's boot timer at 0xd0000000: the guest writes 123 there once booted and
    /// Vireo logs the boot time (at info level: --log-level info).
    #[arg(long)]
    pub boot_timer: bool,
    /// Guest memory from the host's 2 MiB huge pages (reserved beforehand with
    /// `sysctl vm.nr_hugepages=N`); --memory must be a multiple of 2 MiB.
    #[arg(long)]
    pub huge_pages: bool,
}

/// `vireo probe-kvm` options.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Iterations of the timed loop (two instructions each).
    #[arg(long, default_value_t = 1_000_000)]
    pub iterations: u32,
}

impl RunArgs {
    /// The VM config these options describe.
    pub fn into_config(self) -> Result<VmConfig, String> {
        let memory_bytes = parse_size(&self.memory).map_err(|e| format!("--memory: {e}"))?;
        Ok(VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.cpus,
            smt: false,
            memory_bytes,
            serial: self.serial,
            serial_rate_limit: api::RateLimit::default(),
            disks: self.disks,
            nets: self.nets,
            vsock: self.vsock,
            rng: self.rng,
            rng_rate_limit: api::RateLimit::default(),
            balloon: self.balloon,
            track_dirty_pages: false,
            boot_timer: self.boot_timer,
            huge_pages: self.huge_pages,
            cpu_template: None,
            // The metadata service is configured through the API (`/mmds/config`).
            mmds: None,
            pmem: self.pmem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vireo").chain(args.iter().copied()))
    }

    #[test]
    fn run_with_every_option() {
        let cli = parse(&[
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--serial",
            "file:/tmp/s",
            "--pmem",
            "path=/p0.img",
            "--pmem",
            "path=/p1.img,readonly,id=ro",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("not run")
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.initrd, Some(PathBuf::from("/i")));
        assert_eq!(config.cmdline(), "console=ttyS0 quiet");
        assert_eq!((config.vcpus, config.memory_bytes), (2, 1 << 30));
        assert_eq!(config.serial, SerialConfig::File("/tmp/s".into()));
        assert_eq!(config.pmem.len(), 2);
        assert_eq!(config.pmem[0].path, PathBuf::from("/p0.img"));
        assert!(config.pmem[1].readonly);
        assert_eq!(config.pmem[1].id.as_deref(), Some("ro"));
    }

    #[test]
    fn defaults() {
        let Some(Command::Run(args)) = parse(&["run", "--kernel", "/k"]).unwrap().command else {
            panic!("not run")
        };
        let config = args.into_config().unwrap();
        assert_eq!((config.vcpus, config.memory_bytes), (1, 128 << 20));
        assert_eq!(config.serial, SerialConfig::Stdio);
        assert_eq!(config.cmdline(), api::DEFAULT_CMDLINE);
    }

    #[test]
    fn serial_on_a_socket() {
        let cli = parse(&["run", "--kernel", "/k", "--serial", "socket:/run/vm/c.sock"]).unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            args.into_config().unwrap().serial,
            SerialConfig::Socket("/run/vm/c.sock".into())
        );
        let err = parse(&["run", "--kernel", "/k", "--serial", "socket:"]).unwrap_err();
        assert!(err.to_string().contains("socket:PATH"), "{err}");
    }

    #[test]
    fn malformed_values_are_refused() {
        let Some(Command::Run(args)) = parse(&["run", "--kernel", "/k", "--memory", "lots"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert!(
            args.into_config()
                .unwrap_err()
                .starts_with("--memory: invalid size 'lots'")
        );
        assert!(parse(&["run", "--kernel", "/k", "--cpus", "-1"]).is_err());
        assert!(parse(&["run", "--kernel", "/k", "--serial", "tty"]).is_err());
        assert!(parse(&["run"]).is_err(), "--kernel is required");
    }

    #[test]
    fn api_flags_without_a_subcommand() {
        let cli = parse(&["--api-sock", "/tmp/a.sock"]).unwrap();
        assert_eq!(cli.api_sock, Some(PathBuf::from("/tmp/a.sock")));
        assert!(cli.command.is_none());
        assert_eq!(cli.id, "anonymous-instance");
        let cli = parse(&["--no-api", "--config-file", "/c.json"]).unwrap();
        assert!(cli.no_api);
        assert!(
            parse(&["--no-api"]).is_err(),
            "--no-api needs --config-file"
        );
        assert!(parse(&["--no-api", "--api-sock", "/a", "--config-file", "/c"]).is_err());
    }

    #[test]
    fn firecrackers_log_flags() {
        use api::firecracker::LogLevel;
        // Its spellings, any case; none given: stderr keeps Vireo's own format.
        for (text, level) in [
            ("Warning", log::LevelFilter::Warn),
            ("INFO", log::LevelFilter::Info),
            ("off", log::LevelFilter::Off),
        ] {
            assert_eq!(parse(&["--level", text]).unwrap().log_level, Some(level));
        }
        assert!(logger_config(&parse(&["--level", "debug"]).unwrap()).is_none());
        // A log path alone is at Info, as Firecracker's.
        let config = logger_config(&parse(&["--log-path", "/l"]).unwrap()).unwrap();
        assert_eq!(config.log_path.as_deref(), Some("/l"));
        assert_eq!(config.level, Some(LogLevel::Info));
        let cli = parse(&[
            "--log-path",
            "/l",
            "--level",
            "Trace",
            "--show-level",
            "--show-log-origin",
            "--module",
            "api_server",
        ])
        .unwrap();
        let config = logger_config(&cli).unwrap();
        assert_eq!(config.level, Some(LogLevel::Trace));
        assert_eq!(
            (config.show_level, config.show_log_origin),
            (Some(true), Some(true))
        );
        assert_eq!(config.module.as_deref(), Some("api_server"));
    }

    #[test]
    fn firecrackers_other_flags() {
        let cli = parse(&[
            "--boot-timer",
            "--start-time-us",
            "12",
            "--start-time-cpu-us",
            "3",
            "--parent-cpu-time-us",
            "4",
            "--no-seccomp",
            "--mmds-size-limit",
            "1024",
        ])
        .unwrap();
        let fc = &cli.firecracker;
        assert!(fc.any() && fc.boot_timer && fc.no_seccomp);
        assert_eq!(
            (fc.start_time_us, fc.start_time_cpu_us),
            (Some(12), Some(3))
        );
        assert!(fc.refusal().is_none());
        assert!(!parse(&[]).unwrap().firecracker.any());
        assert!(parse(&["--no-seccomp", "--seccomp-filter", "/f"]).is_err());
        let refused = parse(&["--seccomp-filter", "/f"]).unwrap().firecracker;
        assert!(refused.refusal().unwrap().contains("--no-seccomp"));
        // `run` has a --boot-timer of its own.
        let Some(Command::Run(args)) = parse(&["run", "--kernel", "/k", "--boot-timer"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert!(args.boot_timer);
    }

    #[test]
    fn vhost_user_devices() {
        let cli = parse(&[
            "vhost-user",
            "blk",
            "--socket",
            "/tmp/s",
            "--disk",
            "path=/d.img,readonly,serial=abc",
        ])
        .unwrap();
        let Some(Command::VhostUser(device)) = cli.command else {
            panic!("not vhost-user")
        };
        let VhostUserCommand::Blk { socket, disk } = *device else {
            panic!("not vhost-user blk")
        };
        assert_eq!(socket.socket, PathBuf::from("/tmp/s"));
        assert_eq!(disk.path, PathBuf::from("/d.img"));
        assert!(disk.readonly);
        assert_eq!(disk.serial.as_deref(), Some("abc"));

        let cli = parse(&["vhost-user", "rng", "--socket", "/tmp/r"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::VhostUser(d)) if matches!(*d, VhostUserCommand::Rng { .. })
        ));
        assert!(
            parse(&["vhost-user", "rng"]).is_err(),
            "--socket is required"
        );
        assert!(parse(&["vhost-user", "blk", "--socket", "/s"]).is_err());

        let cli = parse(&[
            "vhost-user",
            "net",
            "--socket",
            "/tmp/n",
            "--net",
            "tap=vt0,mac=02:00:00:00:00:07",
        ])
        .unwrap();
        let Some(Command::VhostUser(device)) = cli.command else {
            panic!("not vhost-user")
        };
        let VhostUserCommand::Net { net, .. } = *device else {
            panic!("not vhost-user net")
        };
        assert_eq!(net.tap, "vt0");
        assert_eq!(net.mac, Some([2, 0, 0, 0, 0, 7]));

        let cli = parse(&[
            "vhost-user",
            "vsock",
            "--socket",
            "/tmp/v",
            "--vsock",
            "cid=3,socket=/tmp/h",
        ])
        .unwrap();
        let Some(Command::VhostUser(device)) = cli.command else {
            panic!("not vhost-user")
        };
        let VhostUserCommand::Vsock { vsock, .. } = *device else {
            panic!("not vhost-user vsock")
        };
        assert_eq!((vsock.cid, vsock.socket), (3, PathBuf::from("/tmp/h")));
        assert!(parse(&["vhost-user", "net", "--socket", "/s", "--net", "mac=1"]).is_err());
        assert!(parse(&["vhost-user", "vsock", "--socket", "/s", "--vsock", "cid=3"]).is_err());
        assert!(parse(&["vhost-user", "blk", "--socket", "/s", "--disk", "x=1"]).is_err());
    }
}
