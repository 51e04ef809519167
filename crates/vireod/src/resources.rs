//! `vireoctl set`'s values: checked with the definition's own rules (a `[resources]`
//! table parsed as a definition would be), then applied to the running VM's resources or
//! written into its stored definition.

use std::path::Path;

use manager_types::api::{ApiError, ErrorCode, SetRequest};
use manager_types::{Definition, Resources};

use crate::cgroups::IoLimit;
use toml_edit::Value;

/// One change: a `[resources]` key and its new value (`None`: removed, the default).
pub type Edit = (&'static str, Option<Value>);

fn text_or_none(key: &'static str, v: &Option<String>, edits: &mut Vec<Edit>) {
    if let Some(v) = v {
        let value = (!v.eq_ignore_ascii_case("none")).then(|| Value::from(v.as_str()));
        edits.push((key, value));
    }
}

fn count_or_none(
    key: &'static str,
    v: &Option<String>,
    edits: &mut Vec<Edit>,
) -> Result<(), ApiError> {
    if let Some(v) = v {
        let value = if v.eq_ignore_ascii_case("none") {
            None
        } else {
            let n: i64 = v.trim().parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("{key}: '{v}' is not a number (or \"none\")"),
                )
            })?;
            Some(n.into())
        };
        edits.push((key, value));
    }
    Ok(())
}

/// The changes a request asks for (the balloon aside), each checked.
pub fn edits(req: &SetRequest) -> Result<Vec<Edit>, ApiError> {
    let mut edits: Vec<Edit> = Vec::new();
    if let Some(w) = req.cpu_weight {
        edits.push(("cpu_weight", Some(i64::from(w).into())));
    }
    text_or_none("cpu_quota", &req.cpu_quota, &mut edits);
    text_or_none("cpuset", &req.cpuset, &mut edits);
    text_or_none("memory_max", &req.memory_max, &mut edits);
    text_or_none("memory_high", &req.memory_high, &mut edits);
    if let Some(w) = req.io_weight {
        edits.push(("io_weight", Some(i64::from(w).into())));
    }
    if let Some(p) = req.pids_max {
        edits.push(("pids_max", Some(i64::from(p).into())));
    }
    if let Some(n) = req.nice {
        edits.push(("nice", Some(i64::from(n).into())));
    }
    text_or_none("io_read_bps", &req.io_read_bps, &mut edits);
    text_or_none("io_write_bps", &req.io_write_bps, &mut edits);
    count_or_none("io_read_iops", &req.io_read_iops, &mut edits)?;
    count_or_none("io_write_iops", &req.io_write_iops, &mut edits)?;
    if edits.is_empty() && req.balloon.is_none() {
        return Err(ApiError::new(ErrorCode::BadRequest, "nothing to change"));
    }
    checked(&edits)?;
    Ok(edits)
}

/// The values of `edits` as a definition reads them.
fn checked(edits: &[Edit]) -> Result<Resources, ApiError> {
    let mut text = String::from("name = \"set\"\n[machine]\nkernel = \"/k\"\n[resources]\n");
    for (key, value) in edits {
        if let Some(v) = value {
            text.push_str(&format!("{key} = {}\n", v.to_string().trim()));
        }
    }
    Definition::parse(Path::new("set"), &text)
        .map(|d| d.resources)
        .map_err(|e| {
            // Line numbers of the made-up text mean nothing to the user: the field does.
            let field = e.field.unwrap_or_else(|| "resources".into());
            let field = field
                .strip_prefix("resources.")
                .unwrap_or(&field)
                .to_string();
            ApiError::new(ErrorCode::BadRequest, format!("{field}: {}", e.message))
        })
}

/// Apply `edits` to `r`.
pub fn apply_edits(r: &mut Resources, edits: &[Edit]) -> Result<(), ApiError> {
    let new = checked(edits)?;
    for (key, _) in edits {
        match *key {
            "cpu_weight" => r.cpu_weight = new.cpu_weight,
            "cpu_quota" => r.cpu_quota_percent = new.cpu_quota_percent,
            "cpuset" => r.cpuset = new.cpuset.clone(),
            "memory_max" => r.memory_max = new.memory_max,
            "memory_high" => r.memory_high = new.memory_high,
            "io_weight" => r.io_weight = new.io_weight,
            "pids_max" => r.pids_max = new.pids_max,
            "nice" => r.nice = new.nice,
            "io_read_bps" => r.io_limits.read_bps = new.io_limits.read_bps,
            "io_write_bps" => r.io_limits.write_bps = new.io_limits.write_bps,
            "io_read_iops" => r.io_limits.read_iops = new.io_limits.read_iops,
            "io_write_iops" => r.io_limits.write_iops = new.io_limits.write_iops,
            _ => {}
        }
    }
    if let (Some(high), Some(max)) = (r.memory_high, r.memory_max)
        && high > max
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "memory_high: is above memory_max",
        ));
    }
    Ok(())
}

