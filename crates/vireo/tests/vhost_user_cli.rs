//! `vireo vhost-user`: the real binary serving a device on a socket to vhost's own
//! frontend; bad input ends it with exit 1 and a message that names the culprit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{finish, run, vireo};
use vhost::VhostBackend;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};

/// `VIRTIO_F_VERSION_1`.
const VERSION_1: u64 = 1 << 32;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// A fresh path in a directory of this test process (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-vu-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start `vireo vhost-user args...` and wait (10 s at most) for its socket.
fn serve(args: &[&str], socket: &Path) -> Child {
    let mut child = vireo(args).spawn().expect("start vireo");
    let start = Instant::now();
    while !socket.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let run = finish(child, Duration::from_secs(1));
            panic!("vireo exited ({status}) before listening:\n{}", run.stderr);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Owner and features, as a frontend starts.
fn hello(fe: &mut Frontend) -> u64 {
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    fe.set_features(offered & (VERSION_1 | PROTOCOL_FEATURES))
        .unwrap();
    offered
}

#[test]
fn bad_disk_path_exits_1_naming_the_path() {
    let dir = TempDir::new("badpath");
    let socket = dir.path("blk.sock");
    let out = run(&[
        "vhost-user",
        "blk",
        "--socket",
        socket.to_str().unwrap(),
        "--disk",
        "path=/nonexistent/vireo-vu-disk.img",
    ]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/vireo-vu-disk.img"),
        "{}",
        out.stderr
    );
    assert!(
        !socket.exists(),
        "no socket for a device that cannot be served"
    );
}

#[test]
fn bad_option_exits_1() {
    let out = run(&["vhost-user", "blk", "--socket", "/tmp/x", "--disk", "pth=a"]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("unknown key 'pth'"), "{}", out.stderr);
    let out = run(&["vhost-user", "rng"]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("--socket"), "{}", out.stderr);
}

#[test]
fn socket_path_that_is_a_file_exits_1_and_keeps_the_file() {
    let dir = TempDir::new("taken");
    let taken = dir.path("file");
    std::fs::write(&taken, b"keep").unwrap();
    let out = run(&["vhost-user", "rng", "--socket", taken.to_str().unwrap()]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("is not a socket"), "{}", out.stderr);
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep");
}

#[test]
fn rng_serves_one_frontend_then_exits_0_and_removes_the_socket() {
    let dir = TempDir::new("rng");
    let socket = dir.path("rng.sock");
    let child = serve(
        &[
            "--log-level",
            "info",
            "vhost-user",
            "rng",
            "--socket",
            socket.to_str().unwrap(),
        ],
        &socket,
    );
    let mut fe = Frontend::connect(&socket, 1).unwrap();
    let offered = hello(&mut fe);
    assert_ne!(offered & VERSION_1, 0, "VERSION_1 offered: {offered:#x}");
    assert_ne!(offered & PROTOCOL_FEATURES, 0);
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::MQ));
    fe.set_protocol_features(VhostUserProtocolFeatures::MQ)
        .unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    drop(fe);

    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!socket.exists(), "socket removed");
    assert!(
        out.stderr.contains("frontend disconnected"),
        "{}",
        out.stderr
    );
}

#[test]
fn blk_serves_the_disk_capacity_in_its_config_space() {
    let dir = TempDir::new("blk");
    let socket = dir.path("blk.sock");
    let image = dir.path("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let disk = format!("path={},serial=vu-cli", image.display());
    let child = serve(
        &[
            "vhost-user",
            "blk",
            "--socket",
            socket.to_str().unwrap(),
            "--disk",
            &disk,
        ],
        &socket,
    );
    let mut fe = Frontend::connect(&socket, 1).unwrap();
    hello(&mut fe);
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::CONFIG));
    fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    let (_, config) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(config, (6144u64).to_le_bytes(), "3 MiB = 6144 sectors");
    drop(fe);

    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!socket.exists(), "socket removed");
}

#[test]
fn sigterm_while_waiting_exits_0_and_removes_the_socket() {
    let dir = TempDir::new("term");
    let socket = dir.path("rng.sock");
    let child = serve(
        &["vhost-user", "rng", "--socket", socket.to_str().unwrap()],
        &socket,
    );
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!socket.exists(), "socket removed");
}

#[test]
fn net_with_a_bad_tap_name_exits_1_naming_it() {
    let out = run(&[
        "vhost-user",
        "net",
        "--socket",
        "/tmp/vireo-vu-n",
        "--net",
        "tap=no/such",
    ]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("no/such"), "{}", out.stderr);
}

#[test]
fn vsock_serves_then_removes_both_sockets() {
    let dir = TempDir::new("vsock");
    let socket = dir.path("vu.sock");
    let host = dir.path("host.sock");
    let spec = format!("cid=3,socket={}", host.display());
    let child = serve(
        &[
            "vhost-user",
            "vsock",
            "--socket",
            socket.to_str().unwrap(),
            "--vsock",
            &spec,
        ],
        &socket,
    );
    assert!(host.exists(), "host-side socket bound");
    let mut fe = Frontend::connect(&socket, 3).unwrap();
    hello(&mut fe);
    fe.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 3);
    let (_, cid) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(cid, 3u64.to_le_bytes());
    drop(fe);
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!socket.exists() && !host.exists(), "both sockets removed");

    // A reserved CID is refused before anything is bound.
    let out = run(&[
        "vhost-user",
        "vsock",
        "--socket",
        socket.to_str().unwrap(),
        "--vsock",
        &format!("cid=2,socket={}", host.display()),
    ]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("reserved"), "{}", out.stderr);
    assert!(!socket.exists() && !host.exists());
}

#[test]
fn sigterm_removes_the_vsock_host_socket_too() {
    let dir = TempDir::new("vsockterm");
    let socket = dir.path("vu.sock");
    let host = dir.path("host.sock");
    let spec = format!("cid=3,socket={}", host.display());
    let child = serve(
        &[
            "vhost-user",
            "vsock",
            "--socket",
            socket.to_str().unwrap(),
            "--vsock",
            &spec,
        ],
        &socket,
    );
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!socket.exists() && !host.exists(), "both sockets removed");
}
