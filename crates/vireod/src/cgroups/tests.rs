//! Pure tests against fake cgroup file systems in a temporary directory (plain files the
//! kernel would have made); [`host`] has those on real processes and this host's cgroups.

use std::fs;
use std::path::{Path, PathBuf};

use manager_types::Resources;

use super::threads::vcpu_index;
use super::*;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vireo-cgroups-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn put(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn get(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

const ALL_V2: &str = "cpuset cpu io memory pids";

/// A fake v2 hierarchy: the root offers `offered`, `vireo` and `vireo/web` have
/// `enabled`, `vireo/web` has the files a kernel shows for them.
fn fake_v2(t: &TempDir, offered: &str, enabled: &str) -> (Cgroups, PathBuf) {
    let root = t.0.join("v2");
    put(&root.join("cgroup.controllers"), offered);
    put(&root.join("cgroup.subtree_control"), "");
    let base = root.join("vireo");
    put(&base.join("cgroup.controllers"), enabled);
    put(&base.join("cgroup.subtree_control"), "");
    let vm = base.join("web");
    for (file, text) in [
        ("cgroup.controllers", enabled),
        ("cgroup.procs", ""),
        ("cpu.weight", "100\n"),
        ("cpu.max", "max 100000\n"),
        ("cpuset.cpus", ""),
        ("memory.max", "max\n"),
        ("memory.high", "max\n"),
        ("io.weight", "default 100\n"),
        ("io.max", ""),
        ("pids.max", "max\n"),
        (
            "cpu.stat",
            "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 7\nnr_throttled 2\nthrottled_usec 900\n",
        ),
        ("memory.current", "8192\n"),
        ("pids.current", "2\n"),
    ] {
        put(&vm.join(file), text);
    }
    (Cgroups::new(Layout::V2 { root }, "vireo"), vm)
}

/// A fake v1 host with `cpu,cpuacct` co-mounted and the other hierarchies apart (those in
/// `controllers` only), `vireo/web` made in each with the kernel's files.
fn fake_v1(t: &TempDir, controllers: &[&str]) -> Cgroups {
    let mut mounts = BTreeMap::new();
    for c in controllers {
        let dir = match *c {
            "cpu" | "cpuacct" => "cpu,cpuacct",
            other => other,
        };
        mounts.insert(c.to_string(), t.0.join(dir));
    }
    let files: [(&str, &[(&str, &str)]); 5] = [
        (
            "cpu,cpuacct",
            &[
                ("cpu.shares", "1024\n"),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.cfs_quota_us", "-1\n"),
                (
                    "cpu.stat",
                    "nr_periods 10\nnr_throttled 4\nthrottled_time 3000000\n",
                ),
                ("cpuacct.usage", "123456789\n"),
            ],
        ),
        ("cpuset", &[("cpuset.cpus", ""), ("cpuset.mems", "")]),
        (
            "memory",
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "4096\n"),
            ],
        ),
        (
            "blkio",
            &[
                ("blkio.weight", "500\n"),
                ("blkio.throttle.read_bps_device", ""),
                ("blkio.throttle.write_bps_device", ""),
                ("blkio.throttle.read_iops_device", ""),
                ("blkio.throttle.write_iops_device", ""),
            ],
        ),
        ("pids", &[("pids.max", "max\n"), ("pids.current", "3\n")]),
    ];
    for (hierarchy, files) in files {
        let vm = t.0.join(hierarchy).join("vireo/web");
        put(&vm.join("cgroup.procs"), "");
        for (file, text) in files {
            put(&vm.join(file), text);
        }
    }
    let cpuset = t.0.join("cpuset");
    put(&cpuset.join("cpuset.cpus"), "0-3\n");
    put(&cpuset.join("cpuset.mems"), "0\n");
    put(&cpuset.join("vireo/cpuset.cpus"), "");
    put(&cpuset.join("vireo/cpuset.mems"), "");
    Cgroups::new(Layout::V1 { mounts }, "vireo")
}

const V1_ALL: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "blkio", "pids"];

