//! vireod and vireoctl with Linux guests (layer 4): the Debian test guest of
//! `scripts/guest-image.sh` (its kernel, its busybox initramfs ending in a shell on the
//! serial console), supervised by a real vireod, driven by the real vireoctl.
//!
//! These need a complete KVM: `#[ignore]`d in a plain `cargo test`; `scripts/test.sh` runs
//! them with `--ignored`, directly or in the nested test host (where they run as root on
//! cgroup v2, so the VM's cgroup is real).

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Viewer, binaries, cgroup_value, wait_for};

/// How long a boot to the shell may take (the nested host: ~5-10 s).
const BOOT_SECS: u64 = 180;
/// How long one shell command may take.
const COMMAND_SECS: u64 = 120;

/// The guest image's directory.
fn guest_dir() -> PathBuf {
    test_support::host::guest_image_dir()
}

/// A vireod for `test`, failing unless this host's KVM is complete; not root is a skip
/// (a failure under CI: the nested host runs as root, the cgroup checks need it).
fn setup(test: &str) -> Option<Daemon> {
    let (vireo, vireoctl) = binaries().unwrap_or_else(|e| panic!("{e}"));
    let probe = Command::new(&vireo)
        .args(["probe-kvm", "--iterations", "1000"])
        .output()
        .expect("run vireo probe-kvm");
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(
        text.contains("kvm=complete"),
        "layer-4 tests need a complete KVM; probe-kvm says {text} \
         (scripts/test.sh runs them in the nested host, scripts/nested-host.sh)"
    );
    let d = Daemon::start(test, &vireo, &vireoctl);
    if d.cgroup_base.is_none() {
        test_support::skip::missing(test, "not root: the VMs' cgroups cannot be checked");
        return None;
    }
    Some(d)
}

/// The definition of a Linux VM with a shell on its console and a balloon.
fn linux(name: &str, top: &str) -> String {
    let guest = guest_dir();
    format!(
        "name = \"{name}\"\n{top}\n\
         [machine]\n\
         kernel = \"{}\"\n\
         initrd = \"{}\"\n\
         cmdline = \"console=ttyS0 reboot=k panic=-1 quiet vireo.shell\"\n\
         cpus = 1\n\
         memory = \"256M\"\n\
         balloon = \"stats=1\"\n",
        guest.join("bzImage").display(),
        guest.join("initrd.gz").display(),
    )
}

/// The guest's shell through a console viewer: each command between markers (split in
/// the typed line so that only the output has them whole), its output and status back.
struct Shell {
    viewer: Viewer,
    seq: u32,
}

impl Shell {
    /// Wait for the shell on `viewer` (its history included), its prompt, then quiet it.
    fn attach(mut viewer: Viewer) -> Self {
        viewer.expect("VIREO-GUEST: shell", BOOT_SECS);
        viewer.expect("# ", COMMAND_SECS);
        let mut shell = Self { viewer, seq: 0 };
        shell.viewer.send(b"stty -echo; dmesg -n 1\n");
        shell.run("true");
        shell
    }

