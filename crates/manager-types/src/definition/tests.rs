use super::*;

const FULL: &str = r#"
name = "web1"
autostart = true
restart = "on-failure"

[machine]
kernel = "/k/vmlinux"
initrd = "/k/initrd.gz"
cmdline = "console=ttyS0"
cpus = 2
memory = "512M"
disks = ["path=/d/root.img", "path=/d/data.qcow2,format=qcow2,readonly"]
nets = ["tap=vnet0,mac=06:00:ac:10:00:02"]
vsock = "cid=3,socket=/run/v.sock"
rng = true
balloon = "stats=5,deflate_on_oom"

[resources]
cpu_weight = 200
cpu_quota = "150%"
cpuset = "0-1,3"
memory_max = "1G"
memory_high = "768M"
io_weight = 50
pids_max = 128
nice = 5
io_read_bps = "100M"
io_write_bps = "50M"
io_read_iops = 2000
io_write_iops = 1000
"#;

fn parse(text: &str) -> Result<Definition, DefinitionError> {
    Definition::parse(Path::new("web1.toml"), text)
}

#[test]
fn a_full_definition_has_every_field() {
    let d = parse(FULL).unwrap();
    assert_eq!(d.name, "web1");
    assert!(d.autostart);
    assert_eq!(d.restart, RestartPolicy::OnFailure);
    assert_eq!(d.vm.kernel, Path::new("/k/vmlinux"));
    assert_eq!(d.vm.initrd.as_deref(), Some(Path::new("/k/initrd.gz")));
    assert_eq!(d.vm.cmdline.as_deref(), Some("console=ttyS0"));
    assert_eq!((d.vm.vcpus, d.vm.memory_bytes), (2, 512 << 20));
    assert_eq!(d.vm.disks.len(), 2);
    assert!(d.vm.disks[1].readonly);
    assert_eq!(d.vm.nets[0].tap, "vnet0");
    assert_eq!(d.vm.vsock.as_ref().unwrap().cid, 3);
    assert!(d.vm.rng);
    assert!(d.vm.balloon.is_some());
    assert_eq!(
        d.resources,
        Resources {
            cpu_weight: Some(200),
            cpu_quota_percent: Some(150),
            cpuset: Some("0-1,3".into()),
            memory_max: Some(1 << 30),
            memory_high: Some(768 << 20),
            io_weight: Some(50),
            pids_max: Some(128),
            nice: Some(5),
            io_limits: IoLimits {
                read_bps: Some(100 << 20),
                write_bps: Some(50 << 20),
                read_iops: Some(2000),
                write_iops: Some(1000),
            },
        }
    );
}

#[test]
fn a_minimal_definition_takes_vireos_defaults() {
    let d = parse("name = \"a\"\n[machine]\nkernel = \"/k\"\n").unwrap();
    let defaults = VmConfig::new("/k");
    assert_eq!(d.vm, defaults);
    assert_eq!(d.resources, Resources::default());
    assert_eq!((d.autostart, d.restart), (false, RestartPolicy::No));
}

/// The error for `text`, as the user reads it.
fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_file_the_line_and_the_field() {
    let bad_disk = FULL.replace(
        "\"path=/d/data.qcow2,format=qcow2,readonly\"",
        "\"path=/d/x,format=vmdk\"",
    );
    let text = error(&bad_disk);
    assert!(text.starts_with("web1.toml:12:"), "{text}");
    assert!(text.contains("machine.disks[1]: "), "{text}");
    assert!(text.contains("vmdk"), "{text}");

    let text = error(&FULL.replace("cpus = 2", "cpus = 0"));
    assert!(
        text.starts_with("web1.toml:10:8: machine.cpus: must be 1 to 254"),
        "{text}"
    );

    let text = error(&FULL.replace("memory = \"512M\"", "memory = \"lots\""));
    assert!(
        text.starts_with("web1.toml:11:") && text.contains("machine.memory: "),
        "{text}"
    );

    let text = error(&FULL.replace("io_write_iops = 1000", "io_write_iops = 0"));
    assert!(
        text.contains("resources.io_write_iops: a limit of 0 stops all I/O"),
        "{text}"
    );
    let text = error(&FULL.replace("io_read_bps = \"100M\"", "io_read_bps = \"fast\""));
    assert!(text.contains("resources.io_read_bps: "), "{text}");

    let text = error(&FULL.replace("nice = 5", "nice = 40"));
    assert!(text.contains("resources.nice: must be -20 to 19"), "{text}");

    let text = error(&FULL.replace("cpu_quota = \"150%\"", "cpu_quota = \"150\""));
    assert!(
        text.contains("resources.cpu_quota: '150' is not a percentage"),
        "{text}"
    );

    let text = error(&FULL.replace("cpuset = \"0-1,3\"", "cpuset = \"3-1\""));
    assert!(
        text.contains("resources.cpuset: '3-1' is not a CPU list"),
        "{text}"
    );

    let text = error(&FULL.replace("memory_high = \"768M\"", "memory_high = \"2G\""));
    assert!(
        text.contains("resources.memory_high: is above memory_max"),
        "{text}"
    );

    let text = error(&FULL.replace("name = \"web1\"", "name = \"-x\""));
    assert!(
        text.starts_with("web1.toml:2:8: name: '-x' is not a valid name"),
        "{text}"
    );
}

#[test]
fn unknown_fields_wrong_types_and_bad_toml_are_refused_with_their_place() {
    let text = error(&FULL.replace("rng = true", "rng = true\nvga = true"));
    assert!(text.starts_with("web1.toml:16:"), "{text}");
    assert!(text.contains("unknown field `vga`"), "{text}");

    let text = error(&FULL.replace("cpus = 2", "cpus = \"two\""));
    assert!(text.starts_with("web1.toml:10:"), "{text}");

    let text = error(&FULL.replace("restart = \"on-failure\"", "restart = \"sometimes\""));
    assert!(
        text.starts_with("web1.toml:4:") && text.contains("sometimes"),
        "{text}"
    );

    let text = error("name = \"a\"\n[machine\nkernel = \"/k\"\n");
    assert!(text.starts_with("web1.toml:2:"), "{text}");

    let text = error("name = \"a\"\n");
    assert!(text.contains("missing field `machine`"), "{text}");
}

#[test]
fn names() {
    for good in ["a", "web-1", "db_2.test", &"x".repeat(MAX_NAME_LEN)] {
        assert!(valid_name(good), "{good}");
    }
    for bad in [
        "",
        ".hidden",
        "-opt",
        "a/b",
        "a b",
        "é",
        &"x".repeat(MAX_NAME_LEN + 1),
    ] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = Definition::load(Path::new("/nonexistent/vm.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/vm.toml:1:1: cannot read it"),
        "{err}"
    );
}

#[test]
fn line_and_column_count_from_one() {
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
    assert_eq!(line_column("ab", 99), (1, 3));
}
