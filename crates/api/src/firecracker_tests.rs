use super::*;

fn drive(id: &str, root: bool) -> Drive {
    Drive {
        drive_id: id.into(),
        partuuid: None,
        is_root_device: root,
        cache_type: None,
        is_read_only: Some(false),
        path_on_host: Some(format!("/img/{id}")),
        rate_limiter: None,
        io_engine: None,
        socket: None,
    }
}

fn nic(id: &str, tap: &str) -> NetworkInterface {
    NetworkInterface {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        guest_mac: None,
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    }
}

#[test]
fn unknown_fields_and_wrong_types_are_refused() {
    for (text, ok) in [
        (r#"{"vcpu_count": 2, "mem_size_mib": 256}"#, true),
        (
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "colour": 1}"#,
            false,
        ),
        (r#"{"vcpu_count": "2", "mem_size_mib": 256}"#, false),
        (r#"{"vcpu_count": -1, "mem_size_mib": 256}"#, false),
        (r#"{"mem_size_mib": 256}"#, false),
    ] {
        assert_eq!(
            serde_json::from_str::<MachineConfig>(text).is_ok(),
            ok,
            "{text}"
        );
    }
    assert!(serde_json::from_str::<Balloon>(r#"{"amount_mib": 1}"#).is_err());
    assert!(serde_json::from_str::<InstanceActionInfo>(r#"{"action_type": "Reboot"}"#).is_err());
    assert!(serde_json::from_str::<Vm>(r#"{"state": "Paused"}"#).is_ok());
    assert!(serde_json::from_str::<Vm>(r#"{"state": "paused"}"#).is_err());
}

#[test]
fn machine_config_limits() {
    let mut c = FullVmConfig::default();
    let mc = |v, m| MachineConfig {
        vcpu_count: v,
        mem_size_mib: m,
        ..MachineConfig::default()
    };
    assert!(c.set_machine_config(mc(2, 256)).is_ok());
    for bad in [mc(0, 256), mc(255, 256), mc(1, 15), mc(1, u64::MAX)] {
        let e = c.set_machine_config(bad).unwrap_err().to_string();
        assert!(e.starts_with("Machine config error: "), "{e}");
    }
    assert_eq!(
        c.machine_config.vcpu_count, 2,
        "a refused update changes nothing"
    );
    let smt = MachineConfig {
        smt: true,
        ..mc(2, 256)
    };
    assert!(
        c.set_machine_config(smt)
            .unwrap_err()
            .to_string()
            .contains("SMT")
    );
    let tpl = MachineConfig {
        cpu_template: Some("None".into()),
        ..mc(2, 256)
    };
    assert!(c.set_machine_config(tpl).is_ok());
    let tpl = MachineConfig {
        cpu_template: Some("T2".into()),
        ..mc(2, 256)
    };
    assert!(c.set_machine_config(tpl).is_err());
    c.update_machine_config(MachineConfigUpdate {
        mem_size_mib: Some(512),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (c.machine_config.vcpu_count, c.machine_config.mem_size_mib),
        (2, 512)
    );
    assert!(MachineConfigUpdate::default().is_empty());
}

#[test]
fn one_root_drive_and_replacement_by_id() {
    let mut c = FullVmConfig::default();
    c.set_drive(drive("data", false)).unwrap();
    c.set_drive(drive("root", true)).unwrap();
    let e = c.set_drive(drive("other", true)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Drive config error: A root block device already exists!"
    );
    // Replacing the root drive by its own id is fine.
    c.set_drive(drive("root", true)).unwrap();
    let mut ro = drive("data", false);
    ro.is_read_only = Some(true);
    c.set_drive(ro).unwrap();
    assert_eq!(c.drives.len(), 2);
    assert_eq!(c.drives[0].is_read_only, Some(true));
    for bad in ["", "a-b", "a/b", "x y"] {
        assert!(c.set_drive(drive(bad, false)).is_err(), "{bad:?}");
    }
    let mut vhost = drive("v", false);
    vhost.socket = Some("/s".into());
    assert!(c.set_drive(vhost).is_err());
    let mut nopath = drive("n", false);
    nopath.path_on_host = None;
    assert!(c.set_drive(nopath).is_err());
}

#[test]
fn nics_check_tap_mac_and_uniqueness() {
    let mut c = FullVmConfig::default();
    let mut a = nic("eth0", "tap0");
    a.guest_mac = Some("06:00:00:00:00:01".into());
    c.set_network_interface(a.clone()).unwrap();
    let mut b = nic("eth1", "tap1");
    b.guest_mac = a.guest_mac.clone();
    assert!(c.set_network_interface(b.clone()).is_err(), "same MAC");
    b.guest_mac = Some("07:00:00:00:00:01".into());
    assert!(c.set_network_interface(b.clone()).is_err(), "multicast");
    b.guest_mac = Some("nope".into());
    assert!(c.set_network_interface(b).is_err());
    assert!(
        c.set_network_interface(nic("eth1", "tap0")).is_err(),
        "same TAP"
    );
    assert!(
        c.set_network_interface(nic("eth1", "sixteen-chars-xy"))
            .is_err()
    );
    let mut mtu = nic("eth1", "tap1");
    mtu.mtu = Some(1500);
    assert!(c.set_network_interface(mtu).is_err());
    c.set_network_interface(nic("eth0", "tap9")).unwrap();
    assert_eq!(c.network_interfaces.len(), 1);
}

#[test]
fn other_devices() {
    let mut c = FullVmConfig::default();
    let v = |cid| Vsock {
        guest_cid: cid,
        uds_path: "/tmp/v.sock".into(),
        vsock_id: None,
    };
    assert!(c.set_vsock(v(2)).is_err());
    c.set_vsock(v(3)).unwrap();
    c.set_entropy(EntropyDevice::default()).unwrap();
    let limited = EntropyDevice {
        rate_limiter: Some(RateLimiter {
            ops: Some(TokenBucket {
                size: 1,
                one_time_burst: None,
                refill_time: 1,
            }),
            bandwidth: None,
        }),
    };
    assert!(c.set_entropy(limited).is_err());
    let big = Balloon {
        amount_mib: 129,
        ..Default::default()
    };
    assert!(c.set_balloon(big).is_err(), "more than the guest's 128 MiB");
    c.set_balloon(Balloon {
        amount_mib: 64,
        stats_polling_interval_s: 1,
        ..Default::default()
    })
    .unwrap();
    let shrink = MachineConfig {
        mem_size_mib: 32,
        ..MachineConfig::default()
    };
    assert!(
        c.set_machine_config(shrink).is_err(),
        "the balloon no longer fits"
    );
    let hinting = Balloon {
        free_page_hinting: true,
        ..Default::default()
    };
    assert!(c.set_balloon(hinting).is_err());
    assert!(
        c.set_serial(SerialDevice {
            serial_out_path: Some("/tmp/s".into()),
            rate_limiter: Some(TokenBucket::default()),
        })
        .is_err()
    );
}

#[test]
fn token_bucket_rates() {
    let b = |size, refill_time| TokenBucket {
        size,
        one_time_burst: None,
        refill_time,
    };
    assert_eq!(b(1000, 1000).per_second(), Some(1000));
    assert_eq!(b(10, 100).per_second(), Some(100));
    assert_eq!(
        b(1, 10_000).per_second(),
        Some(1),
        "never rounds to unlimited"
    );
    assert_eq!(b(0, 100).per_second(), None);
    assert_eq!(b(100, 0).per_second(), None);
    assert_eq!(b(u64::MAX, 1).per_second(), Some(u64::MAX));
}

#[test]
fn to_vm_config_orders_the_root_drive_first() {
    let mut c = FullVmConfig::default();
    assert_eq!(c.to_vm_config().unwrap_err(), ConfigError::MissingKernel);
    c.set_boot_source(BootSource {
        kernel_image_path: "/k".into(),
        initrd_path: Some("/i".into()),
        boot_args: Some("console=ttyS0".into()),
    })
    .unwrap();
    c.set_drive(drive("data", false)).unwrap();
    let mut root = drive("rootfs", true);
    root.is_read_only = Some(true);
    root.io_engine = Some(DriveIoEngine::Async);
    root.rate_limiter = Some(RateLimiter {
        bandwidth: Some(TokenBucket {
            size: 1 << 20,
            one_time_burst: Some(5),
            refill_time: 1000,
        }),
        ops: None,
    });
    c.set_drive(root).unwrap();
    let mut n = nic("eth0", "tap0");
    n.guest_mac = Some("06:00:00:00:00:01".into());
    c.set_network_interface(n).unwrap();
    c.set_entropy(EntropyDevice::default()).unwrap();
    c.set_serial(SerialDevice {
        serial_out_path: Some("/tmp/serial".into()),
        rate_limiter: None,
    })
    .unwrap();
    let vm = c.to_vm_config().unwrap();
    assert_eq!(vm.kernel, PathBuf::from("/k"));
    assert_eq!(vm.initrd, Some(PathBuf::from("/i")));
    assert_eq!(vm.cmdline(), "console=ttyS0 root=/dev/vda ro");
    let ids: Vec<_> = vm.disks.iter().map(|d| d.id.clone().unwrap()).collect();
    assert_eq!(ids, ["rootfs", "data"]);
    assert!(vm.disks[0].readonly);
    assert_eq!(vm.disks[0].io_engine, IoEngine::IoUring);
    assert_eq!(vm.disks[0].rate_limit.bytes_per_sec, Some(1 << 20));
    assert_eq!(vm.disks[1].io_engine, IoEngine::Sync);
    assert_eq!(vm.nets[0].mac, Some([6, 0, 0, 0, 0, 1]));
    assert!(vm.rng);
    assert_eq!(vm.serial, SerialConfig::File("/tmp/serial".into()));
    assert_eq!((vm.vcpus, vm.memory_bytes), (1, 128 << 20));

    c.drives[0].partuuid = Some("abcd-01".into());
    c.drives[0].is_root_device = true;
    c.drives[1].is_root_device = false;
    let vm = c.to_vm_config().unwrap();
    assert!(
        vm.cmdline().ends_with("root=PARTUUID=abcd-01 rw"),
        "{}",
        vm.cmdline()
    );
}

#[test]
fn full_config_round_trips_through_json() {
    let text = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true,
                    "is_read_only": false}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
        "entropy": {},
        "balloon": {"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1},
        "logger": {"level": "debug", "log_path": "/tmp/log"},
        "metrics": {"metrics_path": "/tmp/metrics"}
    }"#;
    let c = FullVmConfig::from_json(text).unwrap();
    let out = serde_json::to_string(&c).unwrap();
    assert_eq!(FullVmConfig::from_json(&out).unwrap(), c);
    assert!(out.contains(r#""level":"Debug""#), "{out}");
    assert!(out.contains(r#""huge_pages":"None""#), "{out}");
    assert!(FullVmConfig::from_json(r#"{"mmds-config": {}}"#).is_err());
    assert!(
        FullVmConfig::from_json(r#"{"machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#)
            .is_err()
    );
    assert_eq!(
        FullVmConfig::from_json("{}").unwrap(),
        FullVmConfig::default()
    );
}

#[test]
fn log_levels_any_case() {
    for (s, l) in [
        ("Error", LogLevel::Error),
        ("WARNING", LogLevel::Warning),
        ("warn", LogLevel::Warning),
        ("info", LogLevel::Info),
        ("Trace", LogLevel::Trace),
        ("off", LogLevel::Off),
    ] {
        let logger: Logger = serde_json::from_str(&format!(r#"{{"level": "{s}"}}"#)).unwrap();
        assert_eq!(logger.level, Some(l));
    }
    assert!(serde_json::from_str::<Logger>(r#"{"level": "loud"}"#).is_err());
}
