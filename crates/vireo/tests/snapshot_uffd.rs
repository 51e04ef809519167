//! Snapshot load with the Uffd memory backend (layer 2, real KVM, the `count` guest: it
//! increments a u64 at guest address 0x12000 and prints "." on COM1 at each multiple of
//! 256).
//!
//! A first `vireo` boots the guest, pauses it, writes a Full snapshot and is killed. Then
//! `vireo uffd-handler` serves the memory file on a socket, and a second `vireo` loads the
//! snapshot with `{"backend_type": "Uffd", "backend_path": SOCKET}`: its memory is what
//! the snapshot holds (a Full snapshot at once reads every page through the handler and
//! equals the first memory file), the guest counts on from where it was, a Diff of the
//! restored VM (dirty-page tracking on) holds the new count, and the handler reports the
//! faults it served when the VMM goes. Errors (no socket, nobody listening, a handler
//! that hangs up without taking the userfaultfd, one that takes it and serves nothing)
//! are 400s that leave the process ready for a good load. A huge-page guest, refused by
//! the File backend, comes back through the handler.

mod common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::http::{Client, Vireo, bad, ok};
use common::{counter_in, file_len};

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    common::wait_within(what, Duration::from_secs(30), done);
}

/// Whether this process may create a userfaultfd (root, or the sysctl, or the device).
fn uffd_available() -> Result<(), String> {
    vmm::snapshot::uffd::Uffd::create(vmm::snapshot::uffd::FEATURE_EVENT_REMOVE)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Boot `count` (32 MiB), let it print a dot, pause it, snapshot it; the files survive
/// the process (killed on return).
fn snapshot_count_guest(name: &str, machine_extra: &str, keep: &Path) -> (String, String, u64) {
    let vm = Vireo::start(name, &[]);
    let mut c = vm.client();
    let serial = vm.path("serial");
    ok(c.put(
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}"}}"#,
            test_guests::path(test_guests::COUNT).display()
        ),
    ));
    ok(c.put(
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": 32{machine_extra}}}"#),
    ));
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
    wait_until("a dot", || file_len(&serial) >= 1);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    std::fs::create_dir_all(keep).unwrap();
    let state = keep.join("vm.state").display().to_string();
    let mem = keep.join("vm.mem").display().to_string();
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#),
    ));
    let count = counter_in(&mem);
    (state, mem, count)
}

/// `vireo uffd-handler` on `socket` for `mem`, once its socket is there.
struct Handler {
    child: Child,
}

