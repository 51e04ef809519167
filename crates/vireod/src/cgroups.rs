//! Each VM's cgroup, on cgroup v2 or v1, and the per-thread settings that go with it
//! (vCPU pinning, nice).
//!
//! Each VM's `vireo` process lives in its own cgroup `<base>/<vm>` under the root of every
//! hierarchy used. `base` is a relative path (`vireo` by default; a test or unprivileged
//! vireod uses its own, such as `vireo-<hash>`); every level of it must hold no process
//! of its own (cgroup v2 allows controllers for children only in a cgroup without
//! processes). This module touches only those directories, `/proc/<pid>/task` and the
//! scheduling settings of the threads it is given; it never kills a process.
//!
//! # Layout
//!
//! [`Layout::detect`] reads `/proc/self/mountinfo` ([`Layout::from_mountinfo`] is the pure
//! part; nothing is hard-coded but the conventional mount point of a pure v2 host):
//! - a `cgroup2` mount at `/sys/fs/cgroup` → [`Layout::V2`] (a pure v2 host);
//! - otherwise the `cgroup` (v1) mounts → [`Layout::V1`], each controller with its mount
//!   point (co-mounted controllers, `cpu,cpuacct`, share one). A hybrid host's `cgroup2`
//!   at `/sys/fs/cgroup/unified` is ignored: its controllers are bound to v1;
//! - otherwise another `cgroup2` mount → [`Layout::V2`] there.
//!
//! # What each resource becomes
//!
//! [`VmCgroup::apply`] writes every file below, each time: a value left unset (`None`) is
//! written as the kernel's default, so `apply` is idempotent and an apply with fewer
//! limits removes the old ones. The fields are [`manager_types::Resources`]'s.
//!
//! | `Resources` field    | v2 file (unset)                          | v1 file (unset)                                         |
//! |----------------------|------------------------------------------|---------------------------------------------------------|
//! | `cpu_weight` W       | `cpu.weight` W (100)                     | `cpu.shares` round(W × 1024 / 100) (1024)               |
//! | `cpu_quota_percent` P| `cpu.max` "P×1000 100000" ("max 100000") | `cpu.cfs_period_us` 100000, `cpu.cfs_quota_us` P×1000 (-1) |
//! | `cpuset`             | `cpuset.cpus` ("": the parent's)         | `cpuset.cpus` (the parent's `cpuset.cpus`)              |
//! | `memory_max`         | `memory.max` ("max")                     | `memory.limit_in_bytes` (-1)                            |
//! | `memory_high`        | `memory.high` ("max")                    | `memory.soft_limit_in_bytes` (-1)                       |
//! | `io_weight` W        | `io.weight` "default W" ("default 100")  | `blkio.weight` clamp(5W, 10, 1000) (500)                |
//! | `pids_max`           | `pids.max` ("max")                       | `pids.max` ("max")                                      |
//! | `nice`               | not a cgroup setting: [`set_nice`]       | the same                                                |
//! | [`IoLimit`]s         | `io.max` "MAJ:MIN rbps= wbps= riops= wiops=" ("max") | `blkio.throttle.{read,write}_{bps,iops}_device` "MAJ:MIN N" (0) |
//!
//! - The v1 CPU weight is what the kernel itself does with a v2 `cpu.weight` (it schedules
//!   a group of weight W as W × 1024 / 100 shares), so weights keep their ratios on both
//!   versions: 1..=10000 becomes 10..=102400 shares.
//! - v1 has no `memory.high`: `memory.soft_limit_in_bytes` is the nearest. It does not
//!   throttle; the group is only reclaimed back towards it when the host runs short.
//! - The v1 I/O weight keeps ratios too, around the defaults (v2 100 ≙ v1 500), clamped to
//!   v1's range. A host with only BFQ's weight file gets the weight there instead
//!   (`io.bfq.weight` / `blkio.bfq.weight`, 1..=1000, default 100: W clamped).
//! - A v1 cpuset cgroup takes no process until it has CPUs and memory nodes: [`Cgroups::create`]
//!   copies the parent's `cpuset.cpus` and `cpuset.mems` into each new level.
//! - I/O limits are removed from devices that had one and are no longer listed (read back
//!   from `io.max` / the throttle files).
//!
//! A value asked for whose controller this host lacks is an error naming it, and nothing is
//! written; unset values under a missing controller are listed in
//! [`Applied::unavailable`]. Values are checked first (weights 1..=10000, quota ≥ 1 %, a
//! CPU list, no zero or repeated I/O limit), so a bad request writes nothing; a refusal by
//! the kernel part-way (say, a memory limit below what the group uses) leaves the files
//! before it written, and the error names the file and value.
//!
//! # Moving a process in
//!
//! [`VmCgroup::join_fds`] opens each hierarchy's `cgroup.procs` ahead of a fork; in the
//! child, [`JoinFds::join_self`] writes `0` ("the writer") to each, which is all it does
//! (no allocation, async-signal-safe), so it may run in `CommandExt::pre_exec`:
//!
//! ```no_run
//! use std::os::unix::process::CommandExt;
//! use vireod::cgroups::{Cgroups, Layout};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cgroups = Cgroups::new(Layout::detect()?, "vireo");
//! let cg = cgroups.create("web")?;
//! cg.apply(&manager_types::Resources { memory_max: Some(1 << 30), ..Default::default() }, &[])?;
//! let join = cg.join_fds()?;
//! let mut cmd = std::process::Command::new("vireo");
//! // SAFETY: join_self only makes write(2) calls on fds opened before the fork.
//! unsafe { cmd.pre_exec(move || join.join_self()) };
//! let _child = cmd.spawn()?;
//! # Ok(()) }
//! ```
//!
//! [`VmCgroup::add_pid`] moves a running process; [`Cgroups::open`] finds a VM's cgroup
//! again after a vireod restart; [`Cgroups::remove`] removes it once its process is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

