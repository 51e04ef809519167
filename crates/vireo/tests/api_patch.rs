//! `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}` after InstanceStart, against
//! the real `vireo` binary on real KVM (layer 2).
//!
//! - The `virtio_blk` tiny guest (crates/test-guests/guests/virtio_blk.s) writes sector 1
//!   and reads it back, each request waiting at most 5 s for its interrupt. Its drive
//!   allows 1 byte/s: the 512-byte write goes (a full bucket lets an oversized request
//!   through, into debt), the read then waits in the avail ring for about 512 s; a
//!   PATCH that removes the limit releases it at once and the guest finishes (with the
//!   old limit it would time out). The guest reads the capacity once, at its start, and
//!   takes any later interrupt for its request's, so the running image swap is tested at
//!   layer 1 (crates/block/src/tests/update.rs), not with this guest.
//! - The `count` guest, with drives it has no driver for: a new image (of another size)
//!   and new limits through the API, GET /vm/config following, a path that cannot be
//!   opened refused with a 400 that changes nothing, and the snapshot taken afterwards
//!   carrying the new image.
//! - A NIC on a TAP inside a network namespace the test makes (root only, else skipped
//!   through test-support's skip policy): its rate limiters, merged as Firecracker does.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::http::{Client, Vireo, bad, boot_guest as boot, ok};
use common::wait_until;
use test_support::netns::Netns;
use test_support::require;

