use std::path::PathBuf;

use super::*;
use crate::{BalloonConfig, DiskConfig, DiskFormat, IoEngine, NetConfig, VmConfig, VsockConfig};

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
        format: None,
        serial: None,
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
    let huge = |pages: &str, m| MachineConfig {
        huge_pages: pages.into(),
        ..mc(1, m)
    };
    assert!(c.set_machine_config(huge("2M", 256)).is_ok());
    assert!(
        c.to_vm_config().is_err(),
        "no kernel yet; the flag is checked below"
    );
    let e = c
        .set_machine_config(huge("2M", 255))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 2 MiB"), "{e}");
    let e = c
        .set_machine_config(huge("1G", 256))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"None\" or \"2M\""), "{e}");
    c.set_machine_config(mc(2, 256)).unwrap();
    // SMT as Firecracker has it on x86: 1 or an even number of vCPUs, two threads a core.
    let smt = |v| MachineConfig {
        smt: true,
        ..mc(v, 256)
    };
    for v in [1, 2, 4, 254] {
        c.set_machine_config(smt(v)).unwrap();
    }
    let e = c.set_machine_config(smt(3)).unwrap_err().to_string();
    assert!(e.contains("with SMT, 1 or an even number"), "{e}");
    assert_eq!(c.machine_config.vcpu_count, 254, "refused: unchanged");
    c.set_boot_source(BootSource {
        kernel_image_path: "/vmlinux".into(),
        initrd_path: None,
        boot_args: None,
    })
    .unwrap();
    assert!(c.to_vm_config().unwrap().smt, "SMT reaches the VM's config");
    c.set_machine_config(mc(2, 256)).unwrap();
    assert!(!c.to_vm_config().unwrap().smt);
    let tpl = |name: &str| MachineConfig {
        cpu_template: Some(name.into()),
        ..mc(2, 256)
    };
    assert!(c.set_machine_config(tpl("None")).is_ok());
    assert_eq!(
        c.machine_config.cpu_template, None,
        "\"None\" is no template"
    );
    for bad in ["t2", "V1N1", ""] {
        let e = c.set_machine_config(tpl(bad)).unwrap_err().to_string();
        assert!(e.starts_with("Machine config error: "), "{e}");
    }
    assert!(c.set_machine_config(tpl("T2")).is_ok());
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
    c.set_network_interface(b.clone())
        .expect("a multicast MAC, as Firecracker takes it");
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
    mtu.mtu = Some(67);
    assert!(
        c.set_network_interface(mtu.clone()).is_err(),
        "below IPv4's 68"
    );
    mtu.mtu = Some(9000);
    c.set_network_interface(mtu).unwrap();
    assert_eq!(c.network_interfaces[1].mtu, Some(9000));
    c.set_network_interface(nic("eth0", "tap9")).unwrap();
    assert_eq!(c.network_interfaces.len(), 2, "eth0 replaced, eth1 kept");
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
    c.set_entropy(limited).unwrap();
    let limit = c
        .entropy
        .as_ref()
        .unwrap()
        .rate_limiter
        .unwrap()
        .to_rate_limit();
    assert_eq!(limit.ops_per_sec, Some(1000), "1 request per ms");
    let broken = EntropyDevice {
        rate_limiter: Some(RateLimiter {
            ops: Some(TokenBucket {
                size: 1,
                one_time_burst: None,
                refill_time: 0,
            }),
            bandwidth: None,
        }),
    };
    assert!(c.set_entropy(broken).is_err(), "never refilled");
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
    c.set_balloon(hinting.clone()).unwrap();
    assert_eq!(c.balloon, Some(hinting));
    let serial = |size, refill_time| SerialDevice {
        serial_out_path: Some("/tmp/s".into()),
        rate_limiter: Some(TokenBucket {
            size,
            one_time_burst: None,
            refill_time,
        }),
        socket: None,
    };
    assert!(c.set_serial(serial(100, 0)).is_err(), "never refilled");
    c.set_serial(serial(0, 0)).unwrap();
    assert_eq!(
        c.serial_rate_limit(),
        RateLimit::default(),
        "size 0: unlimited"
    );
    c.set_serial(serial(100, 1000)).unwrap();
    assert_eq!(c.serial_rate_limit().bytes_per_sec, Some(100));
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
        socket: None,
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
    // A bucket of one second's worth keeps the default size; its burst is kept.
    assert_eq!(
        vm.disks[0].rate_limit.bytes_burst,
        crate::Burst {
            size: None,
            one_time: Some(5)
        }
    );
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
    // MMDS: its interfaces must exist (listed after them), the address be link-local.
    let mmds = |m: &str| {
        FullVmConfig::from_json(&text.replacen('{', &format!("{{\"mmds-config\": {m},"), 1))
    };
    let c = mmds(r#"{"version": "V2", "network_interfaces": ["eth0"]}"#).unwrap();
    assert_eq!(c.to_vm_config().unwrap().mmds, c.mmds_config);
    assert_eq!(
        c.mmds_config.as_ref().unwrap().version,
        crate::MmdsVersion::V2
    );
    assert!(
        mmds(r#"{"network_interfaces": ["eth1"]}"#)
            .unwrap_err()
            .contains("eth1")
    );
    assert!(
        mmds(r#"{"network_interfaces": []}"#)
            .unwrap_err()
            .contains("empty")
    );
    assert!(
        mmds(r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#)
            .unwrap_err()
            .contains("link local")
    );
    assert!(
        FullVmConfig::from_json(r#"{"mmds-config": {}}"#).is_err(),
        "network_interfaces is required"
    );
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
fn firecracker_0_2x_names_are_taken() {
    let c: MachineConfig =
        serde_json::from_str(r#"{"ht_enabled": false, "mem_size_mib": 256, "vcpu_count": 2}"#)
            .unwrap();
    assert!(!c.smt);
    assert!(
        serde_json::to_string(&c)
            .unwrap()
            .contains(r#""smt":false"#)
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

#[test]
fn serial_socket_is_a_vireo_extension_exclusive_with_a_file() {
    let mut c = FullVmConfig::default();
    assert_eq!(c.serial_config(), SerialConfig::Stdio);
    let body: SerialDevice = serde_json::from_str(r#"{"socket": "/run/vm/console.sock"}"#).unwrap();
    c.set_serial(body).unwrap();
    assert_eq!(
        c.serial_config(),
        SerialConfig::Socket("/run/vm/console.sock".into())
    );
    c.set_boot_source(BootSource {
        kernel_image_path: "/k".into(),
        initrd_path: None,
        boot_args: None,
    })
    .unwrap();
    assert_eq!(
        c.to_vm_config().unwrap().serial,
        SerialConfig::Socket("/run/vm/console.sock".into())
    );
    // Firecracker's own body is written as before: no socket field.
    let file = SerialDevice {
        serial_out_path: Some("/tmp/s".into()),
        ..SerialDevice::default()
    };
    assert_eq!(
        serde_json::to_string(&file).unwrap(),
        r#"{"serial_out_path":"/tmp/s"}"#
    );

    let both: SerialDevice =
        serde_json::from_str(r#"{"serial_out_path": "/tmp/s", "socket": "/tmp/c.sock"}"#).unwrap();
    assert_eq!(
        c.set_serial(both).unwrap_err().to_string(),
        "Serial config error: serial_out_path and socket are exclusive: give one of them."
    );
    let long = SerialDevice {
        socket: Some(format!("/{}", "s".repeat(UNIX_PATH_MAX))),
        ..SerialDevice::default()
    };
    assert!(
        c.set_serial(long)
            .unwrap_err()
            .to_string()
            .contains("too long for a Unix socket")
    );
    let empty = SerialDevice {
        socket: Some(String::new()),
        ..SerialDevice::default()
    };
    assert!(c.set_serial(empty).is_err());
    assert_eq!(
        c.serial_config(),
        SerialConfig::Socket("/run/vm/console.sock".into()),
        "a refused body changes nothing"
    );
    assert!(serde_json::from_str::<SerialDevice>(r#"{"sock": "/x"}"#).is_err());
}

#[test]
fn drive_extensions_format_serial_and_auto_engine() {
    let parse = |extra: &str| -> Result<Drive, String> {
        serde_json::from_str(&format!(
            r#"{{"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false{extra}}}"#
        ))
        .map_err(|e| e.to_string())
    };
    let disk = |d: Drive| {
        let mut c = FullVmConfig::default();
        c.set_boot_source(BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        })
        .unwrap();
        c.set_drive(d).map_err(|e| e.to_string())?;
        Ok::<_, String>(c.to_vm_config().unwrap().disks.remove(0))
    };
    // A Firecracker body: raw, Sync, the drive_id as serial.
    let plain = disk(parse("").unwrap()).unwrap();
    assert_eq!(plain.format, DiskFormat::Raw);
    assert_eq!(plain.io_engine, IoEngine::Sync);
    assert_eq!(plain.serial.as_deref(), Some("data"));
    assert_eq!(
        serde_json::to_string(&parse("").unwrap()).unwrap(),
        r#"{"drive_id":"data","is_root_device":false,"path_on_host":"/d.img"}"#,
        "no extension field appears unless set"
    );

    let d = disk(parse(r#", "format": "qcow2", "serial": "SN-1", "io_engine": "Auto""#).unwrap())
        .unwrap();
    assert_eq!(d.format, DiskFormat::Qcow2);
    assert_eq!(d.serial.as_deref(), Some("SN-1"));
    assert_eq!(d.io_engine, IoEngine::Auto);
    let d = disk(parse(r#", "format": "raw", "serial": """#).unwrap()).unwrap();
    assert_eq!(d.format, DiskFormat::Raw);
    assert_eq!(d.serial, None, "an empty serial is none");

    for bad in [
        r#", "format": "vmdk""#,
        r#", "format": "Qcow2""#,
        r#", "io_engine": "auto""#,
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    let long = parse(r#", "serial": "123456789012345678901""#).unwrap();
    assert!(disk(long).unwrap_err().contains("at most 20"));
}

/// A VmConfig with every field set, as a manager would write one.
fn every_field() -> VmConfig {
    let limit = |ops, bytes| RateLimit {
        ops_per_sec: ops,
        bytes_per_sec: bytes,
        ..Default::default()
    };
    VmConfig {
        kernel: "/vm/vmlinux".into(),
        initrd: Some("/vm/initrd.img".into()),
        cmdline: Some("console=ttyS0 root=/dev/vda rw quiet".into()),
        vcpus: 4,
        smt: true,
        memory_bytes: 1 << 30,
        serial: SerialConfig::Socket("/run/vireo/web/console.sock".into()),
        serial_rate_limit: RateLimit {
            bytes_per_sec: Some(2048),
            bytes_burst: crate::Burst {
                size: Some(4096),
                one_time: Some(1 << 20),
            },
            ..Default::default()
        },
        disks: vec![
            DiskConfig {
                id: Some("root".into()),
                path: "/vm/root.qcow2".into(),
                readonly: false,
                format: DiskFormat::Qcow2,
                serial: Some("root".into()),
                rate_limit: limit(Some(1000), Some(50 << 20)),
                io_engine: IoEngine::Sync,
            },
            DiskConfig {
                id: Some("seed".into()),
                path: "/vm/seed.img".into(),
                readonly: true,
                format: DiskFormat::Raw,
                serial: Some("CLOUD-INIT-01".into()),
                rate_limit: limit(None, Some(1 << 20)),
                io_engine: IoEngine::IoUring,
            },
            DiskConfig {
                id: Some("scratch".into()),
                path: "/vm/scratch.img".into(),
                readonly: false,
                format: DiskFormat::Raw,
                serial: None,
                rate_limit: limit(Some(200), None),
                io_engine: IoEngine::Auto,
            },
        ],
        nets: vec![
            NetConfig {
                id: Some("eth0".into()),
                tap: "vtap0".into(),
                mac: Some([0x02, 0xab, 0xcd, 0xef, 0x00, 0x01]),
                rx_rate_limit: limit(Some(10_000), Some(100 << 20)),
                tx_rate_limit: limit(None, Some(10 << 20)),
                mtu: Some(9000),
            },
            NetConfig {
                id: Some("eth1".into()),
                tap: "vtap1".into(),
                mac: Some([0x06, 0, 0, 0, 0, 0xfe]),
                rx_rate_limit: RateLimit::default(),
                tx_rate_limit: limit(Some(5000), None),
                mtu: None,
            },
        ],
        vsock: Some(VsockConfig {
            cid: 42,
            socket: "/run/vireo/web/vsock.sock".into(),
        }),
        rng: true,
        rng_rate_limit: limit(Some(100), Some(4096)),
        balloon: Some(BalloonConfig {
            amount_mib: 256,
            deflate_on_oom: true,
            stats_interval_s: 5,
            free_page_hinting: true,
            free_page_reporting: true,
        }),
        track_dirty_pages: true,
        // Not in Firecracker's config (a flag of the process): it does not round-trip.
        boot_timer: false,
        huge_pages: true,
        mmds: Some(crate::MmdsConfig {
            version: crate::MmdsVersion::V2,
            network_interfaces: vec!["eth1".into()],
            ipv4_address: Some("169.254.170.2".parse().unwrap()),
            imds_compat: true,
        }),
        cpu_template: Some(crate::CpuTemplate::Custom(
            serde_json::from_str(
                r#"{"kvm_capabilities": ["171", "!56"],
                    "cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1,
                        "modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx"}]}],
                    "msr_modifiers": [{"addr": "0x277", "bitmap": "0b00000001"}]}"#,
            )
            .unwrap(),
        )),
        pmem: vec![
            crate::PmemConfig {
                id: Some("rootfs".into()),
                path: "/vm/rootfs.squashfs".into(),
                readonly: true,
                rate_limit: RateLimit::default(),
            },
            crate::PmemConfig {
                id: Some("data".into()),
                path: "/vm/data.img".into(),
                readonly: false,
                rate_limit: limit(Some(10), Some(256 << 20)),
            },
        ],
    }
}

#[test]
fn from_vm_config_round_trips_every_field() {
    let config = every_field();
    let full = FullVmConfig::from_vm_config(&config).unwrap();
    assert_eq!(full.to_vm_config().unwrap(), config);
    assert!(full.drives.iter().all(|d| !d.is_root_device));
    assert_eq!(
        full.boot_source.as_ref().unwrap().boot_args.as_deref(),
        config.cmdline.as_deref()
    );

    // What a manager writes as --config-file reads back the same, as the same VM.
    let json = serde_json::to_string_pretty(&full).unwrap();
    let parsed = FullVmConfig::from_json(&json).unwrap();
    assert_eq!(parsed, full);
    assert_eq!(parsed.to_vm_config().unwrap(), config);
    for extension in [
        r#""format": "qcow2""#,
        r#""io_engine": "Auto""#,
        r#""serial": "CLOUD-INIT-01""#,
        r#""socket": "/run/vireo/web/console.sock""#,
        r#""guest_mac": "02:ab:cd:ef:00:01""#,
        r#""cpu-config": {"#,
        r#""bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx""#,
    ] {
        assert!(json.contains(extension), "no {extension} in {json}");
    }

    // The other consoles, and a serial the drive_id would give, left unsaid.
    let mut c = every_field();
    c.serial = SerialConfig::File("/var/log/vm.log".into());
    let full = FullVmConfig::from_vm_config(&c).unwrap();
    assert_eq!(full.to_vm_config().unwrap(), c);
    assert_eq!(full.drives[0].serial, None);
    assert_eq!(full.drives[2].serial.as_deref(), Some(""), "no serial");
    c.serial = SerialConfig::Stdio;
    let full = FullVmConfig::from_vm_config(&c).unwrap();
    assert_eq!(
        full.serial.as_ref().unwrap().serial_out_path,
        None,
        "stdout, limited"
    );
    assert_eq!(full.to_vm_config().unwrap(), c);
    c.serial_rate_limit = RateLimit::default();
    let full = FullVmConfig::from_vm_config(&c).unwrap();
    assert_eq!(full.serial, None);
    assert_eq!(full.to_vm_config().unwrap(), c);

    // A static template goes in machine-config.
    c.cpu_template = Some(crate::CpuTemplate::Static(crate::StaticCpuTemplate::T2CL));
    let full = FullVmConfig::from_vm_config(&c).unwrap();
    assert_eq!(full.machine_config.cpu_template.as_deref(), Some("T2CL"));
    assert_eq!(full.cpu_config, None);
    assert_eq!(full.to_vm_config().unwrap(), c);
    let json = serde_json::to_string(&full).unwrap();
    assert_eq!(FullVmConfig::from_json(&json).unwrap(), full);
}

#[test]
fn from_vm_config_names_devices_and_writes_the_default_cmdline() {
    let mut c = VmConfig::new("/k");
    c.disks.push("path=/a.img".parse().unwrap());
    c.disks.push("path=/b.img,id=b".parse().unwrap());
    c.nets.push("tap=t0".parse().unwrap());
    let full = FullVmConfig::from_vm_config(&c).unwrap();
    let ids: Vec<_> = full.drives.iter().map(|d| d.drive_id.as_str()).collect();
    assert_eq!(ids, ["disk0", "b"]);
    assert_eq!(full.network_interfaces[0].iface_id, "net0");
    assert_eq!(
        full.boot_source.as_ref().unwrap().boot_args.as_deref(),
        Some(crate::DEFAULT_CMDLINE)
    );
    let vm = full.to_vm_config().unwrap();
    assert_eq!(vm.cmdline(), crate::DEFAULT_CMDLINE);
    assert_eq!(vm.disks[0].id.as_deref(), Some("disk0"));
    assert_eq!(vm.disks[0].path, PathBuf::from("/a.img"));
    assert_eq!(vm.disks[0].io_engine, IoEngine::Auto);
    assert_eq!(vm.disks[0].serial, None);
    assert_eq!(vm.nets[0].id.as_deref(), Some("net0"));
}

#[test]
fn from_vm_config_refuses_what_it_cannot_express() {
    use std::os::unix::ffi::OsStrExt;
    let refused = |change: &dyn Fn(&mut VmConfig)| {
        let mut c = every_field();
        change(&mut c);
        FullVmConfig::from_vm_config(&c).unwrap_err()
    };
    for (err, needle) in [
        (
            refused(&|c| c.serial = SerialConfig::None),
            "serial: none (output discarded) cannot be expressed",
        ),
        (
            refused(&|c| c.memory_bytes += 4096),
            "not a whole number of MiB",
        ),
        (
            refused(&|c| c.disks[1].rate_limit.ops_per_sec = Some(0)),
            "disk seed: a limit of 0 operations per second",
        ),
        (
            refused(&|c| c.nets[0].tx_rate_limit.bytes_per_sec = Some(0)),
            "NIC eth0 tx: a limit of 0 bytes per second",
        ),
        (
            refused(&|c| c.balloon.as_mut().unwrap().stats_interval_s = 70_000),
            "stats_polling_interval_s",
        ),
        (
            refused(&|c| c.balloon.as_mut().unwrap().amount_mib = 1 << 33),
            "amount_mib",
        ),
        (
            refused(&|c| c.disks[2].id = Some("root".into())),
            "another disk is also named root",
        ),
        (
            refused(&|c| {
                c.disks[1].id = Some("disk2".into());
                c.disks[2].id = None;
            }),
            "disk 2: another disk is also named disk2",
        ),
        (
            refused(&|c| c.disks[1].serial = Some("S".repeat(21))),
            "disk seed: Drive config error: serial is at most 20",
        ),
        (
            refused(&|c| c.disks[0].id = Some("my-root".into())),
            "disk my-root: Drive config error: API Resource IDs",
        ),
        (
            refused(&|c| c.nets[1].tap = "vtap0".into()),
            "NIC eth1: Network config error: The host device vtap0",
        ),
        (
            refused(&|c| {
                c.kernel = PathBuf::from(std::ffi::OsStr::from_bytes(b"/vm/\xff"));
            }),
            "kernel: the path /vm/",
        ),
        (refused(&|c| c.vcpus = 0), "Machine config error"),
    ] {
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}

#[test]
fn buckets_keep_firecrackers_size_and_one_time_burst() {
    // 100 tokens every 100 ms: 1000/s from a bucket of 100, plus 5000 once.
    let fc = TokenBucket {
        size: 100,
        one_time_burst: Some(5000),
        refill_time: 100,
    };
    assert_eq!(fc.per_second(), Some(1000));
    let burst = fc.burst();
    assert_eq!(
        burst,
        crate::Burst {
            size: Some(100),
            one_time: Some(5000)
        }
    );
    // And back, for GET /vm/config and a manager's definitions.
    assert_eq!(TokenBucket::from_rate(1000, burst), fc);
    let plain = TokenBucket::from_rate(1 << 20, crate::Burst::default());
    assert_eq!((plain.size, plain.refill_time), (1 << 20, 1000));
    assert_eq!(plain.burst(), crate::Burst::default());
    // A zero one-time burst is none; an unlimited bucket has no shape.
    let zero = TokenBucket {
        one_time_burst: Some(0),
        ..plain
    };
    assert!(zero.burst().is_default());
    let unlimited = TokenBucket { size: 0, ..fc };
    assert!(unlimited.burst().is_default());

    let limiter = RateLimiter {
        bandwidth: None,
        ops: Some(fc),
    };
    let limit = limiter.to_rate_limit();
    assert_eq!((limit.ops_per_sec, limit.ops_burst), (Some(1000), burst));
}

#[test]
fn firecrackers_other_sections_parse_and_are_refused_when_they_ask_for_something() {
    let base = r#""boot-source": {"kernel_image_path": "/k"}"#;
    for nothing in [
        r#""cpu-config": {}"#,
        r#""cpu-config": {"kvm_capabilities": [], "cpuid_modifiers": [], "msr_modifiers": []}"#,
        r#""mmds-config": null"#,
        r#""memory-hotplug": {}"#,
    ] {
        let config = FullVmConfig::from_json(&format!("{{{base}, {nothing}}}"));
        assert!(config.is_ok(), "{nothing}: {config:?}");
    }
    let asks = r#""memory-hotplug": {"total_size_mib": 1024}"#;
    let err = FullVmConfig::from_json(&format!("{{{base}, {asks}}}")).unwrap_err();
    assert!(err.starts_with("memory-hotplug"), "{asks}: {err}");
    // Still no field Firecracker does not have.
    let err = FullVmConfig::from_json(&format!(r#"{{{base}, "cpu-configs": {{}}}}"#)).unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
}

fn template(text: &str) -> crate::CustomCpuTemplate {
    serde_json::from_str(text).unwrap()
}

/// The template set last wins, static or custom; a machine config without
/// `cpu_template` keeps the one set before; `"None"` drops both (Firecracker's rules).
#[test]
fn the_cpu_template_set_last_wins() {
    let mut c = FullVmConfig::default();
    let machine = |t: Option<&str>| MachineConfig {
        vcpu_count: 2,
        mem_size_mib: 256,
        cpu_template: t.map(str::to_string),
        ..MachineConfig::default()
    };
    let custom = template(r#"{"kvm_capabilities": ["171"]}"#);
    c.set_machine_config(machine(Some("T2S"))).unwrap();
    c.set_cpu_config(custom.clone()).unwrap();
    assert_eq!(c.cpu_config.as_ref(), Some(&custom));
    assert_eq!(c.machine_config.cpu_template, None);
    // A machine config without a template keeps the custom one...
    c.set_machine_config(machine(None)).unwrap();
    assert_eq!(c.cpu_config.as_ref(), Some(&custom));
    // ...a static one replaces it...
    c.set_machine_config(machine(Some("C3"))).unwrap();
    assert_eq!(
        (
            c.cpu_config.as_ref(),
            c.machine_config.cpu_template.as_deref()
        ),
        (None, Some("C3"))
    );
    // ...and is kept by the next PUT and PATCH without one.
    c.set_machine_config(machine(None)).unwrap();
    c.update_machine_config(MachineConfigUpdate {
        vcpu_count: Some(1),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.machine_config.cpu_template.as_deref(), Some("C3"));
    let mut vm = c.clone();
    vm.boot_source = Some(BootSource {
        kernel_image_path: "/k".into(),
        initrd_path: None,
        boot_args: None,
    });
    assert_eq!(
        vm.to_vm_config().unwrap().cpu_template,
        Some(crate::CpuTemplate::Static(crate::StaticCpuTemplate::C3))
    );
    // "None" drops whichever template there is.
    c.set_cpu_config(custom.clone()).unwrap();
    c.update_machine_config(MachineConfigUpdate {
        cpu_template: Some("None".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        (&c.cpu_config, &c.machine_config.cpu_template),
        (&None, &None)
    );
    // A refused template changes nothing.
    c.set_cpu_config(custom.clone()).unwrap();
    let arm = template(r#"{"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}"#);
    let e = c.set_cpu_config(arm).unwrap_err().to_string();
    assert!(
        e.starts_with("CPU config error: reg_modifiers is for aarch64"),
        "{e}"
    );
    assert!(c.set_machine_config(machine(Some("V1N1"))).is_err());
    assert_eq!(c.cpu_config.as_ref(), Some(&custom));
}

#[test]
fn cpu_config_in_a_config_file() {
    let base = r#""boot-source": {"kernel_image_path": "/k"}"#;
    // Leaf 1 ECX bit 30 (RDRAND) hidden.
    let bitmap = format!("0bx0{}", "x".repeat(30));
    let text = format!(
        r#"{{{base}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}},
            "cpu-config": {{"cpuid_modifiers": [{{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{{"register": "ecx", "bitmap": "{bitmap}"}}]}}]}}}}"#
    );
    let full = FullVmConfig::from_json(&text).unwrap();
    // The custom template wins over machine-config's, as in Firecracker.
    assert_eq!(full.machine_config.cpu_template, None);
    let vm = full.to_vm_config().unwrap();
    let Some(crate::CpuTemplate::Custom(t)) = &vm.cpu_template else {
        panic!("{:?}", vm.cpu_template)
    };
    assert_eq!(t.cpuid_modifiers[0].modifiers[0].bitmap.mask, 1 << 30);
    // GET /vm/config shows it; the file boots the same VM.
    let json = serde_json::to_string(&full).unwrap();
    let shown = format!(
        r#""cpu-config":{{"kvm_capabilities":[],"cpuid_modifiers":[{{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{{"register":"ecx","bitmap":"{bitmap}"}}]}}],"msr_modifiers":[]}}"#
    );
    assert!(json.contains(&shown), "{json}");
    assert_eq!(FullVmConfig::from_json(&json).unwrap(), full);
    // A malformed one is refused with the field's reason.
    let err = FullVmConfig::from_json(&format!(
        r#"{{{base}, "cpu-config": {{"msr_modifiers": [{{"addr": "0x10a", "bitmap": "0b2"}}]}}}}"#
    ))
    .unwrap_err();
    assert!(err.contains("'2' is not 0, 1, x or _"), "{err}");
    let err = FullVmConfig::from_json(&format!(
        r#"{{{base}, "cpu-config": {{"vcpu_features": [{{"index": 0, "bitmap": "0b1"}}]}}}}"#
    ))
    .unwrap_err();
    assert!(err.starts_with("CPU config error: vcpu_features"), "{err}");
    let err = FullVmConfig::from_json(&format!(
        r#"{{{base}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T3"}}}}"#
    ))
    .unwrap_err();
    assert!(err.contains("unknown CPU template 'T3'"), "{err}");
}

fn pmem(id: &str, root: bool, read_only: bool) -> Pmem {
    Pmem {
        id: id.into(),
        path_on_host: format!("/vm/{id}.img"),
        root_device: root,
        read_only,
        rate_limiter: None,
    }
}

#[test]
fn pmem_devices_are_checked_as_firecracker_checks_them() {
    let mut c = FullVmConfig::default();
    c.set_pmem(pmem("p0", false, false)).unwrap();
    c.set_pmem(pmem("root", true, true)).unwrap();
    // Replaced by id, in place.
    c.set_pmem(Pmem {
        path_on_host: "/other".into(),
        ..pmem("p0", false, false)
    })
    .unwrap();
    assert_eq!(c.pmem.len(), 2);
    assert_eq!(c.pmem[0].path_on_host, "/other");
    // One root device, pmem or block.
    let err = c.set_pmem(pmem("p2", true, false)).unwrap_err().to_string();
    assert_eq!(err, "Pmem config error: A root pmem device already exist");
    c.set_pmem(pmem("root", true, false)).unwrap();
    let err = c.set_drive(drive("rootfs", true)).unwrap_err().to_string();
    assert_eq!(
        err,
        "Drive config error: Attempt to add block as a root device while the root device \
         defined as a pmem device"
    );
    c.set_drive(drive("data", false)).unwrap();
    let mut blk = FullVmConfig::default();
    blk.set_drive(drive("rootfs", true)).unwrap();
    let err = blk
        .set_pmem(pmem("p0", true, false))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "Pmem config error: Attempt to add pmem as a root device while the root device \
         defined as a block device"
    );
    blk.set_pmem(pmem("p0", false, false)).unwrap();
    // Ids, paths and buckets.
    for (bad, needle) in [
        (pmem("", false, false), "cannot be empty"),
        (pmem("a-b", false, false), "alphanumeric"),
        (
            Pmem {
                path_on_host: String::new(),
                ..pmem("p", false, false)
            },
            "path_on_host must be a non-empty path",
        ),
        (
            Pmem {
                rate_limiter: Some(RateLimiter {
                    bandwidth: None,
                    ops: Some(TokenBucket {
                        size: 1,
                        one_time_burst: None,
                        refill_time: 0,
                    }),
                }),
                ..pmem("p", false, false)
            },
            "refill_time",
        ),
    ] {
        let err = c.set_pmem(bad).unwrap_err().to_string();
        assert!(err.starts_with("Pmem config error: "), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // Unknown fields are refused, the optional ones default to false.
    assert!(serde_json::from_str::<Pmem>(r#"{"id":"a","path_on_host":"/a","dax":true}"#).is_err());
    let p: Pmem = serde_json::from_str(r#"{"id":"a","path_on_host":"/a"}"#).unwrap();
    assert!(!p.root_device && !p.read_only && p.rate_limiter.is_none());
}

#[test]
fn pmem_devices_count_towards_the_device_limit() {
    let mut c = FullVmConfig::default();
    for i in 0..MAX_DEVICES {
        c.set_pmem(pmem(&format!("p{i}"), false, false)).unwrap();
    }
    let err = c.set_pmem(pmem("one_more", false, false)).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("at most {MAX_DEVICES} virtio devices")),
        "{err}"
    );
    let err = c.set_drive(drive("d", false)).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("at most {MAX_DEVICES} virtio devices")),
        "{err}"
    );
}

#[test]
fn a_root_pmem_device_is_named_on_the_command_line_and_the_config_file_takes_pmem() {
    let json = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
        "pmem": [
            {"id": "scratch", "path_on_host": "/vm/scratch.img"},
            {"id": "rootfs", "path_on_host": "/vm/rootfs.img", "root_device": true,
             "read_only": true,
             "rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}
        ]
    }"#;
    let full = FullVmConfig::from_json(json).unwrap();
    let vm = full.to_vm_config().unwrap();
    assert_eq!(vm.cmdline(), "console=ttyS0 root=/dev/pmem1 ro");
    assert_eq!(vm.pmem.len(), 2);
    assert_eq!(vm.pmem[0].id.as_deref(), Some("scratch"));
    assert!(!vm.pmem[0].readonly);
    assert_eq!(vm.pmem[1].path, std::path::PathBuf::from("/vm/rootfs.img"));
    assert!(vm.pmem[1].readonly);
    assert_eq!(vm.pmem[1].rate_limit.ops_per_sec, Some(10));
    // Read-write root: rw.
    let mut rw = full.clone();
    rw.pmem[1].read_only = false;
    assert_eq!(
        rw.to_vm_config().unwrap().cmdline(),
        "console=ttyS0 root=/dev/pmem1 rw"
    );
    // GET /vm/config always has the list, as Firecracker's.
    let none = serde_json::to_value(FullVmConfig::default()).unwrap();
    assert_eq!(none["pmem"], serde_json::json!([]));
    // A config file with two root devices is refused by the same check as the API.
    let two = json.replace(
        r#""id": "scratch", "path_on_host""#,
        r#""id": "scratch", "root_device": true, "path_on_host""#,
    );
    let err = FullVmConfig::from_json(&two).unwrap_err();
    assert!(err.contains("A root pmem device already exist"), "{err}");
}
