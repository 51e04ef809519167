//! Snapshots through the API, across processes, on real KVM (layer 2): the `count`
//! guest (crates/test-guests/guests/count.s) increments a u64 at guest address 0x12000
//! and prints "." on COM1 each time it reaches a multiple of 256.
//!
//! A first `vireo` boots it, pauses it, writes a Full snapshot and is killed with
//! SIGKILL. A second `vireo` loads the snapshot and resumes; after a while it is paused
//! and snapshotted again. The counter read from the two memory files (the guest's RAM
//! starts at file offset 0) shows it went on from where it stopped, and the console of
//! the second process has exactly one dot per 256 boundary crossed in between.
//! Bad requests (not paused, missing or corrupted files, a Uffd backend with no handler,
//! overrides of devices the snapshot does not have) get a 400 and leave the process
//! serving. A balloon's target changed at runtime comes back with the snapshot.

mod common;

use std::time::{Duration, Instant};

use common::http::{Client, Vireo, bad, ok};
use common::{counter_in, file_len, wait_until};

/// Boot the count guest through the API with its console in `serial`.
fn boot_count_guest(c: &mut Client, serial: &str, extra_machine: &str) {
    let kernel = test_guests::path(test_guests::COUNT);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put(
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": 32{extra_machine}}}"#),
    ));
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
}

