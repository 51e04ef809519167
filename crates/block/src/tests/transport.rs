//! The device behind the virtio-mmio transport with its worker thread: feature
//! negotiation, configuration space, a request end to end, reset and restart.

use std::time::{Duration, Instant};

use virtio_devices::device::{VirtioDevice, device_type, features as f};
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::{MmioDriver, guest_memory};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::harness::*;
use crate::device::Block;
use crate::request::{req_type as t, status};

const BLK_F_RO: u64 = 1 << 5;
const BLK_F_FLUSH: u64 = 1 << 9;
const BLK_F_DISCARD: u64 = 1 << 13;

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn features_and_config_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "c.raw", 100);
    let mut cfg = disk_cfg(&path, api::IoEngine::Sync);
    let dev = Block::new(&cfg, "blk-test").unwrap();
    assert_eq!(dev.device_type(), device_type::BLOCK);
    assert_eq!(dev.queue_max_sizes(), &[256]);
    let feats = dev.features();
    assert_eq!(feats & f::COMMON, f::COMMON);
    assert_ne!(feats & BLK_F_FLUSH, 0);
    assert_ne!(feats & BLK_F_DISCARD, 0);
    assert_eq!(feats & BLK_F_RO, 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 100);
    let mut blk = [0u8; 4];
    dev.read_config(20, &mut blk);
    assert_eq!(u32::from_le_bytes(blk), 512);
    cfg.readonly = true;
    let ro = Block::new(&cfg, "blk-ro").unwrap();
    assert_ne!(ro.features() & BLK_F_RO, 0);
    assert_eq!(ro.features() & BLK_F_DISCARD, 0);
}

#[test]
fn request_through_the_transport_then_reset_and_restart() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_image(dir.path(), "t.raw", 64);
        let mem = guest_memory(1 << 20);
        let dev = Block::new(&disk_cfg(&path, engine), "blk-test").unwrap();
        let mut tr = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
        for round in 0..2u8 {
            let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
            let (hdr, data, st) = (
                GuestAddress(0x8_0000),
                GuestAddress(0x8_1000),
                GuestAddress(0x8_2000),
            );
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&t::OUT.to_le_bytes());
            h[8..16].copy_from_slice(&(5u64 + u64::from(round)).to_le_bytes());
            mem.write_slice(&h, hdr).unwrap();
            mem.write_slice(&[0x60 + round; 512], data).unwrap();
            mem.write_obj(0xffu8, st).unwrap();
            let descs = [
                (hdr.0, 16, NEXT, 1),
                (data.0, 512, NEXT, 2),
                (st.0, 1, WRITE, 0),
            ];
            for (i, (a, l, fl, n)) in descs.iter().enumerate() {
                let raw = virtio_queue::desc::RawDescriptor::from(
                    virtio_queue::desc::split::Descriptor::new(*a, *l, *fl, *n),
                );
                mem.write_obj(raw, vq.desc_table_addr().unchecked_add(16 * i as u64))
                    .unwrap();
            }
            mem.write_obj(0u16, vq.avail_addr().unchecked_add(4))
                .unwrap();
            mem.write_obj(1u16, vq.avail_addr().unchecked_add(2))
                .unwrap();

            let mut d = MmioDriver(&mut tr);
            assert!(d.negotiate(f::VERSION_1 | f::EVENT_IDX | BLK_F_FLUSH));
            d.setup_queue(
                0,
                16,
                vq.desc_table_addr().0,
                vq.avail_addr().0,
                vq.used_addr().0,
            );
            d.driver_ok();
            assert!(tr.is_activated(), "{engine:?} round {round}");
            let mut d = MmioDriver(&mut tr);
            d.write(0x50, 0);
            wait_for("the used ring", || {
                mem.read_obj::<u16>(vq.used_addr().unchecked_add(2))
                    .unwrap()
                    == 1
            });
            assert_eq!(mem.read_obj::<u8>(st).unwrap(), status::OK);
            assert_eq!(
                file_bytes(&path, (5 + u64::from(round)) * 512, 512),
                vec![0x60 + round; 512]
            );
            wait_for("the interrupt", || tr.interrupt_evt().read().is_ok());
            // Reset: the worker stops and hands the disk back; the rings are rebuilt.
            let mut d = MmioDriver(&mut tr);
            d.write(0x70, 0);
            assert!(!tr.is_activated());
            assert_eq!(tr.status(), 0);
            mem.write_slice(&[0u8; 0x1000], GuestAddress(0x1_0000))
                .unwrap();
        }
    }
}
