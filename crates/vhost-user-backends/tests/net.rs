//! A real TAP behind a vhost-user socket, inside a network namespace this test creates
//! and deletes: a frame the guest puts on the tx ring appears on the host side of the
//! TAP (a raw `AF_PACKET` socket in the namespace), a frame sent there lands in the rx
//! ring, and both still work after the frontend stopped the rings and set them up again.
//! Needs root, `/dev/net/tun` and `ip`; without them the test is skipped through
//! test-support's skip policy (a failure under `CI=true`).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use test_support::netns::{Netns, ethernet, packet_socket};
use test_support::require;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost_user_backends::NetServed;
use vhost_user_backends::served::Served;
use virtio_bindings::virtio_net;
use virtio_devices::device::features;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MAC: [u8; 6] = [0x02, 0x5a, 0x11, 0x22, 0x33, 0x44];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const HDR_LEN: usize = 12;
const QSIZE: u16 = 64;

/// Wait (5 s at most) for `sock` to see exactly `frame`.
fn expect_on_tap(sock: &File, frame: &[u8]) {
    let mut buf = vec![0u8; 65536];
    let mut sock = sock;
    let start = Instant::now();
    loop {
        if let Ok(n) = sock.read(&mut buf)
            && buf[..n] == *frame
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the guest's frame never reached the TAP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The guest's two rings and where its buffers go.
struct Rings<'a> {
    rx: TestQueue<'a>,
    tx: TestQueue<'a>,
    rx_fds: QueueFds,
    tx_fds: QueueFds,
    /// Base of the 2 KiB rx buffers (buffer `head` at `rx_buf + head * 0x800`).
    rx_buf: u64,
    tx_buf: u64,
}

impl<'a> Rings<'a> {
    fn start(
        fe: &mut vhost::vhost_user::Frontend,
        mem: &'a GuestMemoryMmap<()>,
        base: u64,
    ) -> Self {
        let mut rx = TestQueue::new(mem, GuestAddress(base), QSIZE);
        let tx = TestQueue::new(mem, GuestAddress(base + 0x1_0000), QSIZE);
        let rx_buf = base + 0x10_0000;
        for i in 0..8u64 {
            rx.add_chain(&[(rx_buf + i * 0x800, 0x800, WRITE)]);
        }
        let rx_fds = setup_queue(fe, 0, &rx);
        let tx_fds = setup_queue(fe, 1, &tx);
        Self {
            rx,
            tx,
            rx_fds,
            tx_fds,
            rx_buf,
            tx_buf: base + 0x8_0000,
        }
    }

    /// Put `frame` (after a zero header, in a second descriptor) on the tx ring.
    fn send(&mut self, frame: &[u8]) {
        let mem = self.tx.mem();
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(self.tx_buf))
            .unwrap();
        mem.write_slice(frame, GuestAddress(self.tx_buf + 0x100))
            .unwrap();
        self.tx.add_chain(&[
            (self.tx_buf, HDR_LEN as u32, 0),
            (self.tx_buf + 0x100, frame.len() as u32, 0),
        ]);
        self.tx_fds.kick.write(1).unwrap();
    }

    /// Wait for `frame` in one of the used rx buffers.
    fn expect_received(&self, frame: &[u8]) {
        let mem = self.rx.mem();
        wait_for("the host's frame in a guest rx buffer", || {
            (0..self.rx.used_idx()).any(|i| {
                let (head, len) = self.rx.used_elem(i);
                let mut got = vec![0u8; len as usize];
                mem.read_slice(
                    &mut got,
                    GuestAddress(self.rx_buf + u64::from(head) * 0x800),
                )
                .unwrap();
                got.len() >= HDR_LEN && got[HDR_LEN..] == *frame
            })
        });
    }
}

#[test]
fn net_frames_cross_a_real_tap_and_survive_a_ring_restart() {
    let ns = require!(
        "net_frames_cross_a_real_tap_and_survive_a_ring_restart",
        Netns::new("vunet")
    );
    let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    let tap = format!("vutap{}", std::process::id() % 100_000);
    let cfg: api::NetConfig = format!("tap={tap},mac=02:5a:11:22:33:44").parse().unwrap();
    let tap2 = tap.clone();
    let (served, sock) = ns.run(move || {
        let served = NetServed::new(&cfg).expect("NetServed::new creates the TAP");
        let sock = packet_socket(&tap2).expect("packet socket on the TAP");
        (served, sock)
    });
    ns.exec(&["ip", "link", "set", &tap, "up"]).unwrap();
    assert_eq!(served.mac(), MAC);
    assert_eq!(served.num_queues(), 2);

    let server = Running::start(served);
    let mem = shared_memory();
    let mut fe = server.connect(2);
    let want = features::COMMON | 1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    let offered = handshake(&mut fe, &mem, want);
    assert_ne!(offered & (1 << virtio_net::VIRTIO_NET_F_MAC), 0);
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    let (_, config) = fe
        .get_config(0, 10, VhostUserConfigFlags::WRITABLE, &[0u8; 10])
        .unwrap();
    assert_eq!(config[..6], MAC, "MAC in the configuration space");
    assert_eq!(config[6..8], 1u16.to_le_bytes(), "link up");

    let mut rings = Rings::start(&mut fe, &mem, 0x1_0000);
    let out = ethernet([0xff; 6], MAC, b"vireo vhost-user-net says hello");
    rings.send(&out);
    expect_on_tap(&sock, &out);
    wait_for("the tx chain used", || rings.tx.used_idx() == 1);

    // Host -> guest.
    rings.rx_fds.kick.write(1).unwrap();
    let inbound = ethernet(MAC, HOST_MAC, b"and the host answers");
    (&sock).write_all(&inbound).unwrap();
    rings.expect_received(&inbound);

    // QEMU stops the rings on a guest reboot, then the new driver sets them up again.
    fe.get_vring_base(0).unwrap();
    fe.get_vring_base(1).unwrap();
    let mut rings = Rings::start(&mut fe, &mem, 0x20_0000);
    let again = ethernet([0xff; 6], MAC, b"after the reboot, the same TAP");
    rings.send(&again);
    expect_on_tap(&sock, &again);
    rings.rx_fds.kick.write(1).unwrap();
    let inbound = ethernet(MAC, HOST_MAC, b"welcome back");
    (&sock).write_all(&inbound).unwrap();
    rings.expect_received(&inbound);

    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn net_bad_tap_names_and_zero_rates_are_refused() {
    let cfg: api::NetConfig = "tap=bad/name".parse().unwrap();
    let Err(e) = NetServed::new(&cfg) else {
        panic!("a TAP name with a slash was accepted")
    };
    assert!(e.to_string().contains("bad/name"), "{e}");
    // The limiters are checked before the TAP is opened: nothing is created.
    let mut cfg: api::NetConfig = "tap=vutapzero".parse().unwrap();
    cfg.tx_rate_limit.ops_per_sec = Some(0);
    assert!(NetServed::new(&cfg).is_err(), "a zero rate is refused");
}
