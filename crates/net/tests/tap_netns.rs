//! A real TAP device, inside a network namespace this test creates and deletes: the NIC
//! (built by `Net::new`, behind the MMIO transport, on its worker thread) sends a frame
//! that a raw `AF_PACKET` socket on the host side of the TAP sees, and receives one that
//! socket sends. Needs root and `/dev/net/tun`; otherwise it prints why and skips.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Rings, WRITE, read, wait_for};
use net::{NET_HDR_LEN, Net, Tap, TapError};
use virtio_bindings::virtio_net;
use virtio_devices::device::features;
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::{MmioDriver, guest_memory};
use vm_memory::{Bytes, GuestAddress};

const TAP: &str = "vtap0";
const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// IEEE 802 local experimental ethertype: nothing else on the link uses it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A network namespace made for this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP real TAP test: not running as root");
            return None;
        }
        if !std::path::Path::new(net::tap::TUN_PATH).exists() {
            eprintln!("SKIP real TAP test: no {}", net::tap::TUN_PATH);
            return None;
        }
        let name = format!("vireo-{tag}-{}", std::process::id());
        match Command::new("ip").args(["netns", "add", &name]).status() {
            Ok(s) if s.success() => Some(Self(name)),
            other => {
                eprintln!("SKIP real TAP test: `ip netns add` failed: {other:?}");
                None
            }
        }
    }

    /// Run a command inside the namespace; whether it succeeded.
    fn exec(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Run `f` on a thread that joined the namespace (sockets and TAPs it opens live
    /// there, whichever thread uses them later).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("namespace file");
            // SAFETY: setns on a namespace fd we opened; it changes only this thread's
            // network namespace, and the thread ends after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A non-blocking raw packet socket bound to interface `ifname`, all protocols.
fn packet_socket(ifname: &str) -> io::Result<File> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; no memory is passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let name = CString::new(ifname)?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sockaddr_ll` is plain integers and arrays; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: the pointer and length describe `sll`, alive for the call.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(dst);
    f.extend(src);
    f.extend(ETHERTYPE);
    f.extend(payload);
    f
}

fn bit(b: u32) -> u64 {
    1 << b
}

#[test]
fn frames_cross_a_real_tap_inside_a_test_namespace() {
    let Some(ns) = Netns::create("tap") else {
        return;
    };
    // Quiet link: no IPv6 autoconfiguration chatter on the new interface.
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
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
    assert!(ns.exec(&["ip", "link", "set", TAP, "up"]));
    assert_eq!(net.mac(), MAC);

    let mem = guest_memory(4 << 20);
    let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    let mut rx = Rings::new(&mem, 0x10_0000);
    let mut tx = Rings::new(&mem, 0x11_0000);
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
    rx.setup(&mut d, 0);
    tx.setup(&mut d, 1);
    d.driver_ok();
    assert!(t.is_activated(), "activation with offloads succeeded");

    // Guest -> host: header and frame in two descriptors.
    let out = ethernet([0xff; 6], MAC, b"vireo says hello through a TAP");
    let (hdr_at, frame_at) = (0x20_0000u64, 0x20_1000u64);
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(hdr_at))
        .unwrap();
    mem.write_slice(&out, GuestAddress(frame_at)).unwrap();
    tx.add_chain(
        &mem,
        &[
            (hdr_at, NET_HDR_LEN as u32, 0),
            (frame_at, out.len() as u32, 0),
        ],
    );
    MmioDriver(&mut t).write(0x50, 1);
    let mut buf = vec![0u8; 65536];
    let mut sock_r = &sock;
    wait_for("the guest's frame on the host side of the TAP", || {
        let n = sock_r.read(&mut buf).ok()?;
        (buf[..n] == out[..]).then_some(())
    });

    // Host -> guest.
    for i in 0..16 {
        rx.add_chain(&mem, &[(0x30_0000 + i * 0x1000, 2048, WRITE)]);
    }
    MmioDriver(&mut t).write(0x50, 0);
    let inbound = ethernet(MAC, HOST_MAC, b"and the host answers");
    (&sock).write_all(&inbound).unwrap();
    let start = Instant::now();
    wait_for("the host's frame in a guest rx buffer", || {
        let found = rx.used(&mem).iter().any(|&(head, len)| {
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
    assert!(ns.exec(&["ip", "link", "show", TAP]));
    drop(t);
    drop(sock);
    assert!(
        !ns.exec(&["ip", "link", "show", TAP]),
        "the TAP we created goes away with the device"
    );
}

#[test]
fn deleting_the_tap_under_a_running_device_asks_for_a_reset() {
    let Some(ns) = Netns::create("tapdel") else {
        return;
    };
    let cfg: api::NetConfig = format!("tap={TAP}").parse().unwrap();
    let net = ns.run(move || Net::new(&cfg, "net-tap-del").expect("Net::new"));
    let mem = guest_memory(4 << 20);
    let mut t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    let rx = Rings::new(&mem, 0x10_0000);
    let tx = Rings::new(&mem, 0x11_0000);
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(features::VERSION_1));
    rx.setup(&mut d, 0);
    tx.setup(&mut d, 1);
    d.driver_ok();
    assert!(t.is_activated());
    assert!(ns.exec(&["ip", "link", "del", TAP]));
    wait_for("DEVICE_NEEDS_RESET", || {
        (t.status() & virtio_devices::mmio::status::DEVICE_NEEDS_RESET != 0).then_some(())
    });
    MmioDriver(&mut t).write(0x70, 0);
    assert_eq!(t.status(), 0, "the driver can still reset the device");
}
