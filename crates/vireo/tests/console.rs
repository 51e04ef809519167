//! The serial console from the host's side: input reaches the guest, the terminal is raw
//! while the VM runs (Ctrl-C goes to the guest) and is restored afterwards; on a Unix
//! socket (`--serial socket:PATH`), output waits for a client and clients come and go.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{collect_output, finish, run, vireo};
use test_support::{require, skip};

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stdin_reaches_the_guest_through_the_uart() {
    let kernel = test_guests::path(test_guests::ECHO);
    let mut child = vireo(&["run", "--kernel", kernel.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect_output(child.stdout.take().unwrap());
    wait_until("the guest", || out.lock().unwrap().contains("echo ready"));
    child.stdin.take().unwrap().write_all(b"hi q").unwrap();
    let run = finish(child, Duration::from_secs(10));
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(
        *out.lock().unwrap(),
        "echo ready\ngot: h\ngot: i\ngot:  \ngot: q\n"
    );
}

fn termios(fd: i32) -> libc::termios {
    // SAFETY: termios is plain data that tcgetattr fills.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal and `t` is writable.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}

#[test]
fn terminal_is_raw_while_the_vm_runs_and_restored_after() {
    let (master, slave) = test_support::host::openpty();
    let before = termios(slave.as_raw_fd());
    assert_ne!(
        before.c_lflag & libc::ICANON,
        0,
        "a new pty starts canonical"
    );

    let kernel = test_guests::path(test_guests::ECHO);
    let mut child = vireo(&["run", "--kernel", kernel.to_str().unwrap()])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let out = collect_output(child.stdout.take().unwrap());
    wait_until("raw mode", || {
        termios(slave.as_raw_fd()).c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG) == 0
    });
    wait_until("the guest", || out.lock().unwrap().contains("echo ready"));

    // Ctrl-C is a byte for the guest, not a signal for vireo.
    let mut keyboard = std::fs::File::from(master.try_clone().unwrap());
    keyboard.write_all(b"\x03q").unwrap();
    let run = finish(child, Duration::from_secs(10));
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(*out.lock().unwrap(), "echo ready\ngot: \x03\ngot: q\n");

    let after = termios(slave.as_raw_fd());
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    drop(master);
}

/// A directory of its own for a test's sockets, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-console-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn console_client(path: &Path) -> UnixStream {
    let client = UnixStream::connect(path).expect("connect to the console socket");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
}

fn read_exactly(client: &mut UnixStream, n: usize) -> String {
    let mut buf = vec![0u8; n];
    client.read_exact(&mut buf).expect("console output");
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn socket_console_keeps_output_until_a_client_connects_and_serves_the_next() {
    let name = "socket_console_keeps_output_until_a_client_connects_and_serves_the_next";
    require!(name, skip::file("/dev/kvm"));
    let dir = Scratch::new("socket");
    let sock = dir.0.join("console.sock");
    let serial = format!("socket:{}", sock.display());
    let kernel = test_guests::path(test_guests::ECHO);
    let kernel = kernel.to_str().unwrap();
    let child = vireo(&["run", "--kernel", kernel, "--serial", &serial])
        .spawn()
        .unwrap();
    wait_until("the console socket", || is_socket(&sock));
    // Nobody is connected while the guest boots and prints: its line waits.
    std::thread::sleep(Duration::from_millis(300));

    // A second VM on the same path is refused, and takes nothing from the first.
    let other = run(&["run", "--kernel", kernel, "--serial", &serial]);
    assert_eq!(other.code(), Some(1), "stderr: {}", other.stderr);
    assert!(
        other.stderr.contains("serial console: ")
            && other.stderr.contains("in use by another process"),
        "{}",
        other.stderr
    );

    let mut first = console_client(&sock);
    assert_eq!(read_exactly(&mut first, 11), "echo ready\n");
    first.write_all(b"a").unwrap();
    assert_eq!(read_exactly(&mut first, 7), "got: a\n");
    drop(first);

    let mut second = console_client(&sock);
    second.write_all(b"q").unwrap();
    let mut rest = String::new();
    second
        .read_to_string(&mut rest)
        .expect("output until vireo exits");
    assert_eq!(rest, "got: q\n");

    let run = finish(child, Duration::from_secs(10));
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "", "the console is not on stdout");
    assert!(!sock.exists(), "the socket is removed at exit");
}

/// What a host manager does: a `--config-file` written by `FullVmConfig::from_vm_config`
/// with the console on a socket, the API on another, stdin /dev/null.
#[test]
fn socket_console_from_a_manager_written_config_file() {
    let name = "socket_console_from_a_manager_written_config_file";
    require!(name, skip::file("/dev/kvm"));
    let dir = Scratch::new("config");
    let sock = dir.0.join("console.sock");
    let api_sock = dir.0.join("api.sock");
    let mut config = api::VmConfig::new(test_guests::path(test_guests::ECHO));
    config.memory_bytes = 32 << 20;
    config.serial = api::SerialConfig::Socket(sock.clone());
    let full = api::firecracker::FullVmConfig::from_vm_config(&config).unwrap();
    let file = dir.0.join("vm.json");
    std::fs::write(&file, serde_json::to_string_pretty(&full).unwrap()).unwrap();

    let child = vireo(&[
        "--api-sock",
        api_sock.to_str().unwrap(),
        "--config-file",
        file.to_str().unwrap(),
        "--id",
        "web",
    ])
    .spawn()
    .unwrap();
    wait_until("the console socket", || is_socket(&sock));
    let mut client = console_client(&sock);
    assert_eq!(read_exactly(&mut client, 11), "echo ready\n");
    client.write_all(b"q").unwrap();
    assert_eq!(read_exactly(&mut client, 7), "got: q\n");
    let run = finish(child, Duration::from_secs(10));
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(!sock.exists() && !api_sock.exists(), "both sockets removed");
}
