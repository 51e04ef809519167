//! MMDS `GET` latency: the metadata service's stack served on a TAP in a network
//! namespace made for the run (crates/net/tests/mmds_served), the host kernel's TCP as
//! the guest's. Prints the round trip of a `GET` of a short value, median and 99th
//! percentile, on a new connection each time (as curl and busybox wget do) and on one
//! kept-alive connection, and the time to read a 64 KiB value. The guest's virtio ring
//! is not in these figures (the TAP stands for it); what is measured is the stack and
//! the store. Needs root, `/dev/net/tun` and `ip`; otherwise it prints why and exits.
//!
//! `cargo bench -p net --bench mmds_get [-- ROUNDS]` (default 500).

#[path = "../tests/mmds_served/mod.rs"]
mod mmds_served;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mmds_served::{Served, store};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what:<40} p50 {:>8.1} us   p99 {:>8.1} us   ({} requests)",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.len()
    );
}

/// Read one response (headers and a Content-Length body) from a kept-alive connection.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return len;
            }
        }
        let n = s.read(&mut chunk).expect("read the response");
        assert!(n > 0, "the service closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let doc = serde_json::json!({"latest": {"meta-data": {
        "instance-id": "i-0123456789",
        "big": "x".repeat(64 << 10),
    }}});
    let served = match Served::start(0, store(doc, api::MmdsVersion::V1)) {
        Ok(s) => s,
        Err(why) => {
            println!("mmds_get: not run: {why}");
            return;
        }
    };
    let (fresh, kept, big) = served.ns.run(move || {
        let addr: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let connect = || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        let get = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: m\r\n\r\n";
        let mut buf = Vec::new();
        // Warm up ARP and the caches.
        let mut s = connect();
        s.write_all(get).unwrap();
        read_response(&mut s, &mut buf);
        drop(s);
        let mut fresh = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let mut s = connect();
            s.write_all(get).unwrap();
            read_response(&mut s, &mut buf);
            fresh.push(t.elapsed());
        }
        let mut s = connect();
        let mut kept = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            s.write_all(get).unwrap();
            read_response(&mut s, &mut buf);
            kept.push(t.elapsed());
        }
        let mut big = Vec::new();
        for _ in 0..rounds.div_ceil(10) {
            let t = Instant::now();
            s.write_all(b"GET /latest/meta-data/big HTTP/1.1\r\nHost: m\r\n\r\n")
                .unwrap();
            let len = read_response(&mut s, &mut buf);
            assert_eq!(len, 64 << 10);
            big.push(t.elapsed());
        }
        (fresh, kept, big)
    });
    report("GET, a new connection each", fresh);
    report("GET, one kept-alive connection", kept);
    report("GET of 64 KiB, kept-alive", big);
    drop(served);
}
