//! Writing a snapshot file so that the old one is replaced whole or not at all.
//!
//! A snapshot is written beside its target under a temporary name and renamed into place
//! once complete. Two things follow: a VM restored from a memory file can write a new
//! snapshot to that very path (the running guest maps the old file `MAP_PRIVATE`; the
//! rename leaves that inode alive for it, where truncating the file in place would hand
//! the guest zeros), and a failed or interrupted write leaves the previous snapshot as
//! it was. A target that exists and is not a regular file (a FIFO, a device) is written
//! in place, as there is nothing to rename over.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A file being written in place of `target`.
#[derive(Debug)]
pub struct Replacement {
    file: File,
    /// The temporary name, or `None` when written in place.
    tmp: Option<PathBuf>,
    target: PathBuf,
}

impl Replacement {
    /// Start writing a new file for `target` (a symlink is followed: the file it names
    /// is the one replaced).
    pub fn create(target: &Path) -> io::Result<Self> {
        let target = match std::fs::canonicalize(target) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => target.to_path_buf(),
            Err(e) => return Err(e),
        };
        match std::fs::metadata(&target) {
            Ok(meta) if !meta.is_file() => {
                return Ok(Replacement {
                    file: File::create(&target)?,
                    tmp: None,
                    target,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".vireo-{}.tmp", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        Ok(Replacement {
            file,
            tmp: Some(tmp),
            target,
        })
    }

    /// The file to write.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Sync the file and put it in place of the target.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        if let Some(tmp) = self.tmp.take()
            && let Err(e) = std::fs::rename(&tmp, &self.target)
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        // Not committed: the target keeps its old contents.
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_committed_file_replaces_the_target_and_leaves_no_temporary() {
        let d = dir();
        let target = d.path().join("mem");
        std::fs::write(&target, b"old").unwrap();
        let r = Replacement::create(&target).unwrap();
        r.file().write_all(b"new contents").unwrap();
        // Until the commit, the old file is untouched.
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        r.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_abandoned_file_leaves_the_target_as_it_was() {
        let d = dir();
        let target = d.path().join("mem");
        std::fs::write(&target, b"old").unwrap();
        let r = Replacement::create(&target).unwrap();
        r.file().write_all(b"half").unwrap();
        drop(r);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_open_reader_of_the_old_file_keeps_its_contents() {
        // What a restored VM's MAP_PRIVATE mapping relies on: the old inode lives on.
        let d = dir();
        let target = d.path().join("mem");
        std::fs::write(&target, b"old guest memory").unwrap();
        let old = File::open(&target).unwrap();
        let r = Replacement::create(&target).unwrap();
        r.file().write_all(b"new").unwrap();
        r.commit().unwrap();
        let mut buf = vec![0; 16];
        std::os::unix::fs::FileExt::read_exact_at(&old, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"old guest memory");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn a_symlink_target_replaces_the_file_it_names() {
        let d = dir();
        let real = d.path().join("real");
        std::fs::write(&real, b"old").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let r = Replacement::create(&link).unwrap();
        r.file().write_all(b"new").unwrap();
        r.commit().unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let d = dir();
        assert!(Replacement::create(&d.path().join("no/such/mem")).is_err());
    }
}
