//! The stack against a scripted guest: ARP, the three-way handshake, requests in one or
//! several segments, responses in MSS-sized segments within the guest's window,
//! retransmission, closes from either side, resets, and the bounds on connections.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::pdu::{self, Arp, ETH_LEN, Ethernet, IPV4_LEN, Ipv4, Tcp, TcpOut, flags};
use crate::stack::{HTTP_PORT, MAX_CONNECTIONS};
use crate::tcp::{INITIAL_RTO, MAX_RETRIES, State};
use crate::{DEFAULT_IPV4, MMDS_MAC, Mmds, MmdsMetrics, MmdsStack};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

struct Guest {
    stack: MmdsStack,
    metrics: Arc<MmdsMetrics>,
    now: Instant,
}

/// A received TCP segment, owned.
#[derive(Debug, Clone)]
struct Seg {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    mss: Option<u16>,
    data: Vec<u8>,
    src_port: u16,
    dst_port: u16,
}

impl Guest {
    fn new(doc: serde_json::Value) -> Self {
        let mut mmds = Mmds::default();
        mmds.put(doc).unwrap();
        let metrics = Arc::new(MmdsMetrics::default());
        Self {
            stack: MmdsStack::new(DEFAULT_IPV4, Arc::new(Mutex::new(mmds)), metrics.clone()),
            metrics,
            now: Instant::now(),
        }
    }

    fn send(&mut self, port: u16, seq: u32, ack: u32, fl: u8, window: u16, data: &[u8]) -> bool {
        self.send_with(port, HTTP_PORT, seq, ack, fl, window, data, Some(1460))
    }

    #[allow(clippy::too_many_arguments)]
    fn send_with(
        &mut self,
        port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        fl: u8,
        window: u16,
        data: &[u8],
        mss: Option<u16>,
    ) -> bool {
        let seg = TcpOut {
            src_port: port,
            dst_port,
            seq,
            ack,
            flags: fl,
            window,
            mss: if fl & flags::SYN != 0 { mss } else { None },
            payload: data,
        };
        let mut frame = vec![0u8; ETH_LEN + IPV4_LEN + seg.len()];
        pdu::write_ethernet(&mut frame, MMDS_MAC, GUEST_MAC, pdu::ETHERTYPE_IPV4);
        pdu::write_ipv4(
            &mut frame[ETH_LEN..],
            GUEST_IP,
            DEFAULT_IPV4,
            pdu::PROTO_TCP,
            seg.len(),
        );
        seg.write(&mut frame[ETH_LEN + IPV4_LEN..], GUEST_IP, DEFAULT_IPV4);
        self.stack.detour(&frame, false, self.now)
    }

    /// Every frame the stack has for the guest now, as TCP segments (checked on the way).
    fn recv(&mut self) -> Vec<Seg> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        while let Some(n) = self.stack.write_frame(&mut buf, self.now) {
            let eth = Ethernet::parse(&buf[..n]).unwrap();
            assert_eq!((eth.dst, eth.src), (GUEST_MAC, MMDS_MAC));
            let ip = Ipv4::parse(eth.payload).unwrap();
            assert!(ip.checksum_ok);
            assert_eq!((ip.src, ip.dst), (DEFAULT_IPV4, GUEST_IP));
            assert_eq!(
                pdu::tcp_checksum(ip.src, ip.dst, ip.payload),
                0,
                "TCP checksum"
            );
            let t = Tcp::parse(ip.payload).unwrap();
            out.push(Seg {
                src_port: t.src_port,
                seq: t.seq,
                ack: t.ack,
                flags: t.flags,
                window: t.window,
                mss: t.mss,
                data: t.payload.to_vec(),
                dst_port: t.dst_port,
            });
        }
        assert!(
            !self.stack.has_output(),
            "has_output agrees with write_frame"
        );
        out
    }

    /// Handshake from `port`; returns (our next seq, the service's next seq).
    fn connect(&mut self, port: u16) -> (u32, u32) {
        assert!(self.send(port, 1000, 0, flags::SYN, 64000, b""));
        let r = self.recv();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].flags, flags::SYN | flags::ACK);
        assert_eq!(r[0].ack, 1001);
        assert_eq!(r[0].mss, Some(1460));
        assert_eq!((r[0].src_port, r[0].dst_port), (HTTP_PORT, port));
        let server = r[0].seq.wrapping_add(1);
        self.send(port, 1001, server, flags::ACK, 64000, b"");
        assert!(self.recv().is_empty(), "nothing to answer a bare ACK");
        (1001, server)
    }

    /// Send `request` and collect the response bytes, acknowledging as they come;
    /// returns the response and the service's next sequence number.
    fn exchange(&mut self, port: u16, seq: u32, server: u32, request: &str) -> (String, u32, bool) {
        self.send(
            port,
            seq,
            server,
            flags::ACK | flags::PSH,
            64000,
            request.as_bytes(),
        );
        let mut expect = server;
        let mut body = Vec::new();
        let mut fin = false;
        for _ in 0..100 {
            let segs = self.recv();
            if segs.is_empty() {
                break;
            }
            for s in segs {
                assert_eq!(s.seq, expect, "in order, no gap");
                assert_eq!(s.ack, seq.wrapping_add(request.len() as u32));
                expect = expect.wrapping_add(s.data.len() as u32);
                body.extend_from_slice(&s.data);
                if s.flags & flags::FIN != 0 {
                    fin = true;
                    expect = expect.wrapping_add(1);
                }
            }
            self.send(
                port,
                seq.wrapping_add(request.len() as u32),
                expect,
                flags::ACK,
                64000,
                b"",
            );
        }
        (String::from_utf8(body).unwrap(), expect, fin)
    }
}

