//! Guest memory the device writes shows up in the memory's dirty bitmap (what a Diff
//! snapshot adds to KVM's dirty log): disk reads on both engines (io_uring's kernel
//! writes guest buffers from their host addresses, past vm-memory), status bytes and
//! GET_ID answers written through `Bytes`; what the device only reads stays clean.

use std::collections::BTreeSet;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::harness::*;
use crate::request::req_type as t;
use virtio_devices::device::VmMemory;

const SECTORS: u64 = 64;
const PAGE: u64 = 4096;

/// The dirty pages (guest page numbers) of `mem`'s single region; clears the bitmap.
fn take_dirty(mem: &VmMemory) -> BTreeSet<u64> {
    let region = mem.iter().next().unwrap();
    let words = std::ops::Deref::deref(region).bitmap().get_and_reset();
    let mut pages = BTreeSet::new();
    for (w, word) in words.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                pages.insert(w as u64 * 64 + bit);
            }
        }
    }
    pages
}

/// The pages `len` bytes at `addr` cover.
fn pages_of(addr: GuestAddress, len: u32) -> BTreeSet<u64> {
    (addr.0 / PAGE..=(addr.0 + u64::from(len) - 1) / PAGE).collect()
}

fn setup(engine: api::IoEngine) -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "disk.raw", SECTORS);
    let h = Harness::open(&disk_cfg(&path, engine));
    (dir, h)
}

#[test]
fn a_disk_read_marks_its_buffers_dirty_on_both_engines() {
    for engine in engines() {
        let (_d, mut h) = setup(engine);
        // Buffers over several pages, not page aligned.
        let r = h.request(t::IN, 2, &[4096, 8192, 512], 0);
        // Setting the request up wrote guest memory through `Bytes`: forget that.
        take_dirty(&h.mem);
        let used = h.run();
        assert_eq!(used.len(), 1, "{engine:?}");
        let dirty = take_dirty(&h.mem);
        for (addr, len) in &r.data {
            for p in pages_of(*addr, *len) {
                assert!(
                    dirty.contains(&p),
                    "{engine:?}: page {p} of the read buffer"
                );
            }
        }
        // The status byte (through `Bytes`) too.
        assert!(dirty.contains(&(r.status.0 / PAGE)), "{engine:?}");
        // The data landed, so the pages marked are the ones written.
        let (addr, len) = r.data[1];
        let want: Vec<u8> = (0..u64::from(len))
            .map(|i| pattern(2 * 512 + 4096 + i))
            .collect();
        assert_eq!(h.bytes(addr, len), want, "{engine:?}");
    }
}

#[test]
fn a_disk_write_leaves_its_buffers_clean() {
    for engine in engines() {
        let (_d, mut h) = setup(engine);
        let w = h.request(t::OUT, 4, &[8192], 0xab);
        take_dirty(&h.mem);
        h.run();
        let dirty = take_dirty(&h.mem);
        let (addr, len) = w.data[0];
        // Pages holding only the write's data are read, not written.
        let inner: BTreeSet<u64> = pages_of(addr, len)
            .into_iter()
            .filter(|p| *p != w.status.0 / PAGE && *p != (addr.0 - 16) / PAGE)
            .collect();
        assert!(!inner.is_empty());
        assert!(inner.is_disjoint(&dirty), "{engine:?}: {dirty:?}");
        assert!(dirty.contains(&(w.status.0 / PAGE)), "{engine:?}");
    }
}

#[test]
fn a_get_id_answer_through_bytes_is_dirty() {
    let (_d, mut h) = setup(api::IoEngine::Sync);
    let r = h.request(t::GET_ID, 0, &[20], 0);
    take_dirty(&h.mem);
    h.run();
    let dirty = take_dirty(&h.mem);
    assert!(pages_of(r.data[0].0, 20).is_subset(&dirty), "{dirty:?}");
}
