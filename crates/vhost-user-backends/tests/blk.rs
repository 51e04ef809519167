//! A disk image behind a vhost-user socket, driven by vhost's own frontend: write and
//! read back, flush, GET_ID, a sector past the end, a read-only disk, the configuration
//! space, and a ring stopped and set up again (as QEMU does on a guest reboot).

mod common;

use common::*;
use test_support::require;
use vhost::VhostBackend;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost_user_backends::BlkServed;
use vhost_user_backends::served::Served;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use virtio_devices::device::features;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use block::request::{req_type, status};

const QSIZE: u16 = 64;
/// 1 MiB disk.
const DISK_SECTORS: u64 = 2048;
const SERIAL: &str = "vu-blk-serial-01";

/// Where the test puts request headers, data and status bytes.
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;

/// A disk image of DISK_SECTORS sectors, and the served device on it.
fn disk(extra: &str) -> (TempPath, BlkServed) {
    let image = TempPath::new("disk");
    std::fs::File::create(&image.0)
        .unwrap()
        .set_len(DISK_SECTORS * 512)
        .unwrap();
    let cfg: api::DiskConfig = format!("path={},serial={SERIAL}{extra}", image.0.display())
        .parse()
        .unwrap();
    let served = BlkServed::new(&cfg).unwrap();
    (image, served)
}

/// The driver's side of one request queue: each request uses its own slot `n` of the
/// header, data and status areas.
struct Driver<'a> {
    vq: TestQueue<'a>,
    fds: QueueFds,
    n: u64,
}

impl<'a> Driver<'a> {
    fn start(fe: &mut Frontend, mem: &'a GuestMemoryMmap<()>, base: u64) -> Self {
        let vq = TestQueue::new(mem, GuestAddress(base), QSIZE);
        let fds = setup_queue(fe, 0, &vq);
        Self { vq, fds, n: 0 }
    }

    /// Send one request with a data buffer of `len` bytes (device-writable if
    /// `data_in`); wait for it; return its status and the data buffer's address.
    fn request(&mut self, kind: u32, sector: u64, data: Option<(&[u8], u32, bool)>) -> (u8, u64) {
        let mem = self.vq.mem();
        let n = self.n;
        self.n += 1;
        let hdr = HDR + n * 16;
        let buf = DATA + n * 0x1000;
        let st = STATUS + n;
        mem.write_obj(kind, GuestAddress(hdr)).unwrap();
        mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
        let mut chain = vec![(hdr, 16, 0)];
        if let Some((bytes, len, data_in)) = data {
            mem.write_slice(bytes, GuestAddress(buf)).unwrap();
            chain.push((buf, len, if data_in { WRITE } else { 0 }));
        }
        chain.push((st, 1, WRITE));
        let used_before = self.vq.used_idx();
        // With EVENT_IDX: "interrupt me once this request is used".
        self.vq.set_used_event(used_before);
        self.vq.add_chain(&chain);
        self.fds.kick.write(1).unwrap();
        wait_for("the request to be used", || {
            self.vq.used_idx() == used_before.wrapping_add(1)
        });
        wait_for("the call eventfd", || called(&self.fds.call));
        (mem.read_obj::<u8>(GuestAddress(st)).unwrap(), buf)
    }

    fn write(&mut self, sector: u64, bytes: &[u8]) -> u8 {
        self.request(
            req_type::OUT,
            sector,
            Some((bytes, bytes.len() as u32, false)),
        )
        .0
    }

    fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
        let zeros = vec![0u8; len as usize];
        let (st, buf) = self.request(req_type::IN, sector, Some((&zeros, len, true)));
        let mut out = vec![0u8; len as usize];
        self.vq
            .mem()
            .read_slice(&mut out, GuestAddress(buf))
            .unwrap();
        (st, out)
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..512u32)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

/// Write, read back, flush, GET_ID and a sector past the end, on `engine`.
fn requests_on(engine: &str) {
    let (image, served) = disk(&format!(",io={engine}"));
    let server = Running::start(served);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    let offered = handshake(&mut fe, &mem, features::COMMON | 1 << VIRTIO_BLK_F_FLUSH);
    assert_ne!(offered & (1 << VIRTIO_BLK_F_FLUSH), 0, "FLUSH offered");
    assert_eq!(offered & (1 << VIRTIO_BLK_F_RO), 0, "writable disk");
    let mut drv = Driver::start(&mut fe, &mem, 0x1_0000);

    let data = pattern(0x5a);
    assert_eq!(drv.write(7, &data), status::OK);
    let (st, back) = drv.read(7, 512);
    assert_eq!(st, status::OK);
    assert_eq!(back, data, "read back what was written");
    assert_eq!(drv.request(req_type::FLUSH, 0, None).0, status::OK);
    // On the image itself, at byte 7 * 512.
    let on_disk = std::fs::read(&image.0).unwrap();
    assert_eq!(&on_disk[7 * 512..8 * 512], &data[..]);

    let (st, buf) = drv.request(req_type::GET_ID, 0, Some((&[0u8; 20], 20, true)));
    assert_eq!(st, status::OK);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(buf)).unwrap();
    assert_eq!(&id[..SERIAL.len()], SERIAL.as_bytes());

    // The last sector is fine; one past it is not.
    assert_eq!(drv.read(DISK_SECTORS - 1, 512).0, status::OK);
    assert_eq!(drv.read(DISK_SECTORS, 512).0, status::IOERR);
    assert_eq!(drv.write(DISK_SECTORS, &data), status::IOERR);
    assert_eq!(drv.read(u64::MAX, 512).0, status::IOERR);

    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn blk_write_read_flush_get_id_and_out_of_range_sync() {
    requests_on("sync");
}

