//! The layer-4 harness (see `linux_guest.rs`): the Debian test guest booted by the real
//! `vireo`, with Linux's own drivers, driven from outside.
//!
//! - [`LinuxVm`]: one `vireo` process (command line or API), its console collected as it
//!   comes, its stdin on the guest's serial console. With `vireo.shell` on the kernel
//!   command line the guest's /init ends in a shell there, and [`LinuxVm::sh`] runs
//!   a command in it and returns its output and status (markers around each command).
//! - [`Spec`]: what to boot (kernel, initrd, command line, vCPUs, memory, devices).
//! - Guest files ([`GuestFiles`], from the layer-3 harness) carry tools and data in an
//!   extra initramfs archive.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::layer3::{GuestFiles, TempDir, guest_dir, pattern, run_ok, sha256, tail};

use crate::common::collect_output;

/// How long a boot to the shell may take (the nested host: ~5-10 s).
pub const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// How long one shell command may take unless the test says otherwise.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// The kernel command line of a shell guest: quiet, ends in a shell on the console.
pub const SHELL_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet vireo.shell";

/// Console lines that mean the guest's clocks are unhealthy across vCPUs.
pub const TSC_TROUBLE: [&str; 3] = [
    "TSC unstable",
    "TSCs unsynchronized",
    "Marking TSC unstable",
];

