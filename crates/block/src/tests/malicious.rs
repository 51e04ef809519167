//! Chains a hostile or broken driver could offer: the device answers with an error
//! status (or nothing when there is no status byte), never panics, and never touches
//! memory or disk outside what the chain allows.

use vm_memory::{Bytes, GuestAddress};

use super::harness::*;
use crate::request::{req_type as t, status};

const SECTORS: u64 = 32;
const OUTSIDE: u64 = MEM_SIZE as u64 + 0x1000;

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "m.raw", SECTORS);
    let h = Harness::open(&disk_cfg(&path, api::IoEngine::Sync));
    (dir, path, h)
}

fn unchanged_disk(path: &std::path::Path) {
    let want: Vec<u8> = (0..SECTORS * 512).map(pattern).collect();
    assert_eq!(
        file_bytes(path, 0, want.len()),
        want,
        "the disk was not touched"
    );
}

#[test]
fn data_buffer_outside_memory_is_an_ioerr() {
    let (_d, path, mut h) = setup();
    let hdr = h.header(t::OUT, 0);
    let st = h.alloc(1, 0xff);
    let head = h.add_chain(&[
        (hdr, 16, false),
        (GuestAddress(OUTSIDE), 512, false),
        (st, 1, true),
    ]);
    // Straddling the end of memory.
    let hdr2 = h.header(t::IN, 0);
    let st2 = h.alloc(1, 0xff);
    let head2 = h.add_chain(&[
        (hdr2, 16, false),
        (GuestAddress(MEM_SIZE as u64 - 256), 512, true),
        (st2, 1, true),
    ]);
    // Address + length wraps around.
    let hdr3 = h.header(t::IN, 0);
    let st3 = h.alloc(1, 0xff);
    h.add_chain(&[
        (hdr3, 16, false),
        (GuestAddress(u64::MAX - 100), 512, true),
        (st3, 1, true),
    ]);
    let used = h.run();
    assert_eq!(used[0], (head, 1));
    assert_eq!(used[1], (head2, 1));
    for s in [st, st2, st3] {
        assert_eq!(h.mem.read_obj::<u8>(s).unwrap(), status::IOERR);
    }
    // Nothing read into the in-memory part of the straddling buffer.
    assert_eq!(
        h.bytes(GuestAddress(MEM_SIZE as u64 - 256), 256),
        vec![0u8; 256]
    );
    unchanged_disk(&path);
}

#[test]
fn header_outside_memory_or_writable_or_short_is_an_ioerr() {
    let (_d, path, mut h) = setup();
    let st1 = h.alloc(1, 0xff);
    h.add_chain(&[(GuestAddress(OUTSIDE), 16, false), (st1, 1, true)]);
    let hdr = h.header(t::OUT, 0);
    let st2 = h.alloc(1, 0xff);
    h.add_chain(&[(hdr, 16, true), (st2, 1, true)]);
    let hdr = h.header(t::OUT, 0);
    let st3 = h.alloc(1, 0xff);
    h.add_chain(&[(hdr, 12, false), (st3, 1, true)]);
    let used = h.run();
    assert_eq!(used.len(), 3);
    for s in [st1, st2, st3] {
        assert_eq!(h.mem.read_obj::<u8>(s).unwrap(), status::IOERR);
    }
    // The writable "header" was not written apart from... nothing: it is not the status.
    assert_eq!(h.bytes(hdr, 4), 1u32.to_le_bytes());
    unchanged_disk(&path);
}