#[test]
fn snapshot_kill_load_and_the_count_goes_on() {
    let first = Vireo::start("snap-a", &[]);
    let mut c = first.client();
    let serial_a = first.path("serial");
    boot_count_guest(&mut c, &serial_a, "");
    wait_until("a dot", || file_len(&serial_a) >= 1);

    // Running: refused.
    let state = first.path("state");
    let mem = first.path("mem");
    let create = format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#);
    bad(c.put("/snapshot/create", &create), "must be paused");

    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    ok(c.put("/snapshot/create", &create));
    let at_snapshot = counter_in(&mem);
    assert!(at_snapshot >= 256, "counter {at_snapshot}");
    // Diff without dirty-page tracking: refused, the VM still answers.
    bad(
        c.put(
            "/snapshot/create",
            &format!(
                r#"{{"snapshot_path": "{state}.d", "mem_file_path": "{mem}", "snapshot_type": "Diff"}}"#
            ),
        ),
        "track_dirty_pages",
    );
    assert_eq!(c.get("/").json()["state"], "Paused");

    // Kill -9: the snapshot files are all that is left.
    let keep = std::env::temp_dir().join(format!("vireo-snap-keep-{}", std::process::id()));
    std::fs::create_dir_all(&keep).unwrap();
    let state_kept = keep.join("state").display().to_string();
    let mem_kept = keep.join("mem").display().to_string();
    std::fs::copy(&state, &state_kept).unwrap();
    std::fs::copy(&mem, &mem_kept).unwrap();
    drop(c);
    drop(first); // SIGKILL, then the scratch directory goes.

    let second = Vireo::start("snap-b", &[]);
    let mut c = second.client();
    let serial_b = second.path("serial");
    ok(c.put(
        "/serial",
        &format!(r#"{{"serial_out_path": "{serial_b}"}}"#),
    ));
    // Errors first: each leaves the process ready for a good load.
    bad(
        c.put(
            "/snapshot/load",
            &format!(r#"{{"snapshot_path": "{state_kept}"}}"#),
        ),
        "One of mem_file_path and mem_backend must be given.",
    );
    bad(
        c.put(
            "/snapshot/load",
            &format!(
                r#"{{"snapshot_path": "{state_kept}", "mem_backend": {{"backend_type": "Uffd", "backend_path": "/x"}}}}"#
            ),
        ),
        "cannot connect to the page-fault handler's socket /x",
    );
    bad(
        c.put(
            "/snapshot/load",
            &format!(r#"{{"snapshot_path": "{mem_kept}", "mem_file_path": "{mem_kept}"}}"#),
        ),
        "not a Vireo snapshot",
    );
    bad(
        c.put(
            "/snapshot/load",
            &format!(
                r#"{{"snapshot_path": "{state_kept}", "mem_file_path": "{}"}}"#,
                second.path("missing")
            ),
        ),
        "No such file",
    );
    let mut corrupt = std::fs::read(&state_kept).unwrap();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 1;
    let corrupt_path = second.path("corrupt");
    std::fs::write(&corrupt_path, corrupt).unwrap();
    bad(
        c.put(
            "/snapshot/load",
            &format!(r#"{{"snapshot_path": "{corrupt_path}", "mem_file_path": "{mem_kept}"}}"#),
        ),
        "checksum mismatch",
    );
    assert_eq!(c.get("/").json()["state"], "Not started");

    // The good load, paused: a snapshot taken at once has the very same memory, but for
    // the VM generation ID the load replaced, and the same vCPU state.
    ok(c.put(
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{state_kept}", "mem_backend": {{"backend_type": "File", "backend_path": "{mem_kept}"}}}}"#
        ),
    ));
    assert_eq!(c.get("/").json()["state"], "Paused");
    let (state_again, mem_again) = (second.path("state-again"), second.path("mem-again"));
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state_again}", "mem_file_path": "{mem_again}"}}"#),
    ));
    let (again_mem, kept_mem) = (
        std::fs::read(&mem_again).unwrap(),
        std::fs::read(&mem_kept).unwrap(),
    );
    if let Err(e) = common::same_but_a_new_generation_id(&again_mem, &kept_mem) {
        panic!("guest memory after load: {e}");
    }
    let body = |path: &str| -> serde_json::Value {
        let bytes = std::fs::read(path).unwrap();
        serde_json::from_slice(&bytes[24..bytes.len() - 4]).unwrap()
    };
    let new_id: String = again_mem[common::generation_id_range()]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        body(&state_again)["vmgenid"]["generation_id"],
        new_id.as_str()
    );
    let vcpus = |path: &str| body(path)["vcpus"].clone();
    // Everything but the time-stamp counter (MSR 0x10), which runs on while paused.
    let (mut again, mut kept) = (vcpus(&state_again), vcpus(&state_kept));
    let tsc = |v: &mut serde_json::Value| -> u64 {
        let msrs = v[0]["msrs"].as_array_mut().unwrap();
        let at = msrs
            .iter()
            .position(|p| p[0] == 0x10)
            .expect("the TSC is saved");
        msrs.remove(at)[1].as_u64().unwrap()
    };
    assert!(tsc(&mut again) >= tsc(&mut kept), "the TSC went backwards");
    assert_eq!(again, kept, "vCPU state after load");
    ok(c.patch("/vm", r#"{"state": "Resumed"}"#));
    assert_eq!(c.get("/").json()["state"], "Running");
    // The configuration came back with the snapshot.
    let config = c.get("/vm/config").json();
    assert_eq!(config["machine-config"]["mem_size_mib"], 32);
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        test_guests::path(test_guests::COUNT).display().to_string()
    );
    // Load after load, and boot-time calls, are refused.
    bad(
        c.put(
            "/snapshot/load",
            &format!(r#"{{"snapshot_path": "{state_kept}", "mem_file_path": "{mem_kept}"}}"#),
        ),
        "not supported after starting",
    );

    wait_until("dots on the new console", || file_len(&serial_b) >= 2);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let mem2 = second.path("mem2");
    ok(c.put(
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{mem2}"}}"#,
            second.path("state2")
        ),
    ));
    let later = counter_in(&mem2);
    assert!(later > at_snapshot, "{later} <= {at_snapshot}");
    let dots = std::fs::read_to_string(&serial_b).unwrap();
    assert!(dots.chars().all(|ch| ch == '.'), "{dots:?}");
    // One dot per 256 boundary crossed between the two snapshots. The guest increments
    // the counter, then prints the dot in a later instruction: a snapshot taken at a
    // multiple of 256 may fall between the two, so that boundary's dot may be printed after
    // it (on the new console for the first snapshot, not yet for the second).
    let crossed = later / 256 - at_snapshot / 256;
    let low = crossed - u64::from(later.is_multiple_of(256));
    let high = crossed + u64::from(at_snapshot.is_multiple_of(256));
    assert!(
        (low..=high).contains(&(dots.len() as u64)),
        "{} dots for {crossed} boundaries between the counts {at_snapshot} and {later}",
        dots.len()
    );
    let _ = std::fs::remove_dir_all(&keep);
}

