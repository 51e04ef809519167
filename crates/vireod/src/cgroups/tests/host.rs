//! Tests on real processes and this host's cgroups (the cgroup ones as root): threads
//! of this test process and `sleep` children.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;

use test_support::{require, skip};

use super::*;

/// The CPUs thread `tid` may run on.
fn affinity(tid: i32) -> Vec<usize> {
    let mut mask = [0 as libc::c_ulong; 128];
    // SAFETY: the kernel writes at most the given size into the mask, which lives
    // through the call.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    };
    assert!(n > 0, "{}", std::io::Error::last_os_error());
    let bits = libc::c_ulong::BITS as usize;
    (0..mask.len() * bits)
        .filter(|cpu| mask[cpu / bits] & (1 << (cpu % bits)) != 0)
        .collect()
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

#[test]
fn vcpu_threads_are_pinned_round_robin() {
    let allowed = affinity(0);
    let (tids_tx, tids) = mpsc::channel();
    let (stop, stopped) = mpsc::channel::<()>();
    let stopped = std::sync::Arc::new(std::sync::Mutex::new(stopped));
    let threads: Vec<_> = (0..3)
        .map(|n| {
            let tids_tx = tids_tx.clone();
            let stopped = std::sync::Arc::clone(&stopped);
            std::thread::Builder::new()
                .name(format!("fc_vcpu {n}"))
                .spawn(move || {
                    tids_tx.send((n, gettid())).unwrap();
                    let _ = stopped.lock().unwrap().recv();
                })
                .unwrap()
        })
        .collect();
    let tids: Vec<(usize, i32)> = (0..3).map(|_| tids.recv().unwrap()).collect();
    let pinned = pin_vcpu_threads(std::process::id(), &format_cpu_list(&allowed)).unwrap();
    let seen: Vec<(usize, Vec<usize>)> = tids.iter().map(|&(n, tid)| (n, affinity(tid))).collect();
    drop(stop);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(pinned, 3);
    for (n, cpus) in seen {
        assert_eq!(cpus, [allowed[n % allowed.len()]], "vcpu{n}");
    }
    assert!(matches!(
        pin_vcpu_threads(std::process::id(), ""),
        Err(CgroupError::CpuList { .. })
    ));
}

/// A `sleep 30`, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn(join: Option<JoinFds>) -> Sleeper {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        if let Some(join) = join {
            // SAFETY: join_self makes only write(2) calls on fds opened before the fork.
            unsafe {
                cmd.pre_exec(move || join.join_self());
            }
        }
        Sleeper(cmd.spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.end();
    }
}

#[test]
fn nice_is_set_on_every_thread() {
    require!(
        "nice_is_set_on_every_thread",
        skip::tool("sleep", "coreutils")
    );
    let child = Sleeper::spawn(None);
    assert_eq!(set_nice(child.pid(), 7).unwrap(), 1);
    let stat = get(Path::new(&format!("/proc/{}/stat", child.pid())));
    let after_comm = stat.rsplit_once(") ").unwrap().1;
    // Field 19 of stat, the 17th after the command's name.
    assert_eq!(after_comm.split(' ').nth(16), Some("7"));
    assert!(matches!(
        set_nice(child.pid(), 20),
        Err(CgroupError::InvalidValue { field: "nice", .. })
    ));
    assert!(matches!(
        set_nice(u32::MAX, 0),
        Err(CgroupError::NoProcess(_))
    ));

    // This process's own threads, at the nice they have (nothing changes).
    // SAFETY: getpriority takes plain integers; errno is cleared first as it advises.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let (tx, rx) = mpsc::channel::<()>();
    let helper = std::thread::spawn(move || rx.recv());
    assert!(set_nice(std::process::id(), nice).unwrap() >= 2);
    drop(tx);
    let _ = helper.join();
}

// --- this host's cgroups (root) ---