fn doc() -> serde_json::Value {
    json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "big": "x".repeat(5000)}}})
}

#[test]
fn arp_requests_for_the_service_are_answered_others_pass() {
    let mut g = Guest::new(doc());
    let mut frame = [0u8; ETH_LEN + pdu::ARP_LEN];
    pdu::write_ethernet(&mut frame, [0xff; 6], GUEST_MAC, pdu::ETHERTYPE_ARP);
    let mut arp = Arp {
        operation: 1,
        sha: GUEST_MAC,
        spa: GUEST_IP,
        tha: [0; 6],
        tpa: Ipv4Addr::new(10, 0, 0, 1),
    };
    arp.write(&mut frame[ETH_LEN..]);
    assert!(
        !g.stack.detour(&frame, false, g.now),
        "the gateway's ARP goes to the TAP"
    );
    assert!(!g.stack.has_output());
    arp.tpa = DEFAULT_IPV4;
    arp.write(&mut frame[ETH_LEN..]);
    assert!(g.stack.detour(&frame, false, g.now));
    let mut buf = [0u8; 2048];
    let n = g.stack.write_frame(&mut buf, g.now).unwrap();
    let eth = Ethernet::parse(&buf[..n]).unwrap();
    assert_eq!(
        (eth.dst, eth.src, eth.ethertype),
        (GUEST_MAC, MMDS_MAC, pdu::ETHERTYPE_ARP)
    );
    let reply = Arp::parse(eth.payload).unwrap();
    assert_eq!(
        reply,
        Arp {
            operation: 2,
            sha: MMDS_MAC,
            spa: DEFAULT_IPV4,
            tha: GUEST_MAC,
            tpa: GUEST_IP
        }
    );
    assert!(g.stack.write_frame(&mut buf, g.now).is_none());
}

#[test]
fn frames_for_other_hosts_and_non_tcp_for_the_service() {
    let mut g = Guest::new(doc());
    let mut frame = vec![0u8; ETH_LEN + IPV4_LEN + 8];
    pdu::write_ethernet(&mut frame, MMDS_MAC, GUEST_MAC, pdu::ETHERTYPE_IPV4);
    pdu::write_ipv4(
        &mut frame[ETH_LEN..],
        GUEST_IP,
        Ipv4Addr::new(8, 8, 8, 8),
        17,
        8,
    );
    assert!(
        !g.stack.detour(&frame, false, g.now),
        "other hosts: to the TAP"
    );
    pdu::write_ipv4(&mut frame[ETH_LEN..], GUEST_IP, DEFAULT_IPV4, 17, 8);
    assert!(
        g.stack.detour(&frame, false, g.now),
        "UDP to the service: taken, dropped"
    );
    assert!(!g.stack.has_output());
    assert_eq!(g.metrics.rx_accepted_unusual.get(), 1);
    assert!(
        !g.stack.detour(&[1, 2, 3], false, g.now),
        "runt: not the service's"
    );
    assert_eq!(g.metrics.rx_bad_eth.get(), 1);
    // A corrupted TCP checksum is dropped unless the guest left it to the device.
    let seg = TcpOut {
        src_port: 5,
        dst_port: 80,
        seq: 1,
        ack: 0,
        flags: flags::SYN,
        window: 100,
        mss: None,
        payload: b"",
    };
    let mut frame = vec![0u8; ETH_LEN + IPV4_LEN + seg.len()];
    pdu::write_ethernet(&mut frame, MMDS_MAC, GUEST_MAC, pdu::ETHERTYPE_IPV4);
    pdu::write_ipv4(
        &mut frame[ETH_LEN..],
        GUEST_IP,
        DEFAULT_IPV4,
        pdu::PROTO_TCP,
        seg.len(),
    );
    seg.write(&mut frame[ETH_LEN + IPV4_LEN..], GUEST_IP, DEFAULT_IPV4);
    frame[ETH_LEN + IPV4_LEN + 16] ^= 0xff;
    assert!(g.stack.detour(&frame, false, g.now));
    assert!(!g.stack.has_output(), "bad checksum: dropped");
    assert!(g.stack.detour(&frame, true, g.now));
    assert_eq!(g.recv().len(), 1, "checksum left to the device: a SYN-ACK");
}

