//! The NIC behind the virtio-mmio transport, on its worker thread, with a socket pair as
//! the host network: negotiate, transmit, receive, reset, and run again (the backend
//! comes back on reset).

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use common::{QSIZE, Rings, WRITE, read, rings, setup, wait_for};
use net::{NET_HDR_LEN, Net, SocketBackend};
use rate_limiter::RateLimiter;
use virtio_bindings::virtio_net;
use virtio_devices::device::{VmMemory, device_type, features};
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::{MmioDriver, guest_memory};
use vm_memory::Bytes;

const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

fn bit(b: u32) -> u64 {
    1 << b
}

/// Negotiate `features`, lay out both queues at `base`, set DRIVER_OK.
fn start<'m>(
    t: &mut MmioTransport,
    mem: &'m VmMemory,
    base: u64,
    features: u64,
) -> (Rings<'m>, Rings<'m>) {
    let rx = rings(mem, base);
    let tx = rings(mem, base + 0x1_0000);
    let mut d = MmioDriver(t);
    assert!(d.negotiate(features));
    setup(&mut d, 0, &rx);
    setup(&mut d, 1, &tx);
    d.driver_ok();
    assert!(t.is_activated());
    (rx, tx)
}

fn frame(len: usize, seq: u8) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN + len];
    f[NET_HDR_LEN..NET_HDR_LEN + 6].copy_from_slice(&[0xff; 6]);
    f[NET_HDR_LEN + 6..NET_HDR_LEN + 12].copy_from_slice(&MAC);
    for (i, b) in f[NET_HDR_LEN + 12..].iter_mut().enumerate() {
        *b = (i as u8) ^ seq;
    }
    f
}

/// Send one frame from the guest and receive one, through the worker thread.
fn traffic(t: &mut MmioTransport, mem: &Arc<VmMemory>, peer: &UnixDatagram, base: u64, seq: u8) {
    let (mut rx, mut tx) = start(
        t,
        mem,
        base,
        features::VERSION_1
            | features::EVENT_IDX
            | bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF)
            | bit(virtio_net::VIRTIO_NET_F_MAC),
    );
    let out = frame(200, seq);
    let buf = base + 0x4_0000;
    mem.write_slice(&out, vm_memory::GuestAddress(buf)).unwrap();
    tx.add_chain(&[(buf, out.len() as u32, 0)]);
    MmioDriver(t).write(0x50, 1);
    let mut got = vec![0u8; 70_000];
    let n = wait_for("the frame on the host side", || peer.recv(&mut got).ok());
    assert_eq!(got[..n], out[..], "the host gets header and frame");
    wait_for("the tx used ring", || (tx.used().len() == 1).then_some(()));

    let rxbuf = base + 0x5_0000;
    rx.add_chain(&[(rxbuf, 2048, WRITE)]);
    MmioDriver(t).write(0x50, 0);
    let inbound = frame(300, seq.wrapping_add(1));
    peer.send(&inbound).unwrap();
    let used = wait_for("the rx used ring", || rx.used().first().copied());
    assert_eq!(used, (0, inbound.len() as u32));
    let landed = read(mem, rxbuf, inbound.len());
    assert_eq!(
        u16::from_le_bytes([landed[10], landed[11]]),
        1,
        "num_buffers"
    );
    assert_eq!(landed[NET_HDR_LEN..], inbound[NET_HDR_LEN..]);
    wait_for("the interrupt", || t.interrupt_evt().read().ok());
}

#[test]
fn nic_through_the_mmio_transport_survives_a_reset() {
    let mem = guest_memory(4 << 20);
    let (backend, peer) = SocketBackend::pair().unwrap();
    let net = Net::with_backend(
        backend,
        MAC,
        RateLimiter::unlimited(),
        RateLimiter::unlimited(),
        "net-mmio-test",
    );
    let metrics = net.metrics();
    let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0x08), device_type::NET);
    let offered = d.device_features();
    assert_ne!(offered & bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF), 0);
    d.write(0x30, 1);
    assert_eq!(d.read(0x34), u32::from(QSIZE), "tx queue size");
    // Configuration space at 0x100: MAC then status (link up).
    let mut cfg = [0u8; 8];
    t.read(0x100, &mut cfg[..4]);
    t.read(0x104, &mut cfg[4..]);
    assert_eq!(cfg[..6], MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1);

    traffic(&mut t, &mem, &peer, 0x10_0000, 1);
    MmioDriver(&mut t).write(0x70, 0);
    assert!(!t.is_activated());
    assert_eq!(t.status(), 0, "reset succeeded: the backend came back");
    traffic(&mut t, &mem, &peer, 0x20_0000, 7);
    assert_eq!(metrics.tx_packets_count.get(), 2);
    assert_eq!(metrics.rx_packets_count.get(), 2);
}

