//! Property test: random descriptor chains (random addresses, lengths, flags, links,
//! indirect tables, headers) never panic the worker, always get exactly one used
//! element, and never change guest memory outside the device-writable buffers they
//! name (or the used ring), nor the disk outside its size.

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::harness::*;

const SECTORS: u64 = 64;
const PLAY: u64 = 0x20_0000;
const PLAY_LEN: u64 = 0x4_0000;

#[derive(Debug, Clone)]
struct RawDesc {
    addr: u64,
    len: u32,
    write: bool,
    indirect: bool,
    next: Option<u16>,
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0..PLAY_LEN).prop_map(|o| PLAY + o),
        1 => Just(MEM_SIZE as u64 - 8),
        1 => Just(MEM_SIZE as u64 + 4096),
        1 => Just(u64::MAX - 3),
        1 => Just(0x1_0000u64),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..64,
        4 => (0u32..9).prop_map(|n| n * 512),
        2 => 0u32..5000,
        1 => Just(u32::MAX),
    ]
}

fn desc() -> impl Strategy<Value = RawDesc> {
    (
        addr(),
        len(),
        any::<bool>(),
        prop::bool::weighted(0.05),
        prop::option::weighted(0.1, 0u16..300),
    )
        .prop_map(|(addr, len, write, indirect, next)| RawDesc {
            addr,
            len,
            write,
            indirect,
            next,
        })
}

fn header() -> impl Strategy<Value = (u32, u64)> {
    let ty = prop_oneof![
        Just(0u32),
        Just(1),
        Just(4),
        Just(8),
        Just(11),
        Just(13),
        any::<u32>()
    ];
    let sector = prop_oneof![
        Just(0u64),
        Just(SECTORS - 1),
        Just(SECTORS),
        0..SECTORS,
        any::<u64>()
    ];
    (ty, sector)
}

/// Writable ranges any chain built from `descs` could legitimately name: every
/// writable descriptor, and every writable entry of any table an indirect one points to.
fn allowed(h: &Harness, descs: &[RawDesc]) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for d in descs {
        if d.indirect {
            for i in 0..u64::from(d.len / 16).min(4096) {
                let mut e = [0u8; 16];
                if h.mem
                    .read_slice(&mut e, GuestAddress(d.addr.wrapping_add(i * 16)))
                    .is_err()
                {
                    break;
                }
                let a = u64::from_le_bytes(e[0..8].try_into().unwrap());
                let l = u32::from_le_bytes(e[8..12].try_into().unwrap());
                let f = u16::from_le_bytes(e[12..14].try_into().unwrap());
                if f & WRITE != 0 {
                    v.push((a, u64::from(l)));
                }
            }
        } else if d.write {
            v.push((d.addr, u64::from(d.len)));
        }
    }
    v
}

fn run_case(descs: Vec<RawDesc>, (ty, sector): (u32, u64), seg: [u8; 16], seed: u64, uring: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "p.raw", SECTORS);
    let engine = if uring {
        // Not quietly replaced by sync I/O: the io_uring cases are reported as skipped
        // (once), a failure under CI=true.
        if let Err(why) = io_uring() {
            static REPORTED: std::sync::Once = std::sync::Once::new();
            REPORTED.call_once(|| {
                let test =
                    "tests::prop::random_chains_never_panic_or_write_outside (io_uring cases)";
                test_support::skip::missing(test, why);
            });
            return;
        }
        api::IoEngine::IoUring
    } else {
        api::IoEngine::Sync
    };
    let mut h = Harness::open(&disk_cfg(&path, engine));
    // Random playground, then a header (and a discard segment) where the chain starts.
    let mut x = seed | 1;
    let play: Vec<u8> = (0..PLAY_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    h.mem.write_slice(&play, GuestAddress(PLAY)).unwrap();
    let first = descs[0].addr;
    if (PLAY..PLAY + PLAY_LEN - 32).contains(&first) {
        let mut hdr = [0u8; 32];
        hdr[0..4].copy_from_slice(&ty.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        hdr[16..32].copy_from_slice(&seg);
        h.mem.write_slice(&hdr, GuestAddress(first)).unwrap();
    }
    let n = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let mut flags = if d.write { WRITE } else { 0 };
        if d.indirect {
            flags |= INDIRECT;
        }
        let next = match d.next {
            Some(n) => {
                flags |= NEXT;
                n
            }
            None if i + 1 < n => {
                flags |= NEXT;
                (i + 1) as u16
            }
            None => 0,
        };
        h.set_desc(
            i as u16,
            D {
                addr: d.addr,
                len: d.len,
                flags,
                next,
            },
        );
    }
    h.push_avail(0);
    let ok = allowed(&h, &descs);
    let mut before = vec![0u8; MEM_SIZE];
    h.mem.read_slice(&mut before, GuestAddress(0)).unwrap();

    let used = h.run_until(1);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, 0);

    let mut after = vec![0u8; MEM_SIZE];
    h.mem.read_slice(&mut after, GuestAddress(0)).unwrap();
    // The used ring (at the queue's end) may change; find it from the harness layout.
    let used_ring = h.used_ring();
    // Compare page by page (fast), then byte by byte where a page differs.
    for (page, (pb, pa)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
        if pb == pa {
            continue;
        }
        for (j, (b, a)) in pb.iter().zip(pa).enumerate() {
            if b == a {
                continue;
            }
            let i = (page * 4096 + j) as u64;
            let inside = |(s, l): (u64, u64)| i >= s && i - s < l;
            assert!(
                inside(used_ring) || ok.iter().any(|r| inside(*r)),
                "byte {i:#x} changed outside the writable buffers {ok:x?}"
            );
        }
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SECTORS * 512);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_chains_never_panic_or_write_outside(
        descs in prop::collection::vec(desc(), 1..8),
        hdr in header(),
        seg in any::<[u8; 16]>(),
        seed in any::<u64>(),
        uring in any::<bool>(),
    ) {
        run_case(descs, hdr, seg, seed, uring);
    }
}
