//! One stream between a guest port and a host Unix socket: its state machine, its two
//! buffers and the credit accounting of both directions.
//!
//! This module owns the per-connection rules and the I/O on that connection's own host
//! socket; it does not touch guest memory or the epoll set (the muxer does, from the
//! verdicts and the interest this module reports).
//!
//! Credit (virtio 1.2, 5.10.6.3): the guest tells us, in every header, how big its
//! receive buffer is (`buf_alloc`) and how much of what we sent it has consumed
//! (`fwd_cnt`); we never have more than `buf_alloc` bytes in flight towards it. In the
//! other direction we advertise [`CONN_BUF_SIZE`] and count in `fwd_cnt` what reached the
//! host socket; a guest that sends more than that gets a reset.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::VsockMetrics;
use crate::packet::{HOST_CID, Header, PacketError, TYPE_STREAM, op, shutdown};
use crate::unix::send_nosignal;

/// Receive buffer we advertise to the guest for each connection.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Bytes forwarded to the host before we volunteer a credit update.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;
/// Most bytes read from a host socket at once (and so kept per connection).
pub const READ_CHUNK: usize = 64 * 1024;
/// Longest `CONNECT <port>\n` line accepted.
pub const MAX_CONNECT_LINE: usize = 32;

/// `epoll` interest bits a connection asks for.
pub mod interest {
    /// Readable.
    pub const IN: u32 = libc::EPOLLIN as u32;
    /// Writable.
    pub const OUT: u32 = libc::EPOLLOUT as u32;
}

/// Why a host connection's `CONNECT <port>\n` line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectLineError {
    /// The host closed before the line was complete.
    #[error("end of file before the CONNECT line")]
    Eof,
    /// The line is not `CONNECT <port>`.
    #[error("malformed CONNECT line {0:?}")]
    Malformed(String),
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    /// Reading the socket failed.
    #[error("reading the CONNECT line: {0}")]
    Io(#[source] io::Error),
}

/// What the muxer must do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It goes on.
    Keep,
    /// Drop it without telling the guest (the guest reset it, or it never reached it).
    Close,
    /// Drop it and send the guest a RST.
    Reset,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Accepted on the host socket; reading `CONNECT <port>\n`.
    ReadingConnect {
        /// The bytes of the line so far.
        line: Vec<u8>,
    },
    /// A REQUEST is queued or sent to the guest; waiting for RESPONSE or RST.
    LocalInit,
    /// Data flows.
    Established,
}

/// A packet a connection wants to send the guest: operation, flags, payload bytes.
pub type Pending = (u16, u32, usize);

/// One vsock stream and its host socket.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    /// The device's counters (the muxer sets them when it takes the connection).
    metrics: Arc<VsockMetrics>,
    state: State,
    local_port: u32,
    peer_port: u32,
    // Guest -> host.
    tx_buf: VecDeque<u8>,
    /// Bytes at the front of `tx_buf` that are ours (the `OK` line), not the guest's.
    tx_own: usize,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    guest_shut: u32,
    host_write_shut: bool,
    // Host -> guest.
    to_guest: Vec<u8>,
    to_guest_pos: usize,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    host_eof: bool,
    host_hup: bool,
    shutdown_sent: u32,
    // Control packets owed to the guest.
    need_request: bool,
    need_response: bool,
    need_credit_update: bool,
    credit_request_sent: bool,
    /// When the REQUEST for a host-initiated connection was queued.
    local_init_since: Option<Instant>,
    /// The last read was cut short by the guest's credit: the host may have more.
    credit_starved: bool,
    /// The interest registered in the muxer's epoll; `None` once the socket left it.
    pub registered: Option<u32>,
}

