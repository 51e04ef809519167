//! Every request type and every error status, on both engines.

use test_support::require;
use vm_memory::{Address, Bytes};

use super::harness::*;
use crate::request::{ID_BYTES, req_type as t, status};
use crate::worker::Engine;

const SECTORS: u64 = 64;

fn setup(engine: api::IoEngine) -> (tempfile::TempDir, std::path::PathBuf, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "disk.raw", SECTORS);
    let mut cfg = disk_cfg(&path, engine);
    cfg.serial = Some("vireo-serial-01".into());
    let h = Harness::open(&cfg);
    let expected = if engine == api::IoEngine::IoUring {
        Engine::IoUring
    } else {
        Engine::Sync
    };
    assert_eq!(h.worker.engine(), expected);
    (dir, path, h)
}

#[test]
fn read_fills_every_buffer_from_the_disk() {
    for engine in engines() {
        let (_d, _p, mut h) = setup(engine);
        let r = h.request(t::IN, 3, &[512, 1024, 512], 0);
        let used = h.run();
        assert_eq!(used, vec![(r.head, 2048 + 1)], "{engine:?}");
        assert_eq!(h.status(&r), status::OK);
        let mut off = 3 * 512;
        for (addr, len) in &r.data {
            let want: Vec<u8> = (off..off + u64::from(*len)).map(pattern).collect();
            assert_eq!(h.bytes(*addr, *len), want, "{engine:?}");
            off += u64::from(*len);
        }
        assert!(h.irq.used_count() >= 1, "the driver was told");
    }
}

#[test]
fn write_reaches_the_file_and_reads_back() {
    for engine in engines() {
        let (_d, path, mut h) = setup(engine);
        let w = h.request(t::OUT, 10, &[512, 512], 0xab);
        let used = h.run();
        assert_eq!(
            used,
            vec![(w.head, 1)],
            "a write answers only the status byte"
        );
        assert_eq!(h.status(&w), status::OK);
        assert_eq!(file_bytes(&path, 10 * 512, 1024), vec![0xab; 1024]);
        // Neighbours untouched.
        assert_eq!(file_bytes(&path, 9 * 512, 512)[511], pattern(10 * 512 - 1));
        assert_eq!(file_bytes(&path, 12 * 512, 1)[0], pattern(12 * 512));
        let r = h.request(t::IN, 10, &[1024], 0);
        h.run();
        assert_eq!(h.bytes(r.data[0].0, 1024), vec![0xab; 1024]);
    }
}

#[test]
fn flush_makes_writes_visible_to_a_fresh_handle() {
    for engine in engines() {
        let (_d, path, mut h) = setup(engine);
        let w = h.request(t::OUT, 0, &[4096], 0x5a);
        let f = h.request(t::FLUSH, 0, &[], 0);
        let used = h.run();
        assert_eq!(used.len(), 2);
        assert_eq!((h.status(&w), h.status(&f)), (status::OK, status::OK));
        assert_eq!(file_bytes(&path, 0, 4096), vec![0x5a; 4096], "{engine:?}");
    }
}

#[test]
fn get_id_returns_the_serial_nul_padded() {
    for engine in engines() {
        let (_d, _p, mut h) = setup(engine);
        let r = h.request(t::GET_ID, 0, &[ID_BYTES as u32], 0);
        let used = h.run();
        assert_eq!(used, vec![(r.head, 21)]);
        let mut want = b"vireo-serial-01".to_vec();
        want.resize(ID_BYTES, 0);
        assert_eq!(h.bytes(r.data[0].0, 20), want);
        // A short buffer gets what fits; nothing past it is touched.
        let r = h.request(t::GET_ID, 0, &[8], 0);
        let used = h.run();
        assert_eq!(used, vec![(r.head, 9)]);
        assert_eq!(h.bytes(r.data[0].0, 8), b"vireo-se");
        assert_eq!(h.status(&r), status::OK);
    }
}

#[test]
fn get_id_without_a_serial_is_all_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "d.raw", 8);
    let mut h = Harness::open(&disk_cfg(&path, api::IoEngine::Sync));
    let r = h.request(t::GET_ID, 0, &[20], 0);
    h.run();
    assert_eq!(h.bytes(r.data[0].0, 20), vec![0u8; 20]);
}

