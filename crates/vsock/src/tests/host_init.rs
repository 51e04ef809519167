//! Host-initiated connections: `CONNECT <port>\n`, the guest's answer, the relay, and
//! the host closing its side.

use std::io::Write;
use std::net::Shutdown;

use super::*;
use crate::connection::CONN_BUF_SIZE;
use crate::muxer::EPHEMERAL_PORT_START;
use crate::packet::shutdown;

#[test]
fn host_connect_relays_both_ways() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let mut s = h.host_connect(52);
    let pkts = h.pump();
    assert_eq!(pkts.len(), 1);
    let req = pkts[0].0;
    assert_eq!(req.op, op::REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    assert_eq!(req.dst_port, 52);
    assert!(req.src_port >= EPHEMERAL_PORT_START);
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
    let local = req.src_port;

    h.send(h.hdr(op::RESPONSE, 52, local), &[]);
    assert_eq!(read_line(&mut s), format!("OK {local}\n"));

    s.write_all(b"hello guest").unwrap();
    let pkts = h.pump();
    assert_eq!(pkts.len(), 1);
    let (rw, data) = &pkts[0];
    assert_eq!(rw.op, op::RW);
    assert_eq!((rw.src_port, rw.dst_port), (local, 52));
    assert_eq!(data, b"hello guest");

    h.send(h.hdr(op::RW, 52, local), b"hello host");
    assert_eq!(read_exact(&mut s, 10), b"hello host");

    // The next packet to the guest carries the bytes we forwarded in fwd_cnt.
    s.write_all(b"!").unwrap();
    let pkts = h.pump();
    assert_eq!(pkts[0].0.fwd_cnt, 10);
    assert!(h.irq.used_count() > 0, "the guest was interrupted");
    assert_eq!(h.connections(), 1);

    // The counters: REQUEST, "hello guest" and "!" went to the guest; RESPONSE and
    // "hello host" came from it.
    let m = h.worker.muxer().metrics().take();
    assert_eq!((m.conns_added, m.conns_removed), (1, 0));
    assert_eq!((m.rx_packets_count, m.rx_bytes_count), (3, 12));
    assert_eq!((m.tx_packets_count, m.tx_bytes_count), (2, 10));
}

/// A vhost-user frontend starts the rings one at a time and the worker runs from the
/// first: a queue that is not ready yet is left alone (the worker used to fail on it and
/// the device went quiet), and served once it starts.
#[test]
fn rings_started_one_at_a_time() {
    // RX first: host connections reach the guest before TX exists.
    let mut h = Harness::new();
    h.queues[TX_QUEUE].set_ready(false);
    h.post_rx(8, RX_BUF);
    let mut s = h.host_connect(52);
    let pkts = h.pump();
    assert_eq!(pkts.len(), 1);
    let req = pkts[0].0;
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 52));
    h.queues[TX_QUEUE].set_ready(true);
    h.send(h.hdr(op::RESPONSE, 52, req.src_port), &[]);
    assert_eq!(read_line(&mut s), format!("OK {}\n", req.src_port));

    // TX first: the REQUEST waits in the device until RX starts (its start is a kick).
    let mut h = Harness::new();
    h.queues[RX_QUEUE].set_ready(false);
    h.kick(TX_QUEUE);
    let _s = h.host_connect(53);
    assert!(h.pump().is_empty(), "no RX queue yet");
    h.queues[RX_QUEUE].set_ready(true);
    h.post_rx(8, RX_BUF);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::REQUEST, 53));
}

#[test]
fn bytes_after_the_connect_line_are_relayed() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let mut s = UnixStream::connect(&h.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"CONNECT 7\r\nearly bytes").unwrap();
    let pkts = h.pump();
    assert_eq!(pkts.len(), 1, "only the REQUEST before the guest accepts");
    let local = pkts[0].0.src_port;
    h.send(h.hdr(op::RESPONSE, 7, local), &[]);
    assert_eq!(read_line(&mut s), format!("OK {local}\n"));
    let pkts = h.recv();
    assert_eq!(rw_bytes(&pkts), b"early bytes");
}

#[test]
fn guest_rst_closes_the_host_connection() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let mut s = h.host_connect(1000);
    let req = h.pump()[0].0;
    assert_eq!(req.op, op::REQUEST);
    h.send(h.hdr(op::RST, 1000, req.src_port), &[]);
    assert!(host_sees_eof(&mut s), "no OK line, just EOF");
    assert_eq!(h.connections(), 0);
}

