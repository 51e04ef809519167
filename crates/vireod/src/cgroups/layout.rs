//! Where the cgroup hierarchies are mounted: [`Layout`], from the mount table.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::{CgroupError, V2_MOUNT, WANTED_V1, WANTED_V2, read};

/// Names of v1 controllers, told apart from other mount options (`rw`, `name=systemd`...).
const V1_CONTROLLERS: [&str; 14] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
    /// One hierarchy per controller (or per group of co-mounted controllers).
    V1 {
        /// Controller name (`cpu`, `blkio`...) → its hierarchy's mount point.
        mounts: BTreeMap<String, PathBuf>,
    },
}

impl Layout {
    /// This host's layout, from `/proc/self/mountinfo` (see the module docs).
    pub fn detect() -> Result<Layout, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        Layout::from_mountinfo(&read(path)?)
    }

    /// The layout a mount table (`/proc/<pid>/mountinfo`'s text) describes; lines that do
    /// not parse are ignored.
    pub fn from_mountinfo(text: &str) -> Result<Layout, CgroupError> {
        let mut v2 = Vec::new();
        let mut mounts = BTreeMap::new();
        for mount in text.lines().filter_map(parse_mount_line) {
            match mount.fstype {
                "cgroup2" => v2.push(mount.point),
                "cgroup" => {
                    for option in mount.super_options.split(',') {
                        if V1_CONTROLLERS.contains(&option) {
                            mounts
                                .entry(option.to_string())
                                .or_insert_with(|| mount.point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2.iter().find(|p| *p == Path::new(V2_MOUNT)) {
            return Ok(Layout::V2 { root: root.clone() });
        }
        if !mounts.is_empty() {
            return Ok(Layout::V1 { mounts });
        }
        v2.into_iter()
            .next()
            .map(|root| Layout::V2 { root })
            .ok_or(CgroupError::NotMounted)
    }

    /// The hierarchies a VM's cgroup is made in: mount point → the wanted controllers
    /// there (v2: one, with all of them).
    pub(super) fn hierarchies(&self) -> BTreeMap<PathBuf, Vec<&'static str>> {
        let mut out: BTreeMap<PathBuf, Vec<&'static str>> = BTreeMap::new();
        match self {
            Layout::V2 { root } => {
                out.insert(root.clone(), WANTED_V2.to_vec());
            }
            Layout::V1 { mounts } => {
                for c in WANTED_V1 {
                    if let Some(point) = mounts.get(c) {
                        out.entry(point.clone()).or_default().push(c);
                    }
                }
            }
        }
        out
    }
}

/// One line of mountinfo: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE
/// SOURCE SUPER_OPTIONS`.
struct MountLine<'a> {
    point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

fn parse_mount_line(line: &str) -> Option<MountLine<'_>> {
    let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
    let separator = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
    Some(MountLine {
        point: unescape(fields.get(4)?),
        fstype: fields.get(separator + 1)?,
        super_options: fields.get(separator + 3).copied().unwrap_or(""),
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space...).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}