    /// A shell booting now on a viewer without history (a restart's): probes typed until
    /// one is answered (typed lines wait in the guest's tty until its shell reads them).
    fn attach_booting(mut viewer: Viewer) -> Self {
        let deadline = Instant::now() + Duration::from_secs(BOOT_SECS);
        for k in 1.. {
            viewer.send(format!("echo '@@'R{k}\n").as_bytes());
            if viewer.wait(&format!("@@R{k}"), 5).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no shell answered within {BOOT_SECS} s"
            );
        }
        let mut shell = Self { viewer, seq: 0 };
        shell.viewer.send(b"stty -echo; dmesg -n 1\n");
        shell.run("true");
        shell
    }

    /// A shell already quiet (e.g. after a vireod restart): no boot to wait for.
    fn resume(viewer: Viewer, seq: u32) -> Self {
        Self { viewer, seq }
    }

    fn status(&mut self, cmd: &str, secs: u64) -> (i32, String) {
        self.seq += 1;
        let n = self.seq;
        self.viewer
            .send(format!("echo '@@'B{n}; {{ {cmd} ; }} 2>&1; echo '@@'E{n} $?\n").as_bytes());
        self.viewer.expect(&format!("@@B{n}"), secs);
        let text = self.viewer.expect(&format!("@@E{n} "), secs);
        let output = text[..text.len() - format!("@@E{n} ").len()]
            .replace("\r\n", "\n")
            .trim()
            .to_string();
        let line = self.viewer.expect("\n", secs);
        (line.trim().parse().unwrap_or(-1), output)
    }

    /// Run `cmd`, which must succeed; its output.
    fn run(&mut self, cmd: &str) -> String {
        let (status, output) = self.status(cmd, COMMAND_SECS);
        assert_eq!(status, 0, "guest command {cmd:?}: {output}");
        output
    }

    fn meminfo_kib(&mut self, key: &str) -> u64 {
        let out = self.run(&format!("grep '^{key}:' /proc/meminfo"));
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {out:?}"))
    }

    /// Centiseconds of guest time a shell loop of `n` iterations takes (the guest's clock
    /// runs in host time, so a throttled vCPU makes it longer).
    fn busy_loop_cs(&mut self, n: u32) -> u64 {
        let up = "$(cut -d' ' -f1 /proc/uptime | tr -d .)";
        let out = self.run(&format!(
            "t0={up}; i=0; while [ $i -lt {n} ]; do i=$((i + 1)); done; echo $(({up} - t0))"
        ));
        out.trim().parse().unwrap_or_else(|_| panic!("{out:?}"))
    }
}

/// `vireoctl console` on a pseudo-terminal, as a user at a terminal runs it.
struct PtyConsole {
    master: std::fs::File,
    child: std::process::Child,
    seen: Vec<u8>,
}

