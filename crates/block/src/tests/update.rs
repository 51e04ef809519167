//! Changing a disk under a running device: a new image (requests in flight on the old
//! one finish there first, the capacity follows, the driver gets a configuration-change
//! interrupt, the old file is left alone) and new rate limits.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::require;
use virtio_devices::device::{VirtioDevice, VmMemory, features as f};
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::{MmioDriver, guest_memory};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::harness::*;
use crate::device::{Block, CONFIG_SIZE};
use crate::request::{SECTOR_SIZE, req_type as t, status};
use crate::worker::OpenedDisk;

const BLK_F_RO: u64 = 1 << 5;
/// Interrupt status: configuration changed.
const INT_CONFIG: u32 = 2;

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

/// A raw image of `sectors` sectors filled with `byte`.
fn filled_image(dir: &Path, name: &str, sectors: u64, byte: u8) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![byte; (sectors * SECTOR_SIZE) as usize]).unwrap();
    path
}

#[test]
fn in_flight_requests_finish_on_the_old_image_then_the_new_one_serves() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let old = filled_image(dir.path(), "old.raw", 64, 0x11);
        let new = filled_image(dir.path(), "new.raw", 128, 0x22);
        let mut h = Harness::open(&disk_cfg(&old, engine));
        // Taken (in flight with io_uring, done with sync I/O) before the swap.
        let writes: Vec<_> = (0..8).map(|i| h.request(t::OUT, i, &[512], 0xa0)).collect();
        h.kick().unwrap();
        let disk = OpenedDisk::open(&new, api::DiskFormat::Raw, false).unwrap();
        assert_eq!(disk.capacity_sectors(), 128);
        let mem = h.mem.clone();
        h.worker
            .replace_disk(disk, &mut h.queue, mem.as_ref(), &h.irq)
            .unwrap();
        assert_eq!(h.worker.in_flight(), 0, "{engine:?}");
        assert_eq!(h.worker.capacity_sectors(), 128);
        let used = h.take_used();
        assert_eq!(used.len(), 8, "{engine:?}: every request answered");
        assert!(writes.iter().all(|w| h.status(w) == status::OK));
        assert_eq!(file_bytes(&old, 0, 8 * 512), vec![0xa0; 8 * 512]);
        assert_eq!(file_bytes(&new, 0, 8 * 512), vec![0x22; 8 * 512]);

        // Now the new image: past the old capacity too; the old file is left alone.
        let w = h.request(t::OUT, 100, &[512], 0xb0);
        let r = h.request(t::IN, 0, &[512], 0);
        let w0 = h.request(t::OUT, 1, &[512], 0xb1);
        assert_eq!(h.run().len(), 3, "{engine:?}");
        assert_eq!(h.status(&w), status::OK, "{engine:?}");
        assert_eq!(h.status(&r), status::OK);
        assert_eq!(h.status(&w0), status::OK);
        assert_eq!(h.bytes(r.data[0].0, 512), vec![0x22; 512]);
        assert_eq!(file_bytes(&new, 100 * 512, 512), vec![0xb0; 512]);
        assert_eq!(file_bytes(&new, 512, 512), vec![0xb1; 512]);
        assert_eq!(file_bytes(&old, 512, 512), vec![0xa0; 512]);
        assert_eq!(std::fs::metadata(&old).unwrap().len(), 64 * 512);
        let past = h.request(t::IN, 128, &[512], 0);
        h.run();
        assert_eq!(h.status(&past), status::IOERR, "past the new end");
    }
}

#[test]
fn a_swap_is_refused_for_an_image_the_engine_cannot_serve() {
    let test = "a_swap_is_refused_for_an_image_the_engine_cannot_serve";
    require!(test, io_uring());
    require!(test, qemu_img_installed());
    let dir = tempfile::tempdir().unwrap();
    let old = filled_image(dir.path(), "old.raw", 64, 0x11);
    let q = dir.path().join("new.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1M"]);
    let mut h = Harness::open(&disk_cfg(&old, api::IoEngine::IoUring));
    let disk = OpenedDisk::open(&q, api::DiskFormat::Qcow2, false).unwrap();
    assert!(h.worker.replace_idle_disk(disk).is_err());
    assert_eq!(h.worker.capacity_sectors(), 64, "the old image stays");
}

/// Driver side of a block device behind the MMIO transport, with requests laid out by
/// hand (three descriptors each) in a 16-entry queue.
struct Driven {
    mem: Arc<VmMemory>,
    tr: MmioTransport,
    vq_desc: GuestAddress,
    vq_avail: GuestAddress,
    vq_used: GuestAddress,
    sent: u16,
}

impl Driven {
    fn new(dev: Block, start: bool) -> Self {
        let mem = guest_memory(1 << 20);
        let mut tr = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
        let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
        let (vq_desc, vq_avail, vq_used) = (vq.desc_table_addr(), vq.avail_addr(), vq.used_addr());
        if start {
            let mut d = MmioDriver(&mut tr);
            assert!(d.negotiate(f::VERSION_1));
            d.setup_queue(0, 16, vq_desc.0, vq_avail.0, vq_used.0);
            d.driver_ok();
            assert!(tr.is_activated());
        }
        Self {
            mem,
            tr,
            vq_desc,
            vq_avail,
            vq_used,
            sent: 0,
        }
    }