fn console(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The drive `id` in GET /vm/config.
fn drive(c: &mut Client, id: &str) -> serde_json::Value {
    let config = c.get("/vm/config").json();
    config["drives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["drive_id"] == id)
        .unwrap_or_else(|| panic!("no drive {id} in {config}"))
        .clone()
}

fn image(path: &str, sectors: u64, byte: u8) {
    std::fs::write(path, vec![byte; (sectors * 512) as usize]).unwrap();
}

#[test]
fn a_new_limit_releases_the_request_a_running_guest_waits_for() {
    const SECTORS: u64 = 16;
    let mut vm = Vireo::start("patch-blk-limit", &[]);
    let mut c = vm.client();
    let disk = vm.path("disk.img");
    image(&disk, SECTORS, 0xee);
    let serial = vm.path("serial");
    bad(
        c.patch(
            "/drives/scratch",
            r#"{"drive_id": "scratch", "rate_limiter": {}}"#,
        ),
        "not supported before starting",
    );
    ok(c.put(
        "/drives/scratch",
        &format!(
            r#"{{"drive_id": "scratch", "path_on_host": "{disk}", "is_root_device": false,
                "rate_limiter": {{"bandwidth": {{"size": 1, "refill_time": 1000}}}}}}"#
        ),
    ));
    boot(&mut c, test_guests::VIRTIO_BLK, &serial);
    wait_until("the write", || {
        console(&serial).contains("write sector 1 ok")
    });
    assert!(
        !console(&serial).contains("read sector 1 ok"),
        "the read went before the PATCH: the limit did not hold it"
    );
    let patched = Instant::now();
    // Firecracker's way to remove a limit: a bucket of size 0.
    ok(c.patch(
        "/drives/scratch",
        r#"{"drive_id": "scratch", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#,
    ));
    // The guest finishes and resets: vireo exits 0.
    let status = loop {
        if let Some(status) = vm.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            patched.elapsed() < Duration::from_secs(10),
            "the guest did not finish: {:?}",
            console(&serial)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        patched.elapsed() < Duration::from_secs(4),
        "the read waited for the old limit: {:?}",
        patched.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", console(&serial));
    assert_eq!(console(&serial), test_guests::expected::virtio_blk(SECTORS));
}

#[test]
fn a_drive_takes_a_new_image_and_limits_and_get_vm_config_follows() {
    let vm = Vireo::start("patch-blk", &[]);
    let mut c = vm.client();
    let (first, second, third) = (vm.path("a.img"), vm.path("b.img"), vm.path("c.img"));
    image(&first, 8, 0x11);
    image(&second, 40, 0x22);
    image(&third, 24, 0x33);
    let ro = vm.path("ro.img");
    image(&ro, 8, 0x44);
    let serial = vm.path("serial");
    ok(c.put(
        "/drives/scratch",
        &format!(
            r#"{{"drive_id": "scratch", "path_on_host": "{first}", "is_root_device": false,
                "rate_limiter": {{"ops": {{"size": 100, "refill_time": 1000}}}}}}"#
        ),
    ));
    ok(c.put(
        "/drives/ro",
        &format!(
            r#"{{"drive_id": "ro", "path_on_host": "{ro}", "is_root_device": false,
                "is_read_only": true}}"#
        ),
    ));
    boot(&mut c, test_guests::COUNT, &serial);
    wait_until("a dot", || !console(&serial).is_empty());

    bad(
        c.patch(
            "/drives/nope",
            r#"{"drive_id": "nope", "path_on_host": "/x"}"#,
        ),
        "Invalid block device ID!",
    );
    ok(c.patch("/drives/scratch", r#"{"drive_id": "scratch"}"#));

    // A new image of another size.
    ok(c.patch(
        "/drives/scratch",
        &format!(r#"{{"drive_id": "scratch", "path_on_host": "{second}"}}"#),
    ));
    let d = drive(&mut c, "scratch");
    assert_eq!(d["path_on_host"], second.as_str());
    assert_eq!(d["rate_limiter"]["ops"]["size"], 100, "limits left alone");

    // A path that cannot be opened: 400, the drive keeps its image and limits.
    let missing = vm.path("missing.img");
    bad(
        c.patch(
            "/drives/scratch",
            &format!(
                r#"{{"drive_id": "scratch", "path_on_host": "{missing}",
                    "rate_limiter": {{"ops": {{"size": 5, "refill_time": 1000}}}}}}"#
            ),
        ),
        "missing.img",
    );
    let d = drive(&mut c, "scratch");
    assert_eq!(d["path_on_host"], second.as_str());
    assert_eq!(d["rate_limiter"]["ops"]["size"], 100);

    // Limits merged as Firecracker merges them: a bandwidth bucket added, ops kept.
    ok(c.patch(
        "/drives/scratch",
        r#"{"drive_id": "scratch",
            "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}"#,
    ));
    let d = drive(&mut c, "scratch");
    assert_eq!(d["rate_limiter"]["ops"]["size"], 100);
    assert_eq!(d["rate_limiter"]["bandwidth"]["size"], 1048576);
    // A zero-sized bucket removes that limit only.
    ok(c.patch(
        "/drives/scratch",
        r#"{"drive_id": "scratch", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#,
    ));
    let d = drive(&mut c, "scratch");
    assert!(d["rate_limiter"].get("ops").is_none(), "{d}");
    assert_eq!(d["rate_limiter"]["bandwidth"]["size"], 1048576);
    // Image and limits in one request.
    ok(c.patch(
        "/drives/scratch",
        &format!(
            r#"{{"drive_id": "scratch", "path_on_host": "{third}",
                "rate_limiter": {{"bandwidth": {{"size": 0, "refill_time": 0}}}}}}"#
        ),
    ));
    let d = drive(&mut c, "scratch");
    assert_eq!(d["path_on_host"], third.as_str());
    assert!(d.get("rate_limiter").is_none(), "nothing limited: {d}");

    // A read-only drive stays read-only on its new image.
    ok(c.patch(
        "/drives/ro",
        &format!(r#"{{"drive_id": "ro", "path_on_host": "{first}"}}"#),
    ));
    let d = drive(&mut c, "ro");
    assert_eq!(d["path_on_host"], first.as_str());
    assert_eq!(d["is_read_only"], true);

    // The images were opened, not written: each file is as the test made it.
    for (path, sectors, byte) in [
        (&first, 8, 0x11u8),
        (&second, 40, 0x22),
        (&third, 24, 0x33),
        (&ro, 8, 0x44),
    ] {
        assert_eq!(
            std::fs::read(path).unwrap(),
            vec![byte; sectors * 512],
            "{path}"
        );
    }

    // The guest ran on; a snapshot now carries the new images, not the old ones.
    let dots = console(&serial).len();
    wait_until("more dots", || console(&serial).len() > dots);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let state = vm.path("state");
    let mem = vm.path("mem");
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#),
    ));
    let body = String::from_utf8_lossy(&std::fs::read(&state).unwrap()).into_owned();
    assert!(body.contains(&third), "the VM's config has the new image");
    assert!(!body.contains(&second), "no trace of the replaced image");
    assert!(
        !body.contains(&ro),
        "no trace of the replaced read-only image"
    );
    ok(c.patch("/vm", r#"{"state": "Resumed"}"#));
}

/// A `vireo --api-sock` inside a network namespace, killed on drop.
struct NsVireo {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl NsVireo {
    fn start(ns: &Netns) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-api-patch-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let child = ns
            .command(env!("CARGO_BIN_EXE_vireo"))
            .args(["--api-sock", sock.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env_remove("VIREO_LOG")
            .spawn()
            .expect("start vireo in the namespace");
        Self { child, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for NsVireo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_nic_takes_new_rate_limiters() {
    let ns = require!("a_nic_takes_new_rate_limiters", Netns::new("patch"));
    let vm = NsVireo::start(&ns);
    let mut c = Client::connect(Path::new(&vm.path("api.sock")));
    let serial = vm.path("serial");
    // Vireo creates the TAP in its namespace.
    ok(c.put(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "vtap-patch",
            "rx_rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 1000}}}"#,
    ));
    boot(&mut c, test_guests::COUNT, &serial);
    wait_until("a dot", || !console(&serial).is_empty());
    let nic = |c: &mut Client| c.get("/vm/config").json()["network-interfaces"][0].clone();

    bad(
        c.patch(
            "/network-interfaces/nope",
            r#"{"iface_id": "nope", "tx_rate_limiter": {}}"#,
        ),
        "does not exist",
    );
    // tx gets a limit; rx, not in the request, keeps its own.
    ok(c.patch(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1000, "refill_time": 100}}}"#,
    ));
    let n = nic(&mut c);
    assert_eq!(n["tx_rate_limiter"]["ops"]["size"], 1000, "{n}");
    assert_eq!(n["rx_rate_limiter"]["bandwidth"]["size"], 1000000, "{n}");
    // rx: its bandwidth bucket removed, an ops bucket added.
    ok(c.patch(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "rx_rate_limiter": {
            "bandwidth": {"size": 0, "refill_time": 0},
            "ops": {"size": 50, "refill_time": 1000}}}"#,
    ));
    let n = nic(&mut c);
    assert!(n["rx_rate_limiter"].get("bandwidth").is_none(), "{n}");
    assert_eq!(n["rx_rate_limiter"]["ops"]["size"], 50);
    assert_eq!(n["tx_rate_limiter"]["ops"]["size"], 1000);
    // Both removed.
    ok(c.patch(
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0",
            "rx_rate_limiter": {"ops": {"size": 0, "refill_time": 0}},
            "tx_rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#,
    ));
    let n = nic(&mut c);
    assert!(n.get("rx_rate_limiter").is_none(), "{n}");
    assert!(n.get("tx_rate_limiter").is_none(), "{n}");
    // The guest still runs.
    let dots = console(&serial).len();
    wait_until("more dots", || console(&serial).len() > dots);
}
