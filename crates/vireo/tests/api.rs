//! The Firecracker-compatible API, against the real `vireo` binary over its Unix socket:
//! each endpoint's success and errors, out-of-order calls, malformed and oversized bodies,
//! and a tiny guest started, paused and resumed through the API.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::http::{Vireo, bad, ok};

fn count_guest() -> String {
    test_guests::path(test_guests::COUNT).display().to_string()
}

#[test]
fn info_version_and_machine_config_before_boot() {
    let vm = Vireo::start("info", &["--id", "vm_one"]);
    let mut c = vm.client();
    let info = c.get("/").json();
    assert_eq!(info["state"], "Not started");
    assert_eq!(
        info["started"], false,
        "Firecracker 0.2x's field, which Kata polls"
    );
    assert_eq!(info["id"], "vm_one");
    assert_eq!(info["app_name"], "Vireo");
    assert_eq!(
        c.get("/version").json()["firecracker_version"],
        api::firecracker::FIRECRACKER_API_VERSION
    );
    let mc = c.get("/machine-config").json();
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );

    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    ));
    ok(c.patch("/machine-config", r#"{"mem_size_mib": 512}"#));
    let mc = c.get("/machine-config").json();
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(2), Some(512))
    );
    bad(
        c.put(
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 256}"#,
        ),
        "vCPU number",
    );
    bad(
        c.put("/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 8}"#),
        "memory size",
    );
    bad(
        c.put(
            "/machine-config",
            r#"{"vcpu_count": 3, "mem_size_mib": 256, "smt": true}"#,
        ),
        "with SMT, 1 or an even number",
    );
    bad(
        c.put("/machine-config", r#"{"vcpu_count": 1}"#),
        "missing field `mem_size_mib`",
    );
    bad(c.patch("/machine-config", "{}"), "Empty PATCH request.");
    assert_eq!(c.get("/machine-config").json()["mem_size_mib"], 512);
    // SMT as Firecracker has it on x86 (firecracker-rs-sdk's tests ask for it).
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": true}"#,
    ));
    assert_eq!(c.get("/machine-config").json()["smt"], true);
    assert_eq!(c.get("/vm/config").json()["machine-config"]["smt"], true);
}