fn full() -> Resources {
    Resources {
        cpu_weight: Some(200),
        cpu_quota_percent: Some(150),
        cpuset: Some("3,0-1".into()),
        memory_max: Some(1 << 30),
        memory_high: Some(512 << 20),
        io_weight: Some(150),
        pids_max: Some(64),
        nice: Some(5),
        // Applied through the IoLimit list the manager makes from it.
        io_limits: Default::default(),
    }
}

// --- Layout ---

/// This machine's mount table (v1, with a cgroup2 at /sys/fs/cgroup/unified).
const V1_HOST: &str = "\
22 1 252:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// A systemd host in hybrid mode: co-mounted controllers, optional fields, `xattr`.
const HYBRID_HOST: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 master:3 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,net_cls,net_prio
32 25 0:29 / /mnt/my\\040cgroups rw,relatime shared:12 - cgroup cgroup rw,pids
";

/// A pure v2 host (the nested test host, a systemd host).
const V2_HOST: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

#[test]
fn a_v1_host_gives_each_controller_its_mount() {
    let Layout::V1 { mounts } = Layout::from_mountinfo(V1_HOST).unwrap() else {
        panic!("not v1");
    };
    let names: Vec<&str> = mounts.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids"
        ]
    );
    assert_eq!(mounts["cpu"], Path::new("/sys/fs/cgroup/cpu"));
    assert_eq!(mounts["blkio"], Path::new("/sys/fs/cgroup/blkio"));
}

