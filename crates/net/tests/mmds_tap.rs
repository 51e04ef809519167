//! The metadata service's network stack against Linux's own TCP: inside a network
//! namespace this test creates, the host kernel plays the guest. Its frames to
//! 169.254.169.254 come out of a TAP, go through `MmdsStack::detour` exactly as a
//! guest's do in the NIC's worker, and the stack's answers are written back into the
//! TAP. Clients are a Rust `TcpStream` and curl (as Firecracker's documentation drives
//! MMDS), over ARP, handshakes, MSS-sized segments, Linux's window and delayed ACKs,
//! with and without checksum offload. Needs root, `/dev/net/tun`, `ip` and curl
//! (test-support's skip policy: a failure under `CI=true`).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mmds::{DEFAULT_IPV4, Mmds, MmdsMetrics, MmdsStack};
use net::{NET_HDR_LEN, Tap};
use serde_json::json;
use test_support::netns::Netns;
use test_support::skip;

const TAP: &str = "mmds0";

/// The stack served on a TAP by a thread, as a NIC's worker serves it.
struct Served {
    ns: Netns,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    store: mmds::SharedMmds,
    metrics: Arc<MmdsMetrics>,
}

impl Served {
    fn new(test: &str, offload: u32, store: Mmds) -> Option<Self> {
        let ns = match Netns::new("mmds") {
            Ok(ns) => ns,
            Err(why) => {
                skip::missing(test, &why);
                return None;
            }
        };
        let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.add_tap(TAP, "10.0.0.2/24").unwrap();
        ns.exec(&["ip", "route", "add", "169.254.169.254/32", "dev", TAP])
            .unwrap();
        let tap = ns.run(|| Tap::open(TAP)).unwrap();
        tap.set_offload(offload).unwrap();
        let store = Arc::new(Mutex::new(store));
        let metrics = Arc::new(MmdsMetrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut stack = MmdsStack::new(DEFAULT_IPV4, store.clone(), metrics.clone());
        let quit = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; NET_HDR_LEN + 65_550];
            let mut out = vec![0u8; NET_HDR_LEN + 2048];
            while !quit.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: tap.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd on the stack, for the call's duration.
                unsafe { libc::poll(&mut pfd, 1, 5) };
                let now = Instant::now();
                while let Ok(n) = tap.readv(&mut [IoSliceMut::new(&mut buf)]) {
                    if n > NET_HDR_LEN {
                        let partial = buf[0] & 1 != 0;
                        stack.detour(&buf[NET_HDR_LEN..n], partial, now);
                    }
                }
                stack.on_timer(now);
                while let Some(n) = stack.write_frame(&mut out[NET_HDR_LEN..], now) {
                    out[..NET_HDR_LEN].fill(0);
                    tap.writev(&[IoSlice::new(&out[..NET_HDR_LEN + n])])
                        .unwrap();
                }
            }
        });
        Some(Self {
            ns,
            stop,
            thread: Some(thread),
            store,
            metrics,
        })
    }

    /// Send `request` from inside the namespace and read until the service closes.
    fn request(&self, request: String) -> String {
        self.ns.run(move || {
            let addr: SocketAddr = "169.254.169.254:80".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        })
    }

    fn curl(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn store(doc: serde_json::Value, version: api::MmdsVersion) -> Mmds {
    let mut m = Mmds::new(4 << 20);
    m.put(doc).unwrap();
    m.configure(version, false);
    m
}

/// TUN_F_CSUM: the kernel may hand the TAP reader frames with partial checksums.
const TUN_F_CSUM: u32 = 0x01;

#[test]
fn linux_tcp_reads_mmds_v1_with_and_without_checksum_offload() {
    let big = "0123456789abcdef".repeat(16 * 1024);
    for offload in [0, TUN_F_CSUM] {
        let doc = json!({"latest": {"meta-data": {"ami-id": "ami-1", "big": big}}});
        let Some(s) = Served::new(
            "linux_tcp_reads_mmds_v1_with_and_without_checksum_offload",
            offload,
            store(doc, api::MmdsVersion::V1),
        ) else {
            return;
        };
        let r = s.request(
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        );
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(body(&r), "ami-1");
        // 256 KiB through Linux's window and delayed ACKs, in many segments.
        let r = s.request("GET /latest/meta-data/big HTTP/1.0\r\n\r\n".into());
        assert_eq!(body(&r).len(), big.len(), "offload {offload}");
        assert!(body(&r) == big, "the bytes arrive whole and in order");
        let r =
            s.request("GET /latest/meta-data HTTP/1.0\r\nAccept: application/json\r\n\r\n".into());
        let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
        assert_eq!(v["ami-id"], "ami-1");
        assert!(s.metrics.rx_accepted.get() > 0);
        assert_eq!(
            s.metrics.rx_accepted_err.get(),
            0,
            "no checksum or parse failure"
        );
        // Every connection ended on both sides: nothing left open.
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.metrics.connections_destroyed.get() < s.metrics.connections_created.get()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            s.metrics.connections_destroyed.get(),
            s.metrics.connections_created.get()
        );
    }
}

#[test]
fn curl_drives_the_v2_token_flow_as_firecrackers_guide_does() {
    let test = "curl_drives_the_v2_token_flow_as_firecrackers_guide_does";
    if let Err(why) = skip::tool("curl", "curl") {
        skip::missing(test, &why);
        return;
    }
    let doc = json!({"latest": {"meta-data": {"ami-id": "ami-87654321", "reservation-id": "r-79054aef"}}});
    let Some(s) = Served::new(test, TUN_F_CSUM, store(doc, api::MmdsVersion::V2)) else {
        return;
    };
    let url = "http://169.254.169.254/latest/meta-data";
    let (ok, out) = s.curl(&["-o", "/dev/null", "-w", "%{http_code}", url]);
    assert!(ok && out == "401", "no token: {out}");
    let (ok, token) = s.curl(&[
        "-X",
        "PUT",
        "http://169.254.169.254/latest/api/token",
        "-H",
        "X-metadata-token-ttl-seconds: 21600",
    ]);
    assert!(ok && token.len() == 64, "{token}");
    let header = format!("X-metadata-token: {token}");
    let (ok, out) = s.curl(&[url, "-H", &header]);
    assert!(ok, "{out}");
    assert_eq!(out, "ami-id\nreservation-id");
    let (ok, out) = s.curl(&[
        &format!("{url}/ami-id"),
        "-H",
        &header,
        "-H",
        "Accept: application/json",
    ]);
    assert!(ok);
    assert_eq!(out, "\"ami-87654321\"");
    // A change through the host's side is what the guest reads next.
    s.store
        .lock()
        .unwrap()
        .patch(&json!({"latest": {"meta-data": {"ami-id": "ami-rotated"}}}))
        .unwrap();
    let (_, out) = s.curl(&[&format!("{url}/ami-id"), "-H", &header]);
    assert_eq!(out, "ami-rotated");
    let (_, out) = s.curl(&["-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", url]);
    assert_eq!(out, "405");
    // Many connections one after the other (curl reuses none): all served and closed.
    for _ in 0..40 {
        let (ok, out) = s.curl(&[&format!("{url}/reservation-id"), "-H", &header]);
        assert!(ok && out == "r-79054aef", "{out}");
    }
    assert_eq!(
        s.metrics.rx_no_token.get(),
        1,
        "the first GET's (a DELETE is refused first)"
    );
}
