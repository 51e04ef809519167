//! The `api` thread: one epoll over the listening socket and every open connection.
//!
//! Connections are non-blocking for reading; each keeps a buffer until a whole request is
//! in it. A request is answered before the next byte of that connection is looked at, so
//! responses come in request order. Writes block (with a timeout) because responses are
//! small; a client that does not read them is dropped.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use api::action::{ActionResult, VmmAction};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::http::{self, CONTINUE, Parsed, Response};
use crate::router;

/// Most connections open at once; more are accepted and closed at once.
const MAX_CONNECTIONS: usize = 64;
const LISTENER: u64 = u64::MAX;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind `path`, replacing a socket file nobody listens on.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && (!meta.file_type().is_socket() || UnixStream::connect(path).is_ok())
    {
        return Err(io::Error::new(
            ErrorKind::AddrInUse,
            "in use: another process serves it, or it is not a socket",
        ));
    }
    // Listening under a name of its own first, then renamed into place (replacing a stale
    // socket file): a client that waits for the path to appear never finds it bound but
    // not yet listening (a refused connection).
    let Some(name) = path.file_name() else {
        return UnixListener::bind(path);
    };
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".{}.binding", std::process::id()));
    let temp = path.with_file_name(temp);
    if temp.as_os_str().len() > UNIX_PATH_MAX {
        // No room for the longer name: bind in place (a stale socket file goes first).
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path)?;
        }
        return UnixListener::bind(path);
    }
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(listener)
}

/// Longest path a Unix socket can be bound to (`sun_path` less its NUL).
const UNIX_PATH_MAX: usize = 107;

struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
    continue_sent: bool,
}

pub struct Server {
    listener: UnixListener,
    epoll: Epoll,
    limit: usize,
    requests: Sender<VmmAction>,
    responses: Receiver<ActionResult>,
    event: EventFd,
    connections: HashMap<u64, Connection>,
    next_token: u64,
}

impl Server {
    pub fn new(
        listener: UnixListener,
        limit: usize,
        requests: Sender<VmmAction>,
        responses: Receiver<ActionResult>,
        event: EventFd,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        Ok(Self {
            listener,
            epoll,
            limit,
            requests,
            responses,
            event,
            connections: HashMap::new(),
            next_token: 0,
        })
    }

    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("API server stopped: epoll: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == LISTENER {
                    self.accept();
                } else if !self.serve(ev.data()) {
                    self.close(ev.data());
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("API: accept: {e}");
                    return;
                }
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                log::warn!("API: more than {MAX_CONNECTIONS} connections; closing a new one");
                continue;
            }
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(1) % (LISTENER - 1);
            let registered = stream.set_nonblocking(true).and_then(|()| {
                self.epoll.ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
                )
            });
            if let Err(e) = registered {
                log::warn!("API: cannot watch a connection: {e}");
                continue;
            }
            self.connections.insert(
                token,
                Connection {
                    stream,
                    buf: Vec::new(),
                    continue_sent: false,
                },
            );
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.connections.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    /// Read what `token` sent and answer every whole request; `false` to close it.
    fn serve(&mut self, token: u64) -> bool {
        let limit = self.limit;
        let Some(conn) = self.connections.get_mut(&token) else {
            return true;
        };
        let mut chunk = [0u8; 8192];
        let mut eof = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.len() > limit + http::MAX_HEAD_BYTES {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        loop {
            let Some(conn) = self.connections.get_mut(&token) else {
                return false;
            };
            match http::parse(&conn.buf, limit) {
                Parsed::Incomplete { expects_continue } => {
                    if expects_continue && !conn.continue_sent {
                        conn.continue_sent = true;
                        if write_all(&conn.stream, CONTINUE).is_err() {
                            return false;
                        }
                    }
                    return !eof;
                }
                Parsed::Invalid(response) => {
                    let _ = write_all(&conn.stream, &response.to_bytes(false));
                    return false;
                }
                Parsed::Complete(request, used) => {
                    conn.buf.drain(..used);
                    conn.continue_sent = false;
                    let response = self.handle(&request);
                    let Some(conn) = self.connections.get_mut(&token) else {
                        return false;
                    };
                    if write_all(&conn.stream, &response.to_bytes(request.keep_alive)).is_err()
                        || !request.keep_alive
                    {
                        return false;
                    }
                }
            }
        }
    }

    fn handle(&mut self, request: &http::Request) -> Response {
        log::info!("{}", received_line(request));
        let action = match router::route(&request.method, &request.path, request.body.as_deref()) {
            Ok(action) => action,
            Err(e) => {
                log::info!("API: {} {}: {e}", request.method, request.path);
                return Response::fault(400, &e.to_string());
            }
        };
        let deprecation = action.deprecation();
        if self.requests.send(action).is_err() || self.event.write(1).is_err() {
            return Response::fault(503, "The VMM is shutting down.");
        }
        match self.responses.recv() {
            Ok(result) => {
                if let Err(e) = &result {
                    log::info!("API: {} {}: {e}", request.method, request.path);
                }
                let mut response = router::respond(&result);
                if let Some(message) = deprecation {
                    log::warn!("{message}");
                    response.deprecation = true;
                }
                response
            }
            Err(_) => Response::fault(503, "The VMM is shutting down."),
        }
    }
}

fn write_all(mut stream: &UnixStream, bytes: &[u8]) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let result = stream.write_all(bytes);
    stream.set_nonblocking(true)?;
    result
}

/// Firecracker's line for a request, which log scrapers wait for: `The API server
/// received a Put request on "/actions" with body "{...}".` (the method in its title
/// case; no body for a GET, nor for `/mmds`, whose data may be secret).
fn received_line(request: &http::Request) -> String {
    let method = request.method.to_ascii_lowercase();
    let mut title = method.clone();
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let mut line = format!(
        "The API server received a {title} request on {:?}",
        request.path
    );
    if let Some(body) = &request.body
        && method != "get"
        && !request.path.starts_with("/mmds")
    {
        line.push_str(&format!(" with body {:?}", String::from_utf8_lossy(body)));
    }
    line.push('.');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: Option<&str>) -> http::Request {
        http::Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            upgrade: String::new(),
            body: body.map(|b| b.as_bytes().to_vec()),
            keep_alive: true,
        }
    }

    #[test]
    fn the_socket_appears_listening_and_replaces_only_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("vireo-api-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let live = bind(&path).unwrap();
        // Listening as soon as it is there, and nothing left beside it.
        assert!(UnixStream::connect(&path).is_ok());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["api.sock"]);
        let in_use = bind(&path).unwrap_err();
        assert_eq!(in_use.kind(), ErrorKind::AddrInUse);
        drop(live);
        // A stale socket file (nobody listening) is replaced.
        let again = bind(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(again);
        let file = dir.join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert_eq!(bind(&file).unwrap_err().kind(), ErrorKind::AddrInUse);
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn requests_are_logged_in_firecrackers_words() {
        assert_eq!(
            received_line(&request("GET", "/machine-config", None)),
            r#"The API server received a Get request on "/machine-config"."#
        );
        assert_eq!(
            received_line(&request(
                "PUT",
                "/actions",
                Some(r#"{"action_type": "InstanceStart"}"#)
            )),
            r#"The API server received a Put request on "/actions" with body "{\"action_type\": \"InstanceStart\"}"."#
        );
        assert_eq!(
            received_line(&request("PATCH", "/mmds", Some(r#"{"secret": 1}"#))),
            r#"The API server received a Patch request on "/mmds"."#
        );
    }
}
