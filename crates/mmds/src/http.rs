//! The guest's side of the service: HTTP/1.x requests parsed from a connection's bytes
//! and answered from the [`Mmds`] store as Firecracker's MMDS answers them.
//!
//! - `GET PATH`: the value at PATH (a JSON pointer). Version 1 answers whatever the
//!   token (it only counts missing and invalid ones); version 2 wants a valid token in
//!   `X-metadata-token` (or `X-aws-ec2-metadata-token`), else 401.
//! - `PUT /latest/api/token` with `X-metadata-token-ttl-seconds` (or
//!   `X-aws-ec2-metadata-token-ttl-seconds`) in 1..=21600: a new token, as text, with the
//!   header echoed. A `PUT` with `X-Forwarded-For` is refused (it came through a proxy).
//! - Any other method: 405 with `Allow: GET, PUT`.
//!
//! `Accept: application/json` asks for JSON; anything else for IMDS's text format.

use std::time::Instant;

use crate::MmdsMetrics;
use crate::store::{Format, Mmds, StoreError};
use api::MmdsVersion;

/// Longest request head (request line and headers) or body accepted.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 32;
/// The path of `PUT` for a token.
pub const TOKEN_PATH: &str = "/latest/api/token";

const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without scheme, authority or query.
    pub path: String,
    /// HTTP/1.0 (`false`) or 1.1.
    pub http11: bool,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The value of the first header called `name` (lowercase), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn first_of<'a>(&'a self, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
        names.iter().find_map(|&n| self.header(n).map(|v| (n, v)))
    }

    /// Whether the client asked to close the connection after this request.
    pub fn wants_close(&self) -> bool {
        let connection = self.header("connection").map(str::to_ascii_lowercase);
        match connection.as_deref() {
            Some(c) if c.split(',').any(|t| t.trim() == "close") => true,
            Some(c) if c.split(',').any(|t| t.trim() == "keep-alive") => false,
            _ => !self.http11,
        }
    }
}

/// A request that cannot be parsed: answered with this status and message, then the
/// connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// 400, 413 or 501.
    pub status: u16,
    /// Why, as the response's body.
    pub message: String,
}

fn bad(status: u16, message: impl Into<String>) -> BadRequest {
    BadRequest {
        status,
        message: message.into(),
    }
}

/// Parse the request at the front of `buf`: `Ok(None)` if it is not whole yet, else the
/// request and how many bytes it took (its body, which MMDS never needs, skipped).
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST_LEN => {
            return Err(bad(413, "Request head too long."));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(bad(400, "Too many headers.")),
        Err(e) => return Err(bad(400, format!("Invalid HTTP request: {e}."))),
    };
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let http11 = req.version == Some(1);
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let request = Request {
        method,
        path: path_of(target),
        http11,
        headers,
    };
    if request.header("transfer-encoding").is_some() {
        return Err(bad(501, "Transfer encodings are not supported."));
    }
    let body_len = match request.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(400, "Invalid Content-Length."))?,
    };
    if body_len > MAX_REQUEST_LEN {
        return Err(bad(413, "Request body too long."));
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((request, total)))
}

