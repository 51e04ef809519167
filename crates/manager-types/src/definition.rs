//! A VM definition: the TOML file a user gives `vireoctl define`, with `vireo`'s
//! configuration (`[machine]`, the fields and device syntax of `vireo run`) plus the
//! manager's own: a name, resources, autostart and a restart policy.
//!
//! ```toml
//! name = "web1"
//! autostart = true
//! restart = "on-failure"          # "no" (default), "on-failure", "always"
//!
//! [machine]
//! kernel = "/var/lib/vireo/vmlinux"
//! initrd = "/var/lib/vireo/initrd.gz"
//! cmdline = "console=ttyS0 reboot=k panic=1"
//! cpus = 2
//! memory = "512M"
//! disks = ["path=/var/lib/vireo/web1.qcow2,format=qcow2"]
//! nets = ["tap=vnet0,mac=06:00:ac:10:00:02"]
//! vsock = "cid=3,socket=/run/vireo/web1.vsock"
//! rng = true
//! balloon = "stats=5,deflate_on_oom"
//!
//! [resources]
//! cpu_weight = 100                # cgroup cpu.weight, 1..=10000
//! cpu_quota = "50%"               # of one CPU per period; "150%" is 1.5 CPUs
//! cpuset = "0-1"
//! memory_max = "1G"
//! memory_high = "768M"
//! io_weight = 100                 # 1..=10000
//! pids_max = 256
//! nice = 5                        # -20..=19
//! io_read_bps = "100M"            # per host block device holding a disk of the VM
//! io_write_bps = "50M"
//! io_read_iops = 2000
//! io_write_iops = 1000
//! ```
//!
//! Every error names the file, the line and column, and the field (`machine.disks[1]`),
//! and nothing is half-parsed: a definition is whole or refused.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use api::{BalloonConfig, DiskConfig, NetConfig, VmConfig, VsockConfig};
use serde::Deserialize;
use toml::Spanned;

/// Longest VM name.
pub const MAX_NAME_LEN: usize = 64;

/// What to do when a VM's `vireo` process ends without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it stopped (crashed, with its exit status).
    #[default]
    No,
    /// Restart it if it failed (exit code other than 0, or a signal).
    OnFailure,
    /// Restart it whenever it ends, unless the user stopped it.
    Always,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        })
    }
}

/// The host resources a VM gets (its cgroup and its process); `None`: the host's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// cgroup v2 `cpu.weight` (v1: `cpu.shares` scaled), 1..=10000.
    pub cpu_weight: Option<u32>,
    /// CPU time per period, in percent of one CPU (`cpu.max` / `cpu.cfs_quota_us`).
    pub cpu_quota_percent: Option<u32>,
    /// Host CPUs the VM may run on (`cpuset.cpus`), as the kernel's list syntax.
    pub cpuset: Option<String>,
    /// Hard memory limit in bytes (`memory.max`).
    pub memory_max: Option<u64>,
    /// Memory above which the VM is throttled and reclaimed, in bytes (`memory.high`).
    pub memory_high: Option<u64>,
    /// `io.weight`, 1..=10000.
    pub io_weight: Option<u32>,
    /// `pids.max`.
    pub pids_max: Option<u32>,
    /// The `vireo` process's nice value, -20..=19.
    pub nice: Option<i32>,
    /// Limits on the block devices holding the VM's disks (`io.max` / blkio throttle).
    pub io_limits: IoLimits,
}

/// I/O limits of a VM, applied to each host block device its disks are on; `None`: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLimits {
    /// Bytes read per second.
    pub read_bps: Option<u64>,
    /// Bytes written per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

impl IoLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.read_bps.is_some()
            || self.write_bps.is_some()
            || self.read_iops.is_some()
            || self.write_iops.is_some()
    }
}

/// A whole, checked VM definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The VM's name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
    pub name: String,
    /// What `vireo` boots.
    pub vm: VmConfig,
    /// Its resources.
    pub resources: Resources,
    /// Started when vireod starts.
    pub autostart: bool,
    /// What to do when its VMM ends by itself.
    pub restart: RestartPolicy,
}