#[test]
fn co_mounted_controllers_share_a_mount_and_escapes_are_undone() {
    let Layout::V1 { mounts } = Layout::from_mountinfo(HYBRID_HOST).unwrap() else {
        panic!("not v1");
    };
    assert_eq!(mounts["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
    assert_eq!(mounts["cpuacct"], mounts["cpu"]);
    assert_eq!(
        mounts["net_prio"],
        Path::new("/sys/fs/cgroup/net_cls,net_prio")
    );
    assert_eq!(mounts["pids"], Path::new("/mnt/my cgroups"));
    assert!(!mounts.keys().any(|k| k.contains("systemd")));
}

#[test]
fn a_cgroup2_at_sys_fs_cgroup_is_v2() {
    assert_eq!(
        Layout::from_mountinfo(V2_HOST).unwrap(),
        Layout::V2 {
            root: "/sys/fs/cgroup".into()
        }
    );
    // Even with v1 mounts listed (shadowed by it).
    let both = format!("{V1_HOST}{V2_HOST}");
    assert!(matches!(
        Layout::from_mountinfo(&both).unwrap(),
        Layout::V2 { .. }
    ));
}

#[test]
fn a_cgroup2_elsewhere_is_used_only_without_v1() {
    let only = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    assert_eq!(
        Layout::from_mountinfo(only).unwrap(),
        Layout::V2 {
            root: "/sys/fs/cgroup/unified".into()
        }
    );
}

#[test]
fn no_cgroup_mount_is_an_error_and_garbage_is_ignored() {
    let text = "garbage\n\n1 2 3\n22 1 252:0 / / rw - ext4 /dev/vda rw\n99 1 0:1 / /x rw -\n";
    assert!(matches!(
        Layout::from_mountinfo(text),
        Err(CgroupError::NotMounted)
    ));
}

#[test]
fn this_host_has_a_layout() {
    let layout = Layout::detect().unwrap();
    assert!(!layout.hierarchies().is_empty(), "{layout:?}");
}

// --- values ---

#[test]
fn cpu_lists_parse_and_format() {
    assert_eq!(parse_cpu_list("0-3,6").unwrap(), [0, 1, 2, 3, 6]);
    assert_eq!(parse_cpu_list(" 6 , 0-1,1-2\n").unwrap(), [0, 1, 2, 6]);
    assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
    assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<usize>::new());
    assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
    assert_eq!(format_cpu_list(&[5]), "5");
    assert_eq!(format_cpu_list(&[]), "");
    for bad in ["3-1", "a", "1,,2", "-1", "1-", "0-99999", "1:2"] {
        let e = parse_cpu_list(bad).unwrap_err();
        assert!(matches!(e, CgroupError::CpuList { .. }), "{bad}: {e}");
    }
}

#[test]
fn weights_scale_like_the_kernel() {
    assert_eq!(cpu_shares(100), 1024);
    assert_eq!(cpu_shares(1), 10);
    assert_eq!(cpu_shares(200), 2048);
    assert_eq!(cpu_shares(10_000), 102_400);
    assert_eq!(blkio_weight(100), 500);
    assert_eq!(blkio_weight(1), 10);
    assert_eq!(blkio_weight(150), 750);
    assert_eq!(blkio_weight(10_000), 1000);
}

#[test]
fn vcpu_threads_are_known_by_name() {
    assert_eq!(vcpu_index("fc_vcpu 0"), Some(0));
    assert_eq!(vcpu_index("fc_vcpu 17"), Some(17));
    for other in [
        "fc_vcpu ",
        "fc_vcpu x",
        "fc_vcpu -1",
        "vcpu0",
        "kvm-probe",
        "event-loop",
        "xvcpu1",
    ] {
        assert_eq!(vcpu_index(other), None, "{other}");
    }
}

// --- fake v2 ---

#[test]
fn v2_create_enables_controllers_and_names_the_missing() {
    let t = TempDir::new("v2-create");
    let (cgroups, _) = fake_v2(&t, "cpu io memory pids hugetlb", "cpu io memory pids");
    let cg = cgroups.create("web").unwrap();
    let root = t.0.join("v2");
    assert_eq!(
        get(&root.join("cgroup.subtree_control")),
        "+cpu +memory +io +pids\n"
    );
    assert_eq!(
        get(&root.join("vireo/cgroup.subtree_control")),
        "+cpu +memory +io +pids\n"
    );
    assert_eq!(cg.missing().len(), 1);
    assert_eq!(cg.missing()[0].controller, "cpuset");
    assert!(
        cg.missing()[0]
            .why
            .contains("cgroup.controllers does not list it")
    );
    assert_eq!(cg.dirs(), [root.join("vireo/web")]);
    assert_eq!(cg.describe(), root.join("vireo/web").display().to_string());
    assert_eq!(cg.path(), Path::new("vireo/web"));

    // Already enabled: nothing written.
    put(&root.join("cgroup.subtree_control"), "cpu memory io pids\n");
    put(
        &root.join("vireo/cgroup.subtree_control"),
        "cpu memory io pids\n",
    );
    cgroups.create("web").unwrap();
    assert_eq!(
        get(&root.join("cgroup.subtree_control")),
        "cpu memory io pids\n"
    );
}

#[test]
fn v2_apply_writes_every_file_and_unset_values_reset_them() {
    let t = TempDir::new("v2-apply");
    let (cgroups, vm) = fake_v2(&t, ALL_V2, ALL_V2);
    let cg = cgroups.open("web").unwrap();
    let applied = cg.apply(&full(), &[]).unwrap();
    let expect = [
        ("cpu.weight", "200"),
        ("cpu.max", "150000 100000"),
        ("cpuset.cpus", "0-1,3"),
        ("memory.max", "1073741824"),
        ("memory.high", "536870912"),
        ("io.weight", "default 150"),
        ("pids.max", "64"),
    ];
    let written: Vec<(&str, &str)> = applied
        .written
        .iter()
        .map(|w| (w.file.as_str(), w.value.as_str()))
        .collect();
    assert_eq!(written, expect);
    assert!(applied.unavailable.is_empty());
    for (file, value) in expect {
        assert_eq!(get(&vm.join(file)), format!("{value}\n"), "{file}");
    }

    cg.apply(&Resources::default(), &[]).unwrap();
    for (file, value) in [
        ("cpu.weight", "100"),
        ("cpu.max", "max 100000"),
        ("cpuset.cpus", ""),
        ("memory.max", "max"),
        ("memory.high", "max"),
        ("io.weight", "default 100"),
        ("pids.max", "max"),
    ] {
        assert_eq!(get(&vm.join(file)), format!("{value}\n"), "{file}");
    }
    assert_eq!(
        get(&vm.join("io.max")),
        "",
        "no I/O limit: nothing to remove"
    );
}

#[test]
fn v2_io_limits_replace_the_old_devices() {
    let t = TempDir::new("v2-io");
    let (cgroups, vm) = fake_v2(&t, ALL_V2, ALL_V2);
    put(
        &vm.join("io.max"),
        "8:0 rbps=1 wbps=max riops=max wiops=max\n",
    );
    let cg = cgroups.open("web").unwrap();
    let limit = IoLimit {
        major: 8,
        minor: 16,
        read_bps: Some(1000),
        write_iops: Some(50),
        ..Default::default()
    };
    cg.apply(&Resources::default(), &[limit]).unwrap();
    assert_eq!(
        get(&vm.join("io.max")),
        "8:0 rbps=max wbps=max riops=max wiops=max\n\
         8:16 rbps=1000 wbps=max riops=max wiops=50\n"
    );
    // The kernel shows what is limited; no limit asked removes it.
    put(
        &vm.join("io.max"),
        "8:16 rbps=1000 wbps=max riops=max wiops=50\n",
    );
    cg.apply(&Resources::default(), &[]).unwrap();
    assert_eq!(
        get(&vm.join("io.max")),
        "8:16 rbps=max wbps=max riops=max wiops=max\n"
    );
}

#[test]
fn v2_uses_bfq_weight_when_it_is_the_only_one() {
    let t = TempDir::new("v2-bfq");
    let (cgroups, vm) = fake_v2(&t, ALL_V2, ALL_V2);
    fs::remove_file(vm.join("io.weight")).unwrap();
    put(&vm.join("io.bfq.weight"), "100\n");
    let cg = cgroups.open("web").unwrap();
    cg.apply(&full(), &[]).unwrap();
    assert_eq!(get(&vm.join("io.bfq.weight")), "150\n");
    fs::remove_file(vm.join("io.bfq.weight")).unwrap();
    let e = cg.apply(&full(), &[]).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::Unsupported {
                field: "io_weight",
                ..
            }
        ),
        "{e}"
    );
    let applied = cg.apply(&Resources::default(), &[]).unwrap();
    assert_eq!(applied.unavailable.len(), 1);
    assert_eq!(applied.unavailable[0].field, "io_weight");
}

