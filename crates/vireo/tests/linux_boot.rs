//! Layer 4: the Debian cloud kernel (built by scripts/guest-image.sh) booted by `vireo`,
//! as vmlinux (PVH entry) and as bzImage (64-bit boot protocol).
//!
//! - `early_boot_*` run everywhere: the serial console must show the kernel banner, the
//!   command line Vireo passed and the memory map Vireo built. On emulated KVM that is as
//!   far as any VMM gets (TESTING.md), so the test stops the VM there.
//! - `full_boot_*` boot to the initramfs' marker and a clean exit. They need hardware KVM:
//!   they are `#[ignore]`d, and scripts/test.sh includes them when `vireo probe-kvm` reports
//!   hardware KVM. On emulated KVM they show as ignored, never as passed.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{collect_output, vireo};

/// The guest's RAM in these tests, and the e820 lines Linux must print for it.
const MEMORY: &str = "128M";
const E820_LINES: [&str; 2] = [
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable",
];

/// Build (or find in its cache) the Debian guest; its directory.
fn guest_dir() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/guest-image.sh");
    assert!(out.status.success(), "scripts/guest-image.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Whether this host's KVM is emulated, by `vireo probe-kvm` (1e6 loop iterations).
fn kvm_is_emulated() -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .arg("probe-kvm")
        .output()
        .expect("run vireo probe-kvm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe-kvm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("linux_boot: {}", text.trim());
    text.contains("kvm=emulated")
}

/// A `vireo` whose stdout is collected as it comes.
struct Console {
    child: std::process::Child,
    output: Arc<Mutex<String>>,
}

impl Console {
    fn start(kernel: &str, cmdline: &str, cpus: &str) -> Self {
        let dir = guest_dir();
        let kernel = dir.join(kernel);
        let initrd = dir.join("initrd.gz");
        let mut child = vireo(&[
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
        ])
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

    /// Wait until the VM exits, or fail after `deadline`.
    fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        self.wait(|_| false, deadline, "the VM to exit")
            .expect("only an exit ends the wait")
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

fn early_boot(kernel: &str) {
    let cmdline =
        format!("console=ttyS0 earlycon=uart8250,io,0x3f8 reboot=k panic=-1 vireo.test={kernel}");
    let banner = "Linux version ";
    let cmdline_line = format!("Command line: {cmdline}");
    // The Debian kernel finds the vCPUs through Vireo's ACPI MADT (it has no MP-table parser).
    let mut needles = vec![
        banner,
        cmdline_line.as_str(),
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        "smpboot: Allowing 2 CPUs",
    ];
    needles.extend(E820_LINES);

    let mut console = Console::start(kernel, &cmdline, "2");
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
}

/// Boot to the initramfs' marker; the guest ends the VM with `reboot -f` (through the
/// i8042, `reboot=k`) or, with `vireo.poweroff`, `poweroff -f` (through ACPI S5).
fn full_boot(kernel: &str, end: &str) {
    assert!(
        !kvm_is_emulated(),
        "full Linux boots need hardware KVM; this host's KVM is emulated (scripts/test.sh leaves these tests ignored here)"
    );
    let cmdline = format!("console=ttyS0 reboot=k panic=-1 {end}");
    let cmdline = cmdline.as_str();
    let mut console = Console::start(kernel, cmdline, "2");
    let status = console.wait_exit(Duration::from_secs(120));
    let text = console.text();
    assert!(
        text.contains("VIREO-GUEST-OK"),
        "no marker on the console:\n{text}"
    );
    assert!(
        text.contains("modules loaded=15 failed=0"),
        "virtio modules did not load:\n{text}"
    );
    assert_eq!(status.code(), Some(0), "console:\n{text}");
}

#[test]
fn early_boot_vmlinux_pvh() {
    early_boot("vmlinux");
}

#[test]
fn early_boot_bzimage() {
    early_boot("bzImage");
}

#[test]
#[ignore = "needs hardware KVM; scripts/test.sh runs it where `vireo probe-kvm` reports hardware"]
fn full_boot_vmlinux_pvh() {
    full_boot("vmlinux", "vireo.reboot");
}

#[test]
#[ignore = "needs hardware KVM; scripts/test.sh runs it where `vireo probe-kvm` reports hardware"]
fn full_boot_bzimage() {
    full_boot("bzImage", "vireo.poweroff");
}
