//! One TCP connection from the guest to the metadata service, on the service's side.
//!
//! The link is a point-to-point virtio ring that neither loses nor reorders frames in
//! practice, so this is TCP at its simplest: no congestion control, no window scaling,
//! SACK or timestamps; out-of-order data is dropped and acknowledged again (the guest
//! resends it); what the service sends is kept until acknowledged and sent again from the
//! oldest unacknowledged byte when the retransmission timer fires (doubling from
//! [`INITIAL_RTO`], given up after [`MAX_RETRIES`]). Requests are parsed as their bytes
//! arrive and answered in order; what is buffered either way is bounded, and the window
//! offered to the guest shrinks to what the request buffer can still take.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::MmdsMetrics;
use crate::http::{self, Response};
use crate::pdu::{Tcp, TcpOut, flags};
use crate::store::Mmds;

/// First retransmission timeout.
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Retransmissions of one segment before the connection is dropped.
pub const MAX_RETRIES: u32 = 6;
/// Largest segment the service sends, and the MSS it announces.
pub const MSS: u16 = 1460;
/// Bytes of requests buffered (and so the largest window offered).
pub const RECV_BUFFER: usize = 32 * 1024;
/// Responses waiting for acknowledgment past which no further request is parsed.
const SEND_BUFFER: usize = 256 * 1024;

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The guest's SYN came, the SYN-ACK is not acknowledged yet.
    SynReceived,
    /// Open.
    Established,
    /// Done: reset, timed out, or closed both ways.
    Closed,
}

/// A segment the connection wants sent: the header fields and where its data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags.
    pub flags: u8,
    /// Window offered.
    pub window: u16,
    /// MSS option (on the SYN-ACK).
    pub mss: Option<u16>,
    /// Offset and length of the data in [`Connection::data`].
    pub data: (usize, usize),
}

/// The service's end of one connection.
#[derive(Debug)]
pub struct Connection {
    /// The guest's MAC (frames go back to it).
    pub remote_mac: [u8; 6],
    /// The guest's address.
    pub remote_ip: Ipv4Addr,
    /// The guest's port.
    pub remote_port: u16,
    /// The service's port.
    pub local_port: u16,
    state: State,
    /// The guest's initial sequence number.
    irs: u32,
    iss: u32,
    una: u32,
    nxt: u32,
    /// Bytes from `out_seq` on, sent or not, not acknowledged yet.
    out: Vec<u8>,
    out_seq: u32,
    /// The guest's window.
    wnd: u32,
    mss: usize,
    rcv_nxt: u32,
    request: Vec<u8>,
    /// Close after what is in `out`.
    fin_queued: bool,
    /// The sequence number our FIN took once sent.
    fin_seq: Option<u32>,
    peer_fin: bool,
    need_ack: bool,
    /// A zero-window probe may send one byte.
    probe: bool,
    rto: Duration,
    deadline: Option<Instant>,
    retries: u32,
    /// When the guest last sent anything.
    pub last_active: Instant,
}