#[test]
fn a_get_is_answered_in_mss_segments_and_closed_on_request() {
    let mut g = Guest::new(doc());
    let (seq, server) = g.connect(40000);
    let (resp, _, fin) = g.exchange(
        40000,
        seq,
        server,
        "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nami-12345678"), "{resp}");
    assert!(!fin, "HTTP/1.1 keeps the connection");

    let (seq2, server2) = g.connect(40001);
    let (resp, next, fin) = g.exchange(
        40001,
        seq2,
        server2,
        "GET /latest/meta-data/big HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(fin, "Connection: close: the service closes");
    assert!(
        resp.ends_with(&"x".repeat(5000)),
        "5000 bytes in several segments"
    );
    assert_eq!(g.stack.connections(), 2);
    // The guest closes its side too: the connection is done.
    let fin_seq =
        seq2 + "GET /latest/meta-data/big HTTP/1.1\r\nConnection: close\r\n\r\n".len() as u32;
    g.send(40001, fin_seq, next, flags::FIN | flags::ACK, 64000, b"");
    let r = g.recv();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].flags, r[0].ack), (flags::ACK, fin_seq + 1));
    assert_eq!(
        g.stack.connections(),
        1,
        "closed both ways and acknowledged: gone"
    );
    assert_eq!(g.metrics.connections_created.get(), 2);
    assert_eq!(g.metrics.connections_destroyed.get(), 1);
}

#[test]
fn a_request_split_across_segments_and_pipelined_requests() {
    let mut g = Guest::new(doc());
    let (mut seq, server) = g.connect(40000);
    for part in ["GET /latest/meta", "-data/ami-id HTTP/1.1\r\n", "\r\n"] {
        g.send(40000, seq, server, flags::ACK, 64000, part.as_bytes());
        seq += part.len() as u32;
    }
    let segs = g.recv();
    let body: Vec<u8> = segs.iter().flat_map(|s| s.data.clone()).collect();
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("ami-12345678"), "{text}");

    let two = "GET /latest HTTP/1.1\r\n\r\nGET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n";
    let server = segs.last().map(|s| s.seq + s.data.len() as u32).unwrap();
    let (resp, _, _) = g.exchange(40000, seq, server, two);
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
    assert!(resp.contains("\r\n\r\nmeta-data/HTTP/1.1"), "{resp}");
}

#[test]
fn the_guests_window_and_mss_bound_what_is_in_flight() {
    let mut g = Guest::new(doc());
    assert!(g.send_with(40000, 80, 1000, 0, flags::SYN, 3000, b"", Some(1000)));
    let syn_ack = g.recv().remove(0);
    let server = syn_ack.seq + 1;
    g.send(40000, 1001, server, flags::ACK, 3000, b"");
    let req = "GET /latest/meta-data/big HTTP/1.1\r\n\r\n";
    g.send(40000, 1001, server, flags::ACK, 3000, req.as_bytes());
    let segs = g.recv();
    assert!(segs.iter().all(|s| s.data.len() <= 1000), "the guest's MSS");
    let in_flight: usize = segs.iter().map(|s| s.data.len()).sum();
    assert_eq!(in_flight, 3000, "the guest's window, no more");
    // A closed window: nothing until the probe timer, then one byte.
    let acked = server + 3000;
    g.send(40000, 1001 + req.len() as u32, acked, flags::ACK, 0, b"");
    assert!(g.recv().is_empty());
    g.now += INITIAL_RTO;
    g.stack.on_timer(g.now);
    let probe = g.recv();
    assert_eq!(probe.len(), 1);
    assert_eq!((probe[0].seq, probe[0].data.len()), (acked, 1));
    // The window opens: the rest flows.
    g.send(
        40000,
        1001 + req.len() as u32,
        acked + 1,
        flags::ACK,
        60000,
        b"",
    );
    let rest: usize = g.recv().iter().map(|s| s.data.len()).sum();
    assert!(rest > 2000, "{rest}");
}

