//! Opening images (errors that say what is wrong), qcow2 through imago with and without
//! a backing file, and durability of FLUSH seen through a fresh handle.

use std::path::Path;

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
use test_support::require;

use super::harness::*;
use crate::disk::BlockError;
use crate::request::{req_type as t, status};
use crate::worker::{BlockWorker, Engine};

fn open_err(cfg: &api::DiskConfig) -> BlockError {
    match BlockWorker::new(cfg) {
        Ok(_) => panic!("{cfg:?} opened"),
        Err(e) => e,
    }
}

/// Read through a fresh imago instance (what another process would see).
fn qcow2_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let q = Qcow2::<imago::file::File>::builder_path(path)
        .write(false)
        .open(PermissiveImplicitOpenGate::default())
        .unwrap();
    let q = FormatAccess::new(q);
    let mut buf = vec![0u8; len];
    q.read(&mut buf[..], offset).unwrap();
    buf
}

#[test]
fn missing_file_is_named() {
    let cfg = disk_cfg(
        Path::new("/nonexistent/vireo/disk.img"),
        api::IoEngine::Auto,
    );
    let e = open_err(&cfg);
    assert!(matches!(e, BlockError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(e.to_string().contains("/nonexistent/vireo/disk.img"));
}

#[test]
fn permission_denied_says_so() {
    // sysfs refuses to open a read-only attribute for writing, even to root.
    let cfg = disk_cfg(Path::new("/sys/kernel/notes"), api::IoEngine::Sync);
    let e = open_err(&cfg);
    assert!(
        matches!(
            e,
            BlockError::PermissionDenied {
                readonly: false,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("readonly"), "{e}");
}

#[test]
fn raw_capacity_rounds_down_to_whole_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.raw");
    std::fs::write(&path, vec![1u8; 512 * 5 + 100]).unwrap();
    let w = BlockWorker::new(&disk_cfg(&path, api::IoEngine::Sync)).unwrap();
    assert_eq!(w.capacity_sectors(), 5);
}

#[test]
fn io_engine_choice() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "e.raw", 8);
    let auto = BlockWorker::new(&disk_cfg(&path, api::IoEngine::Auto)).unwrap();
    let want = if crate::io_uring_available() {
        Engine::IoUring
    } else {
        Engine::Sync
    };
    assert_eq!(auto.engine(), want);
    let sync = BlockWorker::new(&disk_cfg(&path, api::IoEngine::Sync)).unwrap();
    assert_eq!(sync.engine(), Engine::Sync);
    if !crate::io_uring_available() {
        let e = open_err(&disk_cfg(&path, api::IoEngine::IoUring));
        assert!(matches!(e, BlockError::IoUringUnavailable(_)), "{e}");
    }
}

#[test]
fn raw_file_is_not_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "r.raw", 8);
    let mut cfg = disk_cfg(&path, api::IoEngine::Auto);
    cfg.format = api::DiskFormat::Qcow2;
    let e = open_err(&cfg);
    assert!(matches!(e, BlockError::NotQcow2(_)), "{e}");
    assert!(e.to_string().contains("format=raw"), "{e}");
}

fn qcow2_image(dir: &Path, name: &str, size: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), size]);
    path
}

fn qcow2_cfg(path: &Path) -> api::DiskConfig {
    let mut cfg = disk_cfg(path, api::IoEngine::Auto);
    cfg.format = api::DiskFormat::Qcow2;
    cfg
}

