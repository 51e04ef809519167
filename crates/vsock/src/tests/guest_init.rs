//! Guest-initiated connections to `<socket>_<port>`, and guest traffic that matches no
//! connection.

use std::io::Write;
use std::os::unix::net::UnixListener;

use super::*;
use crate::connection::CONN_BUF_SIZE;

fn listen(h: &Harness, port: u32) -> UnixListener {
    let mut p = h.sock.as_os_str().to_owned();
    p.push(format!("_{port}"));
    UnixListener::bind(PathBuf::from(p)).unwrap()
}

#[test]
fn guest_connects_to_a_listening_host_port() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let l = listen(&h, 1234);
    h.send(h.hdr(op::REQUEST, 5000, 1234), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let resp = pkts[0].0;
    assert_eq!(resp.op, op::RESPONSE);
    assert_eq!((resp.src_cid, resp.dst_cid), (HOST_CID, CID));
    assert_eq!((resp.src_port, resp.dst_port), (1234, 5000));
    assert_eq!(resp.buf_alloc, CONN_BUF_SIZE);

    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    h.send(h.hdr(op::RW, 5000, 1234), b"ping");
    assert_eq!(read_exact(&mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    let pkts = h.pump();
    assert_eq!(rw_bytes(&pkts), b"pong");
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (1234, 5000));
    assert_eq!(pkts[0].0.fwd_cnt, 4);

    // A second guest port to the same host port is a separate connection.
    h.send(h.hdr(op::REQUEST, 5001, 1234), &[]);
    assert_eq!(h.recv()[0].0.op, op::RESPONSE);
    let (mut s2, _) = l.accept().unwrap();
    h.send(h.hdr(op::RW, 5001, 1234), b"two");
    assert_eq!(read_exact(&mut s2, 3), b"two");
    assert_eq!(h.connections(), 2);

    // The host closes; the guest is told after the data.
    s.write_all(b"end").unwrap();
    drop(s);
    let pkts = h.pump();
    assert_eq!(rw_bytes(&pkts), b"end");
    assert_eq!(pkts.last().unwrap().0.op, op::SHUTDOWN);
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    h.send(h.hdr(op::REQUEST, 5000, 999), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let rst = pkts[0].0;
    assert_eq!(rst.op, op::RST);
    assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, CID));
    assert_eq!((rst.src_port, rst.dst_port), (999, 5000));
    assert_eq!(h.connections(), 0);

    // A listener that went away (stale socket file) is the same.
    let l = listen(&h, 998);
    drop(l);
    h.send(h.hdr(op::REQUEST, 5000, 998), &[]);
    assert_eq!(h.recv()[0].0.op, op::RST);
}

#[test]
fn traffic_for_no_connection_is_reset() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    for o in [
        op::RW,
        op::RESPONSE,
        op::SHUTDOWN,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
    ] {
        h.send(h.hdr(o, 40, 41), b"");
        let pkts = h.recv();
        assert_eq!(pkts.len(), 1, "op {o}");
        assert_eq!(pkts[0].0.op, op::RST);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (41, 40));
    }
    h.send(h.hdr(op::RW, 40, 41), b"data");
    assert_eq!(h.recv()[0].0.op, op::RST);
    // A RST is never answered.
    h.send(h.hdr(op::RST, 40, 41), &[]);
    assert!(h.recv().is_empty());
}

#[test]
fn duplicate_request_resets_the_connection() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let l = listen(&h, 77);
    h.send(h.hdr(op::REQUEST, 6000, 77), &[]);
    assert_eq!(h.recv()[0].0.op, op::RESPONSE);
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    h.send(h.hdr(op::REQUEST, 6000, 77), &[]);
    assert_eq!(h.recv()[0].0.op, op::RST);
    assert!(host_sees_eof(&mut s));
    assert_eq!(h.connections(), 0);
}
