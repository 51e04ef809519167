//! vireod and vireoctl against real VMs: tiny guests (crates/test-guests) on this
//! machine's KVM (layer 2), the real binaries, a state dir per test.
//!
//! - `echo` prints "echo ready", echoes each byte it gets as "got: X" and resets after
//!   `q` (its vireo exits 0: the guest shut down);
//! - `count` prints a dot every 256 iterations for ever and ignores Ctrl+Alt+Del;
//! - `kbd` prints the scan codes it receives and resets after Ctrl+Alt+Del's.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, binaries, cgroup_value, kvm, pids_mentioning, tiny, wait_for};
use manager_types::api::{ErrorCode, SetRequest, ShutdownRequest, VmInfo, VmSummary};
use test_support::require;

fn setup(test: &str) -> Option<Daemon> {
    let (vireo, vireoctl) = match binaries() {
        Ok(b) => b,
        Err(e) => {
            test_support::skip::missing(test, &e);
            return None;
        }
    };
    if let Err(e) = kvm() {
        test_support::skip::missing(test, &e);
        return None;
    }
    Some(Daemon::start(test, &vireo, &vireoctl))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn code(e: manager_types::client::ClientError) -> ErrorCode {
    e.code().unwrap_or_else(|| panic!("not an API error: {e}"))
}

#[test]
fn define_start_console_and_a_guest_that_shuts_itself_down() {
    let Some(d) = setup("lifecycle") else { return };
    let c = d.client();

    // Bad input changes nothing: each error is clear and the list stays empty.
    let missing = tiny("e1", "echo", "", "").replace(
        &test_guests::path("echo").display().to_string(),
        "/nonexistent/vmlinux",
    );
    let out = d.ctl(&["define", d.definition("bad", &missing).to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("machine.kernel: /nonexistent/vmlinux: No such file"),
        "{stderr}"
    );
    let bad = d.definition("typo", "name = \"e1\"\n[machine]\nkernle = \"/k\"\n");
    let out = d.ctl(&["define", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("typo.toml:3:1: unknown field `kernle`"),
        "{stderr}"
    );
    let out = d.ctl(&["start", "nosuchvm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VM named 'nosuchvm'"));
    let vms: Vec<VmSummary> = c.json("GET", "/v1/vms", None::<&()>).unwrap();
    assert!(vms.is_empty());

    let file = d.definition("e1", &tiny("e1", "echo", "", ""));
    d.ctl_ok(&["define", file.to_str().unwrap()]);
    let dup = d.ctl(&["define", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already defined"));
    assert_eq!(d.info("e1").summary.state, "stopped");

    assert_eq!(d.ctl_ok(&["start", "e1"]).trim(), "e1: running");
    let info = d.info("e1");
    let pid = info.summary.pid.expect("a running VM has a pid");
    // One `vireo` process per VM, as `ps` shows it.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(d.vireo.as_os_str().as_encoded_bytes()));
    let listed = d.ctl_ok(&["list"]);
    assert!(listed.starts_with("NAME"), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("e1") && l.contains("running")),
        "{listed}"
    );
    // Starting it again is a conflict, not a second VMM.
    assert_eq!(
        code(
            c.json::<VmInfo>("POST", "/v1/vms/e1/start", None::<&()>)
                .unwrap_err()
        ),
        ErrorCode::Conflict
    );

    // Two viewers at once: both see the guest, what either types reaches it.
    let mut a = d.console("e1", 4096);
    a.expect("echo ready\n", 20);
    let mut b = d.console("e1", 0);
    a.send(b"x");
    a.expect("got: x\n", 20);
    b.expect("got: x\n", 20);
    b.send(b"y");
    a.expect("got: y\n", 20);
    let log = c
        .call("GET", "/v1/vms/e1/console/log?lines=5", None)
        .unwrap();
    assert!(log.body.contains("got: y"), "{}", log.body);

    // `q`: the guest resets, vireo exits 0, the VM is stopped, not crashed.
    b.send(b"q");
    let info = d.wait_state("e1", "stopped", 20);
    assert_eq!(info.exit_status.as_deref(), Some("exit 0"));
    assert!(!alive(pid));
    assert!(info.summary.pid.is_none());

    let events = d.ctl_ok(&["events", "--no-follow"]);
    for want in [
        "e1 defined",
        "e1 state stopped -> starting",
        "e1 state starting -> running",
        "e1 state running -> stopped (exit 0)",
    ] {
        assert!(events.contains(want), "no '{want}' in\n{events}");
    }
    d.ctl_ok(&["undefine", "e1"]);
    assert_eq!(
        code(
            c.json::<VmInfo>("GET", "/v1/vms/e1", None::<&()>)
                .unwrap_err()
        ),
        ErrorCode::NotFound
    );
}

#[test]
fn a_killed_vmm_is_crashed_with_its_status_and_restarted_by_policy() {
    let Some(d) = setup("crash") else { return };
    d.define(&tiny("c1", "count", "restart = \"on-failure\"", ""), true);
    d.define(&tiny("c2", "count", "", ""), true);
    let first = d.info("c1").summary.pid.unwrap();
    let other = d.info("c2").summary.pid.unwrap();
    let mut v = d.console("c1", 0);
    v.expect("..", 30);
    let mut v2 = d.console("c2", 4096);
    v2.expect("...", 30);

    // SAFETY: kill(2) of the VM's vireo, a child of vireod.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    // SAFETY: as above.
    unsafe { libc::kill(other as i32, libc::SIGKILL) };
    // restart = "no": it stays crashed, with how it ended and what it printed last.
    let c2 = d.wait_state("c2", "crashed", 20);
    assert_eq!(c2.exit_status.as_deref(), Some("signal 9 (SIGKILL)"));
    assert!(
        c2.last_console.iter().any(|l| l.contains("...")),
        "{:?}",
        c2.last_console
    );
    // on-failure: back within the first backoff (1 s), as a new process.
    wait_for("c1 restarted", 20, || {
        let i = d.info("c1");
        i.summary.state == "running" && i.summary.pid.is_some_and(|p| p != first)
    });
    let c1 = d.info("c1");
    assert_eq!(c1.restarts, 1);
    assert_eq!(c1.exit_status.as_deref(), Some("signal 9 (SIGKILL)"));
    let events = d.ctl_ok(&["events", "--no-follow"]);
    assert!(
        events.contains("c1 restart policy on-failure: restart 1 in 1 s"),
        "{events}"
    );
    // A stop asked for is no failure: not restarted.
    d.ctl_ok(&["destroy", "c1"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.info("c1").summary.state, "stopped");
}

#[test]
fn a_restarted_vireod_readopts_running_vms_whose_console_still_answers() {
    let Some(mut d) = setup("readopt") else {
        return;
    };
    d.define(&tiny("r1", "echo", "", ""), true);
    d.define(&tiny("r2", "count", "restart = \"on-failure\"", ""), true);
    let r1 = d.info("r1").summary.pid.unwrap();
    let r2 = d.info("r2").summary.pid.unwrap();
    let mut v = d.console("r1", 4096);
    v.expect("echo ready\n", 20);
    v.send(b"a");
    v.expect("got: a\n", 20);

    d.kill();
    // The VMs do not notice: nothing of theirs depended on vireod.
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(r1) && alive(r2));
    // While vireod is away one VMM dies.
    // SAFETY: kill(2) of r2's vireo.
    unsafe { libc::kill(r2 as i32, libc::SIGKILL) };
    wait_for("r2's vireo gone", 10, || !alive(r2));
    d.restart();

    let info = d.info("r1");
    assert_eq!(
        (info.summary.state.as_str(), info.summary.pid),
        ("running", Some(r1))
    );
    // Its console answers through the new vireod, and shows what it printed before.
    let mut v = d.console("r1", 4096);
    v.expect("got: a\n", 20);
    v.send(b"b");
    v.expect("got: b\n", 20);
    // r2 ended while vireod was away: recorded, then restarted by its policy.
    wait_for("r2 restarted", 20, || {
        let i = d.info("r2");
        i.summary.state == "running" && i.summary.pid.is_some_and(|p| p != r2)
    });
    let events = d.ctl_ok(&["events", "--no-follow"]);
    assert!(events.contains("r1 adopted"), "{events}");
    // The adopted VM's end is still seen (it is no child of this vireod).
    v.send(b"q");
    let info = d.wait_state("r1", "stopped", 20);
    assert_eq!(info.exit_status.as_deref(), Some("exit 0"));
}

#[test]
fn shutdown_is_graceful_then_forced_and_a_racing_request_gets_409() {
    let Some(d) = setup("shutdown") else { return };
    // kbd resets after Ctrl+Alt+Del: a graceful shutdown, well before the timeout.
    d.define(&tiny("k1", "kbd", "", ""), true);
    let mut v = d.console("k1", 4096);
    v.expect("kbd ready\n", 20);
    let started = Instant::now();
    assert_eq!(
        d.ctl_ok(&["shutdown", "k1", "--timeout", "60"]).trim(),
        "k1: stopped"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    v.expect("1d 38 e0 53", 5);
    assert_eq!(d.info("k1").exit_status.as_deref(), Some("exit 0"));

    // count ignores it: killed after the timeout. Meanwhile the VM is busy: a second
    // client's request is refused at once with a 409, and nothing half-happens.
    d.define(&tiny("n1", "count", "", ""), true);
    let c = d.client();
    let shut = std::thread::spawn(move || {
        c.json::<VmInfo>(
            "POST",
            "/v1/vms/n1/shutdown",
            Some(&ShutdownRequest { timeout_s: Some(3) }),
        )
    });
    wait_for("n1 stopping", 10, || {
        d.info("n1").summary.state == "stopping"
    });
    let started = Instant::now();
    for action in ["pause", "destroy", "start", "reboot"] {
        let e = d
            .client()
            .json::<VmInfo>("POST", &format!("/v1/vms/n1/{action}"), None::<&()>)
            .unwrap_err();
        assert_eq!(code(e), ErrorCode::Conflict, "{action}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "409s come at once"
    );
    let info = shut.join().unwrap().unwrap();
    assert_eq!(info.summary.state, "stopped");
    assert_eq!(info.exit_status.as_deref(), Some("signal 9 (SIGKILL)"));
}

#[test]
fn pause_resume_and_resources_set_live_and_in_the_definition() {
    let Some(d) = setup("resources") else { return };
    d.define(&tiny("s1", "count", "", "[resources]\nnice = 2\n"), true);
    let pid = d.info("s1").summary.pid.unwrap();
    let nice = |pid: u32| -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        rest.split_whitespace().nth(16).unwrap().parse().unwrap()
    };
    assert_eq!(nice(pid), 2);

    d.ctl_ok(&["pause", "s1"]);
    assert_eq!(d.info("s1").summary.state, "paused");
    d.ctl_ok(&["resume", "s1"]);
    assert_eq!(d.info("s1").summary.state, "running");

    // Live only (the default for a running VM): the process changes, the file does not.
    assert_eq!(
        d.ctl_ok(&["set", "s1", "--nice", "7"]).trim(),
        "s1: changed live"
    );
    assert_eq!(nice(pid), 7);
    assert!(d.info("s1").definition.contains("nice = 2"));
    // Both.
    d.ctl_ok(&["set", "s1", "--live", "--config", "--nice", "9"]);
    assert_eq!(nice(pid), 9);
    assert!(d.info("s1").definition.contains("nice = 9"));
    // A bad value is refused and changes nothing.
    let out = d.ctl(&["set", "s1", "--cpu-quota", "fifty"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cpu_quota: 'fifty' is not a percentage")
    );
    assert_eq!(nice(pid), 9);

    if let Some(base) = &d.cgroup_base {
        // Root: the VM's cgroup takes the quota, live, and in the definition with --config.
        d.ctl_ok(&[
            "set",
            "s1",
            "--live",
            "--config",
            "--cpu-quota",
            "50%",
            "--memory-max",
            "256M",
        ]);
        let info = d.info("s1");
        assert!(
            info.definition.contains("cpu_quota = \"50%\""),
            "{}",
            info.definition
        );
        let cgroup = info.cgroup.expect("a cgroup");
        assert!(cgroup.contains(base), "{cgroup}");
        let quota = cgroup_value(&cgroup, &["cpu.max", "cpu.cfs_quota_us"]);
        assert!(
            quota.starts_with("50000"),
            "the cgroup's quota is {quota:?} ({cgroup})"
        );
        let stats = d.ctl_ok(&["stats", "s1"]);
        assert!(stats.contains("cpu.time"), "{stats}");
    }
    let stats: manager_types::api::VmStats = d
        .client()
        .json("GET", "/v1/vms/s1/stats", None::<&()>)
        .unwrap();
    assert!(stats.cpu_time_us > 0);
    let metrics = d.client().call("GET", "/metrics", None).unwrap();
    assert!(
        metrics
            .body
            .contains("vireo_vm_state{vm=\"s1\",state=\"running\"} 1"),
        "{}",
        metrics.body
    );
    let req = SetRequest {
        balloon: Some("8M".into()),
        ..SetRequest::default()
    };
    // No balloon device: the VMM's refusal, as a conflict.
    let e = d
        .client()
        .json::<manager_types::api::SetResult>("PATCH", "/v1/vms/s1/resources", Some(&req))
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::Conflict);
}

#[test]
fn vireod_killed_in_the_middle_of_a_start_leaves_a_consistent_host() {
    let (vireo, vireoctl) = require!("start_kill", binaries());
    require!("start_kill", kvm());
    // A vireo that takes two seconds to begin: vireod is killed while it waits.
    let dir = std::env::temp_dir().join(format!("vireod-slow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let slow = dir.join("vireo");
    std::fs::write(
        &slow,
        format!("#!/bin/sh\nsleep 2\nexec {} \"$@\"\n", vireo.display()),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut d = Daemon::start("startkill", &slow, &vireoctl);
    d.define(&tiny("h1", "count", "", ""), false);
    let c = d.client();
    let start = std::thread::spawn(move || c.call("POST", "/v1/vms/h1/start", None));
    wait_for("h1 starting", 10, || {
        d.info("h1").summary.state == "starting"
    });
    d.kill();
    let _ = start.join();
    d.restart();
    // Whatever the moment: a VM recorded running has its process answering, a VM
    // recorded stopped has none.
    let info = d.info("h1");
    let procs = pids_mentioning(&d.dir.join("state").join("vms").join("h1"));
    match info.summary.state.as_str() {
        "running" => {
            let pid = info.summary.pid.unwrap();
            assert!(procs.contains(&pid), "{procs:?} {pid}");
            d.ctl_ok(&["destroy", "h1"]);
        }
        "stopped" => assert!(procs.is_empty(), "left behind: {procs:?}\n{}", d.log()),
        other => panic!("h1 is {other} after the restart\n{}", d.log()),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snapshots_are_created_listed_reverted_with_their_disks_and_deleted() {
    let Some(d) = setup("snapshots") else { return };
    let disk = d.dir.join("p1.img");
    std::fs::write(&disk, b"AAAA".repeat(4096)).unwrap();
    d.define(
        &tiny(
            "p1",
            "count",
            "",
            &format!("disks = [\"path={}\"]\n", disk.display()),
        ),
        true,
    );
    let first_pid = d.info("p1").summary.pid.unwrap();
    let mut v = d.console("p1", 0);
    v.expect("..", 30);

    let out = d.ctl_ok(&["snapshot", "create", "p1", "first"]);
    assert!(out.starts_with("p1: snapshot first created ("), "{out}");
    assert!(out.contains("1 disk(s)"), "{out}");
    // The VM runs on, as before.
    assert_eq!(d.info("p1").summary.state, "running");
    v.expect("..", 30);
    // Names are checked and unique.
    let dup = d.ctl(&["snapshot", "create", "p1", "first"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("has a snapshot named 'first' already"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    let bad = d.ctl(&["snapshot", "create", "p1", "../x"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid snapshot name"));

    // One taken while paused comes back paused.
    d.ctl_ok(&["pause", "p1"]);
    d.ctl_ok(&["snapshot", "create", "p1", "paused-one"]);
    assert_eq!(d.info("p1").summary.state, "paused");
    d.ctl_ok(&["resume", "p1"]);

    let list = d.ctl_ok(&["snapshot", "list", "p1"]);
    let rows: Vec<&str> = list.lines().collect();
    assert!(rows[0].starts_with("NAME"), "{list}");
    assert!(
        rows[1].starts_with("first") && rows[1].contains("running"),
        "{list}"
    );
    assert!(
        rows[2].starts_with("paused-one") && rows[2].contains("paused"),
        "{list}"
    );

    // The guest's disk changes after the snapshot; a revert gives the old one back, and
    // a new vireo runs the guest from where it was.
    std::fs::write(&disk, b"BBBB".repeat(4096)).unwrap();
    assert_eq!(
        d.ctl_ok(&["snapshot", "revert", "p1", "first"]).trim(),
        "p1: reverted to first, running"
    );
    let info = d.info("p1");
    let pid = info.summary.pid.unwrap();
    assert_ne!(pid, first_pid);
    assert!(!alive(first_pid));
    assert_eq!(std::fs::read(&disk).unwrap(), b"AAAA".repeat(4096));
    let mut v = d.console("p1", 0);
    v.expect("..", 30);
    assert_eq!(
        d.ctl_ok(&["snapshot", "revert", "p1", "paused-one"]).trim(),
        "p1: reverted to paused-one, paused"
    );
    d.ctl_ok(&["resume", "p1"]);
    let mut v = d.console("p1", 0);
    v.expect("..", 30);

    // A stopped VM has nothing to snapshot, but can be reverted (booted from one).
    d.ctl_ok(&["destroy", "p1"]);
    let e = d.ctl(&["snapshot", "create", "p1", "again"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("not running"));
    d.ctl_ok(&["snapshot", "revert", "p1", "first"]);
    assert_eq!(d.info("p1").summary.state, "running");

    let e = d.ctl(&["snapshot", "revert", "p1", "nosuch"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("has no snapshot named 'nosuch'"));
    d.ctl_ok(&["snapshot", "delete", "p1", "first"]);
    let list = d.ctl_ok(&["snapshot", "list", "p1"]);
    assert!(!list.contains("first"), "{list}");
    assert!(!d.dir.join("state/vms/p1/snapshots/first").exists());
    let events = d.ctl_ok(&["events", "--no-follow"]);
    for want in [
        "p1 snapshot first created",
        "p1 snapshot first reverted",
        "p1 snapshot first deleted",
    ] {
        assert!(events.contains(want), "no '{want}' in\n{events}");
    }
    d.ctl_ok(&["destroy", "p1"]);
}

#[test]
fn a_guest_that_shut_down_while_vireod_was_away_is_stopped_and_its_policy_applies() {
    let Some(mut d) = setup("awayexit") else {
        return;
    };
    d.define(&tiny("w1", "echo", "", ""), true);
    d.define(&tiny("w2", "echo", "restart = \"always\"", ""), true);
    let w2 = d.info("w2").summary.pid.unwrap();
    d.kill();
    // vireod is gone: its console connections too. The guests are told to shut down
    // straight on their consoles' sockets; each vireo exits 0.
    for name in ["w1", "w2"] {
        let sock = d.dir.join(format!("state/vms/{name}/console.sock"));
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        std::io::Write::write_all(&mut c, b"q").unwrap();
    }
    wait_for("both vireos gone", 20, || {
        pids_mentioning(&d.dir.join("state/vms")).is_empty()
    });
    d.restart();
    // As if vireod had watched: a clean end is stopped, not crashed...
    let w1 = d.info("w1");
    assert_eq!(w1.summary.state, "stopped", "{w1:?}");
    assert_eq!(w1.exit_status.as_deref(), Some("exit 0"));
    // ...and `always` restarts it all the same.
    wait_for("w2 restarted", 20, || {
        let i = d.info("w2");
        i.summary.state == "running" && i.summary.pid.is_some_and(|p| p != w2)
    });
}

#[test]
fn a_full_disk_is_reported_and_corrupts_nothing() {
    let (vireo, vireoctl) = require!("full_disk", binaries());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        test_support::skip::missing("full_disk", "not root: cannot mount a small tmpfs");
        return;
    }
    // The state dir on a 1 MiB tmpfs, unmounted when the test ends.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let mut mount = None;
    let mut d = Daemon::start_prepared("fulldisk", &vireo, &vireoctl, &[], |dir| {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&state)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", state.display());
        mount = Some(Unmount(state));
    });
    let _mount = mount;
    d.define(&tiny("f0", "count", "", ""), false);
    // Most of the room taken by a file (an admin removes it later), then definitions of
    // ~64 KiB each (a long comment) until the disk is full.
    let filler = d.dir.join("state/filler");
    std::fs::write(&filler, vec![1u8; 512 << 10]).unwrap();
    let padding = format!("# {}\n", "x".repeat(64 << 10));
    let mut refused = None;
    for i in 1..40 {
        let text = tiny(&format!("f{i}"), "count", &padding, "");
        let out = d.ctl(&[
            "define",
            d.definition(&format!("f{i}"), &text).to_str().unwrap(),
        ]);
        if !out.status.success() {
            refused = Some((i, String::from_utf8_lossy(&out.stderr).to_string()));
            break;
        }
    }
    let (full_at, message) = refused.expect("1 MiB never filled up");
    assert!(
        message.contains("full") || message.contains("No space"),
        "{message}"
    );
    // What was defined before is intact, the refused one is not half there.
    let listed = d.ctl_ok(&["list"]);
    assert!(listed.contains("f0"), "{listed}");
    assert!(!listed.contains(&format!("f{full_at} ")), "{listed}");
    let c = d.client();
    let e = c
        .json::<VmInfo>("GET", &format!("/v1/vms/f{full_at}"), None::<&()>)
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::NotFound);
    // Room again: it works again, and a new vireod opens the same database with all
    // that was defined before the disk filled.
    std::fs::remove_file(&filler).unwrap();
    for i in 1..full_at {
        d.ctl_ok(&["undefine", &format!("f{i}")]);
    }
    d.restart();
    d.ctl_ok(&[
        "define",
        d.definition("f99", &tiny("f99", "count", "", ""))
            .to_str()
            .unwrap(),
    ]);
    let listed = d.ctl_ok(&["list"]);
    assert!(listed.contains("f0") && listed.contains("f99"), "{listed}");
    d.kill();
}

#[test]
fn io_limits_go_on_the_block_devices_holding_the_disks() {
    let Some(d) = setup("iolimits") else { return };
    if d.cgroup_base.is_none() {
        test_support::skip::missing("io_limits", "not root: no cgroups, no loop devices");
        return;
    }
    // A loop device as the VM's disk: a block device of its own (7:N).
    let img = d.dir.join("loop.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let dev = Detach(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&dev.0).unwrap());
    let id = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    d.define(
        &tiny(
            "io1",
            "count",
            "",
            &format!(
                "disks = [\"path={}\"]\n[resources]\nio_read_bps = \"1M\"\nio_write_iops = 100\n",
                dev.0
            ),
        ),
        true,
    );
    let cgroup = d.info("io1").cgroup.expect("a cgroup");
    // cgroup v2: one io.max line; v1: the throttle files, a line per limited device.
    let lines = |files: &[&str]| -> Vec<String> {
        files
            .iter()
            .flat_map(|f| {
                cgroup_value(&cgroup, &[f])
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.starts_with(&format!("{id} ")))
            .collect()
    };
    let v2 = cgroup.split(',').any(|dir| {
        std::path::Path::new(dir.trim())
            .join("cgroup.controllers")
            .exists()
    });
    if v2 {
        assert_eq!(
            lines(&["io.max"]),
            [format!("{id} rbps=1048576 wbps=max riops=max wiops=100")]
        );
    } else {
        assert_eq!(
            lines(&[
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_iops_device"
            ]),
            [format!("{id} 1048576"), format!("{id} 100")]
        );
    }
    // Live: the read limit goes, the write limit stays.
    d.ctl_ok(&["set", "io1", "--io-read-bps", "none"]);
    if v2 {
        assert_eq!(
            lines(&["io.max"]),
            [format!("{id} rbps=max wbps=max riops=max wiops=100")]
        );
    } else {
        assert_eq!(
            lines(&[
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_iops_device"
            ]),
            [format!("{id} 100")]
        );
    }
    d.ctl_ok(&["destroy", "io1"]);

    // A disk on no block device cannot be limited: the start is refused, saying why.
    let shm = std::path::PathBuf::from(format!("/dev/shm/vireod-io-{}.img", std::process::id()));
    std::fs::write(&shm, vec![0u8; 4096]).unwrap();
    d.define(
        &tiny(
            "io2",
            "count",
            "",
            &format!(
                "disks = [\"path={}\"]\n[resources]\nio_write_bps = \"10M\"\n",
                shm.display()
            ),
        ),
        false,
    );
    let out = d.ctl(&["start", "io2"]);
    let _ = std::fs::remove_file(&shm);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is on no block device"), "{stderr}");
    assert_eq!(d.info("io2").summary.state, "stopped");
}

#[test]
fn a_long_snapshot_shows_its_progress() {
    let Some(d) = setup("progress") else { return };
    // A 512 MiB disk: its copy takes a while unless the filesystem clones files.
    let disk = d.dir.join("big.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(512 << 20).unwrap();
    drop(f);
    let cloned = std::process::Command::new("cp")
        .arg("--reflink=always")
        .arg(&disk)
        .arg(d.dir.join("probe.img"))
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    d.define(
        &tiny(
            "g1",
            "count",
            "",
            &format!("disks = [\"path={}\"]\n", disk.display()),
        ),
        true,
    );
    let c = d.client();
    let snap = std::thread::spawn(move || {
        c.json::<manager_types::api::SnapshotInfo>(
            "POST",
            "/v1/vms/g1/snapshots",
            Some(&manager_types::api::SnapshotRequest { name: "big".into() }),
        )
    });
    let mut seen = Vec::new();
    while !snap.is_finished() {
        if let Some(p) = d.info("g1").progress {
            seen.push(p);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let info = snap.join().unwrap().unwrap();
    assert_eq!((info.name.as_str(), info.disks), ("big", 1));
    assert!(
        d.info("g1").progress.is_none(),
        "progress ends with the operation"
    );
    if cloned {
        test_support::skip::missing(
            "snapshot_progress",
            "this filesystem clones files (reflink): no disk copy to show progress of",
        );
        return;
    }
    let copy = seen
        .iter()
        .find(|p| p.what.starts_with("copying ") && p.what.ends_with("big.img"))
        .unwrap_or_else(|| panic!("no disk copy in progress seen: {seen:?}"));
    assert_eq!(copy.total_bytes, 512 << 20);
    assert!(
        seen.iter().all(|p| p.done_bytes <= p.total_bytes),
        "{seen:?}"
    );
    d.ctl_ok(&["snapshot", "delete", "g1", "big"]);
}
