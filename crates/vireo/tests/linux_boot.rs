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

use std::path::{Path, PathBuf};
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
        let initrd = guest_dir().join("initrd.gz");
        Self::start_with(kernel, &initrd, cmdline, cpus, &[], None)
    }

    /// Boot `kernel` of the guest image with `initrd`, `extra` options (devices), inside
    /// the network namespace `netns` if given.
    fn start_with(
        kernel: &str,
        initrd: &Path,
        cmdline: &str,
        cpus: &str,
        extra: &[&str],
        netns: Option<&str>,
    ) -> Self {
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
        let mut cmd = match netns {
            None => vireo(&args),
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_vireo")])
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped());
                cmd
            }
        };
        let mut child = cmd.stderr(Stdio::inherit()).spawn().expect("start vireo");
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
    let mut console = Console::start_with(kernel, &initrd, &cmdline, "2", extra, None);
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

/// The guest's side of the devices test (`/vireo/test.sh`, run by the initramfs' /init):
/// one `L4:` line per check, which the host compares.
const DEVICES_TEST_SH: &str = r#"
echo "L4: disk sectors $(cat /sys/block/vda/size)"
mkdir -p /mnt
if mount -t ext4 /dev/vda /mnt; then
    echo "L4: disk says $(cat /mnt/hello.txt)"
    echo "written by the guest" > /mnt/from-guest.txt
    sync
    umount /mnt && echo "L4: disk unmounted"
fi
echo "L4: mac $(cat /sys/class/net/eth0/address)"
ip link set lo up
ip addr add 10.77.0.2/24 dev eth0
ip link set eth0 up
if ping -c 2 -W 5 10.77.0.1 >/dev/null; then echo "L4: ping ok"; else echo "L4: ping failed"; fi
/vireo/vsock connect 2 5000 hello-from-guest
echo "L4: rng $(cat /sys/class/misc/hw_random/rng_current)"
echo "L4: done"
"#;

/// The guest's MAC in the devices test.
const GUEST_MAC: &str = "06:00:ac:10:00:02";

/// A gzip'd newc cpio of `files` (path inside the initramfs, content, mode), appended
/// to the guest's initrd.gz, written to `out`.
fn initrd_with(out: &Path, files: &[(&str, &[u8], u32)]) {
    let root = out.with_extension("root");
    let _ = std::fs::remove_dir_all(&root);
    let mut names = Vec::new();
    for (name, data, mode) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        let perms = std::os::unix::fs::PermissionsExt::from_mode(*mode);
        std::fs::set_permissions(&path, perms).unwrap();
        names.push(name.to_string());
        names.push(Path::new(name).parent().unwrap().display().to_string());
    }
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    let script = format!(
        "cd {} && printf '%s\\n' {} | cpio -o -H newc --quiet | gzip -9 > {}.extra",
        root.display(),
        names.join(" "),
        out.display()
    );
    let status = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(status.success(), "cpio of the test files failed");
    let mut initrd = std::fs::read(guest_dir().join("initrd.gz")).unwrap();
    initrd.extend(std::fs::read(out.with_extension("extra")).unwrap());
    std::fs::write(out, initrd).unwrap();
}

/// The guest tool `tests/guest-tools/vsock.c`, built static with the host's gcc.
fn vsock_tool(out: &Path) -> Vec<u8> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guest-tools/vsock.c");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc -static {} failed", src.display());
    std::fs::read(out).unwrap()
}

/// A network namespace for one test, with a TAP whose host side is 10.77.0.1; deleted
/// on drop.
struct Netns(String);

impl Netns {
    fn create(tap: &str) -> Self {
        let name = format!("vireo-l4-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ns = Self(name);
        for cmd in [
            vec!["ip", "netns", "add", &ns.0],
            vec!["ip", "-n", &ns.0, "link", "set", "lo", "up"],
            vec![
                "ip", "-n", &ns.0, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
            ],
            vec!["ip", "-n", &ns.0, "addr", "add", "10.77.0.1/24", "dev", tap],
            vec!["ip", "-n", &ns.0, "link", "set", tap, "up"],
        ] {
            let status = Command::new(cmd[0]).args(&cmd[1..]).status().unwrap();
            assert!(status.success(), "{cmd:?} failed");
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Boot with a disk (ext4, made on the host), a NIC on a TAP in a namespace of the
/// test's own, vsock, entropy and a balloon; the guest uses each and the host checks
/// what it saw: the disk's file, its write (read back on the host after the VM ended),
/// ping to the host side of the TAP, a vsock connection to `<socket>_5000`.
fn full_boot_with_devices(kernel: &str) {
    assert!(
        !kvm_is_emulated(),
        "full Linux boots need hardware KVM; this host's KVM is emulated (scripts/test.sh leaves these tests ignored here)"
    );
    let dir = std::env::temp_dir().join(format!("vireo-l4-{kernel}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("disk-root")).unwrap();

    // Disk: 64 MiB of ext4 holding hello.txt.
    std::fs::write(dir.join("disk-root/hello.txt"), "hello from the host\n").unwrap();
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir.join("disk-root"))
        .arg(&image)
        .status()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed");

    let tool = vsock_tool(&dir.join("vsock"));
    let initrd = dir.join("initrd-devices.gz");
    initrd_with(
        &initrd,
        &[
            ("vireo/test.sh", DEVICES_TEST_SH.as_bytes(), 0o755),
            ("vireo/vsock", &tool, 0o755),
        ],
    );

    // vsock: the guest's connection to port 5000 arrives on <socket>_5000.
    let uds = dir.join("vsock.sock");
    let listener =
        std::os::unix::net::UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let vsock_peer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        conn.write_all(format!("host got {got}").as_bytes())
            .unwrap();
        got
    });

    let tap = "vl4tap0";
    let ns = Netns::create(tap);
    let disk = format!("path={}", image.display());
    let net = format!("tap={tap},mac={GUEST_MAC}");
    let vsock = format!("cid=3,socket={}", uds.display());
    let cmdline = "console=ttyS0 reboot=k panic=-1 vireo.poweroff";
    let mut console = Console::start_with(
        kernel,
        &initrd,
        cmdline,
        "2",
        &[
            "--disk",
            &disk,
            "--net",
            &net,
            "--vsock",
            &vsock,
            "--rng",
            "--balloon",
        ],
        Some(&ns.0),
    );
    let status = console.wait_exit(Duration::from_secs(120));
    let text = console.text();
    for needle in [
        "VIREO-GUEST: modules loaded=15 failed=0",
        "L4: disk sectors 131072",
        "L4: disk says hello from the host",
        "L4: disk unmounted",
        &format!("L4: mac {GUEST_MAC}"),
        "L4: ping ok",
        "vsock: got host got hello-from-guest",
        "L4: rng virtio_rng",
        "L4: done",
        "VIREO-GUEST-OK",
    ] {
        assert!(text.contains(needle), "'{needle}' missing:\n{text}");
    }
    assert_eq!(status.code(), Some(0), "console:\n{text}");
    assert_eq!(vsock_peer.join().unwrap(), "hello-from-guest");

    // The guest's write reached the image: debugfs reads it back without mounting.
    let out = Command::new("debugfs")
        .args(["-R", "cat /from-guest.txt"])
        .arg(&image)
        .output()
        .expect("run debugfs (e2fsprogs)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written by the guest\n"
    );
    drop(ns);
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

#[test]
#[ignore = "needs hardware KVM; scripts/test.sh runs it where `vireo probe-kvm` reports hardware"]
fn full_boot_vmlinux_pvh_with_disk_nic_vsock_rng_balloon() {
    full_boot_with_devices("vmlinux");
}
