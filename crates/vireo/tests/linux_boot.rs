//! Layer 4: the Debian cloud kernel (built by scripts/guest-image.sh) booted by `vireo`,
//! as vmlinux (PVH entry) and as bzImage (64-bit boot protocol).
//!
//! - `early_boot_*` run everywhere: the serial console must show the kernel banner, the
//!   command line Vireo passed and the memory map Vireo built. On an incomplete KVM that is
//!   as far as any VMM gets (TESTING.md), so the test stops the VM there.
//! - The full boots, with every device under Linux's own drivers, are `linux_guest.rs`
//!   (they need a complete KVM: scripts/test.sh runs them directly or in the nested host).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{collect_output, vireo};

/// The guest's RAM in these tests, and the e820 lines Linux must print for it.
const MEMORY: &str = "128M";
const E820_LINES: [&str; 2] = [
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable",
];

/// The Debian guest's directory.
fn guest_dir() -> PathBuf {
    test_support::host::guest_image_dir()
}

/// A `vireo` whose stdout is collected as it comes.
struct Console {
    child: std::process::Child,
    output: Arc<Mutex<String>>,
}

impl Console {
    /// Boot `kernel` of the guest image with `initrd` and `extra` options (devices).
    fn start_with(kernel: &str, initrd: &Path, cmdline: &str, cpus: &str, extra: &[&str]) -> Self {
        let kernel = guest_dir().join(kernel);
        let mut args = vec![
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            MEMORY,
            "--cpus",
            cpus,
            "--cmdline",
            cmdline,
        ];
        args.extend_from_slice(extra);
        let mut child = vireo(&args)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vireo");
        let output = collect_output(child.stdout.take().unwrap());
        Self { child, output }
    }

    fn text(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Wait until every one of `needles` is on the console, the VM exits, or `deadline`.
    /// Returns the exit status if the VM exited.
    fn wait_for(
        &mut self,
        needles: &[&str],
        deadline: Duration,
    ) -> Option<std::process::ExitStatus> {
        self.wait(
            |text| needles.iter().all(|n| text.contains(n)),
            deadline,
            &format!("{needles:?}"),
        )
    }

    /// Wait until `done(console)`, the VM exits (its status), or `deadline` (a failure).
    fn wait(
        &mut self,
        done: impl Fn(&str) -> bool,
        deadline: Duration,
        what: &str,
    ) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if done(&self.text()) {
                return None;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // Let the reader drain.
                return Some(status);
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                panic!(
                    "timed out after {deadline:?} waiting for {what}; console:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait; the exit code.
    fn stop(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "vireo ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Boot to the early lines. With `devices`, a disk and an entropy device are attached
/// and the kernel's command line must end with the two virtio-mmio entries Vireo adds.
fn early_boot(kernel: &str, devices: bool) {
    let cmdline =
        format!("console=ttyS0 earlycon=uart8250,io,0x3f8 reboot=k panic=-1 vireo.test={kernel}");
    let banner = "Linux version ";
    let cmdline_line = if devices {
        format!(
            "Command line: {cmdline} virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        )
    } else {
        format!("Command line: {cmdline}")
    };
    // The Debian kernel finds the vCPUs through Vireo's ACPI MADT (it has no MP-table parser).
    let mut needles = vec![
        banner,
        cmdline_line.as_str(),
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        "smpboot: Allowing 2 CPUs",
    ];
    needles.extend(E820_LINES);

    let dir = std::env::temp_dir().join(format!("vireo-early-{kernel}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let disk = format!("path={}", image.display());
    let extra: &[&str] = if devices {
        &["--disk", &disk, "--rng"]
    } else {
        &[]
    };
    let initrd = guest_dir().join("initrd.gz");
    let mut console = Console::start_with(kernel, &initrd, &cmdline, "2", extra);
    // Emulated KVM: the bzImage decompressor alone takes minutes of guest time.
    let exited = console.wait_for(&needles, Duration::from_secs(600));
    let text = console.text();
    for needle in &needles {
        assert!(
            text.contains(needle),
            "'{needle}' missing from the console:\n{text}"
        );
    }
    match exited {
        None => assert_eq!(console.stop(), Some(0), "SIGTERM must stop the VM cleanly"),
        // On hardware KVM the guest may finish before we look: it must end cleanly.
        Some(status) => assert_eq!(status.code(), Some(0), "console:\n{text}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn early_boot_vmlinux_pvh_with_a_disk_and_rng() {
    early_boot("vmlinux", true);
}

#[test]
fn early_boot_bzimage() {
    early_boot("bzImage", false);
}
