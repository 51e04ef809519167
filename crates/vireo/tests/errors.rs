//! Bad input gets a clear message and a non-zero exit, and nothing is left running.

mod common;

use common::{run, run_guest};
use test_support::{require, skip};

/// Exit code of a VM that could not be built.
const BUILD_FAILED: i32 = 1;

fn assert_refused(args: &[&str], message: &str) {
    let out = run(args);
    assert_eq!(out.code(), Some(BUILD_FAILED), "{args:?}: {}", out.stderr);
    assert!(
        out.stderr.contains(message),
        "{args:?}: expected '{message}' in:\n{}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "no guest output");
}

fn temp(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("vireo-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn missing_kernel() {
    assert_refused(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "cannot read kernel /nonexistent/vmlinux",
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let junk = temp("junk", &[0x5a; 8192]);
    assert_refused(
        &["run", "--kernel", &junk],
        "is not a kernel: expected an ELF vmlinux or a bzImage",
    );
}

#[test]
fn missing_initrd() {
    let kernel = test_guests::path(test_guests::HELLO64);
    assert_refused(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd",
        ],
        "cannot read initrd /nonexistent/initrd",
    );
}

#[test]
fn initrd_larger_than_memory() {
    let kernel = test_guests::path(test_guests::HELLO64);
    let initrd = temp("big-initrd", &vec![0u8; 20 << 20]);
    assert_refused(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "16M",
            "--initrd",
            &initrd,
        ],
        "does not fit in guest memory",
    );
}

#[test]
fn memory_sizes() {
    let kernel = test_guests::path(test_guests::HELLO64);
    let kernel = kernel.to_str().unwrap();
    assert_refused(
        &["run", "--kernel", kernel, "--memory", "12X"],
        "--memory: invalid size '12X'",
    );
    assert_refused(
        &["run", "--kernel", kernel, "--memory", "1M"],
        "too small: at least 16 MiB",
    );
    assert_refused(
        &["run", "--kernel", kernel, "--memory", "64T"],
        "is more than this host has",
    );
    assert_refused(
        &["run", "--kernel", kernel, "--memory", "16385K"],
        "not a whole number of 4 KiB pages",
    );
}

#[test]
fn vcpu_counts() {
    let kernel = test_guests::path(test_guests::HELLO64);
    let kernel = kernel.to_str().unwrap();
    assert_refused(
        &["run", "--kernel", kernel, "--cpus", "0"],
        "at least 1 vCPU",
    );
    assert_refused(
        &["run", "--kernel", kernel, "--cpus", "100000"],
        "vCPUs asked for; at most",
    );
}

#[test]
fn command_line_too_long() {
    let kernel = test_guests::path(test_guests::HELLO64);
    let long = "x".repeat(4096);
    assert_refused(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            &long,
        ],
        "kernel command line is 4096 bytes; the limit is 2047",
    );
}

#[test]
fn serial_file_in_missing_directory() {
    let out = run_guest(
        test_guests::HELLO64,
        &["--serial", "file:/nonexistent/dir/console.log"],
    );
    assert_eq!(out.code(), Some(BUILD_FAILED));
    assert!(
        out.stderr
            .contains("cannot open serial output /nonexistent/dir/console.log"),
        "{}",
        out.stderr
    );
}

#[test]
fn version_and_help() {
    let out = run(&["--version"]);
    assert_eq!(out.code(), Some(0));
    assert_eq!(
        out.stdout.trim(),
        format!(
            "vireo v{} (the Firecracker API it serves; Vireo {})",
            api::firecracker::FIRECRACKER_API_VERSION,
            env!("CARGO_PKG_VERSION")
        )
    );
    // As Kata parses Firecracker's: the second word, without its v, a version of at
    // least 0.21.1.
    let word = out.stdout.split_whitespace().nth(1).unwrap();
    let parts: Vec<u32> = word
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(parts >= vec![0, 21, 1], "{word}");
    let out = run(&["run", "--help"]);
    assert_eq!(out.code(), Some(0));
    for option in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
    ] {
        assert!(
            out.stdout.contains(option),
            "{option} missing from help:\n{}",
            out.stdout
        );
    }
}

#[test]
fn kvm_permission_denied_names_the_group() {
    require!(
        "kvm_permission_denied_names_the_group",
        skip::root().map_err(|e| format!("{e} (to drop to another user)"))
    );
    // As root, run vireo as `nobody`, who may not open /dev/kvm (root:root 0600 or kvm 0660).
    let kernel = test_guests::path(test_guests::HELLO64);
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_vireo"),
        ])
        .args(["run", "--kernel", kernel.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(BUILD_FAILED), "{stderr}");
    assert!(
        stderr.contains("permission denied opening /dev/kvm"),
        "{stderr}"
    );
    assert!(stderr.contains("usermod -aG kvm"), "{stderr}");
}
