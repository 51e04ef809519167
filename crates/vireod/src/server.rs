//! vireod's REST API on a Unix socket: one thread per connection (HTTP/1.1 framing from
//! `api-server`'s parser), JSON bodies from `manager_types::api`, and the same error
//! shape on every route (`{"error": {"code", "message"}}`). Two routes keep the
//! connection: `GET /v1/events?follow=true` streams events as JSON lines, and
//! `GET /v1/vms/{name}/console` with `Upgrade: vireo-console` switches to the raw
//! console (bytes both ways) until the client closes.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use api_server::http::{self, Parsed, Request};
use manager_types::api::{
    ApiError, AutostartRequest, CONSOLE_PROTOCOL, DefineRequest, ErrorBody, ErrorCode, SetRequest,
    ShutdownRequest, SnapshotRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::manager::{Manager, SHUTDOWN_TIMEOUT};

/// Largest request body (a definition is a few KiB).
const BODY_LIMIT: usize = 1 << 20;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(120);

/// Accept connections for ever, each on its own thread.
pub fn serve(manager: Arc<Manager>, listener: UnixListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let manager = Arc::clone(&manager);
                let spawned = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || connection(&manager, stream));
                if let Err(e) = spawned {
                    log::error!("cannot serve a connection: {e}");
                }
            }
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// What a route answers.
enum Reply {
    Json(u16, String),
    NoContent,
    Text(&'static str, String),
    Events { since: i64, follow: bool },
    Console { name: String, history: usize },
}

fn error_reply(e: &ApiError) -> Reply {
    let body = serde_json::to_string(&ErrorBody { error: e.clone() })
        .unwrap_or_else(|_| String::from("{}"));
    Reply::Json(e.code.status(), body)
}

fn json<T: Serialize>(status: u16, value: &T) -> Result<Reply, ApiError> {
    serde_json::to_string(value)
        .map(|body| Reply::Json(status, body))
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

fn body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let bytes = req.body.as_deref().unwrap_or(b"{}");
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid body: {e}")))
}

fn optional_body<T: DeserializeOwned + Default>(req: &Request) -> Result<T, ApiError> {
    match &req.body {
        None => Ok(T::default()),
        Some(_) => body(req),
    }
}

fn query<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn flag(req: &Request, key: &str) -> bool {
    matches!(query(req, key), Some("" | "1" | "true" | "yes"))
}

fn number<T: std::str::FromStr>(req: &Request, key: &str, default: T) -> Result<T, ApiError> {
    match query(req, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ApiError::new(ErrorCode::BadRequest, format!("?{key}={v} is not a number"))
        }),
    }
}

fn not_found(req: &Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {} {}", req.method, req.path),
    )
}

fn method_not_allowed(req: &Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method, req.path),
    )
}

/// Route one request.
fn route(m: &Arc<Manager>, req: &Request) -> Result<Reply, ApiError> {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let method = req.method.as_str();
    match segments.as_slice() {
        ["metrics"] => match method {
            "GET" => Ok(Reply::Text(
                "text/plain; version=0.0.4",
                crate::metrics::render(m),
            )),
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "version"] => json(
            200,
            &serde_json::json!({"name": "vireod", "version": env!("CARGO_PKG_VERSION")}),
        ),
        ["v1", "events"] => Ok(Reply::Events {
            since: number(req, "since", 0)?,
            follow: flag(req, "follow"),
        }),
        ["v1", "vms"] => match method {
            "GET" => json(200, &m.list()?),
            "POST" => json(201, &m.define(&body::<DefineRequest>(req)?)?),
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name] => match method {
            "GET" => json(200, &m.info(name)?),
            "PUT" => json(200, &m.redefine(name, &body::<DefineRequest>(req)?)?),
            "DELETE" => {
                m.undefine(name, flag(req, "remove_storage"))?;
                Ok(Reply::NoContent)
            }
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name, "snapshots"] => match method {
            "GET" => json(200, &m.snapshot_list(name)?),
            "POST" => json(
                201,
                &m.snapshot_create(name, &body::<SnapshotRequest>(req)?.name)?,
            ),
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name, "snapshots", snap] => match method {
            "DELETE" => {
                m.snapshot_delete(name, snap)?;
                Ok(Reply::NoContent)
            }
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name, "snapshots", snap, "revert"] => match method {
            "POST" => json(200, &m.snapshot_revert(name, snap)?),
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name, action] if method == "POST" => {
            let timeout = || -> Result<Duration, ApiError> {
                let r: ShutdownRequest = optional_body(req)?;
                Ok(r.timeout_s.map_or(SHUTDOWN_TIMEOUT, Duration::from_secs))
            };
            let info = match *action {
                "start" => m.start(name)?,
                "shutdown" => m.shutdown(name, timeout()?)?,
                "reboot" => m.reboot(name, timeout()?)?,
                "destroy" => m.destroy(name)?,
                "pause" => m.pause(name, true)?,
                "resume" => m.pause(name, false)?,
                _ => return Err(not_found(req)),
            };
            json(200, &info)
        }
        ["v1", "vms", name, "autostart"] => match method {
            "PUT" => json(
                200,
                &m.set_autostart(name, body::<AutostartRequest>(req)?.enabled)?,
            ),
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name, "resources"] => match method {
            "PATCH" => json(200, &m.set(name, &body::<SetRequest>(req)?)?),
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name, "stats"] => match method {
            "GET" => json(200, &m.stats(name)?),
            _ => Err(method_not_allowed(req)),
        },
        ["v1", "vms", name, "console"] => {
            if method != "GET" {
                return Err(method_not_allowed(req));
            }
            if !req.upgrade.eq_ignore_ascii_case(CONSOLE_PROTOCOL) {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("attach with 'Upgrade: {CONSOLE_PROTOCOL}'"),
                ));
            }
            m.console(name)?;
            Ok(Reply::Console {
                name: name.to_string(),
                history: number(req, "history", 0)?,
            })
        }
        ["v1", "vms", name, "console", "log"] => match method {
            "GET" => {
                let console = m.console(name)?;
                let lines: usize = number(req, "lines", 100)?;
                Ok(Reply::Text(
                    "text/plain; charset=utf-8",
                    console.last_lines(lines).join("\n") + "\n",
                ))
            }
            _ => Err(method_not_allowed(req)),
        },
        _ => Err(not_found(req)),
    }
}

