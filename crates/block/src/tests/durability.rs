//! FLUSH durability across `kill -9`: a child process (this test binary, re-run on one
//! ignored test) writes and flushes through the worker, says so, and is killed with
//! SIGKILL; the parent then opens the image afresh and finds the flushed data.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
use test_support::require;

use super::harness::*;
use crate::request::{req_type as t, status};

const ENV_IMAGE: &str = "VIREO_BLK_KILL9_IMAGE";
const ENV_FORMAT: &str = "VIREO_BLK_KILL9_FORMAT";

/// The child's side: only does something when started by the parent test.
#[test]
#[ignore = "helper process for flushed_writes_survive_kill_9"]
fn kill9_child() {
    let (Ok(image), Ok(format)) = (std::env::var(ENV_IMAGE), std::env::var(ENV_FORMAT)) else {
        return;
    };
    let mut cfg = disk_cfg(Path::new(&image), api::IoEngine::Auto);
    if format == "qcow2" {
        cfg.format = api::DiskFormat::Qcow2;
    }
    let mut h = Harness::open(&cfg);
    let w1 = h.request(t::OUT, 0, &[65536], 0x71);
    let w2 = h.request(t::OUT, 1000, &[4096], 0x72);
    let f = h.request(t::FLUSH, 0, &[], 0);
    h.run();
    assert!([&w1, &w2, &f].iter().all(|s| h.status(s) == status::OK));
    // A later write, not flushed: may or may not survive; nothing is asserted on it.
    h.request(t::OUT, 3000, &[4096], 0x73);
    h.run();
    println!("FLUSHED");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

fn run_child_and_kill(image: &Path, format: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::durability::kill9_child",
            "--ignored",
            "--nocapture",
        ])
        .env(ENV_IMAGE, image)
        .env(ENV_FORMAT, format)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let flushed = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == "FLUSHED");
    // SIGKILL: no destructor runs, no cache is written back by the child.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(flushed, "the child did not report its flush");
}

#[test]
fn flushed_raw_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "k.raw", 4096);
    run_child_and_kill(&path, "raw");
    assert_eq!(file_bytes(&path, 0, 65536), vec![0x71; 65536]);
    assert_eq!(file_bytes(&path, 1000 * 512, 4096), vec![0x72; 4096]);
}

#[test]
fn flushed_qcow2_writes_survive_kill_9() {
    require!("flushed_qcow2_writes_survive_kill_9", qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "4M"]);
    run_child_and_kill(&path, "qcow2");
    let q = Qcow2::<imago::file::File>::builder_path(&path)
        .write(false)
        .open(PermissiveImplicitOpenGate::default())
        .unwrap();
    let q = FormatAccess::new(q);
    let mut buf = vec![0u8; 65536];
    q.read(&mut buf[..], 0).unwrap();
    assert_eq!(buf, vec![0x71; 65536]);
    let mut buf = vec![0u8; 4096];
    q.read(&mut buf[..], 1000 * 512).unwrap();
    assert_eq!(buf, vec![0x72; 4096]);
}