#[test]
fn activation_without_the_queues_is_refused_and_the_device_stays_usable() {
    let mem = guest_memory(4 << 20);
    let (backend, peer) = SocketBackend::pair().unwrap();
    let net = Net::with_backend(
        backend,
        MAC,
        RateLimiter::unlimited(),
        RateLimiter::unlimited(),
        "net-mmio-test",
    );
    let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(features::VERSION_1));
    let rx = rings(&mem, 0x10_0000);
    setup(&mut d, 0, &rx); // no tx queue
    d.driver_ok();
    assert!(!t.is_activated());
    MmioDriver(&mut t).write(0x70, 0);
    traffic(&mut t, &mem, &peer, 0x20_0000, 3);
}

/// The NIC behind a transport.
fn nic(t: &mut MmioTransport) -> &mut Net<SocketBackend> {
    let dev: &mut dyn std::any::Any = t.device_mut();
    dev.downcast_mut().unwrap()
}

/// The limits of a running NIC are replaced on its worker thread: frames held back by
/// the old tx limit go at once, rx keeps its limit, and a device not running keeps the
/// new limits for its next start.
#[test]
fn limits_of_a_running_nic_are_replaced() {
    let mem = guest_memory(4 << 20);
    let (backend, peer) = SocketBackend::pair().unwrap();
    let rx_limit = api::RateLimit {
        ops_per_sec: Some(1000),
        bytes_per_sec: None,
        ..Default::default()
    };
    let slow = api::RateLimit {
        ops_per_sec: Some(1),
        bytes_per_sec: None,
        ..Default::default()
    };
    let net = Net::with_backend(
        backend,
        MAC,
        RateLimiter::new(&rx_limit).unwrap(),
        RateLimiter::new(&slow).unwrap(),
        "net-limits-test",
    );
    let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    let base = 0x10_0000;
    let (_rx, mut tx) = start(&mut t, &mem, base, features::VERSION_1);
    for i in 0..3u8 {
        let out = frame(100, i);
        let buf = base + 0x4_0000 + u64::from(i) * 0x1000;
        mem.write_slice(&out, vm_memory::GuestAddress(buf)).unwrap();
        tx.add_chain(&[(buf, out.len() as u32, 0)]);
    }
    MmioDriver(&mut t).write(0x50, 1);
    let mut got = vec![0u8; 70_000];
    wait_for("the first frame", || peer.recv(&mut got).ok());
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(tx.used().len(), 1, "the others wait for the limit");

    let start_at = std::time::Instant::now();
    nic(&mut t)
        .set_rate_limits(None, Some(&api::RateLimit::default()))
        .unwrap();
    for _ in 0..2 {
        wait_for("a held frame", || peer.recv(&mut got).ok());
    }
    assert!(
        start_at.elapsed() < std::time::Duration::from_millis(800),
        "released at once, not by the old limit"
    );
    wait_for("the tx used ring", || (tx.used().len() == 3).then_some(()));
    assert_eq!(
        nic(&mut t).rate_limits(),
        Some((rx_limit, api::RateLimit::default())),
        "rx left as it was"
    );
    // Reset: the worker stops; the limits stay with the idle device.
    MmioDriver(&mut t).write(0x70, 0);
    nic(&mut t).set_rate_limits(Some(&slow), None).unwrap();
    assert_eq!(
        nic(&mut t).rate_limits(),
        Some((slow, api::RateLimit::default()))
    );
    traffic(&mut t, &mem, &peer, 0x20_0000, 9);
    assert_eq!(
        nic(&mut t).rate_limits(),
        Some((slow, api::RateLimit::default())),
        "the worker started with them"
    );
    MmioDriver(&mut t).write(0x70, 0);
}