fn head(status: u16, content_type: &str, length: Option<usize>, keep_alive: bool) -> Vec<u8> {
    let status_line = format!("HTTP/1.1 {status} {}", http::reason_phrase(status));
    let mut out = format!(
        "{status_line}\r\nServer: vireod\r\nConnection: {}\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    );
    if status != 204 {
        out.push_str(&format!("Content-Type: {content_type}\r\n"));
        if let Some(n) = length {
            out.push_str(&format!("Content-Length: {n}\r\n"));
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn connection(m: &Arc<Manager>, mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut continued = false;
    loop {
        let (req, used) = match http::parse(&buf, BODY_LIMIT) {
            Parsed::Complete(req, used) => (req, used),
            Parsed::Incomplete { expects_continue } => {
                if expects_continue && !continued {
                    continued = true;
                    if stream.write_all(http::CONTINUE).is_err() {
                        return;
                    }
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            Parsed::Invalid(response) => {
                // The shared parser words its errors Firecracker's way: reshape them.
                let message = serde_json::from_str::<serde_json::Value>(&response.body)
                    .ok()
                    .and_then(|v| v["fault_message"].as_str().map(str::to_string))
                    .unwrap_or(response.body);
                let _ = write_reply(
                    m,
                    &mut stream,
                    error_reply(&ApiError::new(ErrorCode::BadRequest, message)),
                    false,
                );
                return;
            }
        };
        buf.drain(..used);
        continued = false;
        let started = std::time::Instant::now();
        let reply = route(m, &req).unwrap_or_else(|e| error_reply(&e));
        let status = match &reply {
            Reply::Json(status, _) => *status,
            Reply::NoContent => 204,
            _ => 200,
        };
        log::debug!(
            "{} {} -> {status} in {} ms",
            req.method,
            req.path,
            started.elapsed().as_millis()
        );
        match write_reply(m, &mut stream, reply, req.keep_alive) {
            Ok(true) if req.keep_alive => {}
            _ => return,
        }
    }
}

/// Write a reply; `Ok(true)` when the connection can serve another request.
fn write_reply(
    m: &Arc<Manager>,
    stream: &mut UnixStream,
    reply: Reply,
    keep_alive: bool,
) -> std::io::Result<bool> {
    match reply {
        Reply::Json(status, body) => {
            let mut out = head(status, "application/json", Some(body.len()), keep_alive);
            out.extend_from_slice(body.as_bytes());
            stream.write_all(&out)?;
            Ok(true)
        }
        Reply::NoContent => {
            stream.write_all(&head(204, "", None, keep_alive))?;
            Ok(true)
        }
        Reply::Text(content_type, body) => {
            let mut out = head(200, content_type, Some(body.len()), keep_alive);
            out.extend_from_slice(body.as_bytes());
            stream.write_all(&out)?;
            Ok(true)
        }
        Reply::Events { since, follow } => {
            stream.write_all(&head(200, "application/x-ndjson", None, false))?;
            let mut last = since;
            loop {
                let events = m
                    .events(last, 1000)
                    .map_err(|e| std::io::Error::other(e.message))?;
                for e in &events {
                    let mut line = serde_json::to_string(e).map_err(std::io::Error::other)?;
                    line.push('\n');
                    stream.write_all(line.as_bytes())?;
                    last = e.id;
                }
                if !follow {
                    return Ok(false);
                }
                if events.is_empty() {
                    m.wait_event(last, Duration::from_secs(10));
                    // A client that left is noticed at the next write; an idle stream
                    // gets an empty line every ten seconds for that.
                    if m.events(last, 1).map(|e| e.is_empty()).unwrap_or(true) {
                        stream.write_all(b"\n")?;
                    }
                }
            }
        }
        Reply::Console { name, history } => {
            let console = m
                .console(&name)
                .map_err(|e| std::io::Error::other(e.message))?;
            let out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nServer: vireod\r\nUpgrade: {CONSOLE_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n"
            );
            stream.write_all(out.as_bytes())?;
            stream.set_read_timeout(None)?;
            console.attach(stream.try_clone()?, history)?;
            Ok(false)
        }
    }
}
