//! Helpers shared by the integration tests: run the `vireo` binary with a deadline.

#![allow(dead_code, missing_docs)]

pub mod http;

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a finished `vireo` run left behind.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// `vireo` with `args`, stdin from /dev/null, stdout and stderr piped.
pub fn vireo(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vireo"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("VIREO_LOG");
    cmd
}

/// Wait for `child` up to `deadline`; kill it (and fail) if it is still running then.
pub fn finish(mut child: Child, deadline: Duration) -> Run {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for vireo") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = collect(&mut child);
            panic!(
                "vireo still running after {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                out.0, out.1
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (stdout, stderr) = collect(&mut child);
    Run {
        status,
        stdout,
        stderr,
    }
}

fn collect(child: &mut Child) -> (String, String) {
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    (stdout, stderr)
}

/// Run `vireo args` to completion (10 s at most).
pub fn run(args: &[&str]) -> Run {
    finish(
        vireo(args).spawn().expect("start vireo"),
        Duration::from_secs(10),
    )
}

/// Boot the tiny guest `name` with extra `args`.
pub fn run_guest(name: &str, args: &[&str]) -> Run {
    let kernel = test_guests::path(name);
    let mut all = vec!["run", "--kernel", kernel.to_str().unwrap()];
    all.extend_from_slice(args);
    run(&all)
}

/// Read `out` (a child's stdout) in the background into a shared string, as it comes.
pub fn collect_output(mut out: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Where the VM generation ID is in a memory file (its guest-physical address: the file
/// starts at address 0).
pub fn generation_id_range() -> std::ops::Range<usize> {
    let at = vmm::arch::x86_64::layout::VMGENID_START as usize;
    at..at + vmm::devices::vmgenid::VMGENID_SIZE
}

/// Whether guest memory `after` a load is `before`'s (a snapshot's) but for the VM
/// generation ID, which a load writes anew: `Err` says which part differs.
pub fn same_but_a_new_generation_id(after: &[u8], before: &[u8]) -> Result<(), String> {
    let id = generation_id_range();
    if after.len() != before.len() {
        return Err(format!("{} bytes, not {}", after.len(), before.len()));
    }
    if after[id.clone()] == before[id.clone()] {
        return Err("the load kept the generation ID".into());
    }
    if after[..id.start] != before[..id.start] || after[id.end..] != before[id.end..] {
        return Err("guest memory differs from the snapshot's".into());
    }
    Ok(())
}

/// Wait until `done`, at most `within` (then fail, naming `what`), looking every 10 ms.
pub fn wait_within(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_within`] 20 s.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(20), done);
}

/// A file's length, 0 if it is not there (yet).
pub fn file_len(path: &str) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The count guest's counter, read from a snapshot's memory file.
pub fn counter_in(mem_file: &str) -> u64 {
    let bytes = std::fs::read(mem_file).unwrap();
    let at = test_guests::COUNT_COUNTER_ADDR as usize;
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}
