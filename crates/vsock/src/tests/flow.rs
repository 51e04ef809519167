//! Credit-based flow control in both directions, and data kept while the guest has no
//! credit or no RX buffers.

use std::io::{Read, Write};

use super::*;
use crate::connection::{CONN_BUF_SIZE, CREDIT_UPDATE_THRESHOLD};

/// Establish a host connection to guest port 52 with the guest advertising `buf_alloc`.
fn establish_with_credit(h: &mut Harness, buf_alloc: u32) -> (UnixStream, u32) {
    let mut s = h.host_connect(52);
    let req = h.pump()[0].0;
    let mut resp = h.hdr(op::RESPONSE, 52, req.src_port);
    resp.buf_alloc = buf_alloc;
    h.send(resp, &[]);
    assert_eq!(read_line(&mut s), format!("OK {}\n", req.src_port));
    (s, req.src_port)
}

#[test]
fn device_stops_at_the_guests_credit_and_resumes_on_update() {
    let mut h = Harness::new();
    h.post_rx(32, RX_BUF);
    let (mut s, local) = establish_with_credit(&mut h, 1000);
    let data = pattern(3000, 7);
    s.write_all(&data).unwrap();
    let got = rw_bytes(&h.pump());
    assert_eq!(got, data[..1000], "exactly the guest's buffer");
    // More host events do not push past the credit.
    assert!(rw_bytes(&h.pump()).is_empty());

    // The guest consumed 600 bytes.
    let mut upd = h.hdr(op::CREDIT_UPDATE, 52, local);
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 600;
    h.send(upd, &[]);
    let got2 = rw_bytes(&h.recv());
    assert_eq!(got2, data[1000..1600]);

    // A bigger buffer and everything consumed.
    upd.buf_alloc = 10_000;
    upd.fwd_cnt = 1600;
    h.send(upd, &[]);
    let mut rest = rw_bytes(&h.recv());
    rest.extend(rw_bytes(&h.pump()));
    assert_eq!(rest, data[1600..]);
}

#[test]
fn zero_credit_with_data_pending_asks_the_guest() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let (mut s, local) = establish_with_credit(&mut h, 100);
    s.write_all(&pattern(50, 1)).unwrap();
    assert_eq!(rw_bytes(&h.pump()).len(), 50);
    // The guest shrinks its buffer below what is in flight: no credit at all, and data
    // waiting with us.
    s.write_all(&pattern(50, 2)).unwrap();
    let mut upd = h.hdr(op::CREDIT_UPDATE, 52, local);
    upd.buf_alloc = 60;
    upd.fwd_cnt = 0;
    h.send(upd, &[]);
    let pkts = h.pump();
    assert_eq!(rw_bytes(&pkts).len(), 10);
    let ops: Vec<u16> = pkts.iter().map(|(h, _)| h.op).collect();
    assert!(ops.contains(&op::CREDIT_REQUEST), "{ops:?}");
    upd.fwd_cnt = 60;
    h.send(upd, &[]);
    assert_eq!(rw_bytes(&h.recv()), pattern(50, 2)[10..]);
}

#[test]
fn host_data_waits_for_rx_buffers() {
    let mut h = Harness::new();
    h.post_rx(1, RX_BUF);
    let (mut s, _) = establish_with_credit(&mut h, GUEST_BUF);
    let data = pattern(60_000, 3);
    s.write_all(&data).unwrap();
    // No RX buffers: nothing moves, nothing is lost.
    assert!(h.pump().is_empty());
    let mut got = Vec::new();
    while got.len() < data.len() {
        h.post_rx(3, RX_BUF);
        let pkts = h.pump();
        assert!(!pkts.is_empty(), "progress with buffers");
        assert!(
            pkts.iter()
                .all(|(p, d)| d.len() <= 4096 && p.len as usize == d.len())
        );
        got.extend(rw_bytes(&pkts));
    }
    assert_eq!(got, data);
}