/// This host's cgroups under a base for `test`, each v1 hierarchy taken from this
/// process's own cgroup in it (so a test's cgroups stay inside whatever cgroup runs the
/// tests); or why they cannot be used.
fn host(test: &str) -> Result<Cgroups, String> {
    skip::root()?;
    skip::tool("sleep", "coreutils")?;
    let layout = match Layout::detect().map_err(|e| e.to_string())? {
        Layout::V1 { mut mounts } => {
            let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
            for line in own.lines() {
                let mut fields = line.splitn(3, ':');
                let (_, Some(names), Some(path)) = (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                for name in names.split(',') {
                    if let Some(point) = mounts.get_mut(name) {
                        *point = point.join(path.trim_start_matches('/'));
                    }
                }
            }
            Layout::V1 { mounts }
        }
        v2 => v2,
    };
    let cgroups = Cgroups::new(layout, format!("vireo-test-{}-{test}", std::process::id()));
    for point in cgroups.layout().hierarchies().into_keys() {
        let probe = point.join(cgroups.base());
        fs::create_dir(&probe)
            .and_then(|()| fs::remove_dir(&probe))
            .map_err(|e| format!("cannot make a cgroup in {}: {e}", point.display()))?;
    }
    Ok(cgroups)
}

/// Removes the test's cgroup and base, the process ended first.
struct Cleanup<'a>(&'a Cgroups, Option<Sleeper>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.1.take() {
            child.end();
        }
        let _ = self.0.remove("vm");
        let _ = self.0.remove_base();
    }
}

/// Whether the cgroup has `controller` (v2 names; `io` is `blkio` on v1).
fn has(cg: &VmCgroup, controller: &str) -> bool {
    let v1 = if controller == "io" {
        "blkio"
    } else {
        controller
    };
    !cg.missing()
        .iter()
        .any(|m| m.controller == controller || m.controller == v1)
}

/// The file `file` (v2 name) / `v1_file` of the cgroup, read back from the kernel.
fn kernel(cg: &VmCgroup, v2_file: &str, v1_file: &str) -> String {
    let file = if matches!(cg.kind, Kind::V2 { .. }) {
        v2_file
    } else {
        v1_file
    };
    for dir in cg.dirs() {
        if let Ok(text) = fs::read_to_string(dir.join(file)) {
            return text.trim().to_string();
        }
    }
    panic!("no {file} in {:?}", cg.dirs());
}

/// Each `/proc/PID/cgroup` line of a hierarchy the VM uses names its cgroup.
fn assert_in(pid: u32, cg: &VmCgroup, cgroups: &Cgroups) {
    let text = get(Path::new(&format!("/proc/{pid}/cgroup")));
    let suffix = format!("/{}", cg.path().display());
    let used: Vec<&str> = match cgroups.layout() {
        Layout::V2 { .. } => vec![""],
        Layout::V1 { mounts } => WANTED_V1
            .into_iter()
            .filter(|c| mounts.contains_key(*c))
            .collect(),
    };
    for c in used {
        let line = text
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|n| n.split(',').any(|n| n == c))
            })
            .unwrap_or_else(|| panic!("no {c:?} line in\n{text}"));
        assert!(
            line.ends_with(&suffix),
            "{line} for {suffix} ({:?})",
            cg.dirs()
        );
    }
}