impl Connection {
    /// A connection for the guest's SYN `syn`, with our initial sequence number `iss`.
    pub fn accept(
        remote_mac: [u8; 6],
        remote_ip: Ipv4Addr,
        syn: &Tcp,
        iss: u32,
        now: Instant,
    ) -> Self {
        let mss = usize::from(syn.mss.unwrap_or(536).clamp(64, MSS));
        Self {
            remote_mac,
            remote_ip,
            remote_port: syn.src_port,
            local_port: syn.dst_port,
            state: State::SynReceived,
            irs: syn.seq,
            iss,
            una: iss,
            nxt: iss,
            out: Vec::new(),
            out_seq: iss.wrapping_add(1),
            wnd: u32::from(syn.window),
            mss,
            rcv_nxt: syn.seq.wrapping_add(1),
            request: Vec::new(),
            fin_queued: false,
            fin_seq: None,
            peer_fin: false,
            need_ack: false,
            probe: false,
            rto: INITIAL_RTO,
            deadline: None,
            retries: 0,
            last_active: now,
        }
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The guest's initial sequence number (a SYN with another one is a new connection).
    pub fn irs(&self) -> u32 {
        self.irs
    }

    /// The bytes [`Segment::data`] points into.
    pub fn data(&self) -> &[u8] {
        &self.out
    }

    /// Whether both sides closed and everything was acknowledged (or it was reset or
    /// timed out): the connection can go.
    pub fn is_done(&self) -> bool {
        self.state == State::Closed
            || (self.peer_fin
                && !self.need_ack
                && self.fin_seq.is_some_and(|f| seq_lt(f, self.una)))
    }

    fn window(&self) -> u16 {
        RECV_BUFFER
            .saturating_sub(self.request.len())
            .min(usize::from(u16::MAX)) as u16
    }

    fn data_end(&self) -> u32 {
        self.out_seq.wrapping_add(self.out.len() as u32)
    }

    /// How many data bytes can be sent now.
    fn sendable(&self) -> usize {
        if self.state != State::Established || !seq_lt(self.nxt, self.data_end()) {
            return 0;
        }
        let unsent = self.data_end().wrapping_sub(self.nxt) as usize;
        let in_flight = self.nxt.wrapping_sub(self.una);
        let mut room = self.wnd.saturating_sub(in_flight) as usize;
        if room == 0 && self.probe && in_flight == 0 {
            room = 1;
        }
        unsent.min(room).min(self.mss)
    }

    /// Whether [`Connection::next_segment`] has something.
    pub fn has_output(&self) -> bool {
        match self.state {
            State::Closed => false,
            State::SynReceived => self.nxt == self.iss || self.need_ack,
            State::Established => {
                self.need_ack
                    || self.sendable() > 0
                    || (self.fin_queued && self.fin_seq.is_none() && self.nxt == self.data_end())
            }
        }
    }

    /// The next segment to send at `now`, if any; its data is [`Connection::data`] at
    /// the segment's offset.
    pub fn next_segment(&mut self, now: Instant) -> Option<Segment> {
        let mut seg = Segment {
            seq: self.nxt,
            ack: self.rcv_nxt,
            flags: flags::ACK,
            window: self.window(),
            mss: None,
            data: (0, 0),
        };
        match self.state {
            State::Closed => return None,
            State::SynReceived if self.nxt == self.iss => {
                seg.flags |= flags::SYN;
                seg.mss = Some(MSS);
                self.nxt = self.iss.wrapping_add(1);
            }
            State::SynReceived => {}
            State::Established => {
                let n = self.sendable();
                if n > 0 {
                    let offset = self.nxt.wrapping_sub(self.out_seq) as usize;
                    seg.data = (offset, n);
                    seg.flags |= flags::PSH;
                    self.nxt = self.nxt.wrapping_add(n as u32);
                    self.probe = false;
                } else if self.fin_queued && self.fin_seq.is_none() && self.nxt == self.data_end() {
                    seg.flags |= flags::FIN;
                    self.fin_seq = Some(self.nxt);
                    self.nxt = self.nxt.wrapping_add(1);
                }
            }
        }
        let carries = seg.flags & (flags::SYN | flags::FIN) != 0 || seg.data.1 > 0;
        if !carries && !self.need_ack {
            return None;
        }
        self.need_ack = false;
        if carries && self.deadline.is_none() {
            self.deadline = Some(now + self.rto);
        }
        Some(seg)
    }

    /// When the retransmission (or window probe) timer fires.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The timer fired at `now`: go back to the oldest unacknowledged byte (or probe a
    /// closed window); after [`MAX_RETRIES`] the connection is closed.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| d > now) {
            return;
        }
        self.retries += 1;
        if self.retries > MAX_RETRIES {
            self.state = State::Closed;
            self.deadline = None;
            return;
        }
        self.rto = (self.rto * 2).min(Duration::from_secs(8));
        self.deadline = None;
        if self.state == State::SynReceived {
            self.nxt = self.iss;
            return;
        }
        self.nxt = self.una;
        if self.fin_seq.is_some_and(|f| seq_le(self.una, f)) {
            self.fin_seq = None;
        }
        if self.wnd == 0 && seq_lt(self.nxt, self.data_end()) {
            self.probe = true;
        }
    }

    /// Take a segment from the guest: acknowledgments, data (requests answered from
    /// `mmds` as they complete), FIN, RST.
    pub fn on_segment(&mut self, seg: &Tcp, mmds: &mut Mmds, metrics: &MmdsMetrics, now: Instant) {
        self.last_active = now;
        if seg.flags & flags::RST != 0 {
            self.state = State::Closed;
            return;
        }
        if seg.flags & flags::SYN != 0 {
            // The guest sent its SYN again: our SYN-ACK was lost.
            if self.state == State::SynReceived {
                self.nxt = self.iss;
            } else {
                self.need_ack = true;
            }
            return;
        }
        if seg.flags & flags::ACK == 0 {
            return;
        }
        self.on_ack(seg, now);
        if self.state != State::Established {
            return;
        }
        self.on_data(seg);
        self.serve(mmds, metrics, now);
    }

    fn on_ack(&mut self, seg: &Tcp, now: Instant) {
        if self.state == State::SynReceived {
            if seg.ack != self.iss.wrapping_add(1) {
                return;
            }
            self.state = State::Established;
            self.una = seg.ack;
            self.deadline = None;
            self.retries = 0;
            self.rto = INITIAL_RTO;
        }
        if seq_lt(self.nxt, seg.ack) {
            // Acknowledges what was never sent.
            self.need_ack = true;
            return;
        }
        if seq_lt(self.una, seg.ack) {
            let data_acked = if seq_lt(self.data_end(), seg.ack) {
                self.data_end()
            } else {
                seg.ack
            };
            let drained = data_acked.wrapping_sub(self.out_seq) as usize;
            self.out.drain(..drained.min(self.out.len()));
            self.out_seq = data_acked;
            self.una = seg.ack;
            self.retries = 0;
            self.rto = INITIAL_RTO;
            self.deadline = (self.una != self.nxt).then(|| now + self.rto);
        }
        self.wnd = u32::from(seg.window);
        if self.wnd == 0 && self.una == self.nxt && seq_lt(self.nxt, self.data_end()) {
            // Nothing in flight and a closed window: probe it when the timer fires.
            self.deadline.get_or_insert(now + self.rto);
        }
        if self.wnd > 0 {
            self.probe = false;
        }
    }

    fn on_data(&mut self, seg: &Tcp) {
        let mut payload = seg.payload;
        let mut seq = seg.seq;
        if !payload.is_empty() {
            self.need_ack = true;
        }
        if seq_lt(seq, self.rcv_nxt) {
            // Partly or wholly a duplicate.
            let skip = self.rcv_nxt.wrapping_sub(seq) as usize;
            if skip >= payload.len() {
                payload = &[];
                seq = self.rcv_nxt;
            } else {
                payload = &payload[skip..];
                seq = self.rcv_nxt;
            }
        }
        if seq != self.rcv_nxt {
            // A gap: dropped, the ACK tells the guest where we are.
            self.need_ack = true;
            return;
        }
        let room = RECV_BUFFER.saturating_sub(self.request.len());
        let take = payload.len().min(room);
        if !self.fin_queued && !self.peer_fin {
            self.request.extend_from_slice(&payload[..take]);
        }
        self.rcv_nxt = self.rcv_nxt.wrapping_add(take as u32);
        if seg.flags & flags::FIN != 0 && take == payload.len() && !self.peer_fin {
            self.peer_fin = true;
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.need_ack = true;
        }
    }

    /// Answer every whole request buffered (while the responses waiting for the guest
    /// stay under the send buffer); close once the guest asked to or closed its side.
    fn serve(&mut self, mmds: &mut Mmds, metrics: &MmdsMetrics, now: Instant) {
        while !self.fin_queued && self.out.len() < SEND_BUFFER {
            match http::parse(&self.request) {
                Ok(None) => break,
                Ok(Some((req, used))) => {
                    self.request.drain(..used);
                    let close = req.wants_close();
                    let response = mmds.respond(&req, now, metrics);
                    self.out
                        .extend_from_slice(&response.to_bytes(req.http11, close));
                    self.fin_queued = close;
                }
                Err(bad) => {
                    metrics.rx_accepted_err.inc();
                    self.out
                        .extend_from_slice(&Response::from(bad).to_bytes(true, true));
                    self.request.clear();
                    self.fin_queued = true;
                }
            }
        }
        if self.peer_fin && http::parse(&self.request).ok().flatten().is_none() {
            // The guest closed its side: nothing more will come to answer.
            self.fin_queued = true;
        }
    }

    /// Build the TCP segment `seg` (with its data from this connection).
    pub fn out<'a>(&'a self, seg: &Segment) -> TcpOut<'a> {
        let (offset, len) = seg.data;
        TcpOut {
            src_port: self.local_port,
            dst_port: self.remote_port,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            window: seg.window,
            mss: seg.mss,
            payload: self.out.get(offset..offset + len).unwrap_or(&[]),
        }
    }
}
