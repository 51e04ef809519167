//! Host-side pieces the integration tests of several crates use: the Debian guest image
//! (`scripts/guest-image.sh`) and Debian's generic kernel (`scripts/nested-host.sh`),
//! pseudo-terminals and the host's pool of 2 MiB huge pages.

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

/// Debian's generic kernel (a bzImage of `linux-image-amd64`), which has drivers the
/// guest image's cloud kernel lacks (the VM generation ID's `vmgenid`: the cloud kernel
/// is built without `CONFIG_VIRT_DRIVERS`). It is the nested test host's own kernel:
/// `scripts/nested-host.sh --prepare` builds its cache (from Debian's packages) or
/// checks it, once per test process. `Err` says why there is none, for the skip policy.
pub fn generic_kernel() -> Result<PathBuf, String> {
    static KERNEL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/nested-host.sh");
            let out = Command::new("bash")
                .arg(&script)
                .arg("--prepare")
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run scripts/nested-host.sh --prepare: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/nested-host.sh --prepare failed ({}): no generic kernel",
                    out.status
                ));
            }
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let kernel = PathBuf::from(dir).join("vmlinuz");
            if kernel.is_file() {
                Ok(kernel)
            } else {
                Err(format!("no {}", kernel.display()))
            }
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