#[test]
fn host_cgroup_takes_a_child_enforces_limits_and_is_removed() {
    const TEST: &str = "host_cgroup_takes_a_child_enforces_limits_and_is_removed";
    let cgroups = require!(TEST, host("join"));
    let mut cleanup = Cleanup(&cgroups, None);
    let cg = cgroups.create("vm").unwrap();
    let cpu = affinity(0)[0];
    let r = Resources {
        cpu_weight: has(&cg, "cpu").then_some(200),
        cpu_quota_percent: has(&cg, "cpu").then_some(50),
        cpuset: has(&cg, "cpuset").then(|| cpu.to_string()),
        memory_max: has(&cg, "memory").then_some(256 << 20),
        memory_high: has(&cg, "memory").then_some(128 << 20),
        pids_max: has(&cg, "pids").then_some(64),
        ..Default::default()
    };
    cg.apply(&r, &[]).unwrap();
    let child = Sleeper::spawn(Some(cg.join_fds().unwrap()));
    let pid = child.pid();
    cleanup.1 = Some(child);
    assert_in(pid, &cg, &cgroups);
    assert_eq!(cg.pids().unwrap(), [pid]);
    let v2 = matches!(cgroups.layout(), Layout::V2 { .. });
    if has(&cg, "cpu") {
        let (quota, weight) = if v2 {
            ("50000 100000", "200")
        } else {
            ("50000", "2048")
        };
        assert_eq!(kernel(&cg, "cpu.max", "cpu.cfs_quota_us"), quota);
        assert_eq!(kernel(&cg, "cpu.weight", "cpu.shares"), weight);
    }
    if has(&cg, "memory") {
        let max = kernel(&cg, "memory.max", "memory.limit_in_bytes");
        assert_eq!(max, (256u64 << 20).to_string());
        let high = kernel(&cg, "memory.high", "memory.soft_limit_in_bytes");
        assert_eq!(high, (128u64 << 20).to_string());
    }
    if has(&cg, "cpuset") {
        assert_eq!(kernel(&cg, "cpuset.cpus", "cpuset.cpus"), cpu.to_string());
    }
    if has(&cg, "pids") {
        assert_eq!(kernel(&cg, "pids.max", "pids.max"), "64");
    }
    let stats = cg.stats().unwrap();
    if has(&cg, "pids") {
        assert_eq!(stats.pids_current, Some(1));
    }
    if has(&cg, "memory") {
        assert!(stats.memory_current.is_some());
    }

    let e = cgroups.remove("vm").unwrap_err();
    assert!(
        matches!(&e, CgroupError::Busy { pids, .. } if pids == &[pid]),
        "{e}"
    );
    if let Some(mut child) = cleanup.1.take() {
        child.end();
    }
    cgroups.remove("vm").unwrap();
    for dir in cg.dirs() {
        assert!(!dir.exists(), "{}", dir.display());
    }
    assert!(matches!(
        cgroups.open("vm"),
        Err(CgroupError::NotFound { .. })
    ));
    cgroups.remove_base().unwrap();
}

#[test]
fn host_apply_with_fewer_limits_resets_them_and_add_pid_moves_a_process() {
    const TEST: &str = "host_apply_with_fewer_limits_resets_them_and_add_pid_moves_a_process";
    let cgroups = require!(TEST, host("reset"));
    let mut cleanup = Cleanup(&cgroups, None);
    let cg = cgroups.create("vm").unwrap();
    let v2 = matches!(cgroups.layout(), Layout::V2 { .. });
    let device = fs::read_dir("/sys/block")
        .ok()
        .and_then(|mut d| d.find_map(|e| fs::read_to_string(e.ok()?.path().join("dev")).ok()))
        .and_then(|dev| {
            let (major, minor) = dev.trim().split_once(':')?;
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        });
    let limits: Vec<IoLimit> = device
        .filter(|_| has(&cg, "io"))
        .map(|(major, minor)| IoLimit {
            major,
            minor,
            read_bps: Some(1 << 20),
            ..Default::default()
        })
        .into_iter()
        .collect();
    let r = Resources {
        cpu_quota_percent: has(&cg, "cpu").then_some(25),
        memory_max: has(&cg, "memory").then_some(64 << 20),
        pids_max: has(&cg, "pids").then_some(10),
        ..Default::default()
    };
    cg.apply(&r, &limits).unwrap();
    let io_file = || kernel(&cg, "io.max", "blkio.throttle.read_bps_device");
    if let Some(l) = limits.first() {
        let want = if v2 {
            format!("{}:{} rbps=1048576", l.major, l.minor)
        } else {
            format!("{}:{} 1048576", l.major, l.minor)
        };
        assert!(io_file().starts_with(&want), "{}", io_file());
    }

    let child = Sleeper::spawn(None);
    cg.add_pid(child.pid()).unwrap();
    let pid = child.pid();
    cleanup.1 = Some(child);
    assert_in(pid, &cg, &cgroups);

    cg.apply(&Resources::default(), &[]).unwrap();
    if has(&cg, "cpu") {
        let want = if v2 { "max 100000" } else { "-1" };
        assert_eq!(kernel(&cg, "cpu.max", "cpu.cfs_quota_us"), want);
    }
    if has(&cg, "memory") {
        let max = kernel(&cg, "memory.max", "memory.limit_in_bytes");
        assert!(
            max == "max" || max.parse::<u64>().unwrap() > 1 << 60,
            "{max}"
        );
    }
    if has(&cg, "pids") {
        assert_eq!(kernel(&cg, "pids.max", "pids.max"), "max");
    }
    if !limits.is_empty() {
        assert_eq!(io_file(), "", "the I/O limit is gone");
    }
}