#[test]
fn diff_snapshot_through_the_api_and_load_with_tracking() {
    let vm = Vireo::start("snap-diff", &[]);
    let mut c = vm.client();
    let serial = vm.path("serial");
    boot_count_guest(&mut c, &serial, r#", "track_dirty_pages": true"#);
    wait_until("a dot", || file_len(&serial) >= 1);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let mem = vm.path("mem");
    let full = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{mem}", "snapshot_type": "Full"}}"#,
        vm.path("full")
    );
    ok(c.put("/snapshot/create", &full));
    let at_full = counter_in(&mem);
    ok(c.patch("/vm", r#"{"state": "Resumed"}"#));
    wait_until("more dots", || file_len(&serial) >= 3);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let diff_state = vm.path("diff");
    ok(c.put(
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{diff_state}", "mem_file_path": "{mem}", "snapshot_type": "Diff"}}"#
        ),
    ));
    let at_diff = counter_in(&mem);
    assert!(at_diff > at_full, "the Diff updated the memory file");

    let loaded = Vireo::start("snap-diff-load", &[]);
    let mut c2 = loaded.client();
    ok(c2.put(
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{diff_state}", "mem_file_path": "{mem}", "track_dirty_pages": true}}"#
        ),
    ));
    assert_eq!(c2.get("/").json()["state"], "Paused");
    // Loaded with tracking: a Diff of the loaded VM works too.
    let mem_copy = loaded.path("mem");
    std::fs::copy(&mem, &mem_copy).unwrap();
    ok(c2.put(
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{mem_copy}", "snapshot_type": "Diff"}}"#,
            loaded.path("diff2")
        ),
    ));
    assert_eq!(counter_in(&mem_copy), at_diff, "paused since the load");
    // Overrides of devices the snapshot does not have.
    let other = Vireo::start("snap-diff-override", &[]);
    let mut c3 = other.client();
    bad(
        c3.put(
            "/snapshot/load",
            &format!(
                r#"{{"snapshot_path": "{diff_state}", "mem_file_path": "{mem}", "network_overrides": [{{"iface_id": "eth0", "host_dev_name": "tap1"}}]}}"#
            ),
        ),
        "no interface eth0",
    );
    assert_eq!(c3.get("/").json()["state"], "Not started");
}

#[test]
fn a_disk_request_in_flight_completes_once_after_load() {
    const SECTORS: u64 = 16;
    let first = Vireo::start("snap-blk-a", &[]);
    let image = first.path("disk.img");
    std::fs::write(&image, vec![0xeeu8; (SECTORS * 512) as usize]).unwrap();
    let mut c = first.client();
    let serial_a = first.path("serial");
    let kernel = test_guests::path(test_guests::VIRTIO_BLK);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    ));
    // One request per second: after the write, the read waits in the avail ring, taken
    // by no one, while the guest polls for its completion.
    ok(c.put(
        "/drives/scratch",
        &format!(
            r#"{{"drive_id": "scratch", "path_on_host": "{image}", "is_root_device": false,
                "rate_limiter": {{"ops": {{"size": 1, "refill_time": 1000}}}}}}"#
        ),
    ));
    ok(c.put(
        "/serial",
        &format!(r#"{{"serial_out_path": "{serial_a}"}}"#),
    ));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
    let console = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    wait_until("the write to complete", || {
        console(&serial_a).contains("write sector 1 ok")
    });
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let before = console(&serial_a);
    assert!(
        !before.contains("read sector 1 ok"),
        "the read finished before the pause: the test did not catch it in flight"
    );
    let keep = std::env::temp_dir().join(format!("vireo-snap-blk-{}", std::process::id()));
    std::fs::create_dir_all(&keep).unwrap();
    let state = keep.join("state").display().to_string();
    let mem = keep.join("mem").display().to_string();
    let image_kept = keep.join("disk.img").display().to_string();
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#),
    ));
    // The disk as the killed process leaves it; the new process opens the same path.
    std::fs::copy(&image, &image_kept).unwrap();
    drop(c);
    drop(first);
    std::fs::create_dir_all(std::path::Path::new(&image).parent().unwrap()).unwrap();
    std::fs::copy(&image_kept, &image).unwrap();

    let mut second = Vireo::start("snap-blk-b", &[]);
    let mut c = second.client();
    let serial_b = keep.join("serial-b").display().to_string();
    ok(c.put(
        "/serial",
        &format!(r#"{{"serial_out_path": "{serial_b}"}}"#),
    ));
    ok(c.put(
        "/snapshot/load",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}", "resume_vm": true}}"#),
    ));
    // The guest finishes and resets: the process exits 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the restored guest did not finish: {:?}",
            console(&serial_b)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let all = before + &console(&serial_b);
    assert_eq!(all, test_guests::expected::virtio_blk(SECTORS));
    let disk = std::fs::read(&image).unwrap();
    let at = (test_guests::VIRTIO_BLK_SECTOR * 512) as usize;
    assert_eq!(&disk[at..at + 512], &test_guests::virtio_blk_pattern()[..]);
    assert!(
        disk[..at]
            .iter()
            .chain(&disk[at + 512..])
            .all(|&b| b == 0xee)
    );
    let _ = std::fs::remove_dir_all(&keep);
}

