//! The entropy device behind a vhost-user socket, driven by vhost's own frontend:
//! requests, EVENT_IDX, ring stop and restart, a corrupt ring, disconnects, garbage.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;
use vhost_user_backends::{RngServed, ServeError, Server};
use virtio_devices::device::features;
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 16;
const BUF: GuestAddress = GuestAddress(0x10_0000);

/// Offer buffer number `n` (4 KiB apart from BUF) of `len` bytes.
fn offer_buffer(q: &mut TestQueue<'_>, n: u16, len: u32) -> u16 {
    q.add_chain(&[(BUF.0 + u64::from(n) * 0x1000, len, WRITE)])
}

#[test]
fn rng_fills_a_buffer_and_signals_the_call_fd() {
    let server = Running::start(RngServed);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    let offered = handshake(&mut fe, &mem, features::COMMON);
    assert_eq!(offered & features::COMMON, features::COMMON);
    assert_eq!(fe.get_queue_num().unwrap(), 1);

    let mut vq = TestQueue::new(&mem, GuestAddress(0x1_0000), QSIZE);
    mem.write_slice(&[0u8; 256], BUF).unwrap();
    offer_buffer(&mut vq, 0, 256);
    let fds = setup_queue(&mut fe, 0, &vq);
    fds.kick.write(1).unwrap();

    wait_for("the used ring", || vq.used_idx() == 1);
    assert_eq!(vq.used_elem(0), (0, 256));
    let mut got = [0u8; 256];
    mem.read_slice(&mut got, BUF).unwrap();
    assert!(
        got.iter().filter(|&&b| b != 0).count() > 200,
        "random bytes written"
    );
    wait_for("the call eventfd", || called(&fds.call));

    // A second request on the same ring.
    offer_buffer(&mut vq, 1, 64);
    fds.kick.write(1).unwrap();
    wait_for("the second request", || vq.used_idx() == 2);
    assert_eq!(vq.used_elem(1), (1, 64));
    assert_eq!(fe.get_vring_base(0).unwrap(), 2, "next avail after stop");

    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn event_idx_suppresses_the_call_when_the_driver_asks() {
    let server = Running::start(RngServed);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::COMMON);
    let mut vq = TestQueue::new(&mem, GuestAddress(0x1_0000), QSIZE);
    // used_event = 5: "interrupt me when the used index passes 5".
    vq.set_used_event(5);
    offer_buffer(&mut vq, 0, 32);
    let fds = setup_queue(&mut fe, 0, &vq);
    fds.kick.write(1).unwrap();
    wait_for("the used ring", || vq.used_idx() == 1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!called(&fds.call), "no interrupt before used_event");

    // used_event = 1: the next used buffer (idx 1 -> 2) crosses it.
    vq.set_used_event(1);
    offer_buffer(&mut vq, 1, 32);
    fds.kick.write(1).unwrap();
    wait_for("the second used buffer", || vq.used_idx() == 2);
    wait_for("the call eventfd", || called(&fds.call));
    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn without_event_idx_every_used_buffer_is_signalled() {
    let server = Running::start(RngServed);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::VERSION_1);
    let mut vq = TestQueue::new(&mem, GuestAddress(0x1_0000), QSIZE);
    // used_event far ahead: ignored without EVENT_IDX.
    vq.set_used_event(9);
    let fds = setup_queue(&mut fe, 0, &vq);
    for i in 0..3u16 {
        offer_buffer(&mut vq, i, 32);
        fds.kick.write(1).unwrap();
        wait_for("the used ring", || vq.used_idx() == i + 1);
        wait_for("the call eventfd", || called(&fds.call));
    }
    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn stopped_ring_is_served_again_after_setup() {
    let server = Running::start(RngServed);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::COMMON);
    let mut vq = TestQueue::new(&mem, GuestAddress(0x1_0000), QSIZE);
    offer_buffer(&mut vq, 0, 16);
    let fds = setup_queue(&mut fe, 0, &vq);
    fds.kick.write(1).unwrap();
    wait_for("the used ring", || vq.used_idx() == 1);
    assert_eq!(fe.get_vring_base(0).unwrap(), 1);

    // While stopped, a kick on the old eventfd does nothing.
    offer_buffer(&mut vq, 1, 16);
    let _ = fds.kick.write(1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(vq.used_idx(), 1);

    // The driver is reset and sets the ring up again on a fresh layout.
    let mut vq2 = TestQueue::new(&mem, GuestAddress(0x2_0000), QSIZE);
    offer_buffer(&mut vq2, 0, 16);
    let fds2 = setup_queue(&mut fe, 0, &vq2);
    fds2.kick.write(1).unwrap();
    wait_for("the new ring", || vq2.used_idx() == 1);
    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn corrupt_avail_ring_stops_the_device_until_reset() {
    let server = Running::start(RngServed);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::COMMON);
    let vq = TestQueue::new(&mem, GuestAddress(0x1_0000), QSIZE);
    // avail idx far more than a queue's worth ahead of what the device has seen.
    vq.set_avail_idx(1000);
    let fds = setup_queue(&mut fe, 0, &vq);
    fds.kick.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(vq.used_idx(), 0, "nothing used from a corrupt ring");
    // The backend is still there: it answers, and serves a sane ring after a reset.
    assert_eq!(fe.get_vring_base(0).unwrap(), 0);
    fe.reset_device().unwrap();
    handshake_again(&mut fe);
    let mut vq2 = TestQueue::new(&mem, GuestAddress(0x2_0000), QSIZE);
    offer_buffer(&mut vq2, 0, 16);
    let fds2 = setup_queue(&mut fe, 0, &vq2);
    fds2.kick.write(1).unwrap();
    wait_for("the ring after reset", || vq2.used_idx() == 1);
    drop(fe);
    assert!(server.join().is_ok());
}

/// After RESET_DEVICE the features are renegotiated; owner and memory stay.
fn handshake_again(fe: &mut vhost::vhost_user::Frontend) {
    let offered = fe.get_features().unwrap();
    fe.set_features((offered & features::COMMON) | PROTOCOL_FEATURES)
        .unwrap();
}

#[test]
fn disconnect_ends_serving_and_removes_the_socket() {
    let server = Running::start(RngServed);
    let path = server.socket.0.clone();
    let stream = UnixStream::connect(&path).unwrap();
    drop(stream);
    assert!(server.join().is_ok());
    assert!(!path.exists(), "socket removed");
}

#[test]
fn garbage_from_the_frontend_is_an_error_not_a_panic() {
    let cases: [&[u8]; 5] = [
        // Unknown request code, valid-looking header.
        &[0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        // SET_FEATURES claiming a 4 KiB body, then hanging up.
        &[2, 0, 0, 0, 1, 0, 0, 0, 0, 0x10, 0, 0],
        // Bad version flags.
        &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        // A short header.
        &[3, 0, 0],
        // SET_VRING_NUM for queue 7 of 1, before SET_OWNER.
        &[8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0, 1, 0, 0],
    ];
    for bytes in cases {
        let server = Running::start(RngServed);
        let mut s = UnixStream::connect(&server.socket.0).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let result = server.join();
        drop(s);
        if let Err(e) = &result {
            assert!(
                matches!(e, ServeError::Frontend(_)),
                "{bytes:?}: unexpected error {e}"
            );
        }
    }
}

#[test]
fn a_path_that_is_not_a_socket_is_refused_and_kept() {
    let path = TempPath::new("file");
    std::fs::write(&path.0, b"precious").unwrap();
    let Err(e) = Server::bind(&path.0, RngServed) else {
        panic!("bound over a regular file")
    };
    assert!(matches!(e, ServeError::PathTaken(_)), "{e}");
    assert_eq!(std::fs::read(&path.0).unwrap(), b"precious");
}

#[test]
fn rng_has_no_config_space() {
    let server = Running::start(RngServed);
    let mem = shared_memory();
    let mut fe = server.connect(1);
    handshake(&mut fe, &mem, features::COMMON);
    let proto = fe.get_protocol_features().unwrap();
    assert!(!proto.contains(vhost::vhost_user::VhostUserProtocolFeatures::CONFIG));
    drop(fe);
    assert!(server.join().is_ok());
}