#[test]
fn unacknowledged_data_is_sent_again_then_the_connection_gives_up() {
    let mut g = Guest::new(doc());
    let (seq, server) = g.connect(40000);
    let req = "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n";
    g.send(40000, seq, server, flags::ACK, 64000, req.as_bytes());
    let first = g.recv();
    assert_eq!(first.len(), 1);
    assert!(g.stack.next_deadline().is_some());
    g.now += INITIAL_RTO / 2;
    g.stack.on_timer(g.now);
    assert!(g.recv().is_empty(), "not due yet");
    g.now += INITIAL_RTO;
    g.stack.on_timer(g.now);
    let again = g.recv();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].seq, &again[0].data),
        (first[0].seq, &first[0].data)
    );
    for _ in 0..MAX_RETRIES {
        g.now += Duration::from_secs(10);
        g.stack.on_timer(g.now);
        g.recv();
    }
    assert_eq!(g.stack.connections(), 0, "given up");
    assert!(g.stack.next_deadline().is_none());
}

#[test]
fn a_lost_syn_ack_is_sent_again_on_a_repeated_syn_or_the_timer() {
    let mut g = Guest::new(doc());
    g.send(40000, 1000, 0, flags::SYN, 64000, b"");
    let a = g.recv();
    g.send(40000, 1000, 0, flags::SYN, 64000, b"");
    let b = g.recv();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].flags, b[0].seq), (flags::SYN | flags::ACK, a[0].seq));
    g.now += INITIAL_RTO;
    g.stack.on_timer(g.now);
    let c = g.recv();
    assert_eq!((c[0].flags, c[0].seq), (flags::SYN | flags::ACK, a[0].seq));
    assert_eq!(g.stack.states(), vec![State::SynReceived]);
}

#[test]
fn strays_are_reset_and_resets_close() {
    let mut g = Guest::new(doc());
    g.send(40000, 77, 5, flags::ACK, 64000, b"hello");
    let r = g.recv();
    assert_eq!(
        (r[0].flags, r[0].seq, r[0].dst_port),
        (flags::RST, 5, 40000)
    );
    g.send_with(40001, 22, 9, 0, flags::SYN, 64000, b"", None);
    let r = g.recv();
    assert_eq!(
        (r[0].flags, r[0].ack, r[0].src_port),
        (flags::RST | flags::ACK, 10, 22),
        "port 22: refused"
    );
    let (seq, server) = g.connect(40002);
    g.send(40002, seq, server, flags::RST, 0, b"");
    assert_eq!(g.stack.connections(), 0);
    assert!(g.recv().is_empty(), "a reset is not answered");
}

#[test]
fn connections_are_bounded_the_least_recently_active_goes() {
    let mut g = Guest::new(doc());
    for port in 0..MAX_CONNECTIONS as u16 {
        g.connect(30000 + port);
        g.now += Duration::from_millis(1);
    }
    assert_eq!(g.stack.connections(), MAX_CONNECTIONS);
    g.send(50000, 1, 0, flags::SYN, 64000, b"");
    let r = g.recv();
    assert!(
        r.iter()
            .any(|s| s.flags == flags::RST && s.dst_port == 30000),
        "{r:?}"
    );
    assert!(
        r.iter()
            .any(|s| s.flags == flags::SYN | flags::ACK && s.dst_port == 50000)
    );
    assert_eq!(g.stack.connections(), MAX_CONNECTIONS);
}

#[test]
fn a_malformed_request_gets_400_and_a_close() {
    let mut g = Guest::new(doc());
    let (seq, server) = g.connect(40000);
    let (resp, _, fin) = g.exchange(40000, seq, server, "NOT HTTP\x01\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(fin);
    assert_eq!(g.metrics.rx_accepted_err.get(), 1);
}

#[test]
fn the_window_offered_shrinks_with_buffered_request_bytes() {
    let mut g = Guest::new(doc());
    let (seq, server) = g.connect(40000);
    let partial = format!("GET /{} HTTP/1.1\r\n", "a".repeat(1000));
    g.send(40000, seq, server, flags::ACK, 64000, partial.as_bytes());
    let r = g.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(
        usize::from(r[0].window),
        crate::tcp::RECV_BUFFER - partial.len(),
        "what the request buffer can still take"
    );
}

proptest::proptest! {
    #[test]
    fn any_segment_from_the_guest_is_handled_without_panic(
        segs in proptest::collection::vec(
            (0u16..4, proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>(), proptest::prelude::any::<u8>(), proptest::prelude::any::<u16>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
            1..40,
        )
    ) {
        let mut g = Guest::new(doc());
        for (port, seq, ack, fl, window, data) in segs {
            g.send(40000 + port, seq, ack, fl, window, &data);
            let mut buf = vec![0u8; 2048];
            while g.stack.write_frame(&mut buf, g.now).is_some() {}
            g.now += Duration::from_millis(150);
            g.stack.on_timer(g.now);
        }
        proptest::prop_assert!(g.stack.connections() <= MAX_CONNECTIONS);
    }
}
