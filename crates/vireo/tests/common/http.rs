//! An HTTP/1.1 client for the API tests: one request, one response per call, on a kept-
//! alive Unix-socket connection; and a `vireo --api-sock` process killed on drop.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A tiny HTTP/1.1 client on a Unix socket: one request, one response per call, on one
/// kept-alive connection.
pub struct Client {
    pub stream: UnixStream,
}

pub struct Reply {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn fault(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message: {}", self.body))
            .to_string()
    }
}

impl Client {
    pub fn connect(sock: &Path) -> Self {
        let start = Instant::now();
        loop {
            match UnixStream::connect(sock) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    return Self { stream };
                }
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
            }
        }
    }

    pub fn raw(&mut self, bytes: &[u8]) -> Reply {
        self.stream.write_all(bytes).unwrap();
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> Reply {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                    return Reply { status, head, body };
                }
            }
            let n = self.stream.read(&mut chunk).expect("read the response");
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        self.raw(req.as_bytes())
    }

    pub fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    pub fn put(&mut self, path: &str, body: &str) -> Reply {
        self.request("PUT", path, Some(body))
    }

    pub fn patch(&mut self, path: &str, body: &str) -> Reply {
        self.request("PATCH", path, Some(body))
    }
}

#[track_caller]
pub fn ok(r: Reply) {
    assert_eq!(r.status, 204, "{}", r.body);
}

#[track_caller]
pub fn bad(r: Reply, needle: &str) {
    assert_eq!(r.status, 400, "{}", r.body);
    let fault = r.fault();
    assert!(fault.contains(needle), "{fault:?} lacks {needle:?}");
}

/// Boot the tiny guest `guest` (a name of `test_guests`) through the API: 1 vCPU,
/// 32 MiB, its console in the file `serial`.
pub fn boot_guest(c: &mut Client, guest: &str, serial: &str) {
    let kernel = test_guests::path(guest);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    ));
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
}

/// A `vireo --api-sock` process, killed when dropped.
pub struct Vireo {
    pub child: Child,
    pub sock: PathBuf,
    pub dir: PathBuf,
}

impl Vireo {
    pub fn start(name: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let mut args = vec!["--api-sock", sock.to_str().unwrap()];
        args.extend_from_slice(extra);
        let child = super::vireo(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start vireo");
        Self { child, sock, dir }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.sock)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Vireo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
