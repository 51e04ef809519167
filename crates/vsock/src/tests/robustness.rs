//! What a misbehaving guest can send: malformed chains, bad headers, unusable RX
//! buffers, many connections. Never a panic, never a worker error.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;

use super::*;
use crate::muxer::EPHEMERAL_PORT_START;
use crate::packet::MAX_PKT_PAYLOAD;

fn hdr_desc(h: &mut Harness, hdr: Header, write: bool) -> Desc {
    let addr = h.put(&hdr.to_bytes());
    Desc {
        addr,
        len: HDR_SIZE as u32,
        write,
    }
}

#[test]
fn malformed_tx_chains_are_dropped() {
    let mut h = Harness::new();
    h.post_rx(16, RX_BUF);
    // Each header, if it were taken, would draw a RST (no connection on port 41).
    let probe = h.hdr(op::RW, 40, 41);
    let bytes = probe.to_bytes();

    // Header split across two descriptors.
    let a = h.put(&bytes[..20]);
    let b = h.put(&bytes[20..]);
    h.send_raw(
        &[
            Desc {
                addr: a,
                len: 20,
                write: false,
            },
            Desc {
                addr: b,
                len: 24,
                write: false,
            },
        ],
        None,
    );
    // Header in a device-writable descriptor.
    let d = hdr_desc(&mut h, probe, true);
    h.send_raw(&[d], None);
    // Header outside guest memory, and straddling its end.
    h.send_raw(
        &[Desc {
            addr: 1 << 40,
            len: 44,
            write: false,
        }],
        None,
    );
    h.send_raw(
        &[Desc {
            addr: MEM_SIZE as u64 - 20,
            len: 44,
            write: false,
        }],
        None,
    );
    // A zero-length descriptor.
    h.send_raw(
        &[Desc {
            addr: a,
            len: 0,
            write: false,
        }],
        None,
    );
    // Payload descriptor outside memory.
    let d = hdr_desc(&mut h, probe, false);
    h.send_raw(
        &[
            d,
            Desc {
                addr: 1 << 40,
                len: 8,
                write: false,
            },
        ],
        None,
    );
    // Wrong source or destination CID.
    for (src, dst) in [(CID + 1, HOST_CID), (CID, 7), (HOST_CID, HOST_CID)] {
        let mut bad = probe;
        bad.src_cid = src;
        bad.dst_cid = dst;
        h.send(bad, b"x");
    }
    assert!(h.recv().is_empty(), "all dropped without a reply");
    assert_eq!(h.tx.outstanding(), 0, "every chain went back to the guest");

    // A descriptor loop: the chain ends where virtio-queue stops following it.
    let upd = h.hdr(op::CREDIT_UPDATE, 40, 41);
    let d = hdr_desc(&mut h, upd, false);
    h.send_raw(&[d], Some(0));
    h.send_raw(&[d, d], Some(1));
    let _ = h.recv();
    assert!(!h.irq.failed.load(Ordering::SeqCst));

    // The device still works.
    h.send(probe, &[]);
    let pkts = h.recv();
    assert_eq!(pkts.last().unwrap().0.op, op::RST);
}

#[test]
fn bad_packets_on_a_connection_reset_it() {
    let mut h = Harness::new();
    h.post_rx(32, RX_BUF);
    type Corrupt = fn(&mut Header);
    let cases: [(&str, Corrupt); 5] = [
        ("type seqpacket", |p| p.type_ = 2),
        ("unknown op", |p| p.op = 99),
        ("op zero", |p| p.op = 0),
        ("request again", |p| p.op = op::REQUEST),
        ("response when established", |p| p.op = op::RESPONSE),
    ];
    for (what, corrupt) in cases {
        let (mut s, local) = h.establish_host(52);
        let mut p = h.hdr(op::RW, 52, local);
        corrupt(&mut p);
        h.send(p, &[]);
        let pkts = h.recv();
        assert!(
            pkts.iter()
                .any(|(r, _)| r.op == op::RST && r.dst_port == 52),
            "{what}: {pkts:?}"
        );
        assert!(host_sees_eof(&mut s), "{what}");
        assert_eq!(h.connections(), 0, "{what}");
    }

    // Payload longer than the maximum, or than the chain.
    for len in [MAX_PKT_PAYLOAD as u32 + 1, 100] {
        let (mut s, local) = h.establish_host(52);
        let mut p = h.hdr(op::RW, 52, local);
        p.len = len;
        let hd = hdr_desc(&mut h, p, false);
        let data = h.put(&[7u8; 10]);
        h.send_raw(
            &[
                hd,
                Desc {
                    addr: data,
                    len: 10,
                    write: false,
                },
            ],
            None,
        );
        assert!(h.recv().iter().any(|(r, _)| r.op == op::RST), "len {len}");
        assert!(host_sees_eof(&mut s));
    }

    // Payload in the header's descriptor (one descriptor for the whole packet) is fine.
    let (mut s, local) = h.establish_host(52);
    let mut p = h.hdr(op::RW, 52, local);
    p.len = 3;
    let mut one = p.to_bytes().to_vec();
    one.extend_from_slice(b"abc");
    let a = h.put(&one);
    h.send_raw(
        &[Desc {
            addr: a,
            len: 47,
            write: false,
        }],
        None,
    );
    assert_eq!(read_exact(&mut s, 3), b"abc");
    assert!(!h.irq.failed.load(Ordering::SeqCst));
}