#[test]
fn blk_write_read_flush_get_id_and_out_of_range_io_uring() {
    // io_uring's completions arrive on an extra fd the adapter registers with the
    // daemon's event loop.
    require!(
        "blk_write_read_flush_get_id_and_out_of_range_io_uring",
        block::io_uring_available(),
        "io_uring is not available on this host (io_uring_setup fails)"
    );
    requests_on("uring");
}

#[test]
fn blk_read_only_disk_refuses_writes() {
    let (image, served) = disk(",readonly");
    std::fs::write(&image.0, vec![0x11u8; (DISK_SECTORS * 512) as usize]).unwrap();
    assert!(served.readonly());
    assert_ne!(served.features() & (1 << VIRTIO_BLK_F_RO), 0, "RO offered");
    let server = Running::start(served);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::COMMON | 1 << VIRTIO_BLK_F_RO);
    let mut drv = Driver::start(&mut fe, &mem, 0x1_0000);
    assert_eq!(drv.write(0, &pattern(1)), status::IOERR);
    let (st, back) = drv.read(0, 512);
    assert_eq!(st, status::OK);
    assert_eq!(back, vec![0x11u8; 512], "the image is unchanged");
    drop(fe);
    assert!(server.join().is_ok());
    assert!(std::fs::read(&image.0).unwrap().iter().all(|b| *b == 0x11));
}

#[test]
fn blk_config_space_through_get_config() {
    let (_image, served) = disk("");
    let server = Running::start(served);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::COMMON);
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(vhost::vhost_user::VhostUserProtocolFeatures::CONFIG));

    let (_, capacity) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(capacity, DISK_SECTORS.to_le_bytes(), "capacity in sectors");
    let (_, whole) = fe
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    assert_eq!(whole[12..16], block::SEG_MAX.to_le_bytes(), "seg_max");
    assert_eq!(whole[20..24], 512u32.to_le_bytes(), "blk_size");

    // The configuration space is read-only: a write is accepted and changes nothing.
    fe.set_config(0, VhostUserConfigFlags::WRITABLE, &[0xff; 8])
        .unwrap();
    let (_, again) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(again, DISK_SECTORS.to_le_bytes());
    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn blk_ring_stopped_and_set_up_again_keeps_serving_the_same_disk() {
    let (image, served) = disk("");
    let server = Running::start(served);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::COMMON);
    let mut drv = Driver::start(&mut fe, &mem, 0x1_0000);
    let data = pattern(0x3c);
    assert_eq!(drv.write(100, &data), status::OK);
    // The image stays open across stops: the path is not needed again.
    std::fs::remove_file(&image.0).unwrap();
    let served_so_far = drv.vq.used_idx();
    // The frontend stops the ring (QEMU on a guest reboot): GET_VRING_BASE says where
    // the device stopped.
    assert_eq!(fe.get_vring_base(0).unwrap(), u32::from(served_so_far));

    // The rebooted driver sets the ring up afresh elsewhere; the disk is the same.
    let n = drv.n;
    let mut drv2 = Driver::start(&mut fe, &mem, 0x4_0000);
    drv2.n = n;
    let (st, back) = drv2.read(100, 512);
    assert_eq!(st, status::OK);
    assert_eq!(back, data, "written before the stop, read after it");
    assert_eq!(drv2.write(101, &pattern(9)), status::OK);

    // Twice more, with a device reset in between.
    fe.get_vring_base(0).unwrap();
    fe.reset_device().unwrap();
    let offered = fe.get_features().unwrap();
    fe.set_features((offered & features::COMMON) | PROTOCOL_FEATURES)
        .unwrap();
    let n = drv2.n;
    let mut drv3 = Driver::start(&mut fe, &mem, 0x8_0000);
    drv3.n = n;
    assert_eq!(drv3.read(101, 512), (status::OK, pattern(9)));
    drop(fe);
    assert!(server.join().is_ok());
}
