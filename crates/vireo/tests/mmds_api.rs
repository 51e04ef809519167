//! The metadata service through Firecracker's API: `/mmds` (the document: PUT, PATCH as
//! RFC 7396, GET, the size limit's 413, before and after boot), `/mmds/config` (NICs that
//! exist, a link-local address, pre-boot only, V1's `Deprecation` header), `--metadata`
//! and `--mmds-size-limit`, and the `mmds` request counters in the metrics. What the guest
//! reads over its NIC is tested with Linux's own TCP (crates/net/tests/mmds_tap.rs) and a
//! Linux guest (linux_guest.rs).

mod common;

use std::path::Path;
use std::process::Stdio;

use common::http::{Client, Vireo, bad, boot_guest, ok};
use serde_json::json;
use test_support::netns::Netns;
use test_support::require;

#[test]
fn the_document_before_and_after_boot_within_its_limit() {
    let dir = std::env::temp_dir().join(format!("vireo-mmds-meta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let metadata = dir.join("metadata.json");
    std::fs::write(
        &metadata,
        r#"{"latest": {"meta-data": {"ami-id": "ami-1"}}}"#,
    )
    .unwrap();
    let vm = Vireo::start(
        "mmds-doc",
        &[
            "--metadata",
            metadata.to_str().unwrap(),
            "--mmds-size-limit",
            "200",
        ],
    );
    let mut c = vm.client();
    let metrics = vm.path("metrics");
    ok(c.put("/metrics", &format!(r#"{{"metrics_path": "{metrics}"}}"#)));
    assert_eq!(
        c.get("/mmds").json(),
        json!({"latest": {"meta-data": {"ami-id": "ami-1"}}}),
        "--metadata is the document at start"
    );
    ok(c.patch(
        "/mmds",
        r#"{"latest": {"meta-data": {"ami-id": "ami-2", "new": "x"}}, "user-data": "u"}"#,
    ));
    ok(c.patch("/mmds", r#"{"latest": {"meta-data": {"new": null}}}"#));
    assert_eq!(
        c.get("/mmds").json(),
        json!({"latest": {"meta-data": {"ami-id": "ami-2"}}, "user-data": "u"})
    );
    let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(300));
    let r = c.put("/mmds", &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.fault().contains("limit"), "{}", r.body);
    let r = c.patch("/mmds", &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(c.get("/mmds").json()["user-data"], "u", "unchanged");
    bad(c.put("/mmds", "[1, 2"), "deserializing");

    boot_guest(&mut c, test_guests::COUNT, &vm.path("serial"));
    ok(c.put("/mmds", r#"{"after": "boot"}"#));
    assert_eq!(c.get("/mmds").json(), json!({"after": "boot"}));
    bad(
        c.put("/mmds/config", r#"{"network_interfaces": ["eth0"]}"#),
        "not supported after starting",
    );

    ok(c.put("/actions", r#"{"action_type": "FlushMetrics"}"#));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let mut put = 0;
    let mut patch = (0, 0);
    let mut get = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        put += v["put_api_requests"]["mmds_count"].as_u64().unwrap();
        patch.0 += v["patch_api_requests"]["mmds_count"].as_u64().unwrap();
        patch.1 += v["patch_api_requests"]["mmds_fails"].as_u64().unwrap();
        get += v["get_api_requests"]["mmds_count"].as_u64().unwrap();
        assert!(v["mmds"]["rx_accepted"].is_u64(), "the mmds group: {line}");
    }
    // PUTs: the 413, the unparsable one is refused before the VMM, the post-boot one
    // and the refused /mmds/config.
    assert_eq!(put, 3);
    assert_eq!(patch, (3, 1));
    assert_eq!(get, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_patch_before_any_document_and_bad_metadata_are_refused() {
    let vm = Vireo::start("mmds-empty", &[]);
    let mut c = vm.client();
    assert_eq!(c.get("/mmds").json(), json!({}));
    bad(c.patch("/mmds", r#"{"a": 1}"#), "not initialized");
    ok(c.put("/mmds", r#"{"a": 1}"#));
    ok(c.patch("/mmds", r#"{"a": 2}"#));
    assert_eq!(c.get("/mmds").json(), json!({"a": 2}));
    drop(c);
    drop(vm);

    let bad_json = std::env::temp_dir().join(format!("vireo-mmds-bad-{}", std::process::id()));
    std::fs::write(&bad_json, "{not json").unwrap();
    let sock = std::env::temp_dir().join(format!("vireo-mmds-bad-{}.sock", std::process::id()));
    let sock = sock.to_str().unwrap();
    let run = common::run(&["--api-sock", sock, "--metadata", bad_json.to_str().unwrap()]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("--metadata"), "{}", run.stderr);
    let run = common::run(&[
        "--api-sock",
        sock,
        "--metadata",
        "/nonexistent/metadata.json",
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("/nonexistent/metadata.json"),
        "{}",
        run.stderr
    );
    let _ = std::fs::remove_file(&bad_json);
}

#[test]
fn mmds_config_names_existing_nics_and_v1_is_deprecated() {
    let ns = require!(
        "mmds_config_names_existing_nics_and_v1_is_deprecated",
        Netns::new("mmdscfg")
    );
    let dir = std::env::temp_dir().join(format!("vireo-mmds-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let mut child = ns
        .command(env!("CARGO_BIN_EXE_vireo"))
        .args(["--api-sock", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start vireo in the namespace");
    let mut c = Client::connect(Path::new(&sock));

    bad(
        c.put("/mmds/config", r#"{"network_interfaces": ["eth0"]}"#),
        "does not correspond to any existing network interface",
    );
    ok(c.put(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "vtap-mmds"}"#,
    ));
    bad(
        c.put("/mmds/config", r#"{"network_interfaces": []}"#),
        "empty",
    );
    bad(
        c.put(
            "/mmds/config",
            r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#,
        ),
        "link local",
    );
    bad(
        c.put(
            "/mmds/config",
            r#"{"network_interfaces": ["eth0"], "version": "V3"}"#,
        ),
        "deserializing",
    );
    let r = c.put("/mmds/config", r#"{"network_interfaces": ["eth0"]}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(r.head.contains("\r\nDeprecation: true"), "V1: {}", r.head);
    let r = c.put(
        "/mmds/config",
        r#"{"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2"}"#,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(!r.head.contains("Deprecation"), "V2: {}", r.head);
    let config = c.get("/vm/config").json();
    assert_eq!(
        config["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": false})
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