impl Handler {
    fn start(socket: &str, mem: &str) -> Handler {
        let child = common::vireo(&["uffd-handler", "--socket", socket, "--mem-file", mem])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the handler");
        let mut h = Handler { child };
        wait_until("the handler's socket", || {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("the handler exited: {status} {}", h.stderr());
            }
            Path::new(socket).exists()
        });
        h
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Wait for it to end (its VMM has gone) and parse its figures.
    fn finish(mut self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the handler did not end");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(status.success(), "handler: {status} {}", self.stderr());
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uffd_load(state: &str, socket: &str, extra: &str) -> String {
    format!(
        r#"{{"snapshot_path": "{state}", "mem_backend": {{"backend_type": "Uffd", "backend_path": "{socket}"}}{extra}}}"#
    )
}

#[test]
fn a_uffd_load_serves_the_snapshot_and_the_count_goes_on() {
    let test = "a_uffd_load_serves_the_snapshot_and_the_count_goes_on";
    test_support::require!(test, uffd_available());
    let keep = std::env::temp_dir().join(format!("vireo-uffd-keep-{}", std::process::id()));
    let (state, mem, at_snapshot) = snapshot_count_guest("uffd-a", "", &keep);
    assert!(at_snapshot >= 256, "counter {at_snapshot}");

    let second = Vireo::start("uffd-b", &[]);
    let mut c = second.client();
    let serial = second.path("serial");
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    let socket = second.path("uffd.sock");
    let handler = Handler::start(&socket, &mem);
    ok(c.put(
        "/snapshot/load",
        &uffd_load(&state, &socket, r#", "track_dirty_pages": true"#),
    ));
    assert_eq!(c.get("/").json()["state"], "Paused");
    // Every page read through the handler: the snapshot's memory, byte for byte.
    let mem_again = second.path("mem-again");
    ok(c.put(
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{mem_again}"}}"#,
            second.path("state-again")
        ),
    ));
    // Byte for byte but the VM generation ID, which the load writes anew.
    let (again, before) = (
        std::fs::read(&mem_again).unwrap(),
        std::fs::read(&mem).unwrap(),
    );
    if let Err(e) = common::same_but_a_new_generation_id(&again, &before) {
        panic!("memory served by the handler: {e}");
    }
    ok(c.patch("/vm", r#"{"state": "Resumed"}"#));
    wait_until("dots from the restored guest", || file_len(&serial) >= 2);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    // A Diff of the restored VM, into (a copy of) the memory file it is relative to.
    ok(c.put(
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{mem_again}", "snapshot_type": "Diff"}}"#,
            second.path("diff")
        ),
    ));
    let later = counter_in(&mem_again);
    assert!(later > at_snapshot, "{later} <= {at_snapshot}");
    let dots = std::fs::read_to_string(&serial).unwrap();
    assert!(dots.chars().all(|ch| ch == '.'), "{dots:?}");
    let crossed = later / 256 - at_snapshot / 256;
    assert!(
        (crossed.saturating_sub(1)..=crossed + 1).contains(&(dots.len() as u64)),
        "{} dots for {crossed} boundaries between {at_snapshot} and {later}",
        dots.len()
    );
    // The VMM goes: the handler ends and says what it served. Every page of the 32 MiB
    // was read once (the Full snapshot): the few the guest uses came from the file, the
    // holes were zero pages.
    drop(c);
    drop(second);
    let stats = handler.finish();
    let (faults, copied, zero) = (
        stats["faults"].as_u64().unwrap(),
        stats["copied_pages"].as_u64().unwrap(),
        stats["zero_pages"].as_u64().unwrap(),
    );
    assert!(copied >= 1 && zero >= 1, "{stats}");
    assert_eq!(copied + zero, 32 << 20 >> 12, "{stats}");
    assert!(faults >= copied + zero, "{stats}");
    assert_eq!(stats["remove_events"], 0, "{stats}");
    let _ = std::fs::remove_dir_all(&keep);
}

#[test]
fn uffd_load_errors_are_400s_and_leave_the_process_ready() {
    let test = "uffd_load_errors_are_400s_and_leave_the_process_ready";
    test_support::require!(test, uffd_available());
    let keep = std::env::temp_dir().join(format!("vireo-uffd-err-{}", std::process::id()));
    let (state, mem, _) = snapshot_count_guest("uffd-err-a", "", &keep);
    let vm = Vireo::start("uffd-err-b", &[]);
    let mut c = vm.client();
    let not_started = |c: &mut Client| assert_eq!(c.get("/").json()["state"], "Not started");

    // No socket.
    let missing = vm.path("missing.sock");
    bad(
        c.put("/snapshot/load", &uffd_load(&state, &missing, "")),
        &format!("cannot connect to the page-fault handler's socket {missing}: No such file"),
    );
    not_started(&mut c);

    // A socket nobody listens on any more (the handler exited).
    let stale = vm.path("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    bad(
        c.put("/snapshot/load", &uffd_load(&state, &stale, "")),
        "Connection refused",
    );
    not_started(&mut c);

    // A handler that accepts, sees the message and hangs up without taking it.
    let rude = vm.path("rude.sock");
    let listener = UnixListener::bind(&rude).unwrap();
    let rude_handler = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // The message is there (readable); it is dropped unread with its descriptor.
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 20_000) }, 1);
    });
    bad(
        c.put("/snapshot/load", &uffd_load(&state, &rude, "")),
        "closed the connection without taking the userfaultfd",
    );
    rude_handler.join().unwrap();
    not_started(&mut c);

    // A handler that takes the userfaultfd and serves nothing: refused after the probe's
    // time-out (Firecracker would hang here).
    let idle = vm.path("idle.sock");
    let listener = UnixListener::bind(&idle).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let idle_handler = std::thread::spawn(move || {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let (stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let (n, fd) = stream.recv_with_fd(&mut buf[..]).unwrap();
        let regions: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert!(fd.is_some(), "no userfaultfd came with {regions}");
        // Hold both until the test is done.
        let _ = rx.recv();
        (regions, fd)
    });
    let started = Instant::now();
    bad(
        c.put("/snapshot/load", &uffd_load(&state, &idle, "")),
        "did not serve the guest's first page within 10 s",
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
    tx.send(()).unwrap();
    let (regions, _) = idle_handler.join().unwrap();
    // What it was sent: Firecracker's fields, the memory file's layout.
    let r = &regions[0];
    for field in [
        "base_host_virt_addr",
        "size",
        "offset",
        "page_size",
        "page_size_kib",
    ] {
        assert!(r[field].is_u64(), "{field} in {regions}");
    }
    assert_eq!(r["size"], 32 << 20);
    assert_eq!(r["offset"], 0);
    assert_eq!(r["page_size"], 4096);
    assert_eq!(r["page_size_kib"], 4096);
    not_started(&mut c);

    // After all that, a good load.
    let socket = vm.path("uffd.sock");
    let handler = Handler::start(&socket, &mem);
    ok(c.put(
        "/snapshot/load",
        &uffd_load(&state, &socket, r#", "resume_vm": true"#),
    ));
    assert_eq!(c.get("/").json()["state"], "Running");
    drop(c);
    drop(vm);
    assert!(handler.finish()["copied_pages"].as_u64().unwrap() >= 1);
    let _ = std::fs::remove_dir_all(&keep);
}

#[test]
fn a_huge_page_guest_comes_back_through_the_handler() {
    let test = "a_huge_page_guest_comes_back_through_the_handler";
    test_support::require!(test, uffd_available());
    test_support::require!(test, test_support::skip::root());
    let _pool = test_support::require!(test, test_support::host::HugePool::grow(16));
    let keep = std::env::temp_dir().join(format!("vireo-uffd-huge-{}", std::process::id()));
    let (state, mem, at_snapshot) =
        snapshot_count_guest("uffd-huge-a", r#", "huge_pages": "2M""#, &keep);

    let second = Vireo::start("uffd-huge-b", &[]);
    let mut c = second.client();
    let serial = second.path("serial");
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    let socket = second.path("uffd.sock");
    let handler = Handler::start(&socket, &mem);
    ok(c.put(
        "/snapshot/load",
        &uffd_load(&state, &socket, r#", "resume_vm": true"#),
    ));
    wait_until("dots from the restored guest", || file_len(&serial) >= 2);
    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let mem2 = second.path("mem2");
    ok(c.put(
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{mem2}"}}"#,
            second.path("state2")
        ),
    ));
    assert!(counter_in(&mem2) > at_snapshot);
    drop(c);
    drop(second);
    // 16 huge pages, each served whole.
    let stats = handler.finish();
    let served = stats["copied_pages"].as_u64().unwrap() + stats["zero_pages"].as_u64().unwrap();
    assert_eq!(served, 16, "{stats}");
    let _ = std::fs::remove_dir_all(&keep);
}