mod apply;
mod layout;
mod stats;
mod threads;

pub use apply::{Applied, IoLimit, Unavailable, Written, blkio_weight, cpu_shares};
pub use layout::Layout;
pub use stats::{CgroupStats, Throttling};
pub use threads::{format_cpu_list, parse_cpu_list, pin_vcpu_threads, set_nice};

/// Where a pure cgroup v2 host mounts it.
pub const V2_MOUNT: &str = "/sys/fs/cgroup";
/// The CPU bandwidth period written with every quota, µs (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The v2 controllers a VM's cgroup gets, as far as the host has them.
const WANTED_V2: [&str; 5] = ["cpu", "cpuset", "memory", "io", "pids"];
/// The v1 hierarchies a VM's cgroup is made in (`cpuacct` for its CPU time).
const WANTED_V1: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "blkio", "pids"];

/// What can go wrong; each names the file, value or VM concerned.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup file system in the mount table.
    #[error("no cgroup file system is mounted (neither cgroup2 nor a v1 controller)")]
    NotMounted,
    /// The base is not a relative path of plain names.
    #[error("cgroup base '{}' must be a relative path of plain names", .0.display())]
    InvalidBase(PathBuf),
    /// A VM name that cannot be a cgroup's.
    #[error("'{0}' is not a VM name")]
    InvalidName(String),
    /// [`Cgroups::open`] found no cgroup.
    #[error("VM '{vm}' has no cgroup ({} does not exist)", path.display())]
    NotFound {
        /// The VM.
        vm: String,
        /// The directory that is not there.
        path: PathBuf,
    },
    /// A value was asked for whose controller this host does not have.
    #[error("{field}: needs the {controller} controller, which this host's cgroups lack")]
    MissingController {
        /// The [`Resources`](manager_types::Resources) field (or `io_limits`, `stats`).
        field: &'static str,
        /// The controller.
        controller: &'static str,
    },
    /// The controller is there but not the file the value needs.
    #[error("{field}: this host's cgroups have no {file}")]
    Unsupported {
        /// The [`Resources`](manager_types::Resources) field (or `io_limits`).
        field: &'static str,
        /// The file(s) looked for.
        file: String,
    },
    /// A value out of range.
    #[error("{field}: {why}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A CPU list that does not parse.
    #[error("'{text}' is not a CPU list (such as \"0-3,6\"): {why}")]
    CpuList {
        /// The text.
        text: String,
        /// What is wrong.
        why: String,
    },
    /// The cgroup still holds processes.
    #[error("the cgroup of '{vm}' still holds processes {pids:?}: they must end first")]
    Busy {
        /// The VM.
        vm: String,
        /// Its processes.
        pids: Vec<u32>,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file did not hold what the kernel writes there.
    #[error("unexpected contents in {}: '{text}'", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        text: String,
    },
    /// A value was refused.
    #[error("cannot write '{value}' to {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
        /// Why (the kernel's errno).
        #[source]
        source: io::Error,
    },
    /// A directory could not be made or removed.
    #[error("cannot {action} {}: {source}", path.display())]
    Dir {
        /// `create` or `remove`.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No such process.
    #[error("no process {0}")]
    NoProcess(u32),
    /// A thread's scheduling setting was refused.
    #[error("thread {tid} of process {pid}: {what}: {source}")]
    Thread {
        /// The process.
        pid: u32,
        /// The thread.
        tid: u32,
        /// What was being set.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The VMs' cgroups: a layout and the base they go under.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    base: PathBuf,
}

/// A controller a VM's cgroup lacks, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The controller (v1 names on v1: `blkio`).
    pub controller: &'static str,
    /// Why (not mounted, not offered by the parent, refused when enabled).
    pub why: String,
}