#[test]
fn discard_and_write_zeroes_zero_the_file() {
    for engine in engines() {
        let (_d, path, mut h) = setup(engine);
        let d = h.dwz(t::DISCARD, &[(8, 8, 0)]);
        let z = h.dwz(t::WRITE_ZEROES, &[(20, 2, 0), (30, 8, 1)]);
        h.run();
        assert_eq!((h.status(&d), h.status(&z)), (status::OK, status::OK));
        // Discard punches a hole on a raw file (reads as zero on Linux file systems).
        assert_eq!(file_bytes(&path, 8 * 512, 8 * 512), vec![0u8; 4096]);
        assert_eq!(file_bytes(&path, 20 * 512, 1024), vec![0u8; 1024]);
        assert_eq!(file_bytes(&path, 30 * 512, 4096), vec![0u8; 4096]);
        // Around them: the pattern.
        assert_eq!(file_bytes(&path, 7 * 512, 512)[511], pattern(8 * 512 - 1));
        assert_eq!(file_bytes(&path, 22 * 512, 1)[0], pattern(22 * 512));
        assert_eq!(file_bytes(&path, 38 * 512, 1)[0], pattern(38 * 512));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SECTORS * 512);
    }
}

#[test]
fn unknown_types_and_flags_are_unsupported() {
    let (_d, _p, mut h) = setup(api::IoEngine::Sync);
    let u = h.request(99, 0, &[512], 0);
    let d = h.dwz(t::DISCARD, &[(0, 1, 1)]);
    let z = h.dwz(t::WRITE_ZEROES, &[(0, 1, 2)]);
    let used = h.run();
    assert!(used.iter().all(|(_, len)| *len == 1));
    for s in [&u, &d, &z] {
        assert_eq!(h.status(s), status::UNSUPP);
    }
}

#[test]
fn read_only_disk_refuses_writes_and_serves_reads() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_image(dir.path(), "ro.raw", SECTORS);
        let mut cfg = disk_cfg(&path, engine);
        cfg.readonly = true;
        let mut h = Harness::open(&cfg);
        assert!(h.worker.readonly());
        let w = h.request(t::OUT, 0, &[512], 0x11);
        let d = h.dwz(t::DISCARD, &[(0, 1, 0)]);
        let z = h.dwz(t::WRITE_ZEROES, &[(0, 1, 0)]);
        let r = h.request(t::IN, 0, &[512], 0);
        let f = h.request(t::FLUSH, 0, &[], 0);
        h.run();
        for s in [&w, &d, &z] {
            assert_eq!(h.status(s), status::IOERR, "{engine:?}");
        }
        assert_eq!(h.status(&r), status::OK);
        assert_eq!(h.status(&f), status::OK);
        assert_eq!(
            file_bytes(&path, 0, 512),
            (0..512).map(pattern).collect::<Vec<_>>()
        );
    }
}

#[test]
fn out_of_range_and_overflowing_sectors_fail() {
    for engine in engines() {
        let (_d, path, mut h) = setup(engine);
        let last = h.request(t::IN, SECTORS - 1, &[512], 0);
        let past = h.request(t::IN, SECTORS, &[512], 0);
        let straddle = h.request(t::OUT, SECTORS - 1, &[1024], 0x77);
        let huge = h.request(t::OUT, u64::MAX, &[512], 0x77);
        let wrap = h.request(t::IN, u64::MAX - 1, &[2048], 0);
        let d_past = h.dwz(t::DISCARD, &[(SECTORS - 1, 2, 0)]);
        let z_wrap = h.dwz(t::WRITE_ZEROES, &[(u64::MAX, 1, 0)]);
        let z_huge = h.dwz(t::WRITE_ZEROES, &[(0, u32::MAX, 0)]);
        h.run();
        assert_eq!(h.status(&last), status::OK);
        for s in [&past, &straddle, &huge, &wrap, &d_past, &z_wrap, &z_huge] {
            assert_eq!(h.status(s), status::IOERR, "{engine:?} {s:?}");
        }
        // The refused read wrote nothing into its buffer.
        assert_eq!(h.bytes(past.data[0].0, 512), vec![0xee; 512]);
        // Nothing written past the end, nor into the last sector.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SECTORS * 512);
        assert_eq!(
            file_bytes(&path, (SECTORS - 1) * 512, 1)[0],
            pattern((SECTORS - 1) * 512)
        );
    }
}

