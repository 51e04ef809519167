//! The device as the transport sees it: identity, configuration space, creation errors,
//! and a run on its worker thread behind the virtio-mmio transport.

use std::time::Instant;

use virtio_devices::device::{VirtioDevice, device_type, features};
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::MmioDriver;

use super::*;
use crate::device::{F_STREAM, Vsock, VsockError};
use crate::unix::UnixError;

fn config(dir: &TempDir, cid: u32) -> api::VsockConfig {
    api::VsockConfig {
        cid,
        socket: dir.path().join("dev.sock"),
    }
}

#[test]
fn identity_and_configuration_space() {
    let dir = TempDir::new();
    let dev = Vsock::new(&config(&dir, 0x1_2345), "vsock-test").unwrap();
    assert_eq!(dev.device_type(), device_type::VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.features(), features::COMMON | F_STREAM);
    assert_eq!(dev.name(), "virtio-vsock");
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 0x1_2345);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.read_config(8, &mut hi);
    assert_eq!(hi, [0; 4], "past the config space");
    assert!(dir.path().join("dev.sock").exists());
    drop(dev);
    assert!(
        !dir.path().join("dev.sock").exists(),
        "socket removed with the device"
    );
}

#[test]
fn creation_errors_are_clear() {
    let dir = TempDir::new();
    for cid in [0, 1, 2, u32::MAX] {
        assert!(matches!(
            Vsock::new(&config(&dir, cid), "v"),
            Err(VsockError::ReservedCid(_))
        ));
    }
    let _first = Vsock::new(&config(&dir, 3), "v").unwrap();
    let e = Vsock::new(&config(&dir, 4), "v").err().unwrap();
    assert!(matches!(e, VsockError::Socket(UnixError::InUse(_))), "{e}");
    assert!(e.to_string().contains("in use"), "{e}");
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Negotiate, set up the three queues and start the device; returns the queue drivers.
fn start(t: &mut MmioTransport, mem: &VmMemory) -> (QueueDriver, QueueDriver) {
    let mut d = MmioDriver(t);
    assert!(d.negotiate(features::VERSION_1 | F_STREAM));
    let mut drivers = Vec::new();
    for i in 0..3u32 {
        let (drv, _) = QueueDriver::create(mem, GuestAddress(0x1_0000 * u64::from(i + 1)));
        let (desc, avail, used) = drv.addrs();
        d.setup_queue(i, u32::from(QUEUE_SIZE), desc, avail, used);
        drivers.push(drv);
    }
    d.driver_ok();
    assert!(t.is_activated());
    let mut it = drivers.into_iter();
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn runs_on_its_worker_thread_behind_mmio_and_resets() {
    let dir = TempDir::new();
    let cfg = config(&dir, 3);
    let mem = guest_memory(MEM_SIZE);
    let dev = Vsock::new(&cfg, "vsock-mmio").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();

    for round in 0..2 {
        // Fresh rings each round (a reset forgets the old ones).
        mem.write_slice(&vec![0u8; 0x3_0000], GuestAddress(0x1_0000))
            .unwrap();
        let (mut rx, _tx) = start(&mut t, &mem);
        let buf = DATA_START + 0x1000 * round;
        rx.add(
            &mem,
            &[Desc {
                addr: buf,
                len: RX_BUF,
                write: true,
            }],
            None,
        );
        MmioDriver(&mut t).write(0x50, 0);

        // A host process connects while the device runs: the worker thread wakes on its
        // inner epoll and sends the guest a REQUEST.
        let mut s = UnixStream::connect(&cfg.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"CONNECT 80\n").unwrap();
        let mut used = Vec::new();
        wait_for("the REQUEST", || {
            used.extend(rx.take_used(&mem));
            !used.is_empty()
        });
        let mut raw = [0u8; HDR_SIZE];
        mem.read_slice(&mut raw, GuestAddress(buf)).unwrap();
        let req = Header::from_bytes(&raw);
        assert_eq!((req.op, req.dst_port, req.dst_cid), (op::REQUEST, 80, CID));
        wait_for("the interrupt", || t.interrupt_evt().read().is_ok());

        // Reset: the connection is dropped, the socket stays.
        MmioDriver(&mut t).write(0x70, 0);
        assert!(!t.is_activated());
        assert!(host_sees_eof(&mut s), "round {round}");
    }
}