    fn block(&mut self) -> &mut Block {
        let dev: &mut dyn Any = self.tr.device_mut();
        dev.downcast_mut::<Block>().unwrap()
    }

    fn reg(&mut self, offset: u64) -> u32 {
        MmioDriver(&mut self.tr).read(offset)
    }

    fn capacity(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.tr.read(0x100, &mut b);
        u64::from_le_bytes(b)
    }

    /// Offer a one-sector request of type `ty` at `sector` (data filled with `fill`)
    /// and kick; returns the status byte's address and the data's.
    fn send(&mut self, ty: u32, sector: u64, fill: u8) -> (GuestAddress, GuestAddress) {
        let k = u64::from(self.sent);
        assert!(k < 5, "the test queue holds five requests");
        let base = GuestAddress(0x8_0000 + k * 0x1000);
        let (hdr, data, st) = (base, base.unchecked_add(0x100), base.unchecked_add(0x400));
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, hdr).unwrap();
        self.mem.write_slice(&[fill; 512], data).unwrap();
        self.mem.write_obj(0xffu8, st).unwrap();
        let write = if ty == t::IN { WRITE } else { 0 };
        let first = 3 * self.sent;
        let descs = [
            (hdr.0, 16, NEXT, first + 1),
            (data.0, 512, NEXT | write, first + 2),
            (st.0, 1, WRITE, 0),
        ];
        for (i, (a, l, fl, n)) in descs.iter().enumerate() {
            let raw = RawDescriptor::from(SplitDescriptor::new(*a, *l, *fl, *n));
            self.mem
                .write_obj(raw, self.vq_desc.unchecked_add(16 * (k * 3 + i as u64)))
                .unwrap();
        }
        self.mem
            .write_obj(first, self.vq_avail.unchecked_add(4 + 2 * k))
            .unwrap();
        self.sent += 1;
        self.mem
            .write_obj(self.sent, self.vq_avail.unchecked_add(2))
            .unwrap();
        MmioDriver(&mut self.tr).write(0x50, 0);
        (st, data)
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.vq_used.unchecked_add(2)).unwrap()
    }

    fn wait_used(&self, n: u16) {
        wait_for("the used ring", || self.used_idx() >= n);
    }

    fn status(&self, st: GuestAddress) -> u8 {
        self.mem.read_obj(st).unwrap()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        MmioDriver(&mut self.tr).write(0x70, 0);
    }
}

#[test]
fn a_running_disk_takes_a_new_image_and_tells_the_driver() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let old = filled_image(dir.path(), "old.raw", 64, 0x11);
        let new = filled_image(dir.path(), "new.raw", 200, 0x22);
        let mut d = Driven::new(
            Block::new(&disk_cfg(&old, engine), "blk-swap").unwrap(),
            true,
        );
        let (st, _) = d.send(t::OUT, 2, 0x33);
        d.wait_used(1);
        assert_eq!(d.status(st), status::OK);
        let generation = d.reg(0xfc);
        let _ = d.tr.interrupt_evt().read();
        MmioDriver(&mut d.tr).write(0x64, 3);

        // A path that cannot be opened: nothing changes.
        let missing = dir.path().join("missing.raw");
        let err = d
            .block()
            .replace_disk(&missing, api::DiskFormat::Raw)
            .unwrap_err();
        assert!(err.to_string().contains("missing.raw"), "{err}");
        assert_eq!(d.capacity(), 64);
        assert_eq!(d.reg(0xfc), generation);
        assert_eq!(d.reg(0x60), 0, "no interrupt");

        assert_eq!(
            d.block().replace_disk(&new, api::DiskFormat::Raw).unwrap(),
            200
        );
        assert_eq!(d.capacity(), 200, "{engine:?}");
        assert_eq!(d.block().capacity_sectors(), 200);
        assert_eq!(d.reg(0xfc), generation.wrapping_add(1), "ConfigGeneration");
        assert_eq!(d.reg(0x60) & INT_CONFIG, INT_CONFIG, "config interrupt");
        assert!(d.tr.interrupt_evt().read().is_ok(), "the irqfd was written");
        assert!(d.block().is_running());

        // The worker serves the new image; the old file is left as it was.
        let (st, _) = d.send(t::OUT, 150, 0x44);
        let (rs, rd) = d.send(t::IN, 2, 0);
        d.wait_used(3);
        assert_eq!(d.status(st), status::OK, "{engine:?}: past the old end");
        assert_eq!(d.status(rs), status::OK);
        let mut got = [0u8; 512];
        d.mem.read_slice(&mut got, rd).unwrap();
        assert_eq!(got, [0x22; 512], "read from the new image");
        assert_eq!(file_bytes(&new, 150 * 512, 512), vec![0x44; 512]);
        assert_eq!(file_bytes(&old, 2 * 512, 512), vec![0x33; 512]);
        let mut want = vec![0x11u8; 64 * 512];
        want[2 * 512..3 * 512].fill(0x33);
        assert_eq!(std::fs::read(&old).unwrap(), want, "old file untouched");
    }
}

