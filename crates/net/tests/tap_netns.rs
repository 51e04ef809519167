//! A real TAP device, inside a network namespace this test creates and deletes: the NIC
//! (built by `Net::new`, behind the MMIO transport, on its worker thread) sends a frame
//! that a raw `AF_PACKET` socket on the host side of the TAP sees, and receives one that
//! socket sends. Needs root, `/dev/net/tun` and `ip`; without them the test is skipped
//! through test-support's skip policy (a failure under `CI=true`).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{WRITE, read, rings, setup, wait_for};
use net::{NET_HDR_LEN, Net, Tap, TapError};
use test_support::netns::{Netns, ethernet, packet_socket};
use test_support::require;
use virtio_bindings::virtio_net;
use virtio_devices::device::features;
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::{MmioDriver, guest_memory};
use vm_memory::{Bytes, GuestAddress};

const TAP: &str = "vtap0";
const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn bit(b: u32) -> u64 {
    1 << b
}

#[test]
fn frames_cross_a_real_tap_inside_a_test_namespace() {
    let ns = require!(
        "frames_cross_a_real_tap_inside_a_test_namespace",
        Netns::new("tap")
    );
    // Quiet link: no IPv6 autoconfiguration chatter on the new interface.
    let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    let cfg: api::NetConfig = format!("tap={TAP},mac=02:aa:bb:cc:dd:ee").parse().unwrap();
    let (net, sock, second) = ns.run(move || {
        let net = Net::new(&cfg, "net-tap-test").expect("Net::new creates the TAP");
        let sock = packet_socket(TAP).expect("packet socket on the TAP");
        (net, sock, Tap::open(TAP).map(|_| ()))
    });
    let not_tap = ns.run(|| Tap::open("lo").map(|_| ()));
    assert!(
        matches!(not_tap, Err(TapError::NotATap(_))),
        "loopback is not a TAP: {not_tap:?}"
    );
    assert!(
        matches!(second, Err(TapError::Busy(_))),
        "a second open of a single-queue TAP is refused as busy: {second:?}"
    );
    ns.exec(&["ip", "link", "set", TAP, "up"]).unwrap();
    assert_eq!(net.mac(), MAC);

    let mem = guest_memory(4 << 20);
    let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    let mut rx = rings(&mem, 0x10_0000);
    let mut tx = rings(&mem, 0x11_0000);
    let mut d = MmioDriver(&mut t);
    // Offloads both ways, so activation also sets TUNSETOFFLOAD on the real TAP.
    assert!(d.negotiate(
        features::VERSION_1
            | bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF)
            | bit(virtio_net::VIRTIO_NET_F_CSUM)
            | bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM)
            | bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4)
            | bit(virtio_net::VIRTIO_NET_F_GUEST_TSO6)
            | bit(virtio_net::VIRTIO_NET_F_HOST_TSO4)
    ));
    setup(&mut d, 0, &rx);
    setup(&mut d, 1, &tx);
    d.driver_ok();
    assert!(t.is_activated(), "activation with offloads succeeded");

    // Guest -> host: header and frame in two descriptors.
    let out = ethernet([0xff; 6], MAC, b"vireo says hello through a TAP");
    let (hdr_at, frame_at) = (0x20_0000u64, 0x20_1000u64);
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(hdr_at))
        .unwrap();
    mem.write_slice(&out, GuestAddress(frame_at)).unwrap();
    tx.add_chain(&[
        (hdr_at, NET_HDR_LEN as u32, 0),
        (frame_at, out.len() as u32, 0),
    ]);
    MmioDriver(&mut t).write(0x50, 1);
    let mut buf = vec![0u8; 65536];
    let mut sock_r = &sock;
    wait_for("the guest's frame on the host side of the TAP", || {
        let n = sock_r.read(&mut buf).ok()?;
        (buf[..n] == out[..]).then_some(())
    });

    // Host -> guest.
    for i in 0..16 {
        rx.add_chain(&[(0x30_0000 + i * 0x1000, 2048, WRITE)]);
    }
    MmioDriver(&mut t).write(0x50, 0);
    let inbound = ethernet(MAC, HOST_MAC, b"and the host answers");
    (&sock).write_all(&inbound).unwrap();
    let start = Instant::now();
    wait_for("the host's frame in a guest rx buffer", || {
        let found = rx.used().iter().any(|&(head, len)| {
            let got = read(&mem, 0x30_0000 + u64::from(head) * 0x1000, len as usize);
            got.len() >= NET_HDR_LEN && got[NET_HDR_LEN..] == inbound[..]
        });
        found.then_some(())
    });
    assert!(start.elapsed() < Duration::from_secs(5));

    // Reset hands the TAP back; the interface survives while the device exists.
    MmioDriver(&mut t).write(0x70, 0);
    assert!(!t.is_activated());
    assert_eq!(t.status(), 0, "reset succeeded");
    ns.exec(&["ip", "link", "show", TAP]).unwrap();
    drop(t);
    drop(sock);
    assert!(
        ns.exec(&["ip", "link", "show", TAP]).is_err(),
        "the TAP we created goes away with the device"
    );
}

#[test]
fn deleting_the_tap_under_a_running_device_asks_for_a_reset() {
    let ns = require!(
        "deleting_the_tap_under_a_running_device_asks_for_a_reset",
        Netns::new("tapdel")
    );
    let cfg: api::NetConfig = format!("tap={TAP}").parse().unwrap();
    let net = ns.run(move || Net::new(&cfg, "net-tap-del").expect("Net::new"));
    let mem = guest_memory(4 << 20);
    let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    let rx = rings(&mem, 0x10_0000);
    let tx = rings(&mem, 0x11_0000);
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(features::VERSION_1));
    setup(&mut d, 0, &rx);
    setup(&mut d, 1, &tx);
    d.driver_ok();
    assert!(t.is_activated());
    ns.exec(&["ip", "link", "del", TAP]).unwrap();
    wait_for("DEVICE_NEEDS_RESET", || {
        (t.status() & virtio_devices::mmio::status::DEVICE_NEEDS_RESET != 0).then_some(())
    });
    MmioDriver(&mut t).write(0x70, 0);
    assert_eq!(t.status(), 0, "the driver can still reset the device");
}
