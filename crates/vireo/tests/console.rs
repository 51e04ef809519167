//! The serial console from the host's side: input reaches the guest, the terminal is raw
//! while the VM runs (Ctrl-C goes to the guest) and is restored afterwards.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{collect_output, finish, vireo};

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
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new fds into `master` and `slave`; the name, termios and
    // window-size arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned here from now on.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
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