/// The path of a request target: `http://host/a?b` and `/a?b` are both `/a`; repeated
/// slashes are collapsed, as a JSON pointer has none.
fn path_of(target: &str) -> String {
    let without_scheme = target
        .strip_prefix("http://")
        .map(|rest| rest.find('/').map_or("", |i| &rest[i..]))
        .unwrap_or(target);
    let path = without_scheme.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// An answer, written out by [`Response::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `application/json` or `text/plain`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The response's bytes; `close` adds `Connection: close`.
    pub fn to_bytes(&self, http11: bool, close: bool) -> Vec<u8> {
        let version = if http11 { "HTTP/1.1" } else { "HTTP/1.0" };
        let mut head = format!(
            "{version} {} {}\r\nServer: Vireo MMDS\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        _ => "",
    }
}

impl From<BadRequest> for Response {
    fn from(b: BadRequest) -> Self {
        Self::text(b.status, b.message)
    }
}

impl Mmds {
    /// Answer one request from the guest at `now`, counting token use in `metrics`.
    pub fn respond(&mut self, req: &Request, now: Instant, metrics: &MmdsMetrics) -> Response {
        if req.path.is_empty() || !req.path.starts_with('/') {
            return Response::text(400, "Invalid URI.");
        }
        match req.method.as_str() {
            "GET" => self.respond_get(req, now, metrics),
            "PUT" => self.respond_put(req, now),
            _ => {
                let mut r = Response::text(405, "Not allowed HTTP method.");
                r.headers.push(("Allow", "GET, PUT".into()));
                r
            }
        }
    }

    fn respond_get(&self, req: &Request, now: Instant, metrics: &MmdsMetrics) -> Response {
        let token = req.first_of(&TOKEN_HEADERS).map(|(_, v)| v);
        let valid = token.is_some_and(|t| self.tokens.is_valid(t, now));
        match token {
            None => metrics.rx_no_token.inc(),
            Some(_) if !valid => metrics.rx_invalid_token.inc(),
            Some(_) => {}
        }
        if self.version() == MmdsVersion::V2 {
            match token {
                None => {
                    return Response::text(
                        401,
                        "No MMDS token provided. Use `X-metadata-token` or \
                         `X-aws-ec2-metadata-token` header to specify the session token.",
                    );
                }
                Some(_) if !valid => return Response::text(401, "MMDS token not valid."),
                Some(_) => {}
            }
        }
        let json = req
            .header("accept")
            .is_some_and(|a| a.to_ascii_lowercase().contains("application/json"));
        let format = if json { Format::Json } else { Format::Imds };
        match self.read(&req.path, format) {
            Ok(body) => Response {
                status: 200,
                content_type: if json && !self.imds_compat() {
                    "application/json"
                } else {
                    "text/plain"
                },
                headers: Vec::new(),
                body,
            },
            Err(StoreError::NotFound) => {
                Response::text(404, format!("Resource not found: {}.", req.path))
            }
            Err(e) => Response::text(501, e.to_string()),
        }
    }

    fn respond_put(&mut self, req: &Request, now: Instant) -> Response {
        if req.header("x-forwarded-for").is_some() {
            return Response::text(
                400,
                "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
            );
        }
        if req.path != TOKEN_PATH {
            return Response::text(404, format!("Resource not found: {}.", req.path));
        }
        let Some((name, value)) = req.first_of(&TTL_HEADERS) else {
            return Response::text(
                400,
                "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or \
                 `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.",
            );
        };
        let Ok(ttl) = value.parse::<u32>() else {
            return Response::text(
                400,
                format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
            );
        };
        match self.tokens.issue(ttl, now) {
            Ok(token) => {
                let mut r = Response::text(200, token);
                let echoed = if name == TTL_HEADERS[0] {
                    "X-metadata-token-ttl-seconds"
                } else {
                    "X-aws-ec2-metadata-token-ttl-seconds"
                };
                r.headers.push((echoed, ttl.to_string()));
                r
            }
            Err(e) => Response::text(400, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(text: &str) -> Request {
        parse(text.as_bytes()).unwrap().unwrap().0
    }

    fn store(version: MmdsVersion) -> Mmds {
        let mut m = Mmds::default();
        m.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 1}}}))
            .unwrap();
        m.configure(version, false);
        m
    }

    #[test]
    fn parses_requests_whole_or_waits_for_more() {
        let text = "GET http://169.254.169.254//latest/meta-data?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n";
        let (r, used) = parse(text.as_bytes()).unwrap().unwrap();
        assert_eq!(used, text.len());
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/latest/meta-data");
        assert!(r.http11 && !r.wants_close());
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(parse(&text.as_bytes()[..20]), Ok(None));
        let put = "PUT /latest/api/token HTTP/1.0\r\nContent-Length: 3\r\n\r\nab";
        assert_eq!(parse(put.as_bytes()), Ok(None), "body not whole yet");
        let put = format!("{put}cGET / HTTP/1.1\r\n\r\n");
        let (r, used) = parse(put.as_bytes()).unwrap().unwrap();
        assert_eq!(
            &put[used..],
            "GET / HTTP/1.1\r\n\r\n",
            "pipelined request left"
        );
        assert!(r.wants_close(), "HTTP/1.0 closes");
        assert!(req("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").wants_close());
    }

    #[test]
    fn malformed_and_oversized_requests_are_refused() {
        assert_eq!(
            parse(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n").unwrap_err().status,
            400
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_LEN));
        assert_eq!(parse(long.as_bytes()).unwrap_err().status, 413);
        let body = format!(
            "PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_REQUEST_LEN + 1
        );
        assert_eq!(parse(body.as_bytes()).unwrap_err().status, 413);
        assert_eq!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err()
                .status,
            501
        );
    }

    #[test]
    fn v1_answers_without_a_token_and_counts_it() {
        let mut m = store(MmdsVersion::V1);
        let metrics = MmdsMetrics::default();
        let now = Instant::now();
        let r = m.respond(
            &req("GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n"),
            now,
            &metrics,
        );
        assert_eq!(
            (r.status, r.body.as_str(), r.content_type),
            (200, "ami-1", "text/plain")
        );
        let r = m.respond(
            &req("GET /latest/meta-data HTTP/1.1\r\nX-metadata-token: nope\r\nAccept: application/json\r\n\r\n"),
            now,
            &metrics,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
            json!({"ami-id": "ami-1", "n": 1})
        );
        assert_eq!(metrics.rx_no_token.get(), 1);
        assert_eq!(metrics.rx_invalid_token.get(), 1);
        let r = m.respond(
            &req("GET /latest/meta-data/n HTTP/1.1\r\n\r\n"),
            now,
            &metrics,
        );
        assert_eq!(r.status, 501, "a number has no IMDS text form");
        let r = m.respond(&req("GET /nothing HTTP/1.1\r\n\r\n"), now, &metrics);
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, "Resource not found: /nothing.")
        );
        let r = m.respond(&req("POST / HTTP/1.1\r\n\r\n"), now, &metrics);
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, vec![("Allow", "GET, PUT".to_string())]);
    }

    #[test]
    fn v2_wants_a_token_from_put_and_honours_its_lifetime() {
        let mut m = store(MmdsVersion::V2);
        let metrics = MmdsMetrics::default();
        let now = Instant::now();
        let get = |m: &mut Mmds, token: &str, at| {
            let text = format!(
                "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
            );
            m.respond(&req(&text), at, &metrics)
        };
        let r = m.respond(&req("GET /latest HTTP/1.1\r\n\r\n"), now, &metrics);
        assert_eq!(r.status, 401);
        assert_eq!(get(&mut m, "bad", now).status, 401);
        let r = m.respond(
            &req("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 2\r\n\r\n"),
            now,
            &metrics,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers,
            vec![("X-metadata-token-ttl-seconds", "2".to_string())]
        );
        let token = r.body;
        let r = get(&mut m, &token, now);
        assert_eq!((r.status, r.body.as_str()), (200, "ami-1"));
        let later = now + std::time::Duration::from_secs(2);
        assert_eq!(get(&mut m, &token, later).status, 401, "expired");

        for (text, status) in [
            ("PUT /latest/api/token HTTP/1.1\r\n\r\n", 400),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n",
                400,
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: -1\r\n\r\n",
                400,
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n",
                400,
            ),
            (
                "PUT /other HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n",
                404,
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n",
                400,
            ),
        ] {
            assert_eq!(
                m.respond(&req(text), now, &metrics).status,
                status,
                "{text}"
            );
        }
    }

    #[test]
    fn responses_carry_length_type_and_close() {
        let r = Response::text(404, "gone");
        let bytes = String::from_utf8(r.to_bytes(true, true)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 404 Not Found\r\n"), "{bytes}");
        assert!(bytes.contains("\r\nContent-Length: 4\r\n"), "{bytes}");
        assert!(
            bytes.contains("\r\nContent-Type: text/plain\r\n"),
            "{bytes}"
        );
        assert!(bytes.ends_with("Connection: close\r\n\r\ngone"), "{bytes}");
        let bytes = String::from_utf8(r.to_bytes(false, false)).unwrap();
        assert!(bytes.starts_with("HTTP/1.0 404"), "{bytes}");
        assert!(!bytes.contains("Connection"), "{bytes}");
    }
}