#[test]
fn partial_sectors_fail() {
    for engine in engines() {
        let (_d, _p, mut h) = setup(engine);
        let r = h.request(t::IN, 0, &[511], 0);
        let w = h.request(t::OUT, 0, &[100, 300], 0);
        let seg = h.request(t::DISCARD, 0, &[15], 0);
        let none = h.request(t::WRITE_ZEROES, 0, &[], 0);
        h.run();
        for s in [&r, &w, &seg, &none] {
            assert_eq!(h.status(s), status::IOERR, "{engine:?}");
        }
        // Zero-length read and write are fine.
        let z = h.request(t::IN, 5, &[], 0);
        h.run();
        assert_eq!(h.status(&z), status::OK);
    }
}

#[test]
fn too_many_discard_segments_fail() {
    let (_d, _p, mut h) = setup(api::IoEngine::Sync);
    let segs: Vec<_> = (0..33).map(|i| (i, 1, 0)).collect();
    let s = h.dwz(t::DISCARD, &segs);
    h.run();
    assert_eq!(h.status(&s), status::IOERR);
}

#[test]
fn header_and_data_may_share_descriptors() {
    // ANY_LAYOUT: header split over two descriptors, the status in the data's last byte.
    let (_d, _p, mut h) = setup(api::IoEngine::Sync);
    let hdr = h.header(t::IN, 2);
    let buf = h.alloc(513, 0xee);
    let head = h.add_chain(&[
        (hdr, 8, false),
        (hdr.unchecked_add(8), 8, false),
        (buf, 513, true),
    ]);
    let used = h.run();
    assert_eq!(used, vec![(head, 513)]);
    let want: Vec<u8> = (1024..1536).map(pattern).collect();
    assert_eq!(h.bytes(buf, 512), want);
    assert_eq!(
        h.mem.read_obj::<u8>(buf.unchecked_add(512)).unwrap(),
        status::OK
    );
}

#[test]
fn io_uring_keeps_many_requests_in_flight() {
    require!("io_uring_keeps_many_requests_in_flight", io_uring());
    let (_d, _p, mut h) = setup(api::IoEngine::IoUring);
    let reqs: Vec<_> = (0..64)
        .map(|i| h.request(t::IN, i % SECTORS, &[512], 0))
        .collect();
    h.kick().unwrap();
    assert_eq!(
        h.worker.in_flight(),
        64,
        "submitted, answered on completion"
    );
    assert_eq!(h.take_used().len(), 0);
    let used = h.run_until(64);
    assert_eq!(used.len(), 64);
    assert_eq!(h.worker.in_flight(), 0);
    for (i, r) in reqs.iter().enumerate() {
        let off = (i as u64 % SECTORS) * 512;
        assert_eq!(
            h.bytes(r.data[0].0, 512),
            (off..off + 512).map(pattern).collect::<Vec<_>>()
        );
        assert_eq!(h.status(r), status::OK);
    }
}

#[test]
fn io_uring_flush_waits_for_earlier_writes() {
    require!("io_uring_flush_waits_for_earlier_writes", io_uring());
    let (_d, path, mut h) = setup(api::IoEngine::IoUring);
    let writes: Vec<_> = (0..16)
        .map(|i| h.request(t::OUT, i * 4, &[2048], i as u8))
        .collect();
    let f = h.request(t::FLUSH, 0, &[], 0);
    let used = h.run();
    // IO_DRAIN: the flush completes after every write submitted before it.
    assert_eq!(used.last().map(|u| u.0), Some(f.head));
    assert_eq!(h.status(&f), status::OK);
    for (i, w) in writes.iter().enumerate() {
        assert_eq!(h.status(w), status::OK);
        assert_eq!(
            file_bytes(&path, i as u64 * 2048, 2048),
            vec![i as u8; 2048]
        );
    }
}

#[test]
fn status_preset_is_overwritten_for_each_answer() {
    // A request with the status byte already at OK still gets IOERR when it fails.
    let (_d, _p, mut h) = setup(api::IoEngine::Sync);
    let r = h.request(t::IN, SECTORS, &[512], 0);
    h.mem.write_obj(status::OK, r.status).unwrap();
    h.run();
    assert_eq!(h.status(&r), status::IOERR);
}