impl Cgroups {
    /// The cgroups under `base` (relative to each hierarchy's root; checked when used).
    pub fn new(layout: Layout, base: impl Into<PathBuf>) -> Self {
        Cgroups {
            layout,
            base: base.into(),
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The base.
    pub fn base(&self) -> &Path {
        &self.base
    }

    fn checked_base(&self) -> Result<&Path, CgroupError> {
        let plain = self
            .base
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if self.base.as_os_str().is_empty() || !plain {
            return Err(CgroupError::InvalidBase(self.base.clone()));
        }
        Ok(&self.base)
    }

    /// `<base>/<vm>`, checked.
    fn relative(&self, vm: &str) -> Result<PathBuf, CgroupError> {
        let base = self.checked_base()?;
        if !manager_types::definition::valid_name(vm) {
            return Err(CgroupError::InvalidName(vm.to_string()));
        }
        Ok(base.join(vm))
    }

    /// Make (or reuse) the cgroup of `vm`. v2: the controllers (cpu, cpuset, memory, io,
    /// pids) are enabled in each parent's `cgroup.subtree_control` as far as the host
    /// offers them; v1: a directory in each hierarchy, cpusets filled from the parent.
    /// What could not be had is in [`VmCgroup::missing`].
    pub fn create(&self, vm: &str) -> Result<VmCgroup, CgroupError> {
        let relative = self.relative(vm)?;
        match &self.layout {
            Layout::V2 { root } => {
                let mut why = BTreeMap::new();
                let mut dir = root.clone();
                for part in relative.iter() {
                    enable_v2(&dir, &mut why)?;
                    dir.push(part);
                    make_dir(&dir)?;
                }
                VmCgroup::v2(vm, relative, dir, why)
            }
            Layout::V1 { .. } => {
                for (point, controllers) in self.layout.hierarchies() {
                    let mut dir = point;
                    for part in relative.iter() {
                        let parent = dir.clone();
                        dir.push(part);
                        make_dir(&dir)?;
                        if controllers.contains(&"cpuset") {
                            for file in ["cpuset.mems", "cpuset.cpus"] {
                                inherit(&parent, &dir, file)?;
                            }
                        }
                    }
                }
                self.open(vm)
            }
        }
    }

    /// The existing cgroup of `vm` (after a vireod restart).
    pub fn open(&self, vm: &str) -> Result<VmCgroup, CgroupError> {
        let relative = self.relative(vm)?;
        let not_found = |path: PathBuf| CgroupError::NotFound {
            vm: vm.to_string(),
            path,
        };
        match &self.layout {
            Layout::V2 { root } => {
                let dir = root.join(&relative);
                if !dir.is_dir() {
                    return Err(not_found(dir));
                }
                VmCgroup::v2(vm, relative, dir, BTreeMap::new())
            }
            Layout::V1 { mounts } => {
                let mut dirs = BTreeMap::new();
                let mut missing = Vec::new();
                for c in WANTED_V1 {
                    let Some(point) = mounts.get(c) else {
                        missing.push(Missing {
                            controller: c,
                            why: "no v1 hierarchy of it is mounted".into(),
                        });
                        continue;
                    };
                    let dir = point.join(&relative);
                    if !dir.is_dir() {
                        return Err(not_found(dir));
                    }
                    dirs.insert(c, dir);
                }
                Ok(VmCgroup {
                    name: vm.to_string(),
                    relative,
                    kind: Kind::V1 { dirs },
                    missing,
                })
            }
        }
    }

    /// Remove the cgroup of `vm` (its process must be gone: [`CgroupError::Busy`] names
    /// the processes left, and nothing is removed). No cgroup is not an error.
    pub fn remove(&self, vm: &str) -> Result<(), CgroupError> {
        let relative = self.relative(vm)?;
        let dirs: Vec<PathBuf> = self
            .layout
            .hierarchies()
            .into_keys()
            .map(|point| point.join(&relative))
            .filter(|dir| dir.is_dir())
            .collect();
        let pids = pids_of(&dirs)?;
        if !pids.is_empty() {
            return Err(CgroupError::Busy {
                vm: vm.to_string(),
                pids,
            });
        }
        for dir in &dirs {
            // A process that just ended can keep its cgroup busy for a moment.
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        let pids = pids_of(std::slice::from_ref(dir))?;
                        if !pids.is_empty() {
                            return Err(CgroupError::Busy {
                                vm: vm.to_string(),
                                pids,
                            });
                        }
                        return Err(CgroupError::Dir {
                            action: "remove",
                            path: dir.clone(),
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The VMs that have a cgroup under the base (in any hierarchy), sorted.
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let base = self.checked_base()?;
        let mut names = BTreeSet::new();
        for point in self.layout.hierarchies().into_keys() {
            let dir = point.join(base);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(CgroupError::Read {
                        path: dir,
                        source: e,
                    });
                }
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(name) = entry.file_name().to_str()
                    && manager_types::definition::valid_name(name)
                {
                    names.insert(name.to_string());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Remove the base's own directory in each hierarchy once no VM cgroup is left in it
    /// (the levels above a multi-level base are left alone). Not there is not an error.
    pub fn remove_base(&self) -> Result<(), CgroupError> {
        let base = self.checked_base()?;
        for point in self.layout.hierarchies().into_keys() {
            let dir = point.join(base);
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CgroupError::Dir {
                        action: "remove",
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Enable the wanted v2 controllers `level` offers for its children, noting why those
/// that cannot be are missing.
fn enable_v2(level: &Path, why: &mut BTreeMap<&'static str, String>) -> Result<(), CgroupError> {
    let offered_file = level.join("cgroup.controllers");
    let offered = read_words(&offered_file)?;
    let enabled = read_words(&level.join("cgroup.subtree_control"))?;
    let mut todo = Vec::new();
    for c in WANTED_V2 {
        if !offered.contains(c) {
            why.entry(c)
                .or_insert_with(|| format!("{} does not list it", offered_file.display()));
        } else if !enabled.contains(c) {
            todo.push(c);
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let all: Vec<String> = todo.iter().map(|c| format!("+{c}")).collect();
    if write_lines(level, "cgroup.subtree_control", &[all.join(" ")]).is_ok() {
        return Ok(());
    }
    // All at once failed: one by one, to know which.
    for c in todo {
        if let Err(e) = write_lines(level, "cgroup.subtree_control", &[format!("+{c}")]) {
            why.entry(c).or_insert_with(|| e.to_string());
        }
    }
    Ok(())
}

/// Copy `parent/file` into `dir/file` if that is empty (a new v1 cpuset).
fn inherit(parent: &Path, dir: &Path, file: &str) -> Result<(), CgroupError> {
    if read(&dir.join(file))?.trim().is_empty() {
        let value = read(&parent.join(file))?;
        write_lines(dir, file, &[value.trim().to_string()])?;
    }
    Ok(())
}

/// A VM's cgroup, made or found by [`Cgroups`].
#[derive(Debug, Clone)]
pub struct VmCgroup {
    name: String,
    relative: PathBuf,
    kind: Kind,
    missing: Vec<Missing>,
}

#[derive(Debug, Clone)]
enum Kind {
    V2 {
        dir: PathBuf,
        /// Its `cgroup.controllers`.
        controllers: BTreeSet<String>,
    },
    V1 {
        /// Controller → the VM's directory in its hierarchy.
        dirs: BTreeMap<&'static str, PathBuf>,
    },
}

/// The `cgroup.procs` files of a VM's cgroup, opened (close-on-exec) before a fork.
#[derive(Debug)]
pub struct JoinFds {
    fds: Vec<OwnedFd>,
}

impl JoinFds {
    /// Move the calling process into the cgroup: one `write(fd, "0")` per hierarchy, no
    /// allocation, async-signal-safe (for `pre_exec`). Stops at the first refusal.
    pub fn join_self(&self) -> io::Result<()> {
        for fd in &self.fds {
            loop {
                // SAFETY: the fd is open (owned by self) and the buffer is a static byte
                // of the given length.
                let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
                if n >= 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// How many hierarchies (fds).
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether there is none (a host without a used hierarchy).
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

impl VmCgroup {
    fn v2(
        vm: &str,
        relative: PathBuf,
        dir: PathBuf,
        mut why: BTreeMap<&'static str, String>,
    ) -> Result<VmCgroup, CgroupError> {
        let controllers = read_words(&dir.join("cgroup.controllers"))?;
        let missing = WANTED_V2
            .into_iter()
            .filter(|c| !controllers.contains(*c))
            .map(|c| Missing {
                controller: c,
                why: why
                    .remove(c)
                    .unwrap_or_else(|| "not enabled in the parent's cgroup.subtree_control".into()),
            })
            .collect();
        Ok(VmCgroup {
            name: vm.to_string(),
            relative,
            kind: Kind::V2 { dir, controllers },
            missing,
        })
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The controllers this cgroup lacks.
    pub fn missing(&self) -> &[Missing] {
        &self.missing
    }

    /// Its directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        match &self.kind {
            Kind::V2 { dir, .. } => vec![dir.as_path()],
            Kind::V1 { dirs } => {
                let set: BTreeSet<&Path> = dirs.values().map(PathBuf::as_path).collect();
                set.into_iter().collect()
            }
        }
    }

    /// Its path below each hierarchy's root (`vireo/web`), as `/proc/PID/cgroup` shows
    /// it with a leading `/`.
    pub fn path(&self) -> &Path {
        &self.relative
    }

    /// Its directories, comma-separated (what vireod's API shows as the VM's cgroup).
    pub fn describe(&self) -> String {
        let dirs: Vec<String> = self
            .dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(",")
    }

    /// The directory of `controller` (v2: the cgroup, if it has the controller).
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        match &self.kind {
            Kind::V2 { dir, controllers } => controllers.contains(controller).then_some(dir),
            Kind::V1 { dirs } => dirs.get(controller).map(PathBuf::as_path),
        }
    }

    /// Open each hierarchy's `cgroup.procs` for [`JoinFds::join_self`].
    pub fn join_fds(&self) -> Result<JoinFds, CgroupError> {
        let mut fds = Vec::new();
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| CgroupError::Write {
                    path,
                    value: "0".into(),
                    source,
                })?;
            fds.push(OwnedFd::from(file));
        }
        Ok(JoinFds { fds })
    }

    /// Move process `pid` (all its threads) into the cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write_lines(dir, "cgroup.procs", &[pid.to_string()])?;
        }
        Ok(())
    }

    /// The processes in the cgroup (in any of its hierarchies), sorted.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let dirs: Vec<PathBuf> = self.dirs().into_iter().map(Path::to_path_buf).collect();
        pids_of(&dirs)
    }
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Dir {
            action: "create",
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The file's text; `None` if it is not there.
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_words(path: &Path) -> Result<BTreeSet<String>, CgroupError> {
    Ok(read(path)?.split_whitespace().map(str::to_string).collect())
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

/// The processes of the `cgroup.procs` files in `dirs`, sorted, once each.
fn pids_of(dirs: &[PathBuf]) -> Result<Vec<u32>, CgroupError> {
    let mut pids = BTreeSet::new();
    for dir in dirs {
        let path = dir.join("cgroup.procs");
        for word in read(&path)?.split_whitespace() {
            let pid = word.parse().map_err(|_| CgroupError::Parse {
                path: path.clone(),
                text: word.to_string(),
            })?;
            pids.insert(pid);
        }
    }
    Ok(pids.into_iter().collect())
}

/// Write each line (with a newline) to `dir/file` in its own write(2), as the kernel
/// takes one value per write; one open, truncating (so a plain file in tests holds
/// exactly what was written).
fn write_lines(dir: &Path, file: &str, lines: &[String]) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let error = |value: &str, source| CgroupError::Write {
        path: path.clone(),
        value: value.to_string(),
        source,
    };
    let first = lines.first().map_or("", String::as_str);
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| error(first, e))?;
    for line in lines {
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| error(line, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
