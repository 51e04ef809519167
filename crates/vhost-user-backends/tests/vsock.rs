//! virtio-vsock behind a vhost-user socket, with Vireo's Unix-socket host side: a host
//! process's `CONNECT <port>\n` reaches the guest's rx queue as a REQUEST, the guest's
//! RESPONSE makes the host read `OK <port>\n`, bytes flow both ways, and after the
//! frontend stops and restarts the rings the old connection is gone and a new one works.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost_user_backends::VsockServed;
use vhost_user_backends::served::Served;
use virtio_devices::device::features;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vsock::device::F_STREAM;
use vsock::packet::{HDR_SIZE, HOST_CID, Header, TYPE_STREAM, op};

const CID: u64 = 3;
const QSIZE: u16 = 32;
const GUEST_PORT: u32 = 1234;
const RX_BUF_LEN: u32 = 4096;

/// The guest's three rings.
struct Guest<'a> {
    rx: TestQueue<'a>,
    tx: TestQueue<'a>,
    _ev: TestQueue<'a>,
    rx_fds: QueueFds,
    tx_fds: QueueFds,
    _ev_fds: QueueFds,
    rx_buf: u64,
    tx_buf: u64,
    tx_n: u64,
    rx_seen: u16,
}

impl<'a> Guest<'a> {
    fn start(fe: &mut Frontend, mem: &'a GuestMemoryMmap<()>, base: u64) -> Self {
        let mut rx = TestQueue::new(mem, GuestAddress(base), QSIZE);
        let tx = TestQueue::new(mem, GuestAddress(base + 0x1000), QSIZE);
        let ev = TestQueue::new(mem, GuestAddress(base + 0x2000), QSIZE);
        let rx_buf = base + 0x10_0000;
        for i in 0..16u64 {
            rx.add_chain(&[(rx_buf + i * 0x1000, RX_BUF_LEN, WRITE)]);
        }
        let rx_fds = setup_queue(fe, 0, &rx);
        let tx_fds = setup_queue(fe, 1, &tx);
        let ev_fds = setup_queue(fe, 2, &ev);
        Self {
            rx,
            tx,
            _ev: ev,
            rx_fds,
            tx_fds,
            _ev_fds: ev_fds,
            rx_buf,
            tx_buf: base + 0x8_0000,
            tx_n: 0,
            rx_seen: 0,
        }
    }

    /// The next packet the device put in the rx ring (5 s at most).
    fn recv(&mut self) -> (Header, Vec<u8>) {
        // With EVENT_IDX: interrupt me for the next one.
        self.rx.set_used_event(self.rx_seen);
        wait_for("a packet in the guest's rx ring", || {
            self.rx.used_idx() != self.rx_seen
        });
        let (head, len) = self.rx.used_elem(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let at = self.rx_buf + u64::from(head) * 0x1000;
        let mut hdr = [0u8; HDR_SIZE];
        self.rx
            .mem()
            .read_slice(&mut hdr, GuestAddress(at))
            .unwrap();
        let hdr = Header::from_bytes(&hdr);
        assert!(
            len as usize >= HDR_SIZE && len <= RX_BUF_LEN,
            "used length {len}"
        );
        let mut payload = vec![0u8; len as usize - HDR_SIZE];
        self.rx
            .mem()
            .read_slice(&mut payload, GuestAddress(at + HDR_SIZE as u64))
            .unwrap();
        assert_eq!(payload.len(), hdr.len as usize, "header len matches");
        (hdr, payload)
    }

    /// Send a packet on the tx ring (header and payload in one buffer).
    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let at = self.tx_buf + self.tx_n * 0x1000;
        self.tx_n += 1;
        let hdr = Header {
            len: payload.len() as u32,
            ..hdr
        };
        let mem = self.tx.mem();
        mem.write_slice(&hdr.to_bytes(), GuestAddress(at)).unwrap();
        mem.write_slice(payload, GuestAddress(at + HDR_SIZE as u64))
            .unwrap();
        self.tx
            .add_chain(&[(at, (HDR_SIZE + payload.len()) as u32, 0)]);
        self.tx_fds.kick.write(1).unwrap();
    }

