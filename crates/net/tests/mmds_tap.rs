//! The metadata service's network stack against Linux's own TCP: inside a network
//! namespace this test creates, the host kernel plays the guest. Its frames to
//! 169.254.169.254 come out of a TAP, go through `MmdsStack::detour` exactly as a
//! guest's do in the NIC's worker, and the stack's answers are written back into the
//! TAP. Clients are a Rust `TcpStream` and curl (as Firecracker's documentation drives
//! MMDS), over ARP, handshakes, MSS-sized segments, Linux's window and delayed ACKs,
//! with and without checksum offload. Needs root, `/dev/net/tun`, `ip` and curl
//! (test-support's skip policy: a failure under `CI=true`).

mod mmds_served;

use std::time::{Duration, Instant};

use mmds_served::{Served, body, store};
use serde_json::json;
use test_support::skip;

/// [`Served::start`], or the skip policy's verdict on why not.
fn served(test: &str, offload: u32, store: mmds::Mmds) -> Option<Served> {
    match Served::start(offload, store) {
        Ok(s) => Some(s),
        Err(why) => {
            skip::missing(test, &why);
            None
        }
    }
}

/// TUN_F_CSUM: the kernel may hand the TAP reader frames with partial checksums.
const TUN_F_CSUM: u32 = 0x01;

#[test]
fn linux_tcp_reads_mmds_v1_with_and_without_checksum_offload() {
    let big = "0123456789abcdef".repeat(16 * 1024);
    for offload in [0, TUN_F_CSUM] {
        let doc = json!({"latest": {"meta-data": {"ami-id": "ami-1", "big": big}}});
        let Some(s) = served(
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
    let Some(s) = served(test, TUN_F_CSUM, store(doc, api::MmdsVersion::V2)) else {
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