#[test]
fn missing_or_empty_status_gets_no_answer_byte() {
    let (_d, path, mut h) = setup();
    // Last descriptor device-readable.
    let hdr = h.header(t::OUT, 0);
    let data = h.alloc(512, 0x33);
    let h1 = h.add_chain(&[(hdr, 16, false), (data, 512, false)]);
    // Zero-length status descriptor.
    let hdr = h.header(t::IN, 0);
    let buf = h.alloc(512, 0xee);
    let st = h.alloc(1, 0xff);
    let h2 = h.add_chain(&[(hdr, 16, false), (buf, 512, true), (st, 0, true)]);
    // Status outside memory.
    let hdr = h.header(t::IN, 0);
    let buf3 = h.alloc(512, 0xee);
    let h3 = h.add_chain(&[
        (hdr, 16, false),
        (buf3, 512, true),
        (GuestAddress(OUTSIDE), 1, true),
    ]);
    let used = h.run();
    assert_eq!(used, vec![(h1, 0), (h2, 0), (h3, 0)]);
    assert_eq!(h.mem.read_obj::<u8>(st).unwrap(), 0xff);
    assert_eq!(h.bytes(buf, 512), vec![0xee; 512], "no data read either");
    assert_eq!(h.bytes(buf3, 512), vec![0xee; 512]);
    unchanged_disk(&path);
}

#[test]
fn readable_after_writable_is_an_ioerr() {
    let (_d, path, mut h) = setup();
    let hdr = h.header(t::OUT, 0);
    let w = h.alloc(512, 0);
    let r = h.alloc(512, 0x44);
    let st = h.alloc(1, 0xff);
    h.add_chain(&[
        (hdr, 16, false),
        (w, 512, true),
        (r, 512, false),
        (st, 1, true),
    ]);
    h.run();
    assert_eq!(h.mem.read_obj::<u8>(st).unwrap(), status::IOERR);
    unchanged_disk(&path);
}

#[test]
fn zero_length_data_descriptors_are_ignored() {
    let (_d, _p, mut h) = setup();
    let hdr = h.header(t::IN, 1);
    let a = h.alloc(512, 0xee);
    let st = h.alloc(1, 0xff);
    let head = h.add_chain(&[
        (hdr, 16, false),
        (GuestAddress(OUTSIDE), 0, true),
        (a, 512, true),
        (GuestAddress(0), 0, true),
        (st, 1, true),
    ]);
    let used = h.run();
    assert_eq!(used, vec![(head, 513)]);
    assert_eq!(h.mem.read_obj::<u8>(st).unwrap(), status::OK);
    assert_eq!(
        h.bytes(a, 512),
        (512..1024).map(pattern).collect::<Vec<_>>()
    );
}

#[test]
fn descriptor_loops_and_bad_indices_are_dropped() {
    let (_d, path, mut h) = setup();
    let hdr = h.header(t::OUT, 0);
    let data = h.alloc(512, 0x99);
    let st = h.alloc(1, 0xff);
    // 0 -> 1 -> 2 -> 1: a loop whose every descriptor has NEXT.
    h.set_desc(
        0,
        D {
            addr: hdr.0,
            len: 16,
            flags: NEXT,
            next: 1,
        },
    );
    h.set_desc(
        1,
        D {
            addr: data.0,
            len: 512,
            flags: NEXT,
            next: 2,
        },
    );
    h.set_desc(
        2,
        D {
            addr: st.0,
            len: 1,
            flags: WRITE | NEXT,
            next: 1,
        },
    );
    h.push_avail(0);
    // 3 -> index past the queue.
    h.set_desc(
        3,
        D {
            addr: hdr.0,
            len: 16,
            flags: NEXT,
            next: 999,
        },
    );
    h.push_avail(3);
    // A self loop.
    h.set_desc(
        4,
        D {
            addr: st.0,
            len: 1,
            flags: WRITE | NEXT,
            next: 4,
        },
    );
    h.push_avail(4);
    let used = h.run();
    assert_eq!(used, vec![(0, 0), (3, 0), (4, 0)]);
    assert_eq!(
        h.mem.read_obj::<u8>(st).unwrap(),
        0xff,
        "no status for a broken chain"
    );
    unchanged_disk(&path);
}