#[test]
fn qcow2_unsupported_feature_is_named() {
    require!("qcow2_unsupported_feature_is_named", qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2_image(dir.path(), "f.qcow2", "1M");
    // Set incompatible feature bit 40 (big endian u64 at offset 72).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[72 + 7 - 5] |= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = open_err(&qcow2_cfg(&path));
    assert!(matches!(e, BlockError::Qcow2Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("bit 40"), "{e}");
}

#[test]
fn qcow2_refuses_io_uring() {
    require!("qcow2_refuses_io_uring", qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2_image(dir.path(), "u.qcow2", "1M");
    let mut cfg = qcow2_cfg(&path);
    cfg.io_engine = api::IoEngine::IoUring;
    assert!(matches!(open_err(&cfg), BlockError::IoUringNeedsRaw));
    cfg.io_engine = api::IoEngine::Auto;
    assert_eq!(BlockWorker::new(&cfg).unwrap().engine(), Engine::Sync);
}

#[test]
fn qcow2_read_write_flush_is_durable() {
    require!("qcow2_read_write_flush_is_durable", qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2_image(dir.path(), "d.qcow2", "8M");
    let mut h = Harness::open(&qcow2_cfg(&path));
    assert_eq!(h.worker.capacity_sectors(), 8 << 11);
    // Unallocated clusters read as zero.
    let r = h.request(t::IN, 100, &[4096], 0);
    h.run();
    assert_eq!(h.status(&r), status::OK);
    assert_eq!(h.bytes(r.data[0].0, 4096), vec![0u8; 4096]);
    // Writes that allocate clusters, then FLUSH: a fresh imago instance (another
    // process's view, with the worker still alive and its caches unflushed otherwise)
    // sees the data.
    let w1 = h.request(t::OUT, 0, &[4096], 0xa1);
    let w2 = h.request(t::OUT, 8000, &[512, 1024], 0xa2);
    let f = h.request(t::FLUSH, 0, &[], 0);
    h.run();
    for s in [&w1, &w2, &f] {
        assert_eq!(h.status(s), status::OK);
    }
    assert_eq!(qcow2_bytes(&path, 0, 4096), vec![0xa1; 4096]);
    assert_eq!(qcow2_bytes(&path, 8000 * 512, 1536), vec![0xa2; 1536]);
    // Reads through the device too.
    let r = h.request(t::IN, 8000, &[1536], 0);
    h.run();
    assert_eq!(h.bytes(r.data[0].0, 1536), vec![0xa2; 1536]);
    // And qemu-img finds the image consistent.
    qemu_img(&["check", "-q", path.to_str().unwrap()]);
}

#[test]
fn qcow2_discard_and_write_zeroes() {
    require!("qcow2_discard_and_write_zeroes", qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2_image(dir.path(), "z.qcow2", "4M");
    let mut h = Harness::open(&qcow2_cfg(&path));
    h.request(t::OUT, 0, &[65536 * 2], 0x3c);
    h.run();
    let z = h.dwz(t::WRITE_ZEROES, &[(8, 8, 0), (128, 128, 1)]);
    let d = h.dwz(t::DISCARD, &[(200, 8, 0)]);
    let f = h.request(t::FLUSH, 0, &[], 0);
    h.run();
    for s in [&z, &d, &f] {
        assert_eq!(h.status(s), status::OK);
    }
    let all = qcow2_bytes(&path, 0, 65536 * 2);
    assert!(all[..4096].iter().all(|b| *b == 0x3c));
    assert!(all[4096..8192].iter().all(|b| *b == 0));
    assert!(all[8192..65536].iter().all(|b| *b == 0x3c));
    assert!(
        all[65536..].iter().all(|b| *b == 0),
        "unmapped cluster reads zero"
    );
    qemu_img(&["check", "-q", path.to_str().unwrap()]);
}

#[test]
fn qcow2_over_a_raw_backing_file() {
    require!("qcow2_over_a_raw_backing_file", qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let base = raw_image(dir.path(), "base.raw", 2048);
    let overlay = dir.path().join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        overlay.to_str().unwrap(),
    ]);
    let mut h = Harness::open(&qcow2_cfg(&overlay));
    assert_eq!(h.worker.capacity_sectors(), 2048);
    let r = h.request(t::IN, 1000, &[2048], 0);
    h.run();
    assert_eq!(h.status(&r), status::OK);
    let want: Vec<u8> = (1000 * 512..1000 * 512 + 2048).map(pattern).collect();
    assert_eq!(
        h.bytes(r.data[0].0, 2048),
        want,
        "backing data shows through"
    );
    // Writing part of a cluster: copy-on-write keeps the rest from the backing file.
    let w = h.request(t::OUT, 1001, &[512], 0xcd);
    let f = h.request(t::FLUSH, 0, &[], 0);
    h.run();
    assert_eq!((h.status(&w), h.status(&f)), (status::OK, status::OK));
    let got = qcow2_bytes(&overlay, 1000 * 512, 2048);
    assert_eq!(got[..512], want[..512]);
    assert_eq!(got[512..1024], [0xcd; 512]);
    assert_eq!(got[1024..], want[1024..]);
    // The backing file is untouched.
    assert_eq!(file_bytes(&base, 1001 * 512, 512), want[512..1024]);
}

#[test]
fn read_only_qcow2_refuses_writes() {
    require!("read_only_qcow2_refuses_writes", qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2_image(dir.path(), "ro.qcow2", "1M");
    let mut cfg = qcow2_cfg(&path);
    cfg.readonly = true;
    let mut h = Harness::open(&cfg);
    let w = h.request(t::OUT, 0, &[512], 1);
    let r = h.request(t::IN, 0, &[512], 0);
    h.run();
    assert_eq!(h.status(&w), status::IOERR);
    assert_eq!(h.status(&r), status::OK);
}
