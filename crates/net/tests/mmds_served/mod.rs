//! The metadata service's stack served on a TAP inside a network namespace, the host
//! kernel playing the guest (crates/net/tests/mmds_tap.rs, benches/mmds_get.rs).

#![allow(dead_code)]

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mmds::{DEFAULT_IPV4, Mmds, MmdsMetrics, MmdsStack};
use net::{NET_HDR_LEN, Tap};
use test_support::netns::Netns;

const TAP: &str = "mmds0";

/// The stack served on a TAP by a thread, as a NIC's worker serves it.
pub struct Served {
    pub ns: Netns,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub store: mmds::SharedMmds,
    pub metrics: Arc<MmdsMetrics>,
}

impl Served {
    /// The stack answering from `store` on a TAP with `offload` (TUN_F_*) in a new
    /// namespace, routed to from the namespace's kernel; `Err` if a prerequisite is
    /// missing (root, `/dev/net/tun`, `ip`).
    pub fn start(offload: u32, store: Mmds) -> Result<Self, String> {
        let ns = Netns::new("mmds")?;
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
        Ok(Self {
            ns,
            stop,
            thread: Some(thread),
            store,
            metrics,
        })
    }

    /// Send `request` from inside the namespace and read until the service closes.
    pub fn request(&self, request: String) -> String {
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

    pub fn curl(&self, args: &[&str]) -> (bool, String) {
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

pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

pub fn store(doc: serde_json::Value, version: api::MmdsVersion) -> Mmds {
    let mut m = Mmds::new(4 << 20);
    m.put(doc).unwrap();
    m.configure(version, false);
    m
}
