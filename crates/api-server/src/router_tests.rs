use super::*;

use api::firecracker::{ConfigError, InstanceInfo};

fn ok(method: &str, path: &str, body: Option<&str>) -> VmmAction {
    route(method, path, body.map(str::as_bytes)).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn err(method: &str, path: &str, body: Option<&str>) -> String {
    match route(method, path, body.map(str::as_bytes)) {
        Ok(a) => panic!("{method} {path}: routed to {a:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_route_with_a_valid_body() {
    assert_eq!(ok("GET", "/", None), VmmAction::GetInstanceInfo);
    assert_eq!(ok("GET", "/version", None), VmmAction::GetVersion);
    assert_eq!(ok("GET", "/vm/config", None), VmmAction::GetFullVmConfig);
    assert_eq!(
        ok("GET", "/machine-config/", None),
        VmmAction::GetMachineConfig
    );
    assert_eq!(
        ok("GET", "/balloon/statistics", None),
        VmmAction::GetBalloonStats
    );
    assert!(matches!(
        ok("PUT", "/machine-config", Some(r#"{"vcpu_count":2,"mem_size_mib":256}"#)),
        VmmAction::PutMachineConfig(c) if c.vcpu_count == 2
    ));
    assert!(matches!(
        ok("PATCH", "/machine-config", Some(r#"{"vcpu_count":2}"#)),
        VmmAction::PatchMachineConfig(_)
    ));
    assert!(matches!(
        ok("PUT", "/boot-source", Some(r#"{"kernel_image_path":"/k"}"#)),
        VmmAction::PutBootSource(_)
    ));
    let template = r#"{"kvm_capabilities":["!56"],"cpuid_modifiers":[{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{"register":"ecx","bitmap":"0bx0xxxx"}]}]}"#;
    assert!(matches!(
        ok("PUT", "/cpu-config", Some(template)),
        VmmAction::PutCpuConfig(t) if t.cpuid_modifiers[0].modifiers[0].bitmap.mask == 1 << 4
    ));
    let drive = r#"{"drive_id":"root","path_on_host":"/r","is_root_device":true}"#;
    assert!(matches!(
        ok("PUT", "/drives/root", Some(drive)),
        VmmAction::PutDrive(_)
    ));
    assert!(matches!(
        ok("PATCH", "/drives/root", Some(r#"{"drive_id":"root"}"#)),
        VmmAction::PatchDrive(_)
    ));
    let pmem = r#"{"id":"p0","path_on_host":"/p","root_device":true,"read_only":true}"#;
    assert!(matches!(
        ok("PUT", "/pmem/p0", Some(pmem)),
        VmmAction::PutPmem(p) if p.root_device && p.read_only && p.path_on_host == "/p"
    ));
    assert!(matches!(
        ok(
            "PATCH",
            "/pmem/p0",
            Some(r#"{"id":"p0","rate_limiter":{"ops":{"size":1,"refill_time":1000}}}"#)
        ),
        VmmAction::PatchPmem(p) if p.rate_limiter.is_some()
    ));
    let nic = r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#;
    assert!(matches!(
        ok("PUT", "/network-interfaces/eth0", Some(nic)),
        VmmAction::PutNetworkInterface(_)
    ));
    assert!(matches!(
        ok(
            "PATCH",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id":"eth0"}"#)
        ),
        VmmAction::PatchNetworkInterface(_)
    ));
    assert!(matches!(
        ok("PUT", "/vsock", Some(r#"{"guest_cid":3,"uds_path":"/v"}"#)),
        VmmAction::PutVsock(_)
    ));
    assert!(matches!(
        ok("PUT", "/entropy", Some("{}")),
        VmmAction::PutEntropy(_)
    ));
    assert!(matches!(
        ok(
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib":1,"deflate_on_oom":false}"#)
        ),
        VmmAction::PutBalloon(_)
    ));
    assert!(matches!(
        ok("PATCH", "/balloon", Some(r#"{"amount_mib":1}"#)),
        VmmAction::PatchBalloon(_)
    ));
    assert!(matches!(
        ok(
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s":1}"#)
        ),
        VmmAction::PatchBalloonStats(_)
    ));
    for (action, expected) in [
        ("InstanceStart", VmmAction::InstanceStart),
        ("FlushMetrics", VmmAction::FlushMetrics),
        ("SendCtrlAltDel", VmmAction::SendCtrlAltDel),
    ] {
        let body = format!(r#"{{"action_type":"{action}"}}"#);
        assert_eq!(ok("PUT", "/actions", Some(&body)), expected);
    }
    assert_eq!(
        ok("PATCH", "/vm", Some(r#"{"state":"Paused"}"#)),
        VmmAction::Pause
    );
    assert_eq!(
        ok("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#)),
        VmmAction::Resume
    );
    assert_eq!(
        ok(
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Diff"}"#)
        ),
        VmmAction::CreateSnapshot(api::firecracker::SnapshotCreateParams {
            snapshot_path: "s".into(),
            mem_file_path: "m".into(),
            snapshot_type: api::firecracker::SnapshotType::Diff,
        })
    );
    let VmmAction::LoadSnapshot(load) = ok(
        "PUT",
        "/snapshot/load",
        Some(
            r#"{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}]}"#,
        ),
    ) else {
        panic!("not a load")
    };
    assert_eq!(
        load.memory_backend().unwrap(),
        (api::firecracker::MemoryBackendType::File, "m")
    );
    assert_eq!(load.resume_vm, Some(true));
    assert!(!load.tracks_dirty_pages());
    assert_eq!(load.network_overrides.unwrap()[0].host_dev_name, "tap9");
    assert!(matches!(
        ok("PUT", "/logger", Some(r#"{"level":"Info"}"#)),
        VmmAction::PutLogger(_)
    ));
    assert!(matches!(
        ok("PUT", "/metrics", Some(r#"{"metrics_path":"/m"}"#)),
        VmmAction::PutMetrics(_)
    ));
    assert!(matches!(
        ok("PUT", "/serial", Some("{}")),
        VmmAction::PutSerial(_)
    ));
    assert_eq!(ok("GET", "/mmds", None), VmmAction::GetMmds);
    assert_eq!(
        ok("PUT", "/mmds", Some(r#"{"a": {"b": "c"}}"#)),
        VmmAction::PutMmds(serde_json::json!({"a": {"b": "c"}}))
    );
    assert_eq!(
        ok("PATCH", "/mmds", Some(r#"{"a": null}"#)),
        VmmAction::PatchMmds(serde_json::json!({"a": null}))
    );
    let VmmAction::PutMmdsConfig(c) = ok(
        "PUT",
        "/mmds/config",
        Some(r#"{"version": "V2", "network_interfaces": ["eth0"]}"#),
    ) else {
        panic!("PUT /mmds/config");
    };
    assert_eq!(c.version, api::MmdsVersion::V2);
    assert!(
        err(
            "PUT",
            "/mmds/config",
            Some(r#"{"network_interfaces": ["a"], "x": 1}"#)
        )
        .contains("unknown field")
    );
}

/// Free page hinting's three paths: start's body is optional (no body, an empty one or
/// `{}` take the default, which acknowledges the end of the run), stop takes none or
/// `{}`, status is a GET.
#[test]
fn balloon_hinting_routes_and_their_optional_bodies() {
    use api::firecracker::BalloonStartCmd;
    let start = |ack| {
        VmmAction::StartBalloonHinting(BalloonStartCmd {
            acknowledge_on_stop: ack,
        })
    };
    assert_eq!(ok("PATCH", "/balloon/hinting/start", None), start(true));
    assert_eq!(
        ok("PATCH", "/balloon/hinting/start", Some("{}")),
        start(true)
    );
    assert_eq!(
        ok(
            "PATCH",
            "/balloon/hinting/start",
            Some(r#"{"acknowledge_on_stop": false}"#)
        ),
        start(false)
    );
    assert_eq!(
        ok("PATCH", "/balloon/hinting/stop", None),
        VmmAction::StopBalloonHinting
    );
    assert_eq!(
        ok("PATCH", "/balloon/hinting/stop/", Some("{}")),
        VmmAction::StopBalloonHinting
    );
    assert_eq!(
        ok("GET", "/balloon/hinting/status", None),
        VmmAction::GetBalloonHintingStatus
    );
    for (path, body) in [
        ("/balloon/hinting/start", r#"{"acknowledge_on_stop": 1}"#),
        (
            "/balloon/hinting/start",
            r#"{"acknowledge_on_stop": true, "x": 1}"#,
        ),
        ("/balloon/hinting/start", "{"),
        ("/balloon/hinting/stop", r#"{"acknowledge_on_stop": true}"#),
        ("/balloon/hinting/stop", "stop"),
    ] {
        let e = err("PATCH", path, Some(body));
        assert!(
            e.starts_with("An error occurred when deserializing the json body of a request: "),
            "{path} {body}: {e}"
        );
    }
    assert_eq!(
        err("GET", "/balloon/hinting/status", Some("{}")),
        "GET request cannot have a body."
    );
    for (method, path) in [
        ("PUT", "/balloon/hinting/start"),
        ("POST", "/balloon/hinting/start"),
        ("GET", "/balloon/hinting/start"),
        ("PATCH", "/balloon/hinting/status"),
        ("PATCH", "/balloon/hinting"),
        ("GET", "/balloon/hinting"),
        ("PATCH", "/balloon/hinting/pause"),
        ("PATCH", "/balloon/hinting/start/now"),
    ] {
        assert_eq!(
            err(method, path, Some("{}")),
            format!(
                "Invalid request method and/or path: {method} {}.",
                path.trim_start_matches('/')
            ),
            "{method} {path}"
        );
    }
    let r = respond(&Ok(VmmData::BalloonHintingStatus(
        api::firecracker::BalloonHintingStatus {
            host_cmd: 2,
            guest_cmd: None,
        },
    )));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"host_cmd":2,"guest_cmd":null}"#)
    );
}

#[test]
fn deprecated_fields_are_named_as_firecracker_names_them() {
    let v1 = ok(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces": ["eth0"]}"#),
    );
    assert_eq!(
        v1.deprecation(),
        Some("PUT /mmds/config: V1 is deprecated. Use V2 instead.")
    );
    let v2 = ok(
        "PUT",
        "/mmds/config",
        Some(r#"{"version": "V2", "network_interfaces": ["eth0"]}"#),
    );
    assert_eq!(v2.deprecation(), None);
    let vsock = ok(
        "PUT",
        "/vsock",
        Some(r#"{"vsock_id": "v", "guest_cid": 3, "uds_path": "/v"}"#),
    );
    assert!(vsock.deprecation().unwrap().contains("vsock_id"));
    let load = ok(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#),
    );
    assert!(load.deprecation().unwrap().contains("mem_file_path"));
    let mut response = respond(&Ok(VmmData::Empty));
    response.deprecation = true;
    let text = String::from_utf8(response.to_bytes(true)).unwrap();
    assert!(text.contains("\r\nDeprecation: true\r\n"), "{text}");
}

#[test]
fn firecracker_errors_for_what_does_not_fit() {
    assert_eq!(
        err("GET", "/nope", None),
        "Invalid request method and/or path: GET nope."
    );
    assert_eq!(
        err("DELETE", "/vm", None),
        "Invalid request method and/or path: DELETE vm."
    );
    assert_eq!(
        err("DELETE", "/mmds", None),
        "Invalid request method and/or path: DELETE mmds."
    );
    assert_eq!(
        err("PATCH", "/mmds/config", Some("{}")),
        "Invalid request method and/or path: PATCH mmds/config."
    );
    assert_eq!(
        err("GET", "/", Some("{}")),
        "GET request cannot have a body."
    );
    assert_eq!(err("PUT", "/vsock", None), "Empty PUT request.");
    assert_eq!(err("PATCH", "/vm", None), "Empty PATCH request.");
    assert_eq!(
        err("PATCH", "/machine-config", Some("{}")),
        "Empty PATCH request."
    );
    assert_eq!(
        err("PUT", "/drives/", Some("{}")),
        "The ID cannot be empty."
    );
    assert_eq!(
        err("PUT", "/drives/a-b", Some("{}")),
        "API Resource IDs can only contain alphanumeric characters and underscores."
    );
    let drive = r#"{"drive_id":"other","path_on_host":"/r","is_root_device":true}"#;
    assert_eq!(
        err("PUT", "/drives/root", Some(drive)),
        "The id from the path does not match the id from the body!"
    );
    assert_eq!(err("PUT", "/pmem/", Some("{}")), "The ID cannot be empty.");
    assert_eq!(
        err("PATCH", "/pmem/p.0", Some(r#"{"id":"p.0"}"#)),
        "API Resource IDs can only contain alphanumeric characters and underscores."
    );
    assert_eq!(
        err(
            "PUT",
            "/pmem/p0",
            Some(r#"{"id":"p1","path_on_host":"/p"}"#)
        ),
        "The id from the path does not match the id from the body!"
    );
    assert_eq!(
        err("PATCH", "/pmem/p0", Some(r#"{"id":"p1"}"#)),
        "The id from the path does not match the id from the body!"
    );
    assert!(
        err("PUT", "/pmem/p0", Some(r#"{"id":"p0"}"#)).contains("missing field `path_on_host`")
    );
    assert_eq!(
        err("GET", "/pmem/p0", None),
        "Invalid request method and/or path: GET pmem/p0."
    );
    for (path, body) in [
        ("/machine-config", "{"),
        ("/machine-config", r#"{"vcpu_count":"2","mem_size_mib":1}"#),
        (
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":128,"extra":1}"#,
        ),
        ("/actions", r#"{"action_type":"Reboot"}"#),
        ("/boot-source", "[]"),
        ("/entropy", "\u{0}"),
        (
            "/cpu-config",
            r#"{"msr_modifiers":[{"addr":"0x10a","bitmap":"0b012"}]}"#,
        ),
        (
            "/cpu-config",
            r#"{"cpuid_modifiers":[{"leaf":"1","subleaf":"0","modifiers":[]}]}"#,
        ),
    ] {
        let e = err("PUT", path, Some(body));
        assert!(
            e.starts_with("An error occurred when deserializing the json body of a request: "),
            "{path} {body}: {e}"
        );
    }
}

#[test]
fn responses_carry_the_data_or_the_fault() {
    let r = respond(&Ok(VmmData::Empty));
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = respond(&Ok(VmmData::Version("0.1.0".into())));
    assert_eq!(r.body, r#"{"firecracker_version":"0.1.0"}"#);
    let r = respond(&Ok(VmmData::InstanceInfo(InstanceInfo {
        id: "anonymous-instance".into(),
        state: "Not started".into(),
        started: false,
        vmm_version: "0.1.0".into(),
        app_name: "Vireo".into(),
    })));
    assert_eq!(r.status, 200);
    assert!(r.body.contains(r#""state":"Not started""#));
    assert!(r.body.contains(r#""started":false"#));
    let r = respond(&Err(ActionError::NotSupportedPostBoot));
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            r#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#
        )
    );
    let r = respond(&Err(ActionError::Config(ConfigError::MissingKernel)));
    assert!(
        r.body
            .contains("Cannot start microvm without kernel configuration.")
    );
}

/// The OpenAPI document describes exactly what is routed: every documented method and
/// path reaches an action (or an error about its body, never "invalid path"), and every
/// other method on those paths, and every Firecracker path Vireo does not serve, is
/// refused as an invalid path.
#[test]
fn openapi_document_matches_the_router() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/api/vireo-api.json")).unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut routed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    routed.sort();
    assert_eq!(
        documented, routed,
        "docs/api/vireo-api.json and ROUTES differ"
    );

    let not_served = [
        "/hotplug/memory",
        "/balloon/hinting",
        "/balloon/hinting/nope",
        "/snapshot",
        "/vm/state",
        "/nope",
    ];
    let candidates = paths
        .keys()
        .map(String::as_str)
        .chain(not_served)
        .collect::<Vec<_>>();
    for path in candidates {
        let concrete = path
            .replace("{drive_id}", "d0")
            .replace("{iface_id}", "e0")
            .replace("{id}", "p0");
        for method in ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"] {
            let body = (method != "GET").then_some(&b"{}"[..]);
            let result = route(method, &concrete, body);
            let is_invalid_path = matches!(result, Err(RouteError::InvalidPathMethod(..)));
            let is_documented = routed.iter().any(|(m, p)| m == method && p == path);
            assert_eq!(
                !is_invalid_path, is_documented,
                "{method} {concrete}: {result:?}"
            );
        }
    }
}
