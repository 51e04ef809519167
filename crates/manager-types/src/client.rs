//! A small blocking HTTP/1.1 client on a Unix socket: what vireoctl uses to talk to
//! vireod, and vireod to each VM's `vireo` (Firecracker's API).
//!
//! One connection per request (`Connection: close`), so a reply's body ends at its
//! `Content-Length` or, for streams, when the server closes. [`Client::open`] returns the
//! connection after the head for the streaming routes (events) and protocol switches
//! (console attach).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{ApiError, ErrorBody, ErrorCode};

/// Longest reply head accepted.
const MAX_HEAD: usize = 16 << 10;
/// Largest reply body read into memory.
const MAX_BODY: usize = 64 << 20;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the connection broke.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's bytes are not an HTTP reply.
    #[error("{}: malformed reply: {what}", path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The server answered with an error.
    #[error("{error}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error it sent.
        error: ApiError,
    },
}

impl ClientError {
    /// The API error's code, if the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// A reply read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// A connection whose reply head was read: the body (or switched protocol) follows.
pub struct Opened {
    /// The status code.
    pub status: u16,
    /// The body's length, when the head gave one.
    pub length: Option<u64>,
    /// The rest of the stream, buffered.
    pub reader: BufReader<UnixStream>,
}

/// A server on a Unix socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// The server at `path`, with a 30 s timeout per read or write.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            timeout: Some(Duration::from_secs(30)),
        }
    }

    /// The same server with another timeout (`None`: wait for ever, for streams).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, what: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Send `method path` with `body` (JSON text) and `extra` header lines, and read the
    /// reply head.
    pub fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<Opened, ClientError> {
        let mut stream = UnixStream::connect(&self.path).map_err(|e| self.io(e))?;
        stream
            .set_read_timeout(self.timeout)
            .and_then(|()| stream.set_write_timeout(self.timeout))
            .map_err(|e| self.io(e))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !extra
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
        {
            head.push_str("Connection: close\r\n");
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or_default().as_bytes());
        stream.write_all(&out).map_err(|e| self.io(e))?;

        let mut reader = BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let before = head.len();
            let n = reader
                .read_until(b'\n', &mut head)
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.protocol("the connection closed before a reply"));
            }
            if head.len() > MAX_HEAD {
                return Err(self.protocol("the reply head is too long"));
            }
            let line = &head[before..];
            if line == b"\r\n" || line == b"\n" {
                // An interim 1xx other than 101 is followed by the real reply.
                let status = parse_status(&head).ok_or_else(|| self.protocol("no status"))?;
                if (100..200).contains(&status) && status != 101 {
                    head.clear();
                    continue;
                }
                return Ok(Opened {
                    status,
                    length: content_length(&head),
                    reader,
                });
            }
        }
    }

    /// Send a request and read the whole reply, whatever its status.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Reply, ClientError> {
        let mut opened = self.open(method, path, body, &[])?;
        let mut bytes = Vec::new();
        let limit = opened.length.unwrap_or(u64::MAX).min(MAX_BODY as u64 + 1);
        (&mut opened.reader)
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(e))?;
        if bytes.len() > MAX_BODY {
            return Err(self.protocol("the reply body is too large"));
        }
        let body = String::from_utf8(bytes).map_err(|_| self.protocol("the body is not UTF-8"))?;
        Ok(Reply {
            status: opened.status,
            body,
        })
    }

    /// Send a request, fail on an error status (with the server's error), and decode
    /// the JSON reply (`()` for 204).
    pub fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let text = body
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| self.protocol(format!("cannot encode the request: {e}")))?;
        let reply = self.call(method, path, text.as_deref())?;
        let reply = reply.ok()?;
        let body = if reply.body.is_empty() {
            "null"
        } else {
            &reply.body
        };
        serde_json::from_str(body).map_err(|e| self.protocol(format!("unexpected body: {e}")))
    }
}

impl Reply {
    /// The reply itself if its status is 1xx-3xx; otherwise the error it carries, read
    /// as vireod's `{"error": ...}` or Firecracker's `{"fault_message": ...}`.
    pub fn ok(self) -> Result<Reply, ClientError> {
        if self.status < 400 {
            return Ok(self);
        }
        let error = serde_json::from_str::<ErrorBody>(&self.body)
            .map(|b| b.error)
            .or_else(|_| {
                serde_json::from_str::<serde_json::Value>(&self.body).map(|v| {
                    let message = v["fault_message"]
                        .as_str()
                        .map_or_else(|| self.body.clone(), str::to_string);
                    ApiError::new(code_of(self.status), message)
                })
            })
            .unwrap_or_else(|_| ApiError::new(code_of(self.status), self.body.clone()));
        Err(ClientError::Api {
            status: self.status,
            error,
        })
    }
}

fn code_of(status: u16) -> ErrorCode {
    match status {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        409 => ErrorCode::Conflict,
        422 => ErrorCode::InvalidDefinition,
        400..=499 => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

fn content_length(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(reply: &'static str) -> (tempdir::Dir, Client) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply.as_bytes()).unwrap();
        });
        (dir, Client::new(&path))
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "vireo-client-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn json_replies_decode() {
        let (_d, c) = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n",
        );
        let v: serde_json::Value = c.json("GET", "/x", None::<&()>).unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn errors_carry_the_servers_message_in_both_shapes() {
        let (_d, c) = serve_once(
            "HTTP/1.1 409 Conflict\r\nContent-Length: 54\r\n\r\n{\"error\":{\"code\":\"conflict\",\"message\":\"VM a is busy\"}}",
        );
        let e = c.json::<()>("POST", "/x", None::<&()>).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Conflict));
        assert_eq!(e.to_string(), "VM a is busy");
        let (_d, c) = serve_once(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 25\r\n\r\n{\"fault_message\":\"nope\"}\n",
        );
        let e = c.call("PUT", "/x", Some("{}")).unwrap().ok().unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (Some(ErrorCode::BadRequest), "nope".into())
        );
    }

    #[test]
    fn a_closed_connection_is_an_error_not_a_panic() {
        let (_d, c) = serve_once("");
        assert!(matches!(
            c.call("GET", "/", None),
            Err(ClientError::Protocol { .. })
        ));
        let (_d, c) = serve_once("garbage\r\n\r\n");
        assert!(c.call("GET", "/", None).is_err());
        let c = Client::new("/nonexistent/socket");
        assert!(matches!(
            c.call("GET", "/", None),
            Err(ClientError::Io { .. })
        ));
    }
}