#[test]
fn unusable_rx_buffers_are_skipped() {
    let mut h = Harness::new();
    let mem = h.mem.clone();
    let small = h.alloc(20);
    let good = h.alloc(RX_BUF);
    let bufs = [
        Desc {
            addr: good,
            len: RX_BUF,
            write: false,
        }, // read-only
        Desc {
            addr: small,
            len: 20,
            write: true,
        }, // too small for a header
        Desc {
            addr: 1 << 40,
            len: RX_BUF,
            write: true,
        }, // outside memory
    ];
    for b in bufs {
        h.rx.add(&mem, &[b], None);
    }
    h.kick(RX_QUEUE);
    h.send(h.hdr(op::RW, 40, 41), b"x");
    let used = h.rx.take_used(&mem);
    assert_eq!(used.len(), 3);
    assert!(used.iter().all(|(_, len)| *len == 0));
    // The RST waits for a good buffer.
    h.post_rx(1, RX_BUF);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RST);
    // A header-only buffer (no room for data) takes control packets.
    h.post_rx(1, HDR_SIZE as u32);
    h.send(h.hdr(op::SHUTDOWN, 40, 41), &[]);
    assert_eq!(h.recv()[0].0.op, op::RST);
}

#[test]
fn many_connections_each_relay_their_own_bytes() {
    let mut h = Harness::new();
    h.post_rx(120, RX_BUF);
    let mut conns = Vec::new();
    for i in 0..40u32 {
        conns.push(h.establish_host(100 + i));
    }
    let mut locals: Vec<u32> = conns.iter().map(|c| c.1).collect();
    locals.sort_unstable();
    locals.dedup();
    assert_eq!(locals.len(), 40, "distinct local ports");
    assert!(locals.iter().all(|&p| p >= EPHEMERAL_PORT_START));
    for (i, (s, _)) in conns.iter_mut().enumerate() {
        s.write_all(format!("from host {i}").as_bytes()).unwrap();
    }
    let pkts = h.pump();
    for (i, (_, local)) in conns.iter().enumerate() {
        let d: Vec<u8> = pkts
            .iter()
            .filter(|(p, _)| p.op == op::RW && p.src_port == *local)
            .flat_map(|(_, d)| d.clone())
            .collect();
        assert_eq!(d, format!("from host {i}").into_bytes());
    }
    for (i, (s, local)) in conns.iter_mut().enumerate() {
        let port = 100 + i as u32;
        h.send(h.hdr(op::RW, port, *local), format!("to {i}").as_bytes());
        let want = format!("to {i}").into_bytes();
        assert_eq!(read_exact(s, want.len()), want);
    }
    assert_eq!(h.connections(), 40);
}

#[test]
fn connection_limit_is_enforced() {
    let mut h = Harness::new();
    h.worker.muxer().set_max_connections(3);
    h.post_rx(16, RX_BUF);
    let _a = h.establish_host(1);
    let _b = h.establish_host(2);
    let _c = h.establish_host(3);
    let mut d = h.host_connect(4);
    assert!(h.pump().is_empty(), "no REQUEST past the limit");
    assert!(host_sees_eof(&mut d));
    let mut p = h.sock.as_os_str().to_owned();
    p.push("_5");
    let _l = UnixListener::bind(PathBuf::from(p)).unwrap();
    h.send(h.hdr(op::REQUEST, 9000, 5), &[]);
    assert_eq!(h.recv()[0].0.op, op::RST);
    assert_eq!(h.connections(), 3);
}

#[test]
fn worker_reset_drops_every_connection() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let (mut s, _) = h.establish_host(52);
    let mut pending = h.host_connect(53);
    assert_eq!(h.pump()[0].0.op, op::REQUEST);
    h.worker.reset();
    assert_eq!(h.connections(), 0);
    assert!(host_sees_eof(&mut s));
    // The host connection waiting for the guest's answer is gone too.
    assert!(host_sees_eof(&mut pending));
    // The listener survives a reset.
    let (_s2, _) = h.establish_host(54);
    assert_eq!(h.connections(), 1);
}

#[test]
fn replies_without_rx_buffers_pause_tx_instead_of_growing() {
    use crate::muxer::RX_BACKLOG_LIMIT;
    let mut h = Harness::new();
    // No RX buffers: every packet to a closed port owes the guest a RST.
    let total = RX_BACKLOG_LIMIT + 44;
    for i in 0..total as u32 {
        h.send(h.hdr(op::CREDIT_UPDATE, 10_000 + i, 41), &[]);
    }
    assert_eq!(h.tx.outstanding(), 44, "TX left alone past the backlog");
    h.post_rx(100, RX_BUF);
    let mem = h.mem.clone();
    h.tx.take_used(&mem);
    assert_eq!(h.tx.outstanding(), 0, "TX resumes once RX drains");
    let mut got = h.recv();
    while got.len() < total {
        h.post_rx(50, RX_BUF);
        let more = h.recv();
        assert!(!more.is_empty());
        got.extend(more);
    }
    let mut ports: Vec<u32> = got
        .iter()
        .map(|(p, _)| {
            assert_eq!((p.op, p.src_port), (op::RST, 41));
            p.dst_port
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, (10_000..10_000 + total as u32).collect::<Vec<_>>());
}
