//! virtio-pmem through Firecracker's API and `--config-file`, against the real `vireo`
//! on real KVM (layer 2): `PUT /pmem/{id}` and its errors, `GET /vm/config`, the
//! `virtio_pmem` tiny guest reading the file through its region and flushing, the
//! metrics' `pmem` groups, `PATCH /pmem/{id}` on a running VM, a root pmem device on the
//! command line, and snapshots (the file is reopened and mapped at the same place; a
//! file that changed size or went away is refused).

mod common;

use std::time::{Duration, Instant};

use common::http::{Client, Vireo, bad, boot_guest, ok};
use common::wait_until;

/// A backing file of 3 MiB + 5 bytes (a 4 MiB region) whose first 16 bytes the pmem
/// guest prints.
fn pmem_file(path: &str) -> Vec<u8> {
    let mut data: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i % 241) as u8).collect();
    data[..16].copy_from_slice(b"vireo pmem head!");
    std::fs::write(path, &data).unwrap();
    data
}

fn pmem_body(id: &str, path: &str, extra: &str) -> String {
    format!(r#"{{"id": "{id}", "path_on_host": "{path}"{extra}}}"#)
}

#[test]
fn pmem_devices_through_the_api_and_the_pmem_guest() {
    let vm = Vireo::start("pmem", &[]);
    let mut c = vm.client();
    let file = vm.path("pmem.img");
    let before = pmem_file(&file);

    // The body's checks, Firecracker's messages.
    bad(
        c.put("/pmem/p0", &pmem_body("p1", &file, "")),
        "The id from the path does not match the id from the body!",
    );
    bad(
        c.put("/pmem/p0", r#"{"id": "p0"}"#),
        "missing field `path_on_host`",
    );
    bad(
        c.put("/pmem/p0", &pmem_body("p0", &file, r#", "dax": true"#)),
        "unknown field `dax`",
    );
    bad(
        c.patch("/pmem/p0", r#"{"id": "p0"}"#),
        "The requested operation is not supported before starting the microVM.",
    );
    // One root device, drive or pmem.
    let img = vm.path("root.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    ok(c.put(
        "/drives/rootfs",
        &format!(r#"{{"drive_id": "rootfs", "path_on_host": "{img}", "is_root_device": true}}"#),
    ));
    bad(
        c.put(
            "/pmem/p0",
            &pmem_body("p0", &file, r#", "root_device": true"#),
        ),
        "Pmem config error: Attempt to add pmem as a root device while the root device \
         defined as a block device",
    );
    ok(c.put(
        "/drives/rootfs",
        &format!(r#"{{"drive_id": "rootfs", "path_on_host": "{img}", "is_root_device": false}}"#),
    ));
    ok(c.put(
        "/pmem/p0",
        &pmem_body("p0", &file, r#", "root_device": true"#),
    ));
    bad(
        c.put(
            "/pmem/p1",
            &pmem_body("p1", &file, r#", "root_device": true"#),
        ),
        "Pmem config error: A root pmem device already exist",
    );
    bad(
        c.put(
            "/drives/rootfs",
            &format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{img}", "is_root_device": true}}"#
            ),
        ),
        "Drive config error: Attempt to add block as a root device while the root device \
         defined as a pmem device",
    );
    // GET /vm/config has it as it was put.
    let config = c.get("/vm/config").json();
    assert_eq!(config["pmem"][0]["root_device"], true);
    assert_eq!(config["pmem"][0]["read_only"], false);
    drop(c);
    drop(vm);

    let vm = Vireo::start("pmem2", &[]);
    let mut c = vm.client();
    let file = vm.path("pmem.img");
    pmem_file(&file);
    ok(c.put("/pmem/p0", &pmem_body("p0", &file, "")));
    let config = c.get("/vm/config").json();
    assert_eq!(
        config["pmem"],
        serde_json::json!([{"id": "p0", "path_on_host": file, "root_device": false,
                            "read_only": false}])
    );
    let metrics = vm.path("metrics.json");
    ok(c.put("/metrics", &format!(r#"{{"metrics_path": "{metrics}"}}"#)));
    let serial = vm.path("serial");
    // 32 MiB: the region is at 4 GiB, where the guest finds it from the config space.
    boot_guest(&mut c, test_guests::VIRTIO_PMEM, &serial);
    let expected = test_guests::expected::virtio_pmem(4 << 30, 4 << 20, b"vireo pmem head!", true);
    wait_until("the pmem guest's end", || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.ends_with("flush ok\n"))
    });
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), expected);
    let after = std::fs::read(&file).unwrap();
    let at = test_guests::VIRTIO_PMEM_MARK_OFFSET as usize;
    assert_eq!(&after[at..at + 16], test_guests::VIRTIO_PMEM_MARK);
    assert_eq!(&after[..at], &before[..at]);

    // The guest resets: the VM stops and the last metrics line has the device's work.
    let mut vm = vm;
    let status = wait_exit(&mut vm, Duration::from_secs(20));
    assert_eq!(status, Some(0));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sum = |group: &str, field: &str| -> u64 {
        lines
            .iter()
            .map(|l| l[group][field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("pmem_p0", "queue_event_count"), 1, "{text}");
    assert_eq!(sum("pmem", "queue_event_count"), 1, "{text}");
    assert_eq!(sum("pmem_p0", "event_fails"), 0, "{text}");
    assert_eq!(sum("put_api_requests", "pmem_count"), 1, "{text}");
}

/// Wait for the vireo process to end; its exit code.
fn wait_exit(vm: &mut Vireo, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "vireo did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pmem_file_that_cannot_be_mapped_fails_instance_start_and_the_api_goes_on() {
    let vm = Vireo::start("pmem-bad", &[]);
    let mut c = vm.client();
    // As Firecracker: PUT /pmem does not open the file; InstanceStart does.
    let missing = vm.path("missing.img");
    ok(c.put("/pmem/p0", &pmem_body("p0", &missing, "")));
    let kernel = test_guests::path(test_guests::IDLE);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    ));
    bad(
        c.put("/actions", r#"{"action_type": "InstanceStart"}"#),
        "Start microvm error: Cannot create pmem device p0: Error accessing backing file",
    );
    let empty = vm.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    ok(c.put("/pmem/p0", &pmem_body("p0", &empty, "")));
    bad(
        c.put("/actions", r#"{"action_type": "InstanceStart"}"#),
        "Cannot create pmem device p0: Error backing file size is 0",
    );
    assert_eq!(c.get("/").json()["state"], "Not started");
}

/// Boot the idle guest (it never touches the device) with pmem `p0` on `file` and
/// `extra` fields.
fn boot_idle_with_pmem(c: &mut Client, file: &str, extra: &str, serial: &str) {
    ok(c.put("/pmem/p0", &pmem_body("p0", file, extra)));
    boot_guest(c, test_guests::IDLE, serial);
}

#[test]
fn pmem_limits_change_at_runtime_and_snapshots_reopen_the_file_at_the_same_place() {
    let first = Vireo::start("pmem-snap-a", &[]);
    let mut c = first.client();
    let file = first.path("pmem.img");
    pmem_file(&file);
    let serial = first.path("serial");
    boot_idle_with_pmem(
        &mut c,
        &file,
        r#", "read_only": true, "rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}"#,
        &serial,
    );
    assert_eq!(c.get("/").json()["state"], "Running");

    // After the start: PUT refused, PATCH merged as Firecracker merges limiters.
    bad(
        c.put("/pmem/p1", &pmem_body("p1", &file, "")),
        "The requested operation is not supported after starting the microVM.",
    );
    ok(c.patch(
        "/pmem/p0",
        r#"{"id": "p0", "rate_limiter": {"bandwidth": {"size": 8388608, "refill_time": 1000}}}"#,
    ));
    let limiter = c.get("/vm/config").json()["pmem"][0]["rate_limiter"].clone();
    assert_eq!(
        limiter,
        serde_json::json!({"bandwidth": {"size": 8388608, "refill_time": 1000},
                           "ops": {"size": 10, "refill_time": 1000}})
    );
    ok(c.patch("/pmem/p0", r#"{"id": "p0"}"#));
    bad(
        c.patch("/pmem/nope", r#"{"id": "nope"}"#),
        "Unable to patch the pmem device",
    );
    // A bucket with a zero refill_time removes that limit.
    ok(c.patch(
        "/pmem/p0",
        r#"{"id": "p0", "rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}"#,
    ));
    let limiter = c.get("/vm/config").json()["pmem"][0]["rate_limiter"].clone();
    assert_eq!(
        limiter,
        serde_json::json!({"bandwidth": {"size": 8388608, "refill_time": 1000}})
    );

    // Snapshot, then a new process loads it: the same file, at the same place.
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let state = first.path("vm.state");
    let mem = first.path("vm.mem");
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#),
    ));
    let mem_len = std::fs::metadata(&mem).unwrap().len();
    assert_eq!(mem_len, 32 << 20, "guest RAM only, not the pmem region");

    let load = |name: &str| {
        let vm = Vireo::start(name, &[]);
        let mut c = vm.client();
        let r = c.put(
            "/snapshot/load",
            &format!(
                r#"{{"snapshot_path": "{state}", "mem_backend": {{"backend_type": "File", "backend_path": "{mem}"}}, "resume_vm": true}}"#
            ),
        );
        (vm, c, r)
    };
    let (_second, mut c2, r) = load("pmem-snap-b");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c2.get("/").json()["state"], "Running");
    let pmem = c2.get("/vm/config").json()["pmem"].clone();
    assert_eq!(pmem[0]["path_on_host"], file);
    assert_eq!(pmem[0]["read_only"], true);
    assert_eq!(pmem[0]["rate_limiter"], limiter);
    ok(c2.patch("/vm", r#"{"state": "Paused"}"#));

    // The file grew past its 2 MiB boundary: the region would not be the same.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(5 << 20)
        .unwrap();
    let (third, mut c3, r) = load("pmem-snap-c");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.fault()
            .contains("the snapshot's region was 0x400000 bytes at 0x100000000"),
        "{}",
        r.fault()
    );
    assert_eq!(c3.get("/").json()["state"], "Not started");
    drop(third);
    // The file went away.
    std::fs::remove_file(&file).unwrap();
    let (_fourth, _, r) = load("pmem-snap-d");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.fault().contains("Error accessing backing file"),
        "{}",
        r.fault()
    );
}

#[test]
fn a_config_file_with_a_root_pmem_device_names_it_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("vireo-pmem-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("root.img").display().to_string();
    pmem_file(&file);
    let serial = dir.join("serial").display().to_string();
    let kernel = test_guests::path(test_guests::HELLO_PVH);
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "serial": {"serial_out_path": serial},
        "pmem": [{"id": "rootfs", "path_on_host": file, "root_device": true, "read_only": true}]
    });
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let run = common::finish(
        common::vireo(&["--no-api", "--config-file", cfg.to_str().unwrap()])
            .spawn()
            .unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let printed = std::fs::read_to_string(&serial).unwrap();
    assert!(
        printed.contains(
            "cmdline: console=ttyS0 root=/dev/pmem0 ro virtio_mmio.device=4K@0xd0000000:5"
        ),
        "{printed}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