#[test]
fn device_advertises_and_honours_its_own_buffer() {
    let mut h = Harness::new();
    h.post_rx(64, RX_BUF);
    let (mut s, local) = establish_with_credit(&mut h, GUEST_BUF);
    // The guest sends up to our buffer while the host does not read: fine.
    let chunk = pattern(64 * 1024, 9);
    let mut sent = 0usize;
    while sent + chunk.len() <= CONN_BUF_SIZE as usize {
        h.send(h.hdr(op::RW, 52, local), &chunk);
        sent += chunk.len();
    }
    assert!(h.recv().iter().all(|(p, _)| p.op != op::RST));
    // The host drains it all; past the threshold the guest gets a credit update.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < sent {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        h.host_event();
    }
    assert_eq!(got, chunk.repeat(sent / chunk.len()));
    let pkts = h.pump();
    let upd = pkts
        .iter()
        .map(|(p, _)| *p)
        .rfind(|p| p.op == op::CREDIT_UPDATE)
        .expect("a credit update");
    assert!(upd.fwd_cnt >= CREDIT_UPDATE_THRESHOLD);
    assert_eq!(upd.fwd_cnt as usize, sent);
    assert_eq!(upd.buf_alloc, CONN_BUF_SIZE);

    // A guest that ignores our credit and sends past the buffer is reset.
    let mut rst = None;
    for _ in 0..64 {
        h.send(h.hdr(op::RW, 52, local), &chunk);
        if let Some(p) = h.recv().into_iter().find(|(p, _)| p.op == op::RST) {
            rst = Some(p.0);
            break;
        }
    }
    let rst = rst.expect("overrunning the buffer resets");
    assert_eq!((rst.src_port, rst.dst_port), (local, 52));
    assert_eq!(h.connections(), 0);
}

#[test]
fn credit_request_is_answered_with_an_update() {
    let mut h = Harness::new();
    h.post_rx(8, RX_BUF);
    let (mut s, local) = establish_with_credit(&mut h, GUEST_BUF);
    h.send(h.hdr(op::RW, 52, local), b"12345");
    assert_eq!(read_exact(&mut s, 5), b"12345");
    h.send(h.hdr(op::CREDIT_REQUEST, 52, local), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::CREDIT_UPDATE);
    assert_eq!(pkts[0].0.fwd_cnt, 5);
    assert_eq!(pkts[0].0.buf_alloc, CONN_BUF_SIZE);
}

/// A guest that behaves like Linux: it honours the device's credit (waiting for credit
/// updates) and gives credit back as it consumes. One MiB each way, checked byte for
/// byte, with the host side on its own threads.
#[test]
fn bulk_transfer_both_ways_with_credit() {
    const TOTAL: usize = 1 << 20;
    let mut h = Harness::new();
    h.post_rx(64, RX_BUF);
    let (s, local) = establish_with_credit(&mut h, GUEST_BUF);
    let mut reader = s.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let host_rx = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < TOTAL {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let mut writer = s.try_clone().unwrap();
    let host_tx = std::thread::spawn(move || writer.write_all(&pattern(TOTAL, 5)).unwrap());

    let to_host = pattern(TOTAL, 11);
    let (mut sent, mut peer_fwd) = (0usize, 0u32);
    let mut received = Vec::new();
    let start = std::time::Instant::now();
    while sent < TOTAL || received.len() < TOTAL {
        assert!(start.elapsed() < Duration::from_secs(30), "stalled");
        // Send what the device's credit allows, 16 KiB at a time.
        let credit = CONN_BUF_SIZE as usize - (sent - peer_fwd as usize);
        let n = credit.min(16 * 1024).min(TOTAL - sent);
        if n > 0 {
            let mut p = h.hdr(op::RW, 52, local);
            p.fwd_cnt = received.len() as u32;
            h.send(p, &to_host[sent..sent + n]);
            sent += n;
        }
        h.host_event();
        let pkts = h.recv();
        for (p, d) in &pkts {
            assert_ne!(p.op, op::RST);
            peer_fwd = p.fwd_cnt;
            received.extend_from_slice(d);
        }
        // Consume everything and give the credit back.
        let mut upd = h.hdr(op::CREDIT_UPDATE, 52, local);
        upd.fwd_cnt = received.len() as u32;
        h.send(upd, &[]);
        h.post_rx(pkts.len(), RX_BUF);
        if n == 0 && pkts.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    host_tx.join().unwrap();
    assert_eq!(received, pattern(TOTAL, 5));
    assert_eq!(host_rx.join().unwrap(), to_host);
}