/// Firecracker keeps every connection open, HTTP/1.0 ones too, and clients count on it:
/// firecracker-rs-sdk sends all its HTTP/1.0 requests on one connection.
#[test]
fn http_1_0_requests_share_one_connection_as_with_firecracker() {
    let vm = Vireo::start("http10", &[]);
    let mut c = vm.client();
    for _ in 0..3 {
        let r = c.raw(b"GET /version HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let body = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;
    let r = c.raw(
        format!(
            "PUT /machine-config HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(c.get("/machine-config").json()["mem_size_mib"], 64);

    // A client that asks for the connection to be closed gets that.
    let mut once = vm.client();
    let r = once.raw(b"GET /version HTTP/1.0\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut once.stream, &mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn every_preboot_resource_and_its_errors() {
    // PUT /network-interfaces opens the TAP, as Firecracker's does: root's (CAP_NET_ADMIN).
    test_support::require!(
        "every_preboot_resource_and_its_errors",
        test_support::skip::root()
    );
    let tap = format!("vtp{}", std::process::id() % 100_000);
    let vm = Vireo::start("preboot", &[]);
    let mut c = vm.client();
    bad(
        c.put("/boot-source", r#"{"kernel_image_path": "/nonexistent/k"}"#),
        "cannot be opened",
    );
    let kernel = count_guest();
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}}"#),
    ));

    let img = vm.path("root.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let drive = |id: &str, root: bool| {
        format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{img}", "is_root_device": {root}, "is_read_only": false,
                    "rate_limiter": {{"bandwidth": {{"size": 1048576, "refill_time": 1000}}}}}}"#
        )
    };
    ok(c.put("/drives/rootfs", &drive("rootfs", true)));
    bad(
        c.put("/drives/other", &drive("other", true)),
        "A root block device already exists!",
    );
    bad(
        c.put("/drives/other", &drive("rootfs", false)),
        "does not match",
    );
    bad(c.put("/drives/a-b", &drive("a-b", false)), "alphanumeric");
    bad(
        c.put("/drives/x", r#"{"drive_id": "x", "is_root_device": false}"#),
        "path_on_host is required",
    );
    // The host file is opened here, as Firecracker does (not at InstanceStart).
    bad(
        c.put(
            "/drives/x",
            r#"{"drive_id": "x", "path_on_host": "foo.bar", "is_root_device": false}"#,
        ),
        "Unable to create the block device: cannot open foo.bar",
    );
    assert!(
        c.get("/vm/config").json()["drives"]
            .as_array()
            .unwrap()
            .len()
            == 1
    );
    bad(
        c.patch("/drives/rootfs", r#"{"drive_id": "rootfs"}"#),
        "before starting",
    );

    ok(c.put(
        "/network-interfaces/eth0",
        &format!(
            r#"{{"iface_id": "eth0", "host_dev_name": "{tap}", "guest_mac": "06:00:ac:10:00:02"}}"#
        ),
    ));
    // The TAP is opened here too: `lo` is no TAP.
    bad(
        c.put(
            "/network-interfaces/eth1",
            r#"{"iface_id": "eth1", "host_dev_name": "lo"}"#,
        ),
        "Could not create the network device",
    );
    // Any guest MAC Firecracker takes, a multicast one included.
    ok(c.put(
        "/network-interfaces/eth2",
        r#"{"iface_id": "eth2", "host_dev_name": "lo2x", "guest_mac": "07:00:00:00:00:01"}"#,
    ));
    bad(
        c.put(
            "/network-interfaces/eth1",
            r#"{"iface_id": "eth1", "host_dev_name": "vtap1", "guest_mac": "06:00:ac:10:00:02"}"#,
        ),
        "already in use",
    );
    bad(
        c.put(
            "/network-interfaces/eth1",
            r#"{"iface_id": "eth1", "host_dev_name": "vtap1", "guest_mac": "zz"}"#,
        ),
        "not a MAC",
    );
    bad(
        c.patch("/network-interfaces/eth0", r#"{"iface_id": "eth0"}"#),
        "before starting",
    );

    let uds = vm.path("v.sock");
    ok(c.put(
        "/vsock",
        &format!(r#"{{"guest_cid": 3, "uds_path": "{uds}"}}"#),
    ));
    bad(
        c.put(
            "/vsock",
            &format!(r#"{{"guest_cid": 2, "uds_path": "{uds}"}}"#),
        ),
        "guest_cid",
    );
    ok(c.put("/entropy", "{}"));
    bad(
        c.put(
            "/entropy",
            r#"{"rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}"#,
        ),
        "refill_time",
    );

    bad(c.get("/balloon"), "No balloon device found.");
    ok(c.put(
        "/balloon",
        r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
    ));
    assert_eq!(c.get("/balloon").json()["amount_mib"], 16);
    bad(
        c.put("/balloon", r#"{"amount_mib": 999, "deflate_on_oom": true}"#),
        "cannot hold",
    );
    bad(
        c.patch("/balloon", r#"{"amount_mib": 1}"#),
        "before starting",
    );
    bad(c.get("/balloon/statistics"), "before starting");
    bad(
        c.patch("/balloon/statistics", r#"{"stats_polling_interval_s": 2}"#),
        "before starting",
    );

    let log = vm.path("log");
    ok(c.put(
        "/logger",
        &format!(r#"{{"log_path": "{log}", "level": "debug", "show_level": true}}"#),
    ));
    bad(c.put("/logger", r#"{"level": "loud"}"#), "unknown level");
    let metrics = vm.path("metrics");
    ok(c.put("/metrics", &format!(r#"{{"metrics_path": "{metrics}"}}"#)));
    bad(
        c.put("/metrics", &format!(r#"{{"metrics_path": "{metrics}"}}"#)),
        "Reinitialization",
    );
    ok(c.put(
        "/serial",
        &format!(r#"{{"serial_out_path": "{}"}}"#, vm.path("serial")),
    ));
    bad(
        c.put(
            "/serial",
            r#"{"rate_limiter": {"size": 1, "refill_time": 0}}"#,
        ),
        "refill_time",
    );

    bad(
        c.put("/actions", r#"{"action_type": "FlushMetrics"}"#),
        "before starting",
    );
    bad(
        c.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        "before starting",
    );
    bad(c.patch("/vm", r#"{"state": "Paused"}"#), "before starting");
    bad(
        c.put(
            "/snapshot/create",
            r#"{"snapshot_path": "s", "mem_file_path": "m"}"#,
        ),
        "not supported before starting the microVM",
    );
    bad(
        c.put(
            "/snapshot/load",
            r#"{"snapshot_path": "s", "mem_file_path": "m"}"#,
        ),
        "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
    );

    // GET /vm/config shows it all, in the shape --config-file takes.
    let config = c.get("/vm/config").json();
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"],
        tap.as_str()
    );
    assert_eq!(
        config["network-interfaces"][1]["guest_mac"],
        "07:00:00:00:00:01"
    );
    assert_eq!(config["vsock"]["guest_cid"], 3);
    assert_eq!(config["balloon"]["stats_polling_interval_s"], 1);
    assert_eq!(config["logger"]["level"], "Debug");
    assert!(config["entropy"].is_object());
    assert_eq!(config["boot-source"]["boot_args"], "console=ttyS0");
    assert!(c.get("/").json()["state"] == "Not started");
}

#[test]
fn malformed_requests_never_crash_the_server() {
    let vm = Vireo::start("malformed", &[]);
    let mut c = vm.client();
    bad(
        c.get("/nope"),
        "Invalid request method and/or path: GET nope.",
    );
    bad(
        c.request("DELETE", "/vm", None),
        "Invalid request method and/or path",
    );
    bad(
        c.request("DELETE", "/mmds", None),
        "Invalid request method and/or path: DELETE mmds.",
    );
    bad(c.request("PUT", "/vsock", None), "Empty PUT request.");
    bad(
        c.request("GET", "/", Some("{}")),
        "GET request cannot have a body.",
    );
    bad(
        c.put("/machine-config", "{not json"),
        "deserializing the json body",
    );
    bad(
        c.put(
            "/machine-config",
            r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
        ),
        "invalid type",
    );
    bad(
        c.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "colour": 1}"#,
        ),
        "unknown field `colour`",
    );
    bad(
        c.put("/actions", r#"{"action_type": "Reboot"}"#),
        "unknown variant",
    );
    bad(c.put("/boot-source", "\u{1}\u{2}"), "deserializing");

    // Still serving on the same connection after every error above.
    assert_eq!(c.get("/").status, 200);

    // An oversized body is refused before it is read; the connection is closed.
    let mut big = vm.client();
    let body = format!(r#"{{"kernel_image_path": "{}"}}"#, "a".repeat(60_000));
    let r = big.raw(
        format!(
            "PUT /boot-source HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.fault().contains("is larger than the limit of 51200"),
        "{}",
        r.body
    );

    // Garbage that is not HTTP at all.
    let mut junk = vm.client();
    let r = junk.raw(b"\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(r.status, 400);

    // A body over 1 KiB sent after "Expect: 100-continue" is served.
    let mut cont = vm.client();
    let body = format!(
        r#"{{"kernel_image_path": "/nonexistent/{}"}}"#,
        "k".repeat(2000)
    );
    cont.stream
        .write_all(
            format!(
                "PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let interim = cont.read_reply();
    assert_eq!(interim.status, 100);
    cont.stream.write_all(body.as_bytes()).unwrap();
    bad(cont.read_reply(), "cannot be opened");

    // A second client while the first is idle and kept alive.
    assert_eq!(vm.client().get("/version").status, 200);
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn instance_start_pause_resume_and_post_boot_refusals() {
    let vm = Vireo::start("start", &[]);
    let mut c = vm.client();
    bad(
        c.put("/actions", r#"{"action_type": "InstanceStart"}"#),
        "Cannot start microvm without kernel configuration.",
    );
    let serial = vm.path("serial");
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, count_guest()),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    ));
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    ok(c.put("/balloon", r#"{"amount_mib": 0, "deflate_on_oom": false}"#));
    ok(c.put(
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, vm.path("metrics")),
    ));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
    assert_eq!(c.get("/").json()["state"], "Running");
    assert_eq!(c.get("/").json()["started"], true);

    // Pre-boot calls after the start.
    for (method, path, body) in [
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        ),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 2}"#),
        ("PUT", "/boot-source", r#"{"kernel_image_path": "/k"}"#),
        (
            "PUT",
            "/drives/d",
            r#"{"drive_id": "d", "path_on_host": "/d", "is_root_device": false}"#,
        ),
        (
            "PUT",
            "/network-interfaces/e",
            r#"{"iface_id": "e", "host_dev_name": "t"}"#,
        ),
        ("PUT", "/vsock", r#"{"guest_cid": 3, "uds_path": "/v"}"#),
        ("PUT", "/entropy", "{}"),
        (
            "PUT",
            "/balloon",
            r#"{"amount_mib": 0, "deflate_on_oom": false}"#,
        ),
        ("PUT", "/logger", "{}"),
        ("PUT", "/metrics", r#"{"metrics_path": "/m"}"#),
        ("PUT", "/serial", "{}"),
    ] {
        bad(
            c.request(method, path, Some(body)),
            "not supported after starting the microVM",
        );
    }

    // Runtime calls.
    assert_eq!(c.get("/balloon").json()["amount_mib"], 0);
    ok(c.patch("/balloon", r#"{"amount_mib": 4}"#));
    assert_eq!(c.get("/balloon").json()["amount_mib"], 4);
    bad(c.patch("/balloon", r#"{"amount_mib": 64}"#), "cannot hold");
    bad(c.get("/balloon/statistics"), "not enabled");
    bad(
        c.patch("/balloon/statistics", r#"{"stats_polling_interval_s": 3}"#),
        "cannot be turned on or off",
    );
    bad(
        c.patch("/drives/nope", r#"{"drive_id": "nope"}"#),
        "Invalid block device ID!",
    );
    bad(
        c.patch("/network-interfaces/nope", r#"{"iface_id": "nope"}"#),
        "does not exist",
    );
    // The count guest never reads its keyboard: the keys wait in the i8042's buffer, which
    // holds two presses of the three keys; a third is refused.
    ok(c.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#));
    ok(c.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#));
    bad(
        c.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        "keyboard buffer is full",
    );
    ok(c.put("/actions", r#"{"action_type": "FlushMetrics"}"#));
    let text = std::fs::read_to_string(vm.path("metrics")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "one line at InstanceStart, one flushed: {text}"
    );
    // InstanceStart refused (no boot source), then accepted.
    assert_eq!(lines[0]["put_api_requests"]["actions_count"], 2);
    assert_eq!(lines[0]["put_api_requests"]["actions_fails"], 1);
    let flushed = &lines[1];
    // InstanceStart again (refused) and three SendCtrlAltDel (the last refused).
    assert_eq!(flushed["put_api_requests"]["actions_count"], 4);
    assert_eq!(flushed["put_api_requests"]["actions_fails"], 2);
    assert!(flushed["patch_api_requests"]["drive_count"].as_u64() == Some(1));
    // The guest writes its debug port (counted in the lines' vcpu group); on a loaded
    // host its vCPU may not have run yet at the first flush: flush until it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    let exits = |text: &str| -> u64 {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v["vcpu"]["exit_io_out"].as_u64().unwrap())
            .sum()
    };
    while exits(&std::fs::read_to_string(vm.path("metrics")).unwrap()) == 0 {
        assert!(
            Instant::now() < deadline,
            "the guest never wrote its debug port"
        );
        std::thread::sleep(Duration::from_millis(100));
        ok(c.put("/actions", r#"{"action_type": "FlushMetrics"}"#));
    }
    assert!(
        flushed["api_server"]["process_startup_time_us"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Pause: the counting guest prints nothing more; resume: it goes on.
    let size = || std::fs::metadata(&serial).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    while size() == 0 {
        assert!(Instant::now() < deadline, "the guest printed nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    assert_eq!(c.get("/").json()["state"], "Paused");
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let paused_at = size();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(size(), paused_at, "the guest ran while paused");
    ok(c.patch("/vm", r#"{"state": "Resumed"}"#));
    assert_eq!(c.get("/").json()["state"], "Running");
    let deadline = Instant::now() + Duration::from_secs(20);
    while size() == paused_at {
        assert!(
            Instant::now() < deadline,
            "the guest did not go on after resume"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bad(c.patch("/vm", r#"{"state": "Running"}"#), "unknown variant");
}

/// Free page hinting's endpoints: runtime only; on a running VM they need a balloon
/// configured with free_page_hinting, and start and stop need its driver to have started
/// the device (the count guest has none), while the status answers at once.
#[test]
fn balloon_hinting_endpoints_and_their_refusals() {
    let paths = [
        ("PATCH", "/balloon/hinting/start", None),
        (
            "PATCH",
            "/balloon/hinting/start",
            Some(r#"{"acknowledge_on_stop": false}"#),
        ),
        ("GET", "/balloon/hinting/status", None),
        ("PATCH", "/balloon/hinting/stop", None),
        ("PATCH", "/balloon/hinting/stop", Some("{}")),
    ];
    let vm = Vireo::start("hinting", &[]);
    let mut c = vm.client();
    for (method, path, body) in paths {
        bad(
            c.request(method, path, body),
            "not supported before starting",
        );
    }
    ok(c.put(
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true}"#,
    ));
    assert_eq!(c.get("/balloon").json()["free_page_hinting"], true);
    for (method, path, body) in paths {
        bad(
            c.request(method, path, body),
            "not supported before starting",
        );
    }
    common::http::boot_guest(&mut c, test_guests::COUNT, &vm.path("serial"));
    assert_eq!(c.get("/balloon").json()["free_page_hinting"], true);
    assert_eq!(
        c.get("/vm/config").json()["balloon"]["free_page_hinting"],
        true
    );
    let status = c.get("/balloon/hinting/status");
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(
        status.json(),
        serde_json::json!({ "host_cmd": 0, "guest_cmd": null })
    );
    for (method, path, body) in paths {
        if path.ends_with("status") {
            continue;
        }
        bad(c.request(method, path, body), "Device not activated yet");
    }
    bad(
        c.patch(
            "/balloon/hinting/start",
            r#"{"acknowledge_on_stop": "yes"}"#,
        ),
        "deserializing the json body",
    );
    bad(
        c.patch("/balloon/hinting/stop", r#"{"now": true}"#),
        "unknown field",
    );
    bad(
        c.request("POST", "/balloon/hinting/start", Some("{}")),
        "Invalid request method and/or path",
    );
    assert_eq!(c.get("/balloon/hinting/status").json()["host_cmd"], 0);
    drop(vm);

    // A balloon without hinting, and no balloon at all.
    for (name, balloon, needle) in [
        (
            "hinting-off",
            Some(r#"{"amount_mib": 0, "deflate_on_oom": false}"#),
            "Attempting to use hinting when not enabled",
        ),
        ("hinting-none", None, "No balloon device found."),
    ] {
        let vm = Vireo::start(name, &[]);
        let mut c = vm.client();
        if let Some(b) = balloon {
            ok(c.put("/balloon", b));
        }
        common::http::boot_guest(&mut c, test_guests::COUNT, &vm.path("serial"));
        for (method, path, body) in paths {
            bad(c.request(method, path, body), needle);
        }
    }
}

#[test]
fn config_file_round_trip_and_no_api_boot() {
    // Configure through the API and read GET /vm/config back...
    let vm = Vireo::start("roundtrip", &[]);
    let mut c = vm.client();
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, count_guest()),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    ));
    ok(c.put("/entropy", "{}"));
    ok(c.put("/balloon", r#"{"amount_mib": 0, "deflate_on_oom": true}"#));
    let serial = vm.path("serial");
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    let exported = c.get("/vm/config").body;
    let file = vm.path("config.json");
    std::fs::write(&file, &exported).unwrap();

    // ...boot a second vireo from it at once: it runs, with the same config.
    let api = vm.path("second.sock");
    let second = common::vireo(&["--api-sock", &api, "--config-file", &file])
        .spawn()
        .unwrap();
    let second = Vireo {
        child: second,
        sock: PathBuf::from(&api),
        dir: vm.dir.join("unused"),
    };
    let mut c2 = second.client();
    assert_eq!(c2.get("/").json()["state"], "Running");
    assert_eq!(c2.get("/vm/config").body, exported);
    drop(second);

    // --no-api: a guest that resets at once; vireo exits 0 as `vireo run` does.
    let hello = test_guests::path(test_guests::HELLO64)
        .display()
        .to_string();
    let text = exported.replace(&count_guest(), &hello);
    std::fs::write(&file, text).unwrap();
    let _ = std::fs::remove_file(&serial);
    let run = common::finish(
        common::vireo(&["--no-api", "--config-file", &file])
            .spawn()
            .unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let printed = std::fs::read_to_string(&serial).unwrap();
    assert!(
        printed.contains(test_guests::expected::HELLO64),
        "{printed}"
    );

    // A bad file is refused with exit 1 and a message naming the problem.
    std::fs::write(
        &file,
        r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "x": 1}}"#,
    )
    .unwrap();
    let run = common::run(&["--no-api", "--config-file", &file]);
    assert_eq!(run.code(), Some(1));
    assert!(run.stderr.contains("unknown field `x`"), "{}", run.stderr);
}

#[test]
fn flags_are_checked() {
    let run = common::run(&["--no-api"]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let run = common::run(&["--api-sock", "/tmp/x.sock", "probe-kvm"]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr.contains("without a subcommand"),
        "{}",
        run.stderr
    );
    let run = common::run(&["--metrics-path", "/tmp/m", "probe-kvm"]);
    assert_eq!(run.code(), Some(1));
    assert!(run.stderr.contains("Firecracker's flags"), "{}", run.stderr);
    // What Vireo lacks is refused, not ignored, before anything starts.
    for (flags, why) in [
        (&["--seccomp-filter", "/f"][..], "does not install seccomp"),
        (&["--metadata", "/m.json"][..], "--metadata /m.json"),
        (&["--enable-pci"][..], "no PCI"),
        (&["--level", "loud"][..], "invalid log level"),
    ] {
        let run = common::run(&[&["--api-sock", "/tmp/never.sock"], flags].concat());
        assert_eq!(run.code(), Some(1), "{flags:?}: {}", run.stderr);
        assert!(run.stderr.contains(why), "{flags:?}: {}", run.stderr);
        assert!(!std::path::Path::new("/tmp/never.sock").exists());
    }
}

#[test]
fn with_no_arguments_the_api_is_on_firecrackers_socket() {
    let sock = std::path::Path::new("/run/firecracker.socket");
    test_support::require!(
        "with_no_arguments_the_api_is_on_firecrackers_socket",
        !sock.exists() && std::path::Path::new("/run").is_dir(),
        "{} is taken (or there is no /run)",
        sock.display()
    );
    let mut child = common::vireo(&[]).spawn().expect("start vireo");
    let start = std::time::Instant::now();
    while !sock.exists() {
        if start.elapsed() > std::time::Duration::from_secs(10)
            || child.try_wait().unwrap().is_some()
        {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("no socket: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let info = common::http::Client::connect(sock).get("/").json();
    assert_eq!(info["id"], "anonymous-instance");
    // SAFETY: kill(2) on the child we started and still own.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!sock.exists(), "the socket is removed at exit");
}

/// Microseconds of CLOCK_MONOTONIC, as Firecracker's jailer passes `--start-time-us`.
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[test]
fn firecrackers_flags_log_measure_and_time_the_boot_as_firecracker_does() {
    let dir = std::env::temp_dir().join(format!("vireo-fcflags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (log, metrics, sock) = (
        dir.join("fc.log"),
        dir.join("fc.metrics"),
        dir.join("api.sock"),
    );
    let started = (monotonic_us() - 3_000_000).to_string();
    let child = common::vireo(&[
        "--api-sock",
        sock.to_str().unwrap(),
        "--id",
        "fc-flags",
        "--log-path",
        log.to_str().unwrap(),
        "--level",
        "Info",
        "--show-level",
        "--show-log-origin",
        "--metrics-path",
        metrics.to_str().unwrap(),
        "--start-time-us",
        &started,
        "--start-time-cpu-us",
        "0",
        "--parent-cpu-time-us",
        "2000000",
        "--boot-timer",
        "--no-seccomp",
        "--mmds-size-limit",
        "51200",
        "--http-api-max-payload-size",
        "51200",
    ])
    .spawn()
    .expect("start vireo");
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut c = common::http::Client::connect(&sock);
    assert_eq!(c.get("/").json()["id"], "fc-flags");
    let serial = dir.join("serial").display().to_string();
    common::http::boot_guest(&mut c, test_guests::BOOT_TIMER, &serial);
    // The guest signals the boot timer and resets: the process ends on its own.
    let run = common::finish(child, std::time::Duration::from_secs(30));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("serial")).unwrap(),
        test_guests::expected::BOOT_TIMER
    );

    // Firecracker's line shape: local time to the nanosecond, [ID:THREAD:LEVEL:FILE:LINE].
    let logged = std::fs::read_to_string(&log).unwrap();
    let first = logged.lines().next().expect("a log line");
    let (stamp, rest) = first.split_once(' ').unwrap();
    let shape: String = stamp
        .chars()
        .map(|ch| if ch.is_ascii_digit() { '9' } else { ch })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999999999", "{first}");
    assert!(
        rest.starts_with("[fc-flags:main:INFO:crates/api-server/src/lib.rs:"),
        "{first}"
    );
    assert!(
        first.ends_with("] API server started."),
        "the first line: {first}"
    );
    for line in [
        "] API server started.",
        r#"] The API server received a Get request on "/"."#,
        r#"] The API server received a Put request on "/actions" with body "{\"action_type\": \"InstanceStart\"}"."#,
        "] Guest-boot-time = ",
    ] {
        assert!(logged.contains(line), "no {line:?} in:\n{logged}");
    }

    // The startup times count from the launcher's reference: 3 s before, and the
    // parent's 2 s of CPU added.
    let written = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(written.lines().next().expect("a metrics line")).unwrap();
    let api = &line["api_server"];
    assert!(
        api["process_startup_time_us"].as_u64().unwrap() >= 3_000_000,
        "{api}"
    );
    assert!(
        api["process_startup_time_cpu_us"].as_u64().unwrap() >= 2_000_000,
        "{api}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_before_boot_exits_cleanly_and_removes_the_socket() {
    let mut vm = Vireo::start("sigterm", &[]);
    assert_eq!(vm.client().get("/").status, 200);
    // SAFETY: kill(2) on the child we started and still own.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let status = vm.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!vm.sock.exists());
}