#[test]
fn bad_connect_lines_close_the_host_connection() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let lines: [&[u8]; 4] = [
        b"HELLO 5\n",
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        &[b'7'; 40],
    ];
    for line in lines {
        let mut s = UnixStream::connect(&h.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(line).unwrap();
        assert!(h.pump().is_empty(), "the guest hears nothing");
        assert!(host_sees_eof(&mut s), "{line:?}");
    }
    // A host that connects and hangs up before the line.
    drop(UnixStream::connect(&h.sock).unwrap());
    assert!(h.pump().is_empty());
    assert_eq!(h.connections(), 0);
}

#[test]
fn host_half_close_then_close() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let (mut s, local) = h.establish_host(52);
    s.write_all(b"last words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let pkts = h.pump();
    assert_eq!(rw_bytes(&pkts), b"last words");
    let shut = pkts.last().unwrap().0;
    assert_eq!(shut.op, op::SHUTDOWN, "after the data");
    assert_eq!(shut.flags, shutdown::SEND);

    // Half-closed: the guest still sends, the host still reads.
    h.send(h.hdr(op::RW, 52, local), b"reply");
    assert_eq!(read_exact(&mut s, 5), b"reply");

    drop(s);
    let pkts = h.pump();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::SHUTDOWN);
    assert_eq!(pkts[0].0.flags, shutdown::BOTH);
    // Linux answers a full shutdown with RST; the connection is then gone.
    h.send(h.hdr(op::RST, 52, local), &[]);
    assert_eq!(h.connections(), 0);
    h.post_rx(1, RX_BUF);
    assert!(h.pump().is_empty());
}

#[test]
fn host_close_with_pending_data_delivers_it_first() {
    let mut h = Harness::new();
    // One buffer for the REQUEST, four for data.
    h.post_rx(5, RX_BUF);
    let (mut s, local) = h.establish_host(9);
    let data = pattern(40_000, 1);
    s.write_all(&data).unwrap();
    drop(s);
    // Four 4 KiB buffers are not enough: the rest waits, in the socket or with us.
    let mut got = rw_bytes(&h.pump());
    assert_eq!(got.len(), 4 * 4096);
    for _ in 0..20 {
        h.post_rx(4, RX_BUF);
        let pkts = h.pump();
        got.extend(rw_bytes(&pkts));
        if let Some((last, _)) = pkts.last()
            && last.op == op::SHUTDOWN
        {
            assert_eq!(last.flags, shutdown::BOTH);
            break;
        }
    }
    assert_eq!(got, data);
    h.send(h.hdr(op::RST, 9, local), &[]);
    assert_eq!(h.connections(), 0);
}

#[test]
fn guest_shutdowns_half_close_then_close_the_host_side() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let (mut s, local) = h.establish_host(52);
    h.send(h.hdr(op::RW, 52, local), b"bye");
    let mut shut = h.hdr(op::SHUTDOWN, 52, local);
    shut.flags = shutdown::SEND;
    h.send(shut, &[]);
    assert_eq!(read_exact(&mut s, 3), b"bye");
    assert!(host_sees_eof(&mut s), "the guest will send no more");

    // The other direction still works.
    s.write_all(b"still here").unwrap();
    assert_eq!(rw_bytes(&h.pump()), b"still here");

    shut.flags = shutdown::BOTH;
    h.send(shut, &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        pkts[0].0.op,
        op::RST,
        "the device completes the guest's close"
    );
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (local, 52));
    assert_eq!(h.connections(), 0);
    // The host socket is closed: writing to it fails.
    assert!(s.write_all(b"anyone?").is_err());
}

#[test]
fn unanswered_request_times_out() {
    let mut h = Harness::new();
    h.worker
        .muxer()
        .set_request_timeout(Duration::from_millis(30));
    h.post_rx(8, RX_BUF);
    // An answered connection is not affected.
    let (mut answered, _) = h.establish_host(53);
    let mut s = h.host_connect(52);
    let req = h.pump()[0].0;
    assert_eq!(req.op, op::REQUEST);
    std::thread::sleep(Duration::from_millis(60));
    let pkts = h.pump();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RST);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (req.src_port, 52));
    assert!(host_sees_eof(&mut s));
    assert_eq!(h.connections(), 1);
    answered.write_all(b"alive").unwrap();
    assert_eq!(rw_bytes(&h.pump()), b"alive");
}