/// A definition that could not be read: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {}{message}", file.display(), field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct DefinitionError {
    /// The file (as the user named it).
    pub file: PathBuf,
    /// 1-based line of the offending text (1 if the whole file is at fault).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a TOML path (`machine.disks[1]`), when one is at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: Spanned<String>,
    #[serde(default)]
    autostart: bool,
    #[serde(default)]
    restart: RestartPolicy,
    machine: RawMachine,
    #[serde(default)]
    resources: RawResources,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    kernel: Spanned<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    cpus: Option<Spanned<u32>>,
    memory: Option<Spanned<String>>,
    #[serde(default)]
    disks: Vec<Spanned<String>>,
    #[serde(default)]
    nets: Vec<Spanned<String>>,
    vsock: Option<Spanned<String>>,
    #[serde(default)]
    rng: bool,
    balloon: Option<Spanned<String>>,
    #[serde(default)]
    track_dirty_pages: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu_weight: Option<Spanned<u32>>,
    cpu_quota: Option<Spanned<String>>,
    cpuset: Option<Spanned<String>>,
    memory_max: Option<Spanned<String>>,
    memory_high: Option<Spanned<String>>,
    io_weight: Option<Spanned<u32>>,
    pids_max: Option<u32>,
    nice: Option<Spanned<i32>>,
    io_read_bps: Option<Spanned<String>>,
    io_write_bps: Option<Spanned<String>>,
    io_read_iops: Option<Spanned<u64>>,
    io_write_iops: Option<Spanned<u64>>,
}