impl PtyConsole {
    fn start(d: &Daemon, name: &str) -> Self {
        let (master, slave) = test_support::host::openpty();
        let child = Command::new(&d.vireoctl)
            .arg("--socket")
            .arg(&d.socket)
            .args(["console", name])
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .expect("vireoctl console runs");
        let master = std::fs::File::from(master);
        // SAFETY: fcntl on an fd this function owns.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        Self {
            master,
            child,
            seen: Vec::new(),
        }
    }

    fn expect(&mut self, want: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        loop {
            if String::from_utf8_lossy(&self.seen).contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vireoctl console never showed {want:?}; got {:?}",
                String::from_utf8_lossy(&self.seen)
            );
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

/// Define and start a Linux VM through vireoctl; a console viewer, the guest's shell.
/// `vireoctl console` on a terminal shows the prompt and runs a typed command; the
/// balloon set by `vireoctl set --balloon` lowers the guest's free memory and its figures
/// reach `vireoctl stats`; `set --cpu-quota` slows a busy loop in the guest; `shutdown` is
/// graceful (Ctrl+Alt+Del, the guest's init syncs and restarts: vireo exits 0).
#[test]
#[ignore = "layer 4: needs a complete KVM; scripts/test.sh runs it directly or in the nested host"]
fn linux_vm_console_balloon_cpu_quota_and_graceful_shutdown() {
    let Some(d) = setup("l4-life") else { return };
    // A data disk and a NIC, for their counters in `vireoctl stats`.
    let data = d.dir.join("data.img");
    std::fs::File::create(&data)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let devices = format!(
        "disks = [\"path={},id=data\"]\nnets = [\"tap=vl4life0,id=eth0\"]\n",
        data.display()
    );
    let file = d.definition("deb1", &(linux("deb1", "") + &devices));
    d.ctl_ok(&["define", file.to_str().unwrap()]);
    assert_eq!(d.ctl_ok(&["start", "deb1"]).trim(), "deb1: running");
    // vireo created the TAP; the host side must be up for the guest's frames to go out
    // (a TAP that is down refuses them, which the counters show as dropped).
    let up = Command::new("ip")
        .args(["link", "set", "vl4life0", "up"])
        .status()
        .expect("ip");
    assert!(up.success(), "ip link set vl4life0 up: {up}");

    // A viewer for the commands; its history holds the whole boot.
    let mut sh = Shell::attach(d.console("deb1", 1 << 16));
    // `vireoctl console` on a terminal: the guest's prompt, a typed command's output,
    // Ctrl+] detaches (the VM runs on).
    let mut tty = PtyConsole::start(&d, "deb1");
    tty.expect("detach with Ctrl+]", 20);
    tty.send(b"\n");
    tty.expect("# ", COMMAND_SECS);
    tty.send(b"echo typed-$((6 * 7))-here\n");
    tty.expect("typed-42-here", COMMAND_SECS);
    tty.send(b"\x1d");
    let status = wait_child(&mut tty.child, 20);
    assert!(status.success(), "vireoctl console: {status}");
    assert_eq!(d.info("deb1").summary.state, "running");
    // The command typed there ran in the guest this viewer watches too.
    assert!(sh.run("uname -r").contains("cloud-amd64"));

    // The balloon: 128 MiB taken from a 256 MiB guest.
    let free_before = sh.meminfo_kib("MemFree");
    assert_eq!(
        d.ctl_ok(&["set", "deb1", "--balloon", "128M"]).trim(),
        "deb1: changed live"
    );
    let started = Instant::now();
    let free_after = loop {
        let free = sh.meminfo_kib("MemFree");
        if free + 100 * 1024 <= free_before {
            break free;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "MemFree {free_before} KiB -> {free} KiB after 90 s: the balloon did not inflate"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("MemFree {free_before} KiB -> {free_after} KiB with a 128 MiB balloon");
    wait_for("the balloon's statistics in vireoctl stats", 30, || {
        let stats = d.ctl_ok(&["stats", "deb1"]);
        stats.contains("balloon.actual_mib") && stats.contains("balloon.free_memory")
    });
    d.ctl_ok(&["set", "deb1", "--balloon", "0"]);

    // Per-device counters: 4 MiB read from the data disk, ARP requests sent on the NIC
    // (no one answers them).
    sh.run("dd if=/dev/vda of=/dev/null bs=1M count=4 2>/dev/null");
    sh.run("ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up");
    sh.status("ping -c 2 -W 1 10.77.0.1", COMMAND_SECS);
    let stats: manager_types::api::VmStats = d
        .client()
        .json("GET", "/v1/vms/deb1/stats", None::<&()>)
        .unwrap();
    eprintln!("disks {:?}\nnics {:?}", stats.disks, stats.nics);
    let disk = stats
        .disks
        .iter()
        .find(|x| x.id == "data")
        .expect("the data disk's counters");
    assert!(disk.read_bytes >= 4 << 20, "{disk:?}");
    assert!(disk.reads > 0 && disk.errors == 0, "{disk:?}");
    let nic = stats
        .nics
        .iter()
        .find(|x| x.id == "eth0")
        .expect("the NIC's counters");
    assert!(nic.tx_packets >= 1 && nic.tx_bytes >= 42, "{nic:?}");
    assert_eq!(nic.tx_dropped, 0, "{nic:?}");
    let text = d.ctl_ok(&["stats", "deb1"]);
    assert!(
        text.contains("disk.data  read ") && text.contains("nic.eth0  rx "),
        "{text}"
    );

    // The CPU quota: the same busy loop, unthrottled then at 10% of a CPU. The loop is
    // sized to take at least a second unthrottled.
    let mut n = 2000;
    let mut free_run = sh.busy_loop_cs(n);
    while free_run < 100 && n < 1 << 24 {
        n *= 4;
        free_run = sh.busy_loop_cs(n);
    }
    d.ctl_ok(&["set", "deb1", "--cpu-quota", "10%"]);
    let cgroup = d.info("deb1").cgroup.expect("a cgroup");
    let max = cgroup_value(&cgroup, &["cpu.max", "cpu.cfs_quota_us"]);
    assert!(max.starts_with("10000"), "cpu quota {max:?} in {cgroup}");
    let throttled = sh.busy_loop_cs(n);
    d.ctl_ok(&["set", "deb1", "--cpu-quota", "none"]);
    eprintln!("{n} iterations: {free_run} cs unthrottled, {throttled} cs at a 10% quota");
    assert!(
        throttled >= 3 * free_run,
        "a 10% quota should slow the guest's loop: {free_run} cs -> {throttled} cs"
    );
    let throttled_periods = cgroup_value(&cgroup, &["cpu.stat"]);
    assert!(
        throttled_periods
            .lines()
            .any(|l| l.starts_with("nr_throttled") && !l.ends_with(" 0")),
        "{throttled_periods}"
    );

    // Graceful shutdown: the guest's init takes Ctrl+Alt+Del and restarts; no kill.
    let started = Instant::now();
    assert_eq!(
        d.ctl_ok(&["shutdown", "deb1", "--timeout", "150"]).trim(),
        "deb1: stopped"
    );
    assert!(started.elapsed() < Duration::from_secs(140));
    let info = d.info("deb1");
    assert_eq!(info.exit_status.as_deref(), Some("exit 0"), "{info:?}");
    sh.viewer.expect("VIREO-GUEST: ctrl-alt-del: reboot -f", 10);
}

/// A running Linux VM outlives vireod: killed with SIGKILL and started again, vireod
/// re-adopts it and its console still answers. A snapshot reverted gives the guest back
/// as it was. Its `vireo` killed, it is marked crashed and restarted by its policy, and
/// the new boot's shell answers.
#[test]
#[ignore = "layer 4: needs a complete KVM; scripts/test.sh runs it directly or in the nested host"]
fn a_linux_vm_is_readopted_reverted_to_a_snapshot_and_restarted_after_a_crash() {
    let Some(mut d) = setup("l4-adopt") else {
        return;
    };
    d.define(&linux("deb2", "restart = \"on-failure\""), true);
    let pid = d.info("deb2").summary.pid.unwrap();
    let mut sh = Shell::attach(d.console("deb2", 1 << 16));
    sh.run("echo before > /tmp/mark");
    let seq = sh.seq;
    drop(sh);

    d.kill();
    std::thread::sleep(Duration::from_millis(500));
    d.restart();
    let info = d.info("deb2");
    assert_eq!(
        (info.summary.state.as_str(), info.summary.pid),
        ("running", Some(pid)),
        "{}",
        d.log()
    );
    let mut sh = Shell::resume(d.console("deb2", 0), seq);
    assert_eq!(sh.run("cat /tmp/mark; echo after"), "before\nafter");
    assert!(
        d.ctl_ok(&["events", "--no-follow"])
            .contains("deb2 adopted")
    );

    // A snapshot of the running guest, then a change, then a revert: the guest is back
    // as it was (its memory: a tmpfs file), in a new vireo, and its shell answers.
    let out = d.ctl_ok(&["snapshot", "create", "deb2", "one"]);
    assert!(out.starts_with("deb2: snapshot one created"), "{out}");
    sh.run("echo two > /tmp/mark");
    assert_eq!(
        d.ctl_ok(&["snapshot", "revert", "deb2", "one"]).trim(),
        "deb2: reverted to one, running"
    );
    let pid = d.info("deb2").summary.pid.unwrap();
    let seq = sh.seq;
    drop(sh);
    let mut sh = Shell::resume(d.console("deb2", 0), seq);
    assert_eq!(sh.run("cat /tmp/mark"), "before");

    // SAFETY: kill(2) of the VM's vireo (the revert's, a child of this vireod).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for("deb2 restarted by its policy", 60, || {
        let i = d.info("deb2");
        i.summary.state == "running" && i.summary.pid.is_some_and(|p| p != pid)
    });
    let info = d.info("deb2");
    assert_eq!(info.restarts, 1);
    assert_eq!(info.exit_status.as_deref(), Some("signal 9 (SIGKILL)"));
    // A new boot: the mark is gone, the shell answers.
    let mut sh = Shell::attach_booting(d.console("deb2", 0));
    assert_eq!(sh.status("cat /tmp/mark", COMMAND_SECS).0, 1);
    d.ctl_ok(&["destroy", "deb2"]);
    assert_eq!(d.info("deb2").summary.state, "stopped");
}

/// Wait up to `secs` for `child` to exit.
fn wait_child(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vireoctl console did not exit within {secs} s of Ctrl+]");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