impl Connection {
    fn with_state(stream: UnixStream, state: State) -> Self {
        Self {
            metrics: Arc::default(),
            stream,
            state,
            local_port: 0,
            peer_port: 0,
            tx_buf: VecDeque::new(),
            tx_own: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            guest_shut: 0,
            host_write_shut: false,
            to_guest: Vec::new(),
            to_guest_pos: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            host_eof: false,
            host_hup: false,
            shutdown_sent: 0,
            need_request: false,
            need_response: false,
            need_credit_update: false,
            credit_request_sent: false,
            credit_starved: false,
            local_init_since: None,
            registered: None,
        }
    }

    /// A connection a host process opened on the device's socket.
    /// Count into `metrics`.
    pub fn set_metrics(&mut self, metrics: Arc<VsockMetrics>) {
        self.metrics = metrics;
    }

    /// A connection the host opened on the device's socket.
    pub fn new_host(stream: UnixStream) -> Self {
        Self::with_state(stream, State::ReadingConnect { line: Vec::new() })
    }

    /// A connection the guest asked for with `req`, its host socket already connected.
    pub fn new_guest(stream: UnixStream, req: &Header) -> Self {
        let mut c = Self::with_state(stream, State::Established);
        c.local_port = req.dst_port;
        c.peer_port = req.src_port;
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c.need_response = true;
        c
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// `(host-side port, guest port)`; zero ports before the `CONNECT` line.
    pub fn key(&self) -> (u32, u32) {
        (self.local_port, self.peer_port)
    }

    /// Read what the host sent of its `CONNECT <port>\n` line. `Ok(Some(port))` once the
    /// line is complete (bytes after it are kept for the guest); `Ok(None)` for more to
    /// come; an error for a malformed line, an overlong one or end of file.
    pub fn read_connect_line(&mut self) -> Result<Option<u32>, ConnectLineError> {
        let State::ReadingConnect { line } = &mut self.state else {
            return Ok(None);
        };
        let mut buf = [0u8; 64];
        loop {
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Err(ConnectLineError::Eof),
                Ok(n) => {
                    line.extend_from_slice(buf.get(..n).unwrap_or_default());
                    if let Some(pos) = line.iter().position(|&b| b == b'\n') {
                        let rest = line.split_off(pos + 1);
                        let port = parse_connect(line).ok_or_else(|| {
                            ConnectLineError::Malformed(String::from_utf8_lossy(line).into_owned())
                        })?;
                        self.to_guest = rest;
                        return Ok(Some(port));
                    }
                    if line.len() > MAX_CONNECT_LINE {
                        return Err(ConnectLineError::TooLong);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnectLineError::Io(e)),
            }
        }
    }

    /// The host asked for guest `peer_port`; we reach it from `local_port`.
    pub fn start_local_init(&mut self, local_port: u32, peer_port: u32) {
        self.local_port = local_port;
        self.peer_port = peer_port;
        self.state = State::LocalInit;
        self.need_request = true;
        self.local_init_since = Some(Instant::now());
    }

    /// When the guest was asked to accept this connection, while it has not answered.
    pub fn awaiting_guest_since(&self) -> Option<Instant> {
        self.local_init_since
            .filter(|_| self.state == State::LocalInit)
    }

    fn to_guest_len(&self) -> usize {
        self.to_guest.len().saturating_sub(self.to_guest_pos)
    }

    /// Bytes the guest has room for: its buffer less what is in flight.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn guest_receives(&self) -> bool {
        self.guest_shut & shutdown::RCV == 0
    }