/// A VM with a balloon and a vsock device (the count guest has no driver for either, so
/// neither runs): the balloon's target and polling interval changed after boot come
/// back with the snapshot in a new process (its handle reports them), so does free page
/// hinting (its device never started: no run, STOP), and the vsock device binds its
/// overridden socket.
#[test]
fn balloon_target_and_vsock_come_back_after_kill_and_load() {
    let first = Vireo::start("snap-dev-a", &[]);
    let mut c = first.client();
    let serial = first.path("serial");
    ok(c.put(
        "/balloon",
        r#"{"amount_mib": 4, "deflate_on_oom": false, "stats_polling_interval_s": 1, "free_page_hinting": true}"#,
    ));
    ok(c.put(
        "/vsock",
        &format!(
            r#"{{"guest_cid": 3, "uds_path": "{}"}}"#,
            first.path("v.sock")
        ),
    ));
    boot_count_guest(&mut c, &serial, "");
    wait_until("a dot", || file_len(&serial) >= 1);
    ok(c.patch("/balloon", r#"{"amount_mib": 12}"#));
    ok(c.patch("/balloon/statistics", r#"{"stats_polling_interval_s": 7}"#));
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let keep = std::env::temp_dir().join(format!("vireo-snap-dev-{}", std::process::id()));
    std::fs::create_dir_all(&keep).unwrap();
    let state = keep.join("state").display().to_string();
    let mem = keep.join("mem").display().to_string();
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#),
    ));
    drop(c);
    drop(first);

    let second = Vireo::start("snap-dev-b", &[]);
    let mut c = second.client();
    let sock = second.path("v2.sock");
    ok(c.put(
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}", "vsock_override": {{"uds_path": "{sock}"}}}}"#
        ),
    ));
    let balloon = c.get("/balloon").json();
    assert_eq!(balloon["amount_mib"], 12, "{balloon}");
    assert_eq!(balloon["stats_polling_interval_s"], 7, "{balloon}");
    assert_eq!(balloon["free_page_hinting"], true, "{balloon}");
    assert_eq!(
        c.get("/balloon/hinting/status").json(),
        serde_json::json!({ "host_cmd": 0, "guest_cmd": null })
    );
    let stats = c.get("/balloon/statistics").json();
    assert_eq!(stats["target_mib"], 12, "{stats}");
    assert_eq!(stats["target_pages"], 12 * 256, "{stats}");
    assert!(std::path::Path::new(&sock).exists(), "the vsock socket");
    ok(c.patch("/vm", r#"{"state": "Resumed"}"#));
    assert_eq!(c.get("/").json()["state"], "Running");
    let _ = std::fs::remove_dir_all(&keep);
}

#[test]
fn a_snapshot_of_a_huge_page_guest_is_refused_on_load_by_name() {
    let test = "a_snapshot_of_a_huge_page_guest_is_refused_on_load_by_name";
    test_support::require!(test, test_support::skip::root());
    let _pool = test_support::require!(test, test_support::host::HugePool::grow(16));
    let first = Vireo::start("snap-huge-a", &[]);
    let mut c = first.client();
    boot_count_guest(&mut c, &first.path("serial"), r#", "huge_pages": "2M""#);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let (state, mem) = (first.path("vm.state"), first.path("vm.mem"));
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#),
    ));

    let second = Vireo::start("snap-huge-b", &[]);
    let mut c = second.client();
    bad(
        c.put(
            "/snapshot/load",
            &format!(
                r#"{{"snapshot_path": "{state}", "mem_backend": {{"backend_type": "File", "backend_path": "{mem}"}}}}"#
            ),
        ),
        "2 MiB huge pages, which only a Uffd memory backend restores",
    );
    assert_eq!(c.get("/").json()["state"], "Not started", "nothing changed");
}