#[test]
fn a_missing_controller_is_an_error_only_when_asked() {
    let t = TempDir::new("v2-missing");
    let (cgroups, vm) = fake_v2(&t, ALL_V2, "cpu cpuset io pids");
    let cg = cgroups.open("web").unwrap();
    assert_eq!(cg.missing()[0].controller, "memory");
    let e = cg.apply(&full(), &[]).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::MissingController {
                field: "memory_max",
                controller: "memory"
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("memory controller"), "{e}");
    assert_eq!(get(&vm.join("cpu.weight")), "100\n", "nothing written");

    let applied = cg
        .apply(
            &Resources {
                cpu_weight: Some(300),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    assert_eq!(get(&vm.join("cpu.weight")), "300\n");
    let fields: Vec<&str> = applied.unavailable.iter().map(|u| u.field).collect();
    assert_eq!(fields, ["memory_max", "memory_high"]);
    assert_eq!(applied.unavailable[0].missing, "the memory controller");

    let t = TempDir::new("v1-missing");
    let cgroups = fake_v1(&t, &["cpu", "cpuacct", "cpuset", "memory", "blkio"]);
    let cg = cgroups.create("web").unwrap();
    let missing: Vec<&str> = cg.missing().iter().map(|m| m.controller).collect();
    assert_eq!(missing, ["pids"]);
    let e = cg.apply(&full(), &[]).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::MissingController {
                field: "pids_max",
                controller: "pids"
            }
        ),
        "{e}"
    );
    let io = IoLimit {
        major: 8,
        minor: 0,
        read_bps: Some(1),
        ..Default::default()
    };
    let t = TempDir::new("v1-noblkio");
    let cgroups = fake_v1(&t, &["cpu", "cpuacct", "pids"]);
    let cg = cgroups.open("web").unwrap();
    let e = cg.apply(&Resources::default(), &[io]).unwrap_err();
    assert!(
        matches!(
            e,
            CgroupError::MissingController {
                field: "io_limits",
                controller: "blkio"
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_values_write_nothing() {
    let t = TempDir::new("v2-bad");
    let (cgroups, vm) = fake_v2(&t, ALL_V2, ALL_V2);
    let cg = cgroups.open("web").unwrap();
    let with = |f: fn(&mut Resources)| {
        let mut r = full();
        f(&mut r);
        r
    };
    let bad = [
        with(|r| r.cpu_weight = Some(0)),
        with(|r| r.cpu_weight = Some(10_001)),
        with(|r| r.io_weight = Some(0)),
        with(|r| r.cpu_quota_percent = Some(0)),
        with(|r| r.cpuset = Some("3-1".into())),
        with(|r| r.cpuset = Some(String::new())),
    ];
    for r in &bad {
        assert!(cg.apply(r, &[]).is_err(), "{r:?}");
    }
    let zero = IoLimit {
        major: 8,
        minor: 0,
        write_bps: Some(0),
        ..Default::default()
    };
    let one = IoLimit {
        write_bps: Some(1),
        ..zero
    };
    for limits in [vec![zero], vec![one, one]] {
        let e = cg.apply(&full(), &limits).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::InvalidValue {
                    field: "io_limits",
                    ..
                }
            ),
            "{e}"
        );
    }
    assert_eq!(get(&vm.join("cpu.weight")), "100\n");
    assert_eq!(get(&vm.join("pids.max")), "max\n");
}

#[test]
fn names_and_bases_are_checked() {
    let t = TempDir::new("names");
    let (cgroups, _) = fake_v2(&t, ALL_V2, ALL_V2);
    for vm in ["", "../etc", "a/b", ".hidden", "-x"] {
        assert!(
            matches!(cgroups.create(vm), Err(CgroupError::InvalidName(_))),
            "{vm}"
        );
    }
    for base in ["", "/sys/fs/cgroup", "a/../b", "./a", ".."] {
        let c = Cgroups::new(cgroups.layout().clone(), base);
        assert!(
            matches!(c.create("web"), Err(CgroupError::InvalidBase(_))),
            "{base}"
        );
        assert!(matches!(c.remove("web"), Err(CgroupError::InvalidBase(_))));
    }
    let nested = Cgroups::new(cgroups.layout().clone(), "a/b");
    assert_eq!(nested.base(), Path::new("a/b"));
}

#[test]
fn stats_read_the_kernel_files() {
    let t = TempDir::new("v2-stats");
    let (cgroups, vm) = fake_v2(&t, ALL_V2, ALL_V2);
    let stats = cgroups.open("web").unwrap().stats().unwrap();
    assert_eq!(
        stats,
        CgroupStats {
            cpu_usage_usec: 5000,
            memory_current: Some(8192),
            pids_current: Some(2),
            throttling: Some(Throttling {
                periods: 7,
                throttled_periods: 2,
                throttled_usec: 900
            }),
        }
    );
    // Without the cpu controller cpu.stat has only the usage.
    put(
        &vm.join("cpu.stat"),
        "usage_usec 10\nuser_usec 5\nsystem_usec 5\n",
    );
    put(&vm.join("cgroup.controllers"), "pids");
    let stats = cgroups.open("web").unwrap().stats().unwrap();
    assert_eq!(
        (stats.cpu_usage_usec, stats.memory_current, stats.throttling),
        (10, None, None)
    );

    let t = TempDir::new("v1-stats");
    let cg = fake_v1(&t, &V1_ALL).open("web").unwrap();
    assert_eq!(
        cg.stats().unwrap(),
        CgroupStats {
            cpu_usage_usec: 123_456,
            memory_current: Some(4096),
            pids_current: Some(3),
            throttling: Some(Throttling {
                periods: 10,
                throttled_periods: 4,
                throttled_usec: 3000
            }),
        }
    );
    put(&t.0.join("cpu,cpuacct/vireo/web/cpuacct.usage"), "lots\n");
    assert!(matches!(cg.stats(), Err(CgroupError::Parse { .. })));
    let t = TempDir::new("v1-nocpuacct");
    let cg = fake_v1(&t, &["cpu", "memory"]).open("web").unwrap();
    assert_eq!(cg.dirs().len(), 2, "cpu's and memory's");
    assert!(matches!(
        cg.stats(),
        Err(CgroupError::MissingController {
            controller: "cpuacct",
            ..
        })
    ));
}

// --- fake v1 ---

#[test]
fn v1_create_makes_each_hierarchy_and_fills_cpusets_from_the_parent() {
    let t = TempDir::new("v1-create");
    let mut mounts = BTreeMap::new();
    for c in V1_ALL {
        mounts.insert(c.to_string(), t.0.join(c));
        fs::create_dir_all(t.0.join(c)).unwrap();
    }
    let cpuset = t.0.join("cpuset");
    put(&cpuset.join("cpuset.cpus"), "0-3\n");
    put(&cpuset.join("cpuset.mems"), "0\n");
    put(&cpuset.join("vireo/cpuset.cpus"), "");
    put(&cpuset.join("vireo/cpuset.mems"), "");
    put(&cpuset.join("vireo/web/cpuset.cpus"), "2\n");
    put(&cpuset.join("vireo/web/cpuset.mems"), "");
    let cgroups = Cgroups::new(Layout::V1 { mounts }, "vireo");
    let cg = cgroups.create("web").unwrap();
    assert!(cg.missing().is_empty());
    assert_eq!(cg.dirs().len(), 6);
    for c in V1_ALL {
        assert!(t.0.join(c).join("vireo/web").is_dir(), "{c}");
    }
    assert_eq!(get(&cpuset.join("vireo/cpuset.cpus")), "0-3\n");
    assert_eq!(get(&cpuset.join("vireo/cpuset.mems")), "0\n");
    assert_eq!(get(&cpuset.join("vireo/web/cpuset.cpus")), "2\n", "kept");
    assert_eq!(get(&cpuset.join("vireo/web/cpuset.mems")), "0\n");
    assert_eq!(cgroups.list().unwrap(), ["web"]);
    let dirs: Vec<String> = ["blkio", "cpu", "cpuacct", "cpuset", "memory", "pids"]
        .iter()
        .map(|c| t.0.join(c).join("vireo/web").display().to_string())
        .collect();
    assert_eq!(cg.describe(), dirs.join(","));
}

#[test]
fn v1_apply_writes_every_file_and_unset_values_reset_them() {
    let t = TempDir::new("v1-apply");
    let cgroups = fake_v1(&t, &V1_ALL);
    let cg = cgroups.create("web").unwrap();
    let dir = |h: &str| t.0.join(h).join("vireo/web");
    let applied = cg.apply(&full(), &[]).unwrap();
    let expect = [
        ("cpu,cpuacct", "cpu.shares", "2048"),
        ("cpu,cpuacct", "cpu.cfs_period_us", "100000"),
        ("cpu,cpuacct", "cpu.cfs_quota_us", "150000"),
        ("cpuset", "cpuset.cpus", "0-1,3"),
        ("memory", "memory.limit_in_bytes", "1073741824"),
        ("memory", "memory.soft_limit_in_bytes", "536870912"),
        ("blkio", "blkio.weight", "750"),
        ("pids", "pids.max", "64"),
    ];
    let written: Vec<(&str, &str)> = applied
        .written
        .iter()
        .map(|w| (w.file.as_str(), w.value.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = expect.iter().map(|(_, f, v)| (*f, *v)).collect();
    assert_eq!(written, want);
    for (h, file, value) in expect {
        assert_eq!(get(&dir(h).join(file)), format!("{value}\n"), "{file}");
    }
    assert_eq!(get(&dir("cpuset").join("cpuset.mems")), "0\n");

    cg.apply(&Resources::default(), &[]).unwrap();
    for (h, file, value) in [
        ("cpu,cpuacct", "cpu.shares", "1024"),
        ("cpu,cpuacct", "cpu.cfs_quota_us", "-1"),
        ("cpuset", "cpuset.cpus", "0-3"),
        ("memory", "memory.limit_in_bytes", "-1"),
        ("memory", "memory.soft_limit_in_bytes", "-1"),
        ("blkio", "blkio.weight", "500"),
        ("pids", "pids.max", "max"),
    ] {
        assert_eq!(get(&dir(h).join(file)), format!("{value}\n"), "{file}");
    }
}

#[test]
fn v1_io_limits_go_to_the_throttle_files_and_bfq_takes_the_weight() {
    let t = TempDir::new("v1-io");
    let cgroups = fake_v1(&t, &V1_ALL);
    let blkio = t.0.join("blkio/vireo/web");
    put(&blkio.join("blkio.throttle.read_bps_device"), "8:0 5\n");
    fs::remove_file(blkio.join("blkio.weight")).unwrap();
    put(&blkio.join("blkio.bfq.weight"), "100\n");
    let cg = cgroups.create("web").unwrap();
    let limit = IoLimit {
        major: 8,
        minor: 16,
        read_bps: Some(1000),
        write_iops: Some(50),
        ..Default::default()
    };
    let mut r = full();
    r.io_weight = Some(2000);
    cg.apply(&r, &[limit]).unwrap();
    let throttle = |f: &str| get(&blkio.join(format!("blkio.throttle.{f}_device")));
    assert_eq!(throttle("read_bps"), "8:0 0\n8:16 1000\n");
    assert_eq!(throttle("write_bps"), "");
    assert_eq!(throttle("read_iops"), "");
    assert_eq!(throttle("write_iops"), "8:16 50\n");
    assert_eq!(get(&blkio.join("blkio.bfq.weight")), "1000\n");

    put(&blkio.join("blkio.throttle.read_bps_device"), "8:16 1000\n");
    put(&blkio.join("blkio.throttle.write_iops_device"), "8:16 50\n");
    let no_read = IoLimit {
        read_bps: None,
        ..limit
    };
    cg.apply(&Resources::default(), &[no_read]).unwrap();
    assert_eq!(throttle("read_bps"), "8:16 0\n");
    assert_eq!(throttle("write_iops"), "8:16 50\n");
    assert_eq!(get(&blkio.join("blkio.bfq.weight")), "100\n");
}

#[test]
fn join_fds_has_one_fd_per_hierarchy_and_join_self_writes_zero() {
    let t = TempDir::new("v1-join");
    let cg = fake_v1(&t, &V1_ALL).create("web").unwrap();
    let join = cg.join_fds().unwrap();
    assert_eq!(join.len(), 5, "cpu and cpuacct share one");
    join.join_self().unwrap();
    for h in ["cpu,cpuacct", "cpuset", "memory", "blkio", "pids"] {
        assert_eq!(get(&t.0.join(h).join("vireo/web/cgroup.procs")), "0", "{h}");
    }
    cg.add_pid(4321).unwrap();
    assert_eq!(get(&t.0.join("pids/vireo/web/cgroup.procs")), "4321\n");
    assert_eq!(cg.pids().unwrap(), [4321]);
}

#[test]
fn remove_refuses_while_processes_are_left() {
    let t = TempDir::new("v2-remove");
    let (cgroups, vm) = fake_v2(&t, ALL_V2, ALL_V2);
    put(&vm.join("cgroup.procs"), "456\n123\n");
    let e = cgroups.remove("web").unwrap_err();
    let CgroupError::Busy { vm: name, pids } = &e else {
        panic!("{e}");
    };
    assert_eq!((name.as_str(), pids.as_slice()), ("web", &[123, 456][..]));
    assert!(e.to_string().contains("[123, 456]"), "{e}");
    assert!(vm.is_dir());
    cgroups.remove("other").unwrap();
    assert!(matches!(
        cgroups.open("other"),
        Err(CgroupError::NotFound { .. })
    ));
    assert!(matches!(
        cgroups.remove_base(),
        Err(CgroupError::Dir {
            action: "remove",
            ..
        })
    ));
}

mod host;
