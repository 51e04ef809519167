//! HTTP/1.1 framing: one request out of a connection's bytes (request line and headers by
//! `httparse`, the body by `Content-Length`), and a response into bytes.
//!
//! Only what the API needs: no chunked bodies, no pipelining limits beyond the buffer,
//! keep-alive unless the client says `Connection: close`, HTTP/1.0 included (as Firecracker's
//! server: clients written against it send several HTTP/1.0 requests on one connection).
//! Every malformed input is a 400 response, never a panic.

/// Most header lines a request may have.
const MAX_HEADERS: usize = 32;
/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 << 10;

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, `PATCH`...
    pub method: String,
    /// The path, without any query string.
    pub path: String,
    /// The query string after `?` (empty when none), not decoded.
    pub query: String,
    /// The value of an `Upgrade` header: the client asks to switch protocols (the
    /// manager's console attach); empty when absent.
    pub upgrade: String,
    /// The body; `None` when absent or empty.
    pub body: Option<Vec<u8>>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// What the bytes so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet. `expects_continue` is set once the head is complete and
    /// the client waits for `100 Continue` before sending the body.
    Incomplete {
        /// The client sent `Expect: 100-continue` and the body has not arrived.
        expects_continue: bool,
    },
    /// A request, which used the first `len` bytes.
    Complete(Request, usize),
    /// A request that cannot be served: answer and close the connection (the rest of
    /// the stream cannot be trusted to start at a request boundary).
    Invalid(Response),
}

/// Parse the first request in `buf`; bodies over `body_limit` bytes are refused.
pub fn parse(buf: &[u8], body_limit: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Parsed::Invalid(Response::fault(400, "Request headers are too long."));
        }
        Ok(httparse::Status::Partial) => {
            return Parsed::Incomplete {
                expects_continue: false,
            };
        }
        Err(e) => {
            return Parsed::Invalid(Response::fault(400, &format!("Invalid HTTP request: {e}.")));
        }
    };
    if head_len > MAX_HEAD_BYTES {
        return Parsed::Invalid(Response::fault(400, "Request headers are too long."));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();

    let mut content_length: Option<usize> = None;
    // HTTP/1.0's default would be to close, but Firecracker keeps every connection open
    // and its clients count on it (firecracker-rs-sdk reuses one HTTP/1.0 connection).
    let mut keep_alive = true;
    let mut expects_continue = false;
    let mut upgrade = String::new();
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let Ok(n) = value.parse::<usize>() else {
                return Parsed::Invalid(Response::fault(400, "Invalid Content-Length."));
            };
            if content_length.is_some_and(|m| m != n) {
                return Parsed::Invalid(Response::fault(400, "Conflicting Content-Length."));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(Response::fault(
                400,
                "Transfer-Encoding is not supported; send a Content-Length.",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.to_string();
        } else if h.name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > body_limit {
        return Parsed::Invalid(Response::fault(
            400,
            &format!(
                "Request payload with size {body_len} is larger than the limit of {body_limit} \
                 allowed by server."
            ),
        ));
    }
    let Some(total) = head_len.checked_add(body_len) else {
        return Parsed::Invalid(Response::fault(400, "Invalid Content-Length."));
    };
    if buf.len() < total {
        return Parsed::Incomplete { expects_continue };
    }
    let without_fragment = target.split('#').next().unwrap_or_default();
    let (path, query) = without_fragment
        .split_once('?')
        .unwrap_or((without_fragment, ""));
    // An absolute URI ("http://localhost/x") is allowed by HTTP/1.1: keep its path.
    let path = match path.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    let body = (body_len > 0).then(|| buf[head_len..total].to_vec());
    Parsed::Complete(
        Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            upgrade,
            body,
            keep_alive,
        },
        total,
    )
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body; empty for 204.
    pub body: String,
    /// Send `Deprecation: true` (the request used a field or value Firecracker
    /// deprecates).
    pub deprecation: bool,
}

impl Response {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            body,
            deprecation: false,
        }
    }

    /// 204 No Content.
    pub fn no_content() -> Self {
        Self::json(204, String::new())
    }

    /// An error: `{"fault_message": message}`.
    pub fn fault(status: u16, message: &str) -> Self {
        Self::json(
            status,
            serde_json::json!({ "fault_message": message }).to_string(),
        )
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: Vireo API\r\nConnection: {connection}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        if self.deprecation {
            out.push_str("Deprecation: true\r\n");
        }
        if self.status != 204 {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                self.body.len()
            ));
        }
        out.push_str("\r\n");
        if self.status != 204 {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The reason phrase of `status` (empty for codes the API does not use).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Content",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf, 100) {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    fn invalid(buf: &[u8]) -> Response {
        match parse(buf, 100) {
            Parsed::Invalid(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_with_and_without_bodies() {
        let (r, n) = complete(b"GET /machine-config?x=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /");
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/machine-config")
        );
        assert_eq!((r.body, r.keep_alive, n), (None, true, 45));
        assert_eq!((r.query.as_str(), r.upgrade.as_str()), ("x=1", ""));
        let (r, _) =
            complete(b"GET /vms/a/console?log=1#f HTTP/1.1\r\nUpgrade: vireo-console\r\n\r\n");
        assert_eq!(
            (r.path.as_str(), r.query.as_str(), r.upgrade.as_str()),
            ("/vms/a/console", "log=1", "vireo-console")
        );
        let (r, _) = complete(b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(r.body.as_deref(), Some(&b"{}"[..]));
        let (r, _) = complete(b"PUT /vm HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.body, None);
        let (r, _) =
            complete(b"GET http://localhost/version HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!((r.path.as_str(), r.keep_alive), ("/version", false));
        // HTTP/1.0 stays open too, as with Firecracker, unless the client says close.
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn partial_requests_wait() {
        assert_eq!(
            parse(b"PUT /vm HTTP/1.1\r\nContent-Le", 100),
            Parsed::Incomplete {
                expects_continue: false
            }
        );
        assert_eq!(
            parse(
                b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n{}",
                100
            ),
            Parsed::Incomplete {
                expects_continue: true
            }
        );
    }

    #[test]
    fn malformed_requests_are_400() {
        for bad in [
            &b"\x00\x01garbage\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(invalid(bad).status, 400, "{bad:?}");
        }
        let r = invalid(b"PUT /vm HTTP/1.1\r\nContent-Length: 101\r\n\r\n");
        assert_eq!(
            r.body,
            r#"{"fault_message":"Request payload with size 101 is larger than the limit of 100 allowed by server."}"#
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(invalid(&long).status, 400);
    }

    #[test]
    fn responses_on_the_wire() {
        assert_eq!(
            Response::no_content().to_bytes(true),
            b"HTTP/1.1 204 No Content\r\nServer: Vireo API\r\nConnection: keep-alive\r\n\r\n"
        );
        let r = Response::fault(400, "no");
        assert_eq!(
            String::from_utf8(r.to_bytes(false)).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nServer: Vireo API\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: 22\r\n\r\n\
             {\"fault_message\":\"no\"}"
        );
    }
}
