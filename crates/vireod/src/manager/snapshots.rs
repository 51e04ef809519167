//! Snapshots of running VMs (`vireoctl snapshot create|list|revert|delete`), as virsh's
//! `snapshot-*` of a running domain: the VM's memory and device state, and a copy of each
//! of its writable disks taken while its vCPUs are paused, so that a revert gives back the
//! guest exactly as it was, disks included.
//!
//! - Files: `STATE/vms/NAME/snapshots/SNAP/` holds `vmstate` and `memory` (vireo's Full
//!   snapshot) and `disk-N` (the copies: a reflink where the filesystem has them, a full
//!   copy elsewhere). They are written under `SNAP.partial` and renamed when complete, then
//!   recorded in the database: a snapshot that is listed is whole.
//! - Create: a running VM is paused for the time it takes and resumed after; a paused one
//!   stays paused. Revert: the VM's `vireo`, if any, is killed, the disks are copied back
//!   and a new `vireo` loads the snapshot, running or paused as the VM was when it was
//!   taken. The stored definition is not changed: a later start boots it afresh.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use manager_types::api::{ApiError, ErrorCode, Progress, SnapshotInfo, VmInfo};
use manager_types::definition::valid_name;

use super::{Boot, Manager, Slot, internal, lock, parse_stored, store_error, vmm_call};
use crate::process;
use crate::store::{SnapshotRecord, StoreError, VmState};

/// The state and memory file names in a snapshot's directory.
const STATE_FILE: &str = "vmstate";
const MEMORY_FILE: &str = "memory";

/// A file being written by a long operation, for `GET /v1/vms/NAME`'s `progress`.
pub(super) struct Tracked {
    what: String,
    file: PathBuf,
    total: u64,
}

impl Tracked {
    /// How far it is: the bytes the file holds so far.
    pub(super) fn now(&self) -> Progress {
        use std::os::unix::fs::MetadataExt;
        let done = std::fs::metadata(&self.file)
            .map_or(0, |m| m.len().min(m.blocks() * 512))
            .min(self.total);
        Progress {
            what: self.what.clone(),
            done_bytes: done,
            total_bytes: self.total,
        }
    }
}

/// Shows `what` (writing `file`, `total` bytes in the end) on the slot until dropped.
struct Tracking<'a>(&'a Slot);

impl<'a> Tracking<'a> {
    fn start(slot: &'a Slot, what: String, file: PathBuf, total: u64) -> Self {
        *lock(&slot.progress) = Some(Tracked { what, file, total });
        Self(slot)
    }
}

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        *lock(&self.0.progress) = None;
    }
}

/// Copy `from` to `to` (see [`copy_file`]), shown as progress on `slot`.
fn tracked_copy(slot: &Slot, from: &Path, to: &Path) -> Result<(), ApiError> {
    let total = std::fs::metadata(from).map_or(0, |m| m.len());
    let _t = Tracking::start(
        slot,
        format!("copying {}", from.display()),
        copy_tmp(to),
        total,
    );
    copy_file(from, to)
}

/// Where [`copy_file`] writes before renaming.
fn copy_tmp(to: &Path) -> PathBuf {
    to.with_extension("vireo-copy")
}

fn info(s: &SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name.clone(),
        created_at: s.created_at,
        size_bytes: s.size_bytes,
        vm_state: s.vm_state.to_string(),
        disks: s.disks.len() as u32,
    }
}

impl Manager {
    fn snapshot_dir(&self, vm: &str, snap: &str) -> PathBuf {
        self.paths(vm).snapshots().join(snap)
    }