    /// Whether the host socket should be read now.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.guest_receives()
            && self.to_guest_len() == 0
            && self.peer_credit() > 0
    }

    /// The epoll interest this connection needs now.
    pub fn desired_interest(&self) -> u32 {
        match self.state {
            State::ReadingConnect { .. } => interest::IN,
            State::LocalInit => 0,
            State::Established => {
                let r = if self.wants_read() { interest::IN } else { 0 };
                let w = if self.tx_buf.is_empty() {
                    0
                } else {
                    interest::OUT
                };
                r | w
            }
        }
    }

    /// A packet from the guest for this connection.
    pub fn on_guest_packet(
        &mut self,
        hdr: &Header,
        payload: Result<Vec<u8>, PacketError>,
    ) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
        let established = self.state == State::Established;
        match hdr.op {
            op::RST => Verdict::Close,
            op::RESPONSE if self.state == State::LocalInit => {
                self.state = State::Established;
                let ok = format!("OK {}\n", self.local_port).into_bytes();
                self.tx_own = ok.len();
                self.tx_buf.extend(ok);
                self.flush_tx()
            }
            op::RW if established && self.guest_shut & shutdown::SEND == 0 => match payload {
                Ok(data) => self.write_from_guest(&data),
                Err(e) => {
                    log::debug!("vsock: bad RW packet on {:?}: {e}", self.key());
                    Verdict::Reset
                }
            },
            op::SHUTDOWN if established => {
                self.guest_shut |= hdr.flags & shutdown::BOTH;
                if !self.guest_receives() {
                    self.to_guest.clear();
                    self.to_guest_pos = 0;
                }
                self.flush_tx()
            }
            op::CREDIT_UPDATE if established => Verdict::Keep,
            op::CREDIT_REQUEST if established => {
                self.need_credit_update = true;
                Verdict::Keep
            }
            _ => Verdict::Reset,
        }
    }

    fn write_from_guest(&mut self, data: &[u8]) -> Verdict {
        let queued = self.tx_buf.len().saturating_sub(self.tx_own);
        if queued.saturating_add(data.len()) > CONN_BUF_SIZE as usize {
            log::debug!("vsock: guest overran its credit on {:?}", self.key());
            return Verdict::Reset;
        }
        let mut sent = 0;
        if self.tx_buf.is_empty() {
            match send_nosignal(&self.stream, data) {
                Ok(n) => sent = n.min(data.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.metrics.tx_write_fails.inc();
                    return Verdict::Reset;
                }
            }
            self.account_forwarded(sent);
        }
        self.tx_buf.extend(data.get(sent..).unwrap_or_default());
        self.flush_tx()
    }

    fn account_forwarded(&mut self, guest_bytes: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(guest_bytes as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.need_credit_update = true;
        }
    }

    /// Write buffered guest data to the host socket; then apply the guest's shutdowns
    /// once everything it sent is out.
    pub fn flush_tx(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = match send_nosignal(&self.stream, front) {
                Ok(0) => break,
                Ok(n) => n.min(front.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.metrics.tx_flush_fails.inc();
                    return Verdict::Reset;
                }
            };
            self.tx_buf.drain(..n);
            let own = n.min(self.tx_own);
            self.tx_own -= own;
            self.account_forwarded(n - own);
        }
        if !self.tx_buf.is_empty() {
            return Verdict::Keep;
        }
        if self.guest_shut == shutdown::BOTH {
            // The guest closed its socket and everything it sent reached the host: the
            // RST completes the close on its side.
            return Verdict::Reset;
        }
        if self.guest_shut & shutdown::SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Verdict::Keep
    }

    /// Read from the host socket if the guest has room and nothing of ours is pending.
    pub fn pump_read(&mut self) -> Verdict {
        if !self.wants_read() {
            return Verdict::Keep;
        }
        let room = (self.peer_credit() as usize).min(READ_CHUNK);
        self.to_guest.clear();
        self.to_guest_pos = 0;
        self.to_guest.resize(room, 0);
        loop {
            match (&self.stream).read(&mut self.to_guest) {
                Ok(n) => {
                    self.to_guest.truncate(n);
                    self.credit_starved = n > 0 && n == room && room == self.peer_credit() as usize;
                    if n == 0 {
                        self.host_eof = true;
                    }
                    return Verdict::Keep;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.to_guest.clear();
                    return if e.kind() == io::ErrorKind::WouldBlock {
                        Verdict::Keep
                    } else {
                        self.metrics.rx_read_fails.inc();
                        Verdict::Reset
                    };
                }
            }
        }
    }

    /// The host socket reported hang-up or an error: the host will read nothing more.
    /// What it wrote before is still delivered; the muxer stops polling the socket.
    pub fn on_host_hup(&mut self) -> Verdict {
        self.host_hup = true;
        match self.state {
            State::ReadingConnect { .. } | State::LocalInit => Verdict::Reset,
            State::Established => {
                if !self.tx_buf.is_empty() || !self.guest_receives() {
                    return Verdict::Reset;
                }
                self.pump_read()
            }
        }
    }

    fn shutdown_wanted(&self) -> u32 {
        if !self.host_eof || self.to_guest_len() > 0 {
            return 0;
        }
        if self.host_hup {
            shutdown::BOTH
        } else {
            shutdown::SEND
        }
    }

    /// The next packet for the guest, given `room` payload bytes in the RX buffer.
    pub fn next_packet(&self, room: usize) -> Option<Pending> {
        match self.state {
            State::ReadingConnect { .. } => None,
            State::LocalInit => self.need_request.then_some((op::REQUEST, 0, 0)),
            State::Established => {
                if self.need_response {
                    return Some((op::RESPONSE, 0, 0));
                }
                let pending = self.to_guest_len();
                let credit = self.peer_credit() as usize;
                if self.guest_receives() {
                    if pending > 0 && credit > 0 && room > 0 {
                        return Some((op::RW, 0, pending.min(credit).min(room)));
                    }
                    if credit == 0
                        && (pending > 0 || self.credit_starved)
                        && !self.credit_request_sent
                    {
                        return Some((op::CREDIT_REQUEST, 0, 0));
                    }
                }
                let want = self.shutdown_wanted();
                if want & !self.shutdown_sent != 0 {
                    return Some((op::SHUTDOWN, want | self.shutdown_sent, 0));
                }
                self.need_credit_update.then_some((op::CREDIT_UPDATE, 0, 0))
            }
        }
    }

    /// The header of a packet from this connection to the guest `guest_cid`.
    pub fn header(&self, guest_cid: u64, op: u16, flags: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The first `n` bytes waiting for the guest (fewer if fewer wait).
    pub fn data(&self, n: usize) -> &[u8] {
        let end = self.to_guest_pos.saturating_add(n).min(self.to_guest.len());
        self.to_guest
            .get(self.to_guest_pos..end)
            .unwrap_or_default()
    }

    /// The packet `p` reached the guest.
    pub fn commit(&mut self, p: Pending) {
        let (op, flags, n) = p;
        match op {
            op::REQUEST => self.need_request = false,
            op::RESPONSE => self.need_response = false,
            op::RW => {
                let n = n.min(self.to_guest_len());
                self.to_guest_pos += n;
                self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                if self.to_guest_len() == 0 {
                    self.to_guest.clear();
                    self.to_guest_pos = 0;
                }
            }
            op::CREDIT_REQUEST => self.credit_request_sent = true,
            op::SHUTDOWN => self.shutdown_sent = flags,
            _ => {}
        }
        // Every header carries our fwd_cnt: an update is no longer owed.
        self.need_credit_update = false;
        self.last_fwd_cnt_sent = self.fwd_cnt;
    }
}

/// Parse `CONNECT <port>` (the newline already removed; a trailing CR is accepted).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut words = text.split_ascii_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let port = words.next()?.parse::<u32>().ok()?;
    words.next().is_none().then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r\n"), Some(u32::MAX));
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT 4294967296\n",
            b"connect 5\n",
            b"CONNECT 5 6\n",
            b"CONNECT -1\n",
            b"\xff\n",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credit_never_goes_negative() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new_host(a);
        c.peer_buf_alloc = 100;
        c.tx_cnt = 90;
        c.peer_fwd_cnt = 0;
        assert_eq!(c.peer_credit(), 10);
        // A guest that claims to have consumed more than it was sent.
        c.peer_fwd_cnt = 1000;
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.tx_cnt = 5;
        c.peer_fwd_cnt = u32::MAX - 4;
        assert_eq!(c.peer_credit(), 90);
    }
}
