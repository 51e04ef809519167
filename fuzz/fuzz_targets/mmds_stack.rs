//! Fuzz the metadata service's network stack: whatever frames a guest sends through a
//! NIC that allows MMDS requests, the stack must never panic, must answer only with
//! well-formed frames, and must hold a bounded number of connections.
//!
//! Input: a sequence of records. Each starts with a kind byte:
//! - bit 7 clear: a TCP segment to the service, built from the record's next bytes
//!   (source port low byte, sequence, acknowledgment, flags, window, payload length and
//!   payload), with a valid checksum, so that connections go deep into their states;
//! - bit 7 set: a raw frame of the next `len` bytes (anything at all).
//!
//! Bit 6 marks the checksum as left to the device; bit 5 advances the clock by 250 ms
//! and runs the retransmission timers. After each record every frame the stack has for
//! the guest is taken and checked.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mmds::pdu::{self, ETH_LEN, Ethernet, IPV4_LEN, Ipv4, TcpOut};
use mmds::{DEFAULT_IPV4, MMDS_MAC, Mmds, MmdsMetrics, MmdsStack};

const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (data.get(..n)?, data.get(n..)?);
    *data = rest;
    Some(head)
}

fn tcp_frame(r: &[u8], payload: &[u8]) -> Vec<u8> {
    let u32_at = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let seg = TcpOut {
        src_port: 40000 + u16::from(r[0] & 7),
        dst_port: if r[1] & 0x80 == 0 {
            80
        } else {
            u16::from(r[1])
        },
        seq: u32_at(2),
        ack: u32_at(6),
        flags: r[10],
        window: u16::from_le_bytes([r[11], r[12]]),
        mss: (r[10] & pdu::flags::SYN != 0).then_some(u16::from(r[13]) * 8),
        payload,
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
    frame
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let mut store = Mmds::default();
    let _ = store.put(serde_json::json!({"latest": {"meta-data": {"id": "i-1", "n": 1}}}));
    let metrics = Arc::new(MmdsMetrics::default());
    let mut stack = MmdsStack::new(DEFAULT_IPV4, Arc::new(Mutex::new(store)), metrics);
    let mut now = Instant::now();
    let mut out = vec![0u8; 2048];
    while let Some(&[kind]) = take(&mut data, 1) {
        let partial = kind & 0x40 != 0;
        let frame = if kind & 0x80 == 0 {
            let Some(r) = take(&mut data, 15) else { break };
            let len = usize::from(r[14]).min(data.len());
            let Some(payload) = take(&mut data, len) else {
                break;
            };
            tcp_frame(r, payload)
        } else {
            let len = (usize::from(kind & 0x1f) * 8).min(data.len());
            let Some(raw) = take(&mut data, len) else {
                break;
            };
            raw.to_vec()
        };
        stack.detour(&frame, partial, now);
        if kind & 0x20 != 0 {
            now += Duration::from_millis(250);
            stack.on_timer(now);
        }
        while let Some(n) = stack.write_frame(&mut out, now) {
            let eth = Ethernet::parse(&out[..n]).expect("the stack's frames are Ethernet");
            assert_eq!(eth.src, MMDS_MAC);
            if eth.ethertype == pdu::ETHERTYPE_IPV4 {
                let ip = Ipv4::parse(eth.payload).expect("well-formed IPv4");
                assert!(ip.checksum_ok);
                assert_eq!(pdu::tcp_checksum(ip.src, ip.dst, ip.payload), 0);
            }
        }
        assert!(stack.connections() <= mmds::stack::MAX_CONNECTIONS);
    }
});