/// Fail unless this host's KVM runs what Linux needs (`vireo probe-kvm`).
pub fn require_complete_kvm() {
    let out = Command::new(env!("CARGO_BIN_EXE_vireo"))
        .args(["probe-kvm", "--iterations", "1000"])
        .output()
        .expect("run vireo probe-kvm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kvm=complete"),
        "layer-4 tests need a complete KVM; probe-kvm says {text} {} \
         (scripts/test.sh runs them in the nested host, scripts/nested-host.sh)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What to boot.
#[derive(Clone)]
pub struct Spec {
    /// A file of the guest image (`vmlinux`, `bzImage`) or a path.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub cpus: u32,
    pub memory: String,
    /// More `vireo run` options (devices).
    pub extra: Vec<String>,
    /// Run vireo inside this network namespace.
    pub netns: Option<String>,
}

impl Spec {
    /// The guest image's `kernel` with its initrd, 2 vCPUs, 256 MiB, the shell command line.
    pub fn shell(kernel: &str) -> Self {
        let guest = guest_dir();
        Self {
            kernel: guest.join(kernel),
            initrd: guest.join("initrd.gz"),
            cmdline: SHELL_CMDLINE.to_string(),
            cpus: 2,
            memory: "256M".to_string(),
            extra: Vec::new(),
            netns: None,
        }
    }

    pub fn with(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// One `vireo` process and its console.
pub struct LinuxVm {
    pub child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<String>>,
    seq: u32,
}

impl LinuxVm {
    /// `vireo run` with `spec`.
    pub fn boot(spec: &Spec) -> Self {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--kernel".into(),
            spec.kernel.display().to_string(),
            "--initrd".into(),
            spec.initrd.display().to_string(),
            "--cmdline".into(),
            spec.cmdline.clone(),
            "--cpus".into(),
            spec.cpus.to_string(),
            "--memory".into(),
            spec.memory.clone(),
        ];
        args.extend(spec.extra.iter().cloned());
        Self::spawn(&args, spec.netns.as_deref())
    }

    /// `vireo ARGS` (e.g. `--api-sock PATH`), inside `netns` if given.
    pub fn spawn(args: &[String], netns: Option<&str>) -> Self {
        let mut cmd = match netns {
            None => Command::new(env!("CARGO_BIN_EXE_vireo")),
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_vireo")]);
                cmd
            }
        };
        cmd.args(args)
            .env_remove("VIREO_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start vireo");
        let output = collect_output(child.stdout.take().unwrap());
        // The VMM's own messages go to the same text, a marked line each, as they come.
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let sink = output.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push_str(&format!("\n[vireo stderr] {line}\n"));
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            output,
            seq: 0,
        }
    }

    /// Everything the console showed so far.
    pub fn console(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Fail with the console's end.
    pub fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        std::thread::sleep(Duration::from_millis(200));
        panic!("{why}; console (end):\n{}", tail(&self.console(), 80));
    }

    /// Wait until `needle` is on the console (after byte `from`); fail if the VM exits
    /// or `deadline` passes first. Returns where the needle ends.
    pub fn wait_for_from(&mut self, from: usize, needle: &str, deadline: Duration) -> usize {
        let start = Instant::now();
        loop {
            let text = self.console();
            if let Some(at) = text.get(from..).and_then(|t| t.find(needle)) {
                return from + at + needle.len();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                if let Some(at) = self.console().get(from..).and_then(|t| t.find(needle)) {
                    return from + at + needle.len();
                }
                self.fail(&format!("vireo exited ({status}) before {needle:?}"));
            }
            if start.elapsed() > deadline {
                self.fail(&format!("no {needle:?} within {deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for(&mut self, needle: &str, deadline: Duration) -> usize {
        self.wait_for_from(0, needle, deadline)
    }

    /// Wait for the VM to exit; fail after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200)); // Let the readers drain.
                return status;
            }
            if start.elapsed() > deadline {
                self.fail(&format!("vireo still running after {deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Type `text` on the guest's serial console.
    pub fn type_in(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("vireo's stdin");
        stdin
            .write_all(text.as_bytes())
            .expect("write to vireo's stdin");
        stdin.flush().unwrap();
    }

    /// Wait for the guest's shell and make it quiet: no echo, no kernel messages on the
    /// console.
    pub fn wait_shell(&mut self) {
        self.wait_for("VIREO-GUEST: shell", BOOT_DEADLINE);
        std::thread::sleep(Duration::from_millis(300));
        self.type_in("stty -echo; dmesg -n 1\n");
        let (status, _) = self.sh_status("true", COMMAND_DEADLINE);
        assert_eq!(status, 0);
    }

    /// Run `cmd` in the guest's shell; its exit status and output (stdout and stderr).
    pub fn sh_status(&mut self, cmd: &str, deadline: Duration) -> (i32, String) {
        self.seq += 1;
        let n = self.seq;
        let from = self.console().len();
        // The markers are split in the command so that only the output has them whole.
        self.type_in(&format!(
            "echo '@@'B{n}; {{ {cmd} ; }} 2>&1; echo '@@'E{n} $?\n"
        ));
        let begin = self.wait_for_from(from, &format!("@@B{n}"), deadline);
        let end_marker = format!("@@E{n} ");
        let end = self.wait_for_from(begin, &end_marker, deadline);
        // The status follows the end marker up to the line's end.
        let status_at = end;
        let status_line = loop {
            let text = self.console();
            if let Some(eol) = text[status_at..].find('\n') {
                break text[status_at..status_at + eol].trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let text = self.console();
        let output = text[begin..end - end_marker.len()]
            .replace('\r', "")
            .trim_matches('\n')
            .to_string();
        let status = status_line
            .parse()
            .unwrap_or_else(|_| self.fail(&format!("bad status line {status_line:?}")));
        (status, output)
    }

    /// Run `cmd` in the guest's shell; fail unless it succeeds; its output.
    pub fn sh(&mut self, cmd: &str) -> String {
        self.sh_deadline(cmd, COMMAND_DEADLINE)
    }

    pub fn sh_deadline(&mut self, cmd: &str, deadline: Duration) -> String {
        let (status, output) = self.sh_status(cmd, deadline);
        if status != 0 {
            self.fail(&format!("guest command {cmd:?} exited {status}: {output}"));
        }
        output
    }

    /// The guest's view of `key` in /proc/meminfo, in KiB.
    pub fn meminfo_kib(&mut self, key: &str) -> u64 {
        let out = self.sh(&format!("grep '^{key}:' /proc/meminfo"));
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {out:?}"))
    }

    /// `poweroff -f` in the guest's shell (ACPI S5); vireo's exit code.
    pub fn poweroff(&mut self) -> Option<i32> {
        self.type_in("poweroff -f\n");
        self.wait_exit(BOOT_DEADLINE).code()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The guest's TSCs across vCPUs. With an invariant TSC in its CPUID (`constant_tsc`)
    /// the guest must not report them unstable at all. Without one (a host whose CPU has
    /// none, so KVM does not offer it: the nested host, whose QEMU TCG CPU has no invtsc)
    /// an AMD-vendor Linux with more than one CPU assumes unsynchronised TSCs without
    /// measuring (`unsynchronized_tsc()`, "Marking TSC unstable due to TSCs unsynchronized")
    /// and keeps kvm-clock; then no warp may have been measured and kvm-clock must be the
    /// clocksource. Returns whether the TSC was invariant.
    pub fn assert_tsc_healthy(&mut self) -> bool {
        let dmesg = self.sh("dmesg");
        let invariant = self.sh("grep -c -w constant_tsc /proc/cpuinfo || true") != "0";
        let clocksource =
            self.sh("cat /sys/devices/system/clocksource/clocksource0/current_clocksource");
        let tsc_lines: Vec<&str> = dmesg
            .lines()
            .filter(|l| l.contains("TSC") || l.contains("tsc"))
            .collect();
        // A measured warp between vCPUs is a VMM fault whatever the CPUID says.
        for bad in [
            "TSC warp",
            "check_tsc_sync_source failed",
            "TSC ADJUST differs",
        ] {
            assert!(!dmesg.contains(bad), "{bad}:\n{}", tsc_lines.join("\n"));
        }
        if invariant {
            for bad in TSC_TROUBLE {
                assert!(!dmesg.contains(bad), "{bad}:\n{}", tsc_lines.join("\n"));
            }
        } else {
            let unstable: Vec<&&str> = tsc_lines
                .iter()
                .filter(|l| l.contains("unstable"))
                .collect();
            assert!(
                unstable
                    .iter()
                    .all(|l| l.contains("due to TSCs unsynchronized")),
                "TSC unstable for another reason than a missing invariant TSC:\n{}",
                tsc_lines.join("\n")
            );
            assert_eq!(clocksource, "kvm-clock", "{}", tsc_lines.join("\n"));
        }
        invariant
    }
}

impl Drop for LinuxVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest image's initrd with `files` appended, written into `dir`.
pub fn initrd_with(dir: &TempDir, name: &str, files: GuestFiles) -> PathBuf {
    let out = dir.join(name);
    files.initrd(&guest_dir(), &out);
    out
}

/// Add the host's `mkfs.ext4` (with its libraries) to `files`; the guest command to run it.
pub fn add_mkfs(files: &mut GuestFiles) -> String {
    let mkfs = test_support::skip::which("mkfs.ext4").expect("mkfs.ext4 (e2fsprogs)");
    files.host_program("mkfs.ext4", &mkfs);
    GuestFiles::host_program_command("mkfs.ext4")
}

/// A sparse raw image of `mib` MiB.
pub fn raw_image(path: &Path, mib: u64) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
}

/// `debugfs -R "cat PATH"` of an ext4 image: the file's bytes, read without mounting.
pub fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(image),
    )
}

/// `e2fsck -fn`: the filesystem is clean (exit 0), else fail with its report.
pub fn assert_fsck_clean(image: &Path) {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(image)
        .output()
        .expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn {}: {}\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `vireo --api-sock` process (its console in a [`LinuxVm`]) and an API client.
pub struct ApiVm {
    pub client: crate::common::http::Client,
    pub sock: PathBuf,
}

impl ApiVm {
    /// Start `vireo --api-sock DIR/NAME.sock` and connect.
    pub fn start(dir: &TempDir, name: Option<&str>) -> (LinuxVm, Self) {
        Self::start_in(dir, name, None)
    }

    /// [`ApiVm::start`] inside the network namespace `netns`, if given.
    pub fn start_in(dir: &TempDir, name: Option<&str>, netns: Option<&str>) -> (LinuxVm, Self) {
        Self::start_with(dir, name, netns, &[])
    }

    /// [`ApiVm::start_in`] with more of vireo's (Firecracker's) flags.
    pub fn start_with(
        dir: &TempDir,
        name: Option<&str>,
        netns: Option<&str>,
        flags: &[&str],
    ) -> (LinuxVm, Self) {
        let sock = dir.join(&format!("{}.sock", name.unwrap_or("api")));
        let _ = std::fs::remove_file(&sock);
        let mut args = vec!["--api-sock".to_string(), sock.display().to_string()];
        args.extend(flags.iter().map(|f| f.to_string()));
        let vm = LinuxVm::spawn(&args, netns);
        let start = Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "no API socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        let client = crate::common::http::Client::connect(&sock);
        (vm, Self { client, sock })
    }

    /// `method path body`, which must succeed (2xx).
    pub fn ok(&mut self, method: &str, path: &str, body: &str) {
        let reply = self.client.request(method, path, Some(body));
        assert!(
            (200..300).contains(&reply.status),
            "{method} {path} {body}: {} {}",
            reply.status,
            reply.body
        );
    }

    /// Configure `spec`'s kernel, initrd, command line, vCPUs and memory (MiB) through the
    /// API, then `more` requests, then InstanceStart.
    pub fn boot(&mut self, spec: &Spec, more: &[(&str, &str, String)]) {
        let mib = spec.memory.trim_end_matches(['M', 'm']);
        self.ok(
            "PUT",
            "/boot-source",
            &serde_json::json!({
                "kernel_image_path": spec.kernel,
                "initrd_path": spec.initrd,
                "boot_args": spec.cmdline,
            })
            .to_string(),
        );
        self.ok(
            "PUT",
            "/machine-config",
            &format!(
                r#"{{"vcpu_count": {}, "mem_size_mib": {mib}, "track_dirty_pages": true}}"#,
                spec.cpus
            ),
        );
        for (method, path, body) in more {
            self.ok(method, path, body);
        }
        self.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    }
}