    /// Take snapshot `snap` of running or paused VM `name`.
    pub fn snapshot_create(&self, name: &str, snap: &str) -> Result<SnapshotInfo, ApiError> {
        self.record(name)?;
        if !valid_name(snap) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("'{snap}' is not a valid snapshot name (as a VM name: A-Z a-z 0-9 _ . -)"),
            ));
        }
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        // Refused before anything is paused or written (the store refuses it again).
        if self.store(|s| s.snapshot(name, snap))?.is_some() {
            return Err(store_error(StoreError::SnapshotExists(
                name.into(),
                snap.into(),
            )));
        }
        let (api, _) = Self::running(&slot)?;
        let rec = self.record(name)?;
        let state = rec.state;
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(super::conflict(format!("VM '{name}' is {state}")));
        }
        let def = parse_stored(&rec)?;
        let dir = self.snapshot_dir(name, snap);
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)
            .map_err(|e| internal(format!("cannot create {}: {e}", partial.display())))?;

        let was_running = state == VmState::Running;
        if was_running {
            vmm_call(&api, "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
        }
        let written = (|| {
            let body = serde_json::json!({
                "snapshot_type": "Full",
                "snapshot_path": partial.join(STATE_FILE),
                "mem_file_path": partial.join(MEMORY_FILE),
            });
            {
                let _t = Tracking::start(
                    &slot,
                    "writing the memory".into(),
                    partial.join(MEMORY_FILE),
                    def.vm.memory_bytes,
                );
                vmm_call(&api, "PUT", "/snapshot/create", &body.to_string())?;
            }
            let mut disks = Vec::new();
            for (i, disk) in def.vm.disks.iter().filter(|d| !d.readonly).enumerate() {
                let copy = format!("disk-{i}");
                tracked_copy(&slot, &disk.path, &partial.join(&copy))?;
                disks.push((copy, disk.path.display().to_string()));
            }
            Ok::<_, ApiError>(disks)
        })();
        if was_running && let Err(e) = vmm_call(&api, "PATCH", "/vm", r#"{"state":"Resumed"}"#) {
            log::warn!("{name}: not resumed after snapshot {snap}: {}", e.message);
        }
        let disks = match written {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        let record = SnapshotRecord {
            vm: name.to_string(),
            name: snap.to_string(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            vm_state: state,
            disks,
            size_bytes: dir_size(&partial),
        };
        std::fs::rename(&partial, &dir)
            .map_err(|e| internal(format!("cannot rename {}: {e}", partial.display())))
            .and_then(|()| self.store(|s| s.add_snapshot(&record)))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(&partial);
            })?;
        Ok(info(&record))
    }

    /// VM `name`'s snapshots, oldest first.
    pub fn snapshot_list(&self, name: &str) -> Result<Vec<SnapshotInfo>, ApiError> {
        self.record(name)?;
        Ok(self
            .store(|s| s.snapshots(name))?
            .iter()
            .map(info)
            .collect())
    }

    fn snapshot_record(&self, name: &str, snap: &str) -> Result<SnapshotRecord, ApiError> {
        self.store(|s| s.snapshot(name, snap))?
            .ok_or_else(|| store_error(StoreError::NoSnapshot(name.into(), snap.into())))
    }

    /// Give VM `name` back the guest of snapshot `snap`: its `vireo` (if any) killed, the
    /// disks copied back, a new `vireo` loading it.
    pub fn snapshot_revert(self: &Arc<Self>, name: &str, snap: &str) -> Result<VmInfo, ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        let record = self.snapshot_record(name, snap)?;
        let dir = self.snapshot_dir(name, snap);
        for f in [STATE_FILE, MEMORY_FILE] {
            if !dir.join(f).is_file() {
                return Err(internal(format!(
                    "snapshot '{snap}' of '{name}' lost its file {}",
                    dir.join(f).display()
                )));
            }
        }
        if let Ok((_, pidfd)) = Self::running(&slot) {
            Self::request_stop(&slot);
            process::pidfd_signal(&pidfd, libc::SIGKILL).map_err(internal)?;
            if !Self::wait_stopped(&slot, Duration::from_secs(30)) {
                return Err(internal(format!("VM '{name}' did not end after SIGKILL")));
            }
        }
        for (copy, path) in &record.disks {
            tracked_copy(&slot, &dir.join(copy), Path::new(path))?;
        }
        slot.restarts.store(0, std::sync::atomic::Ordering::Relaxed);
        self.boot_locked(
            &slot,
            &Boot::Snapshot {
                state: &dir.join(STATE_FILE),
                memory: &dir.join(MEMORY_FILE),
                resume: record.vm_state != VmState::Paused,
            },
        )?;
        let _ = self.store(|s| s.note(name, "snapshot", &format!("{snap} reverted")));
        self.info(name)
    }

    /// Delete snapshot `snap` of VM `name` (whatever the VM's state).
    pub fn snapshot_delete(&self, name: &str, snap: &str) -> Result<(), ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        self.store(|s| s.remove_snapshot(name, snap))?;
        if let Err(e) = std::fs::remove_dir_all(self.snapshot_dir(name, snap))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("{name}: snapshot {snap}'s files not removed: {e}");
        }
        Ok(())
    }
}

/// Copy `from` to `to` whole: a reflink (FICLONE) where the filesystem shares blocks,
/// else a full copy, written beside `to` and renamed over it.
fn copy_file(from: &Path, to: &Path) -> Result<(), ApiError> {
    let fail = |e: std::io::Error| {
        internal(format!(
            "cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    };
    let tmp = copy_tmp(to);
    let result = (|| {
        let src = std::fs::File::open(from)?;
        let dst = std::fs::File::create(&tmp)?;
        use std::os::fd::AsRawFd;
        // SAFETY: FICLONE takes the source fd as its argument and touches no memory of
        // ours; both fds are open for the call's duration.
        let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
        if !cloned {
            drop(dst);
            std::fs::copy(from, &tmp)?;
        } else {
            std::fs::set_permissions(&tmp, src.metadata()?.permissions())?;
        }
        let dst = std::fs::File::options().write(true).open(&tmp)?;
        dst.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// Bytes of the files in `dir` (not recursive).
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