/// The cgroup I/O limits of a VM whose disks are `disks`: `r.io_limits` on each host
/// block device holding one (the whole disk of a partition, the device itself for a disk
/// that is one), each device once. No limits: none. A disk on no block device (tmpfs,
/// overlay, a network filesystem) cannot be limited: an error naming it.
pub fn io_limits(r: &Resources, disks: &[&Path]) -> Result<Vec<IoLimit>, String> {
    let l = r.io_limits;
    if !l.any() {
        return Ok(Vec::new());
    }
    if disks.is_empty() {
        return Err("resources: I/O limits are set but the VM has no disks".into());
    }
    let mut limits: Vec<IoLimit> = Vec::new();
    for disk in disks {
        let (major, minor) = whole_disk_of(disk)?;
        if !limits.iter().any(|x| (x.major, x.minor) == (major, minor)) {
            limits.push(IoLimit {
                major,
                minor,
                read_bps: l.read_bps,
                write_bps: l.write_bps,
                read_iops: l.read_iops,
                write_iops: l.write_iops,
            });
        }
    }
    Ok(limits)
}

/// The whole-disk block device (major, minor) that `path` is on, or is.
fn whole_disk_of(path: &Path) -> Result<(u32, u32), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if major == 0 || !sys.exists() {
        return Err(format!(
            "resources: I/O limits cannot apply to {}: it is on no block device (tmpfs, \
             overlay or a network filesystem)",
            path.display()
        ));
    }
    if !sys.join("partition").exists() {
        return Ok((major, minor));
    }
    // A partition: the limits go on its disk, the directory above it in sysfs.
    let parent = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| p.parent().map(|p| p.join("dev")))
        .and_then(|f| std::fs::read_to_string(f).ok())
        .ok_or_else(|| {
            format!(
                "{}: the disk of partition {major}:{minor} is not found",
                path.display()
            )
        })?;
    let (maj, min) = parent
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("{}: unreadable device number {parent:?}", path.display()))?;
    Ok((maj, min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SetRequest {
        SetRequest::default()
    }

    #[test]
    fn values_are_checked_as_a_definition_checks_them() {
        let e = edits(&SetRequest {
            cpu_quota: Some("50".into()),
            ..req()
        })
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.starts_with("cpu_quota: "), "{}", e.message);
        let e = edits(&SetRequest {
            nice: Some(40),
            ..req()
        })
        .unwrap_err();
        assert_eq!(e.message, "nice: must be -20 to 19");
        assert!(edits(&req()).is_err(), "nothing to change");
        assert!(
            edits(&SetRequest {
                balloon: Some("64M".into()),
                ..req()
            })
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn edits_change_only_their_fields_and_none_removes() {
        let mut r = Resources {
            cpu_quota_percent: Some(20),
            memory_max: Some(1 << 30),
            pids_max: Some(100),
            ..Resources::default()
        };
        let e = edits(&SetRequest {
            cpu_quota: Some("150%".into()),
            memory_max: Some("none".into()),
            memory_high: Some("512M".into()),
            ..req()
        })
        .unwrap();
        apply_edits(&mut r, &e).unwrap();
        assert_eq!(r.cpu_quota_percent, Some(150));
        assert_eq!(r.memory_max, None);
        assert_eq!(r.memory_high, Some(512 << 20));
        assert_eq!(r.pids_max, Some(100));
        // high above max, across the old and the new values.
        let mut r = Resources {
            memory_max: Some(256 << 20),
            ..Resources::default()
        };
        let e = edits(&SetRequest {
            memory_high: Some("1G".into()),
            ..req()
        })
        .unwrap();
        assert!(apply_edits(&mut r, &e).is_err());
    }
}
