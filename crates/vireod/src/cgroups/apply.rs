//! [`VmCgroup::apply`]: resources to cgroup files, checked and planned before anything
//! is written (the mapping is in the parent module's docs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use manager_types::Resources;

use super::{
    CPU_PERIOD_US, CgroupError, Kind, VmCgroup, format_cpu_list, parse_cpu_list, read, write_lines,
};

/// A file [`VmCgroup::apply`] wrote, with one value (a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its name (`cpu.max`).
    pub file: String,
    /// The value (without the newline).
    pub value: String,
}

/// A resource left as the host has it, because this host's cgroups cannot set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The [`Resources`] field (or `io_limits`).
    pub field: &'static str,
    /// What is missing (a controller or a file).
    pub missing: String,
}

/// What [`VmCgroup::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every value written, in order.
    pub written: Vec<Written>,
    /// Unset resources this host cannot set (so cannot reset either).
    pub unavailable: Vec<Unavailable>,
}

/// One device's I/O limits (`None`: no limit of that kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLimit {
    /// The block device's major number.
    pub major: u32,
    /// Its minor number.
    pub minor: u32,
    /// Bytes read per second.
    pub read_bps: Option<u64>,
    /// Bytes written per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

impl VmCgroup {
    /// Set the cgroup's files from `r` and `io_limits`, every one (see the module docs).
    /// `r.nice` is not a cgroup setting: [`set_nice`](super::set_nice).
    pub fn apply(&self, r: &Resources, io_limits: &[IoLimit]) -> Result<Applied, CgroupError> {
        let cpus = check(r, io_limits)?;
        let mut plan = Plan {
            cgroup: self,
            steps: Vec::new(),
            unavailable: Vec::new(),
        };
        match &self.kind {
            Kind::V2 { .. } => plan.v2(r, cpus.as_deref(), io_limits)?,
            Kind::V1 { .. } => plan.v1(r, cpus.as_deref(), io_limits)?,
        }
        let mut written = Vec::new();
        for step in plan.steps {
            write_lines(&step.dir, step.file, &step.lines)?;
            written.extend(step.lines.into_iter().map(|value| Written {
                file: step.file.to_string(),
                value,
            }));
        }
        Ok(Applied {
            written,
            unavailable: plan.unavailable,
        })
    }
}

/// Check the values; the parsed CPU list.
fn check(r: &Resources, io_limits: &[IoLimit]) -> Result<Option<Vec<usize>>, CgroupError> {
    let weight = |field, w: Option<u32>| match w {
        Some(w) if !(1..=10_000).contains(&w) => Err(CgroupError::InvalidValue {
            field,
            why: format!("{w} is not 1 to 10000"),
        }),
        _ => Ok(()),
    };
    weight("cpu_weight", r.cpu_weight)?;
    weight("io_weight", r.io_weight)?;
    if r.cpu_quota_percent == Some(0) {
        return Err(CgroupError::InvalidValue {
            field: "cpu_quota_percent",
            why: "must be at least 1 (%)".into(),
        });
    }
    let mut devices = BTreeSet::new();
    for limit in io_limits {
        let device = format!("{}:{}", limit.major, limit.minor);
        let values = [
            limit.read_bps,
            limit.write_bps,
            limit.read_iops,
            limit.write_iops,
        ];
        if values.contains(&Some(0)) {
            return Err(CgroupError::InvalidValue {
                field: "io_limits",
                why: format!("{device}: a limit of 0 (leave it unset for none)"),
            });
        }
        if !devices.insert((limit.major, limit.minor)) {
            return Err(CgroupError::InvalidValue {
                field: "io_limits",
                why: format!("{device} is listed twice"),
            });
        }
    }
    r.cpuset
        .as_deref()
        .map(|text| {
            let cpus = parse_cpu_list(text)?;
            if cpus.is_empty() {
                return Err(CgroupError::CpuList {
                    text: text.to_string(),
                    why: "no CPU".into(),
                });
            }
            Ok(cpus)
        })
        .transpose()
}

/// Files to write, built (and checked against the host) before any is written.
struct Plan<'a> {
    cgroup: &'a VmCgroup,
    steps: Vec<Step>,
    unavailable: Vec<Unavailable>,
}

struct Step {
    dir: PathBuf,
    file: &'static str,
    /// One write(2) each.
    lines: Vec<String>,
}