#[test]
fn a_read_only_disk_stays_read_only_on_its_new_image() {
    let dir = tempfile::tempdir().unwrap();
    let old = filled_image(dir.path(), "old.raw", 16, 0x11);
    let new = filled_image(dir.path(), "new.raw", 32, 0x22);
    let mut cfg = disk_cfg(&old, api::IoEngine::Sync);
    cfg.readonly = true;
    let mut d = Driven::new(Block::new(&cfg, "blk-ro").unwrap(), true);
    d.block().replace_disk(&new, api::DiskFormat::Raw).unwrap();
    assert_ne!(d.block().features() & BLK_F_RO, 0);
    let (st, _) = d.send(t::OUT, 0, 0x55);
    d.wait_used(1);
    assert_eq!(d.status(st), status::IOERR);
    assert_eq!(std::fs::read(&new).unwrap(), vec![0x22; 32 * 512]);
}

#[test]
fn a_disk_not_started_just_takes_the_new_image() {
    let dir = tempfile::tempdir().unwrap();
    let old = filled_image(dir.path(), "old.raw", 16, 0x11);
    let new = filled_image(dir.path(), "new.raw", 48, 0x22);
    let mut d = Driven::new(
        Block::new(&disk_cfg(&old, api::IoEngine::Sync), "blk-idle").unwrap(),
        false,
    );
    let generation = d.reg(0xfc);
    d.block().replace_disk(&new, api::DiskFormat::Raw).unwrap();
    assert_eq!(d.capacity(), 48);
    assert_eq!(d.reg(0xfc), generation, "no driver to tell");
    assert_eq!(d.reg(0x60), 0);
    assert!(d.tr.interrupt_evt().read().is_err());
    let limit = api::RateLimit {
        ops_per_sec: Some(3),
        bytes_per_sec: None,
        ..Default::default()
    };
    d.block().set_rate_limit(&limit).unwrap();
    assert_eq!(d.block().rate_limit(), Some(limit));
    // The driver starts it: the new image, the new capacity.
    let mut cfg = [0u8; CONFIG_SIZE];
    d.block().read_config(0, &mut cfg);
    assert_eq!(cfg[0..8], 48u64.to_le_bytes());
    let vq = (d.vq_desc, d.vq_avail, d.vq_used);
    let mut drv = MmioDriver(&mut d.tr);
    assert!(drv.negotiate(f::VERSION_1));
    drv.setup_queue(0, 16, vq.0.0, vq.1.0, vq.2.0);
    drv.driver_ok();
    let (st, data) = d.send(t::IN, 40, 0);
    d.wait_used(1);
    assert_eq!(d.status(st), status::OK);
    let mut got = [0u8; 512];
    d.mem.read_slice(&mut got, data).unwrap();
    assert_eq!(got, [0x22; 512]);
    assert_eq!(d.block().rate_limit(), Some(limit), "the worker kept it");
}

#[test]
fn new_limits_reach_a_running_disk_and_release_held_requests() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let path = filled_image(dir.path(), "l.raw", 16, 0x11);
        let mut cfg = disk_cfg(&path, engine);
        // One request a second: the first goes, the others wait about a second each.
        cfg.rate_limit.ops_per_sec = Some(1);
        let mut d = Driven::new(Block::new(&cfg, "blk-limit").unwrap(), true);
        let reqs: Vec<_> = (0..4).map(|i| d.send(t::OUT, i, 0x60 + i as u8)).collect();
        d.wait_used(1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(d.used_idx(), 1, "{engine:?}: held back by the limit");
        let start = Instant::now();
        d.block()
            .set_rate_limit(&api::RateLimit::default())
            .unwrap();
        d.wait_used(4);
        assert!(
            start.elapsed() < Duration::from_millis(800),
            "{engine:?}: released at once, not by the old limit ({:?})",
            start.elapsed()
        );
        assert!(reqs.iter().all(|(st, _)| d.status(*st) == status::OK));
        assert_eq!(d.block().rate_limit(), Some(api::RateLimit::default()));
        // And back to a limit: 2 a second, a fresh bucket of 2.
        let limit = api::RateLimit {
            ops_per_sec: Some(2),
            bytes_per_sec: None,
            ..Default::default()
        };
        d.block().set_rate_limit(&limit).unwrap();
        assert_eq!(d.block().rate_limit(), Some(limit));
        let zero = api::RateLimit {
            ops_per_sec: Some(0),
            bytes_per_sec: None,
            ..Default::default()
        };
        assert!(d.block().set_rate_limit(&zero).is_err());
        assert_eq!(
            d.block().rate_limit(),
            Some(limit),
            "a refused limit changes nothing"
        );
    }
}