#[test]
fn indirect_tables_work_and_bad_ones_are_dropped() {
    let (_d, path, mut h) = setup();
    // A good indirect request: header, data, status in a table.
    let hdr = h.header(t::IN, 4);
    let buf = h.alloc(1024, 0xee);
    let st = h.alloc(1, 0xff);
    let table = INDIRECT_BASE;
    h.set_indirect(
        table,
        &[
            D {
                addr: hdr.0,
                len: 16,
                flags: NEXT,
                next: 1,
            },
            D {
                addr: buf.0,
                len: 1024,
                flags: WRITE | NEXT,
                next: 2,
            },
            D {
                addr: st.0,
                len: 1,
                flags: WRITE,
                next: 0,
            },
        ],
    );
    h.set_desc(
        10,
        D {
            addr: table,
            len: 48,
            flags: INDIRECT,
            next: 0,
        },
    );
    h.push_avail(10);
    // A table outside memory.
    h.set_desc(
        11,
        D {
            addr: OUTSIDE,
            len: 48,
            flags: INDIRECT,
            next: 0,
        },
    );
    h.push_avail(11);
    // A table whose length is not a whole number of descriptors.
    h.set_desc(
        12,
        D {
            addr: table,
            len: 40,
            flags: INDIRECT,
            next: 0,
        },
    );
    h.push_avail(12);
    // A nested indirect descriptor.
    let t2 = INDIRECT_BASE + 0x1000;
    h.set_indirect(
        t2,
        &[
            D {
                addr: hdr.0,
                len: 16,
                flags: NEXT,
                next: 1,
            },
            D {
                addr: table,
                len: 48,
                flags: INDIRECT,
                next: 0,
            },
        ],
    );
    h.set_desc(
        13,
        D {
            addr: t2,
            len: 32,
            flags: INDIRECT,
            next: 0,
        },
    );
    h.push_avail(13);
    let used = h.run();
    assert_eq!(used, vec![(10, 1025), (11, 0), (12, 0), (13, 0)]);
    assert_eq!(
        h.bytes(buf, 1024),
        (2048..3072).map(pattern).collect::<Vec<_>>()
    );
    unchanged_disk(&path);
}

#[test]
fn overlong_chains_are_dropped() {
    let (_d, _p, mut h) = setup();
    let hdr = h.header(t::IN, 0);
    let st = h.alloc(1, 0xff);
    // An indirect table of 2000 one-byte... zero-length descriptors, then a status.
    let n = 2000u16;
    let mut descs: Vec<D> = (0..n - 1)
        .map(|i| D {
            addr: hdr.0,
            len: 0,
            flags: WRITE | NEXT,
            next: i + 1,
        })
        .collect();
    descs[0] = D {
        addr: hdr.0,
        len: 16,
        flags: NEXT,
        next: 1,
    };
    descs.push(D {
        addr: st.0,
        len: 1,
        flags: WRITE,
        next: 0,
    });
    h.set_indirect(INDIRECT_BASE, &descs);
    h.set_desc(
        0,
        D {
            addr: INDIRECT_BASE,
            len: u32::from(n) * 16,
            flags: INDIRECT,
            next: 0,
        },
    );
    h.push_avail(0);
    let used = h.run();
    assert_eq!(used, vec![(0, 0)]);
}

#[test]
fn garbage_avail_index_is_a_worker_error_not_a_panic() {
    let (_d, _p, mut h) = setup();
    // avail.idx far ahead of what the device has seen.
    h.mem.write_obj(1000u16, h.avail_idx_addr()).unwrap();
    assert!(h.kick().is_err());
}

#[test]
fn request_pointing_at_the_queue_itself_stays_in_bounds() {
    // A read whose data buffer is the descriptor table: allowed (guest memory), the
    // device still finishes and the used ring is coherent.
    let (_d, _p, mut h) = setup();
    let hdr = h.header(t::IN, 0);
    let st = h.alloc(1, 0xff);
    // Desc table lives at 0x1_0000; read 512 bytes of disk over descriptors 32..64.
    let head = h.add_chain(&[
        (hdr, 16, false),
        (GuestAddress(0x1_0000 + 32 * 16), 512, true),
        (st, 1, true),
    ]);
    let used = h.run();
    assert_eq!(used, vec![(head, 513)]);
    assert_eq!(
        h.bytes(GuestAddress(0x1_0000 + 32 * 16), 4),
        (0..4).map(pattern).collect::<Vec<_>>()
    );
}
