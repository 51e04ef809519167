//! Host-side pieces the integration tests of several crates use: the Debian guest image
//! (`scripts/guest-image.sh`), pseudo-terminals and the host's pool of 2 MiB huge pages.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The Debian test guest's directory (bzImage, vmlinux, initrd.gz), built or taken from
/// its cache by `scripts/guest-image.sh` once per test process.
pub fn guest_image_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/guest-image.sh");
        assert!(out.status.success(), "scripts/guest-image.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// A new pseudo-terminal: (master, slave).
pub fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new fds into `master` and `slave`; the name, termios and
    // window-size arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned here from now on.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Pages added to the host's 2 MiB huge page pool (root's), taken back when dropped.
pub struct HugePool {
    before: u64,
}

impl HugePool {
    /// Add `pages` to the pool; `Err` says why not (not root, no free contiguous memory),
    /// for the skip policy.
    pub fn grow(pages: u64) -> Result<Self, String> {
        let read = || -> Result<u64, String> {
            std::fs::read_to_string(NR_HUGEPAGES)
                .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?
                .trim()
                .parse()
                .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))
        };
        let before = read()?;
        std::fs::write(NR_HUGEPAGES, (before + pages).to_string())
            .map_err(|e| format!("cannot grow the huge page pool: {e}"))?;
        let pool = Self { before };
        if read()? < before + pages {
            return Err("the kernel could not find that many free 2 MiB pages".into());
        }
        Ok(pool)
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}