    /// A reply from the guest's port on connection `to` (the device's REQUEST).
    fn reply(&self, to: &Header, op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Header::default()
        }
    }
}

fn host_connect(path: &std::path::Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    s
}

fn read_line(s: &UnixStream) -> String {
    let mut line = String::new();
    // One byte at a time, so nothing after the line is swallowed by a buffer.
    let mut r = BufReader::with_capacity(1, s);
    r.read_line(&mut line).unwrap();
    line
}

#[test]
fn vsock_host_connect_reaches_the_guest_as_a_request_and_relays() {
    let host_sock = TempPath::new("vsock-host");
    let cfg: api::VsockConfig = format!("cid={CID},socket={}", host_sock.0.display())
        .parse()
        .unwrap();
    let served = VsockServed::new(&cfg).unwrap();
    assert_eq!(served.cid(), CID);
    assert_eq!(served.num_queues(), 3);
    assert!(
        host_sock.0.exists(),
        "host socket bound before any frontend"
    );

    let server = Running::start(served);
    let mem = shared_memory();
    let mut fe = server.connect(3);
    let offered = handshake(&mut fe, &mem, features::COMMON | F_STREAM);
    assert_ne!(offered & F_STREAM, 0, "stream sockets offered");
    let (_, config) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .unwrap();
    assert_eq!(
        config,
        CID.to_le_bytes(),
        "guest_cid in the configuration space"
    );

    let mut guest = Guest::start(&mut fe, &mem, 0x1_0000);
    // The device starts on the first kick (as after the driver's DRIVER_OK).
    guest.rx_fds.kick.write(1).unwrap();

    let mut host = host_connect(&host_sock.0, GUEST_PORT);
    let (req, payload) = guest.recv();
    assert_eq!(req.op, op::REQUEST, "{req:?}");
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    assert_eq!(req.dst_port, GUEST_PORT);
    assert_eq!(req.type_, TYPE_STREAM);
    assert!(payload.is_empty());

    // The guest accepts: the host reads OK and its local port.
    guest.send(guest.reply(&req, op::RESPONSE), &[]);
    assert_eq!(read_line(&host), format!("OK {}\n", req.src_port));

    host.write_all(b"ping from the host").unwrap();
    let (rw, data) = loop {
        let (h, d) = guest.recv();
        if h.op == op::RW {
            break (h, d);
        }
        assert_eq!(h.op, op::CREDIT_UPDATE, "unexpected {h:?}");
    };
    assert_eq!((rw.src_port, rw.dst_port), (req.src_port, GUEST_PORT));
    assert_eq!(data, b"ping from the host");
    guest.send(guest.reply(&req, op::RW), b"pong from the guest");
    let mut got = [0u8; 19];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong from the guest");

    // A guest reboot: QEMU stops the rings; the connection is dropped with them.
    for q in 0..3 {
        fe.get_vring_base(q).unwrap();
    }
    let mut rest = Vec::new();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0, "the host sees EOF");

    // The new driver sets the rings up again; host connections reach it.
    let mut guest = Guest::start(&mut fe, &mem, 0x20_0000);
    guest.rx_fds.kick.write(1).unwrap();
    let _host2 = host_connect(&host_sock.0, GUEST_PORT + 1);
    let (req, _) = guest.recv();
    assert_eq!(req.op, op::REQUEST);
    assert_eq!(req.dst_port, GUEST_PORT + 1);

    drop(fe);
    assert!(server.join().is_ok());
    assert!(!host_sock.0.exists(), "host socket removed with the device");
}

#[test]
fn vsock_reserved_cid_and_busy_socket_are_refused() {
    let host_sock = TempPath::new("vsock-cid");
    let cfg: api::VsockConfig = format!("cid=3,socket={}", host_sock.0.display())
        .parse()
        .unwrap();
    let mut reserved = cfg.clone();
    reserved.cid = 2;
    assert!(VsockServed::new(&reserved).is_err(), "CID 2 is the host");
    let first = VsockServed::new(&cfg).unwrap();
    assert!(VsockServed::new(&cfg).is_err(), "socket in use");
    drop(first);
    assert!(!host_sock.0.exists());
}
