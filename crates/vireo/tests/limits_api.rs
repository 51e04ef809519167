//! Firecracker's limits on the console and the entropy device, through the API: a
//! console whose `rate_limiter` drops what the count guest writes past its bucket
//! (counted in `uart.rate_limiter_dropped_bytes`), and the entropy device's limiter and
//! a NIC's MTU kept in `GET /vm/config`. The guest-visible effects (a slower
//! `/dev/hwrng`, the MTU on eth0) are layer 4's (linux_guest.rs).

mod common;

use std::time::{Duration, Instant};

use common::http::{Vireo, ok};

#[test]
fn a_rate_limited_console_drops_what_exceeds_its_bucket() {
    let vm = Vireo::start("serial-limit", &[]);
    let mut c = vm.client();
    let serial = vm.path("serial");
    let metrics = vm.path("metrics");
    ok(c.put("/metrics", &format!(r#"{{"metrics_path": "{metrics}"}}"#)));
    ok(c.put(
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}"}}"#,
            test_guests::path(test_guests::COUNT).display()
        ),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    ));
    // 20 bytes at once, then 20 a second.
    ok(c.put(
        "/serial",
        &format!(
            r#"{{"serial_out_path": "{serial}", "rate_limiter": {{"size": 20, "refill_time": 1000}}}}"#
        ),
    ));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
    let started = Instant::now();
    let dropped = |c: &mut common::http::Client| {
        ok(c.put("/actions", r#"{"action_type": "FlushMetrics"}"#));
        std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["uart"]["rate_limiter_dropped_bytes"].as_u64().unwrap()
            })
            .sum::<u64>()
    };
    let mut lost = 0;
    while lost < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the guest wrote only {lost} bytes past the limit in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
        lost = dropped(&mut c);
    }
    let written = std::fs::metadata(&serial).unwrap().len();
    let allowed = 20 + 20 * started.elapsed().as_secs_f64().ceil() as u64;
    assert!(
        (1..=allowed).contains(&written),
        "{written} bytes reached the file, at most {allowed} may"
    );
    let config = c.get("/vm/config").json();
    assert_eq!(config["serial"]["rate_limiter"]["size"], 20);
}

#[test]
fn the_entropy_limiter_and_a_nics_mtu_are_kept_in_the_config() {
    let vm = Vireo::start("rng-limit", &[]);
    let mut c = vm.client();
    ok(c.put(
        "/entropy",
        r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
    ));
    let bad = c.put(
        "/entropy",
        r#"{"rate_limiter": {"ops": {"size": 10, "refill_time": 0}}}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let config = c.get("/vm/config").json();
    assert_eq!(config["entropy"]["rate_limiter"]["bandwidth"]["size"], 1000);
    let mtu = c.put(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "vtap-none", "mtu": 67}"#,
    );
    assert_eq!(mtu.status, 400, "{}", mtu.body);
    assert!(mtu.fault().contains("68..=65535"), "{}", mtu.body);
}