impl Plan<'_> {
    /// The directory of `controller` for `field`; `None` (noted) if the host lacks it
    /// and the field is unset, an error if it was asked for.
    fn need(
        &mut self,
        field: &'static str,
        asked: bool,
        controller: &'static str,
    ) -> Result<Option<PathBuf>, CgroupError> {
        match self.cgroup.dir_of(controller) {
            Some(dir) => Ok(Some(dir.to_path_buf())),
            None if asked => Err(CgroupError::MissingController { field, controller }),
            None => {
                self.unavailable.push(Unavailable {
                    field,
                    missing: format!("the {controller} controller"),
                });
                Ok(None)
            }
        }
    }

    /// The first of `files` in `dir`, or the same rules as [`Plan::need`].
    fn file(
        &mut self,
        dir: &Path,
        field: &'static str,
        asked: bool,
        files: &[&'static str],
    ) -> Result<Option<&'static str>, CgroupError> {
        if let Some(file) = files.iter().find(|f| dir.join(f).exists()) {
            return Ok(Some(file));
        }
        let names = files.join(" or ");
        if asked {
            return Err(CgroupError::Unsupported { field, file: names });
        }
        self.unavailable.push(Unavailable {
            field,
            missing: names,
        });
        Ok(None)
    }

    fn set(&mut self, dir: &Path, file: &'static str, value: String) {
        self.lines(dir, file, vec![value]);
    }

    fn lines(&mut self, dir: &Path, file: &'static str, lines: Vec<String>) {
        if !lines.is_empty() {
            self.steps.push(Step {
                dir: dir.to_path_buf(),
                file,
                lines,
            });
        }
    }

    fn v2(
        &mut self,
        r: &Resources,
        cpus: Option<&[usize]>,
        io_limits: &[IoLimit],
    ) -> Result<(), CgroupError> {
        if let Some(dir) = self.need("cpu_weight", r.cpu_weight.is_some(), "cpu")? {
            self.set(&dir, "cpu.weight", r.cpu_weight.unwrap_or(100).to_string());
        }
        let asked = r.cpu_quota_percent.is_some();
        if let Some(dir) = self.need("cpu_quota_percent", asked, "cpu")?
            && self
                .file(&dir, "cpu_quota_percent", asked, &["cpu.max"])?
                .is_some()
        {
            let quota = r
                .cpu_quota_percent
                .map_or("max".into(), |p| quota_us(p).to_string());
            self.set(&dir, "cpu.max", format!("{quota} {CPU_PERIOD_US}"));
        }
        if let Some(dir) = self.need("cpuset", cpus.is_some(), "cpuset")? {
            self.set(
                &dir,
                "cpuset.cpus",
                cpus.map(format_cpu_list).unwrap_or_default(),
            );
        }
        for (field, value, file) in [
            ("memory_max", r.memory_max, "memory.max"),
            ("memory_high", r.memory_high, "memory.high"),
        ] {
            if let Some(dir) = self.need(field, value.is_some(), "memory")? {
                self.set(&dir, file, value.map_or("max".into(), |v| v.to_string()));
            }
        }
        if let Some(dir) = self.need("io_weight", r.io_weight.is_some(), "io")? {
            let files = ["io.weight", "io.bfq.weight"];
            match self.file(&dir, "io_weight", r.io_weight.is_some(), &files)? {
                Some("io.weight") => {
                    let w = r.io_weight.unwrap_or(100);
                    self.set(&dir, "io.weight", format!("default {w}"));
                }
                Some(file) => self.set(&dir, file, bfq_weight(r.io_weight).to_string()),
                None => {}
            }
        }
        let asked = !io_limits.is_empty();
        if let Some(dir) = self.need("io_limits", asked, "io")?
            && self.file(&dir, "io_limits", asked, &["io.max"])?.is_some()
        {
            let path = dir.join("io.max");
            let mut lines = Vec::new();
            for device in devices_in(&read(&path)?) {
                if !io_limits.iter().any(|l| (l.major, l.minor) == device) {
                    let (major, minor) = device;
                    lines.push(format!(
                        "{major}:{minor} rbps=max wbps=max riops=max wiops=max"
                    ));
                }
            }
            let max = |v: Option<u64>| v.map_or("max".into(), |v| v.to_string());
            for l in io_limits {
                lines.push(format!(
                    "{}:{} rbps={} wbps={} riops={} wiops={}",
                    l.major,
                    l.minor,
                    max(l.read_bps),
                    max(l.write_bps),
                    max(l.read_iops),
                    max(l.write_iops)
                ));
            }
            self.lines(&dir, "io.max", lines);
        }
        if let Some(dir) = self.need("pids_max", r.pids_max.is_some(), "pids")? {
            self.set(
                &dir,
                "pids.max",
                r.pids_max.map_or("max".into(), |p| p.to_string()),
            );
        }
        Ok(())
    }

    fn v1(
        &mut self,
        r: &Resources,
        cpus: Option<&[usize]>,
        io_limits: &[IoLimit],
    ) -> Result<(), CgroupError> {
        if let Some(dir) = self.need("cpu_weight", r.cpu_weight.is_some(), "cpu")? {
            let shares = r.cpu_weight.map_or(1024, cpu_shares);
            self.set(&dir, "cpu.shares", shares.to_string());
        }
        let asked = r.cpu_quota_percent.is_some();
        if let Some(dir) = self.need("cpu_quota_percent", asked, "cpu")?
            && self
                .file(&dir, "cpu_quota_percent", asked, &["cpu.cfs_quota_us"])?
                .is_some()
        {
            self.set(&dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string());
            let quota = r
                .cpu_quota_percent
                .map_or("-1".into(), |p| quota_us(p).to_string());
            self.set(&dir, "cpu.cfs_quota_us", quota);
        }
        if let Some(dir) = self.need("cpuset", cpus.is_some(), "cpuset")? {
            let parent = dir.parent().unwrap_or(&dir).to_path_buf();
            if read(&dir.join("cpuset.mems"))?.trim().is_empty() {
                let mems = read(&parent.join("cpuset.mems"))?;
                self.set(&dir, "cpuset.mems", mems.trim().to_string());
            }
            let value = match cpus {
                Some(cpus) => format_cpu_list(cpus),
                None => read(&parent.join("cpuset.cpus"))?.trim().to_string(),
            };
            self.set(&dir, "cpuset.cpus", value);
        }
        for (field, value, file) in [
            ("memory_max", r.memory_max, "memory.limit_in_bytes"),
            ("memory_high", r.memory_high, "memory.soft_limit_in_bytes"),
        ] {
            if let Some(dir) = self.need(field, value.is_some(), "memory")? {
                self.set(&dir, file, value.map_or("-1".into(), |v| v.to_string()));
            }
        }
        if let Some(dir) = self.need("io_weight", r.io_weight.is_some(), "blkio")? {
            let files = ["blkio.weight", "blkio.bfq.weight"];
            match self.file(&dir, "io_weight", r.io_weight.is_some(), &files)? {
                Some("blkio.weight") => {
                    let w = r.io_weight.map_or(500, blkio_weight);
                    self.set(&dir, "blkio.weight", w.to_string());
                }
                Some(file) => self.set(&dir, file, bfq_weight(r.io_weight).to_string()),
                None => {}
            }
        }
        let asked = !io_limits.is_empty();
        if let Some(dir) = self.need("io_limits", asked, "blkio")? {
            type Pick = fn(&IoLimit) -> Option<u64>;
            let files: [(&'static str, Pick); 4] = [
                ("blkio.throttle.read_bps_device", |l| l.read_bps),
                ("blkio.throttle.write_bps_device", |l| l.write_bps),
                ("blkio.throttle.read_iops_device", |l| l.read_iops),
                ("blkio.throttle.write_iops_device", |l| l.write_iops),
            ];
            for (file, pick) in files {
                if self.file(&dir, "io_limits", asked, &[file])?.is_none() {
                    continue;
                }
                let old = devices_in(&read(&dir.join(file))?);
                let mut lines = Vec::new();
                for &(major, minor) in &old {
                    if !io_limits
                        .iter()
                        .any(|l| (l.major, l.minor) == (major, minor))
                    {
                        lines.push(format!("{major}:{minor} 0"));
                    }
                }
                for l in io_limits {
                    match pick(l) {
                        Some(v) => lines.push(format!("{}:{} {v}", l.major, l.minor)),
                        None if old.contains(&(l.major, l.minor)) => {
                            lines.push(format!("{}:{} 0", l.major, l.minor));
                        }
                        None => {}
                    }
                }
                self.lines(&dir, file, lines);
            }
        }
        if let Some(dir) = self.need("pids_max", r.pids_max.is_some(), "pids")? {
            self.set(
                &dir,
                "pids.max",
                r.pids_max.map_or("max".into(), |p| p.to_string()),
            );
        }
        Ok(())
    }
}

/// A quota in percent of one CPU as µs per [`CPU_PERIOD_US`].
fn quota_us(percent: u32) -> u64 {
    u64::from(percent) * CPU_PERIOD_US / 100
}

/// v1 `cpu.shares` for a v2 `cpu.weight` (1..=10000): the kernel's own scale, 100 ≙ 1024.
pub fn cpu_shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 + 50) / 100
}

/// v1 `blkio.weight` (10..=1000, default 500) for a v2 `io.weight` (1..=10000, default
/// 100): proportional, clamped.
pub fn blkio_weight(weight: u32) -> u32 {
    weight.saturating_mul(5).clamp(10, 1000)
}

/// BFQ's weight (1..=1000, default 100) for an `io.weight`.
fn bfq_weight(weight: Option<u32>) -> u32 {
    weight.unwrap_or(100).clamp(1, 1000)
}

/// The devices (`MAJ:MIN` at the start of each line) of an `io.max` or throttle file.
fn devices_in(text: &str) -> BTreeSet<(u32, u32)> {
    text.lines()
        .filter_map(|line| {
            let (major, minor) = line.split_whitespace().next()?.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}