/// Errors found while checking the parsed fields: (byte span, field, message).
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn error(&self, span: Range<usize>, field: Option<String>, message: String) -> DefinitionError {
        let (line, column) = line_column(self.text, span.start);
        DefinitionError {
            file: self.file.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    }

    fn at<T>(
        &self,
        spanned: &Spanned<T>,
        field: &str,
        message: impl fmt::Display,
    ) -> DefinitionError {
        self.error(spanned.span(), Some(field.to_string()), message.to_string())
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Whether `name` is a valid VM name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `"50%"` → 50; 1 to 100 000 percent (1000 CPUs).
fn parse_percent(text: &str) -> Result<u32, String> {
    let number = text
        .strip_suffix('%')
        .ok_or_else(|| format!("'{text}' is not a percentage (e.g. \"50%\")"))?;
    match number.trim().parse::<u32>() {
        Ok(p) if (1..=100_000).contains(&p) => Ok(p),
        _ => Err(format!("'{text}' must be 1% to 100000%")),
    }
}

impl Definition {
    /// Parse and check the definition `text`, read from `file` (named in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Self, DefinitionError> {
        let check = Checker { file, text };
        let raw: RawDefinition = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            check.error(span, None, e.message().trim().to_string())
        })?;

        if !valid_name(raw.name.get_ref()) {
            return Err(check.at(
                &raw.name,
                "name",
                format!(
                    "'{}' is not a valid name (1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ . -, not \
                     starting with . or -)",
                    raw.name.get_ref()
                ),
            ));
        }

        let m = raw.machine;
        let mut vm = VmConfig::new(m.kernel.get_ref());
        if m.kernel.get_ref().as_os_str().is_empty() {
            return Err(check.at(&m.kernel, "machine.kernel", "empty path"));
        }
        vm.initrd = m.initrd;
        vm.cmdline = m.cmdline;
        if let Some(cpus) = &m.cpus {
            if !(1..=254).contains(cpus.get_ref()) {
                return Err(check.at(cpus, "machine.cpus", "must be 1 to 254"));
            }
            vm.vcpus = *cpus.get_ref();
        }
        if let Some(memory) = &m.memory {
            vm.memory_bytes = api::parse_size(memory.get_ref())
                .map_err(|e| check.at(memory, "machine.memory", e))?;
        }
        for (i, disk) in m.disks.iter().enumerate() {
            let field = format!("machine.disks[{i}]");
            vm.disks.push(
                disk.get_ref()
                    .parse::<DiskConfig>()
                    .map_err(|e| check.at(disk, &field, e.reason))?,
            );
        }
        for (i, net) in m.nets.iter().enumerate() {
            let field = format!("machine.nets[{i}]");
            vm.nets.push(
                net.get_ref()
                    .parse::<NetConfig>()
                    .map_err(|e| check.at(net, &field, e.reason))?,
            );
        }
        if let Some(vsock) = &m.vsock {
            vm.vsock = Some(
                vsock
                    .get_ref()
                    .parse::<VsockConfig>()
                    .map_err(|e| check.at(vsock, "machine.vsock", e.reason))?,
            );
        }
        vm.rng = m.rng;
        if let Some(balloon) = &m.balloon {
            vm.balloon = Some(
                balloon
                    .get_ref()
                    .parse::<BalloonConfig>()
                    .map_err(|e| check.at(balloon, "machine.balloon", e.reason))?,
            );
        }
        vm.track_dirty_pages = m.track_dirty_pages;

        let r = raw.resources;
        let weight = |w: &Option<Spanned<u32>>, field: &str| match w {
            Some(w) if !(1..=10_000).contains(w.get_ref()) => {
                Err(check.at(w, field, "must be 1 to 10000"))
            }
            w => Ok(w.as_ref().map(|w| *w.get_ref())),
        };
        let size = |s: &Option<Spanned<String>>, field: &str| {
            s.as_ref()
                .map(|s| api::parse_size(s.get_ref()).map_err(|e| check.at(s, field, e)))
                .transpose()
        };
        // A limit of 0 would stop the VM's I/O: refused (none is written as no key).
        let rate = |raw: &Option<Spanned<String>>, field: &str| match (size(raw, field)?, raw) {
            (Some(0), Some(raw)) => Err(check.at(raw, field, "a limit of 0 stops all I/O")),
            (v, _) => Ok(v),
        };
        let iops = |v: &Option<Spanned<u64>>, field: &str| match v {
            Some(n) if *n.get_ref() == 0 => Err(check.at(n, field, "a limit of 0 stops all I/O")),
            n => Ok(n.as_ref().map(|n| *n.get_ref())),
        };
        let resources = Resources {
            cpu_weight: weight(&r.cpu_weight, "resources.cpu_weight")?,
            cpu_quota_percent: r
                .cpu_quota
                .as_ref()
                .map(|q| {
                    parse_percent(q.get_ref()).map_err(|e| check.at(q, "resources.cpu_quota", e))
                })
                .transpose()?,
            cpuset: match &r.cpuset {
                Some(c) if !valid_cpu_list(c.get_ref()) => {
                    return Err(check.at(
                        c,
                        "resources.cpuset",
                        format!("'{}' is not a CPU list (e.g. \"0-3,6\")", c.get_ref()),
                    ));
                }
                c => c.as_ref().map(|c| c.get_ref().clone()),
            },
            memory_max: size(&r.memory_max, "resources.memory_max")?,
            memory_high: size(&r.memory_high, "resources.memory_high")?,
            io_weight: weight(&r.io_weight, "resources.io_weight")?,
            pids_max: r.pids_max,
            nice: match &r.nice {
                Some(n) if !(-20..=19).contains(n.get_ref()) => {
                    return Err(check.at(n, "resources.nice", "must be -20 to 19"));
                }
                n => n.as_ref().map(|n| *n.get_ref()),
            },
            io_limits: IoLimits {
                read_bps: rate(&r.io_read_bps, "resources.io_read_bps")?,
                write_bps: rate(&r.io_write_bps, "resources.io_write_bps")?,
                read_iops: iops(&r.io_read_iops, "resources.io_read_iops")?,
                write_iops: iops(&r.io_write_iops, "resources.io_write_iops")?,
            },
        };
        if let (Some(high), Some(max), Some(span)) = (
            resources.memory_high,
            resources.memory_max,
            r.memory_high.as_ref(),
        ) && high > max
        {
            return Err(check.at(span, "resources.memory_high", "is above memory_max"));
        }

        Ok(Definition {
            name: raw.name.into_inner(),
            vm,
            resources,
            autostart: raw.autostart,
            restart: raw.restart,
        })
    }

    /// Read and parse the definition file `path`.
    pub fn load(path: &Path) -> Result<Self, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|e| DefinitionError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            field: None,
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(path, &text)
    }
}

/// The kernel's CPU list syntax: `N`, `N-M`, comma-separated.
fn valid_cpu_list(text: &str) -> bool {
    !text.is_empty()
        && text.split(',').all(|part| {
            let mut ends = part.splitn(2, '-').map(|n| n.trim().parse::<u32>());
            match (ends.next(), ends.next()) {
                (Some(Ok(_)), None) => true,
                (Some(Ok(a)), Some(Ok(b))) => a <= b,
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests;
