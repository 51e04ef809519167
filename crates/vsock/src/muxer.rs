//! The host side of the device: the listening Unix socket, every connection, and the
//! order in which their packets go to the guest.
//!
//! The muxer owns one epoll set holding the listener and each connection's host socket
//! (the worker thread waits on that set's fd, so connections come and go without the
//! worker's own fd list changing). It turns host events and guest packets into
//! connection state changes, and fills RX buffers from a queue of resets and a
//! round-robin list of connections that have something to say.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use virtio_devices::device::{WorkerError, pop_chain};

use crate::connection::{Connection, State, Verdict};
use crate::metrics::VsockMetrics;
use crate::packet::{self, HOST_CID, Header, PacketError, TYPE_STREAM, op};
use crate::unix::{HostListener, connect_nonblocking};

/// Most connections (host- and guest-initiated, including those still reading their
/// `CONNECT` line) at once; beyond it host connections are closed and guest requests
/// reset.
pub const MAX_CONNECTIONS: usize = 1024;
/// First local port picked for host-initiated connections.
pub const EPHEMERAL_PORT_START: u32 = 1 << 30;
/// Resets waiting for RX buffers beyond which the TX queue is left alone until the
/// guest gives RX buffers (a guest cannot make us queue replies without bound).
pub const RX_BACKLOG_LIMIT: usize = 256;
/// Host events handled per wake-up (the rest wake the worker again).
const EVENTS_PER_WAKE: usize = 64;
/// Connections accepted per wake-up.
const ACCEPTS_PER_WAKE: usize = 32;
/// How long the guest has to answer a host-initiated REQUEST before the host connection
/// is closed (and the guest sent a RST), as Firecracker does.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const LISTENER_TOKEN: u64 = 0;
const TIMER_TOKEN: u64 = 1;

/// The device's host side.
pub struct Muxer {
    guest_cid: u64,
    listener: HostListener,
    epoll: Epoll,
    conns: HashMap<u64, Connection>,
    by_key: HashMap<(u32, u32), u64>,
    next_token: u64,
    next_port: u32,
    ready: VecDeque<u64>,
    ready_set: HashSet<u64>,
    resets: VecDeque<Header>,
    max_connections: usize,
    timer: TimerFd,
    timer_armed: bool,
    request_timeout: Duration,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    /// A muxer for guest `guest_cid`, accepting host connections on `listener`.
    pub fn new(guest_cid: u64, listener: HostListener) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        let timer = TimerFd::new()?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TIMER_TOKEN),
        )?;
        Ok(Self {
            guest_cid,
            listener,
            epoll,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            next_token: TIMER_TOKEN + 1,
            next_port: EPHEMERAL_PORT_START,
            ready: VecDeque::new(),
            ready_set: HashSet::new(),
            resets: VecDeque::new(),
            max_connections: MAX_CONNECTIONS,
            timer,
            timer_armed: false,
            request_timeout: REQUEST_TIMEOUT,
            metrics: Arc::default(),
        })
    }

    /// Count into `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Arc<VsockMetrics>) {
        self.metrics = metrics;
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// Change the connection limit (tests use a small one).
    pub fn set_max_connections(&mut self, n: usize) {
        self.max_connections = n;
    }

    /// Change how long the guest has to answer a host-initiated REQUEST.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// The epoll fd the worker waits on.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drop every connection and every queued packet (device reset). The listener stays.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.by_key.clear();
        self.ready.clear();
        self.ready_set.clear();
        self.resets.clear();
    }

    /// Whether so many replies wait for RX buffers that TX should pause.
    pub fn rx_backlog_full(&self) -> bool {
        self.resets.len() >= RX_BACKLOG_LIMIT
    }

    fn queue_reset(&mut self, hdr: Header) {
        // Bounded by RX_BACKLOG_LIMIT (TX pauses) plus one per connection.
        if self.resets.len() < RX_BACKLOG_LIMIT + self.max_connections {
            self.resets.push_back(hdr);
        }
    }

    fn mark_ready(&mut self, token: u64) {
        if self.ready_set.insert(token) {
            self.ready.push_back(token);
        }
    }

    fn remove(&mut self, token: u64, reset: bool) {
        let Some(conn) = self.conns.remove(&token) else {
            return;
        };
        self.metrics.conns_removed.inc();
        if reset {
            self.metrics.conns_killed.inc();
        }
        if self.by_key.get(&conn.key()) == Some(&token) {
            self.by_key.remove(&conn.key());
        }
        if reset && !matches!(conn.state(), State::ReadingConnect { .. }) {
            let hdr = conn.header(self.guest_cid, op::RST, 0);
            self.queue_reset(hdr);
        }
        // Dropping the stream closes the host socket and takes it out of the epoll set.
    }

    /// Apply a connection's verdict: keep it (and refresh its epoll interest and its
    /// place in the RX list), or drop it.
    fn settle(&mut self, token: u64, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {
                self.update_interest(token);
                self.mark_ready(token);
            }
            Verdict::Close => self.remove(token, false),
            Verdict::Reset => self.remove(token, true),
        }
    }

    fn update_interest(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Some(current) = conn.registered else {
            return;
        };
        let want = conn.desired_interest();
        if want == current {
            return;
        }
        let ev = EpollEvent::new(EventSet::from_bits_truncate(want), token);
        match self
            .epoll
            .ctl(ControlOperation::Modify, conn.stream().as_raw_fd(), ev)
        {
            Ok(()) => conn.registered = Some(want),
            Err(e) => {
                log::warn!("vsock: epoll modify: {e}");
                self.metrics.conn_event_fails.inc();
                self.remove(token, true);
            }
        }
    }

    fn insert(&mut self, mut conn: Connection) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let want = conn.desired_interest();
        let ev = EpollEvent::new(EventSet::from_bits_truncate(want), token);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, conn.stream().as_raw_fd(), ev)
        {
            log::warn!("vsock: epoll add: {e}");
            self.metrics.conn_event_fails.inc();
            return None;
        }
        self.metrics.conns_added.inc();
        conn.set_metrics(self.metrics.clone());
        conn.registered = Some(want);
        self.conns.insert(token, conn);
        Some(token)
    }

    /// Handle what the host side has ready: new connections, readable or writable
    /// sockets, hang-ups. Never blocks.
    pub fn handle_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_WAKE];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("vsock: epoll wait: {e}");
                }
                return;
            }
        };
        for ev in events.iter().take(n) {
            if ev.data() == LISTENER_TOKEN {
                self.accept_all();
            } else if ev.data() == TIMER_TOKEN {
                self.expire_requests();
            } else {
                self.host_event(ev.data(), ev.events());
            }
        }
    }

    /// Reset host-initiated connections the guest left unanswered too long.
    fn expire_requests(&mut self) {
        // The timer is readable, so this read does not block.
        let _ = self.timer.wait();
        self.timer_armed = false;
        let now = Instant::now();
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.awaiting_guest_since()
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.request_timeout)
            })
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            log::debug!("vsock: guest did not answer a host connection in time");
            self.remove(token, true);
        }
        self.arm_timer();
    }

    /// Arm the timer for the oldest unanswered host-initiated connection, if any.
    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        let Some(oldest) = self
            .conns
            .values()
            .filter_map(Connection::awaiting_guest_since)
            .min()
        else {
            return;
        };
        let due = (oldest + self.request_timeout)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(due, None) {
            Ok(()) => self.timer_armed = true,
            Err(e) => log::warn!("vsock: cannot arm the request timer: {e}"),
        }
    }

    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKE {
            match self.listener.accept() {
                Ok(Some(stream)) => {
                    if self.conns.len() >= self.max_connections {
                        log::warn!("vsock: connection limit reached, host connection closed");
                        continue;
                    }
                    let _ = self.insert(Connection::new_host(stream));
                }
                Ok(None) => return,
                Err(e) => {
                    log::warn!("vsock: accept: {e}");
                    return;
                }
            }
        }
    }

    fn host_event(&mut self, token: u64, events: u32) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let hup = events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        if matches!(conn.state(), State::ReadingConnect { .. }) {
            match conn.read_connect_line() {
                Ok(Some(port)) => self.start_host_connection(token, port),
                Ok(None) if !hup => {}
                Ok(None) => self.remove(token, false),
                Err(e) => {
                    log::debug!("vsock: host connection closed: {e}");
                    self.remove(token, false);
                }
            }
            return;
        }
        let verdict = if hup {
            let v = conn.on_host_hup();
            if v == Verdict::Keep {
                // Level-triggered HUP would fire forever: poll no more; what is left in
                // the socket is read when the guest makes room.
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream().as_raw_fd(),
                    EpollEvent::default(),
                );
                conn.registered = None;
            }
            v
        } else {
            let mut v = Verdict::Keep;
            if events & libc::EPOLLOUT as u32 != 0 {
                v = conn.flush_tx();
            }
            if v == Verdict::Keep && events & libc::EPOLLIN as u32 != 0 {
                v = conn.pump_read();
            }
            v
        };
        self.settle(token, verdict);
    }

    fn start_host_connection(&mut self, token: u64, peer_port: u32) {
        let mut local = None;
        for _ in 0..1024 {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(EPHEMERAL_PORT_START);
            if !self.by_key.contains_key(&(p, peer_port)) {
                local = Some(p);
                break;
            }
        }
        let (Some(local), Some(conn)) = (local, self.conns.get_mut(&token)) else {
            self.remove(token, false);
            return;
        };
        conn.start_local_init(local, peer_port);
        self.by_key.insert((local, peer_port), token);
        self.settle(token, Verdict::Keep);
        self.arm_timer();
    }

    /// A packet the guest put on the TX queue.
    pub fn handle_guest_packet(&mut self, hdr: &Header, payload: Result<Vec<u8>, PacketError>) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            log::debug!(
                "vsock: dropped packet from cid {} to cid {}",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        let token = self.by_key.get(&(hdr.dst_port, hdr.src_port)).copied();
        if hdr.type_ != TYPE_STREAM {
            if let Some(t) = token {
                self.remove(t, false);
            }
            if hdr.op != op::RST {
                self.queue_reset(hdr.reset_reply());
            }
            return;
        }
        let Some(token) = token else {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr),
                op::RST => {}
                _ => self.queue_reset(hdr.reset_reply()),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut verdict = conn.on_guest_packet(hdr, payload);
        if verdict == Verdict::Keep {
            verdict = conn.pump_read();
        }
        self.settle(token, verdict);
    }

    fn guest_connect(&mut self, req: &Header) {
        if self.conns.len() >= self.max_connections {
            log::warn!("vsock: connection limit reached, guest request reset");
            self.queue_reset(req.reset_reply());
            return;
        }
        let mut path = self.listener.path().as_os_str().to_owned();
        path.push(format!("_{}", req.dst_port));
        let path = PathBuf::from(path);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("vsock: guest connect to {}: {e}", path.display());
                self.queue_reset(req.reset_reply());
                return;
            }
        };
        match self.insert(Connection::new_guest(stream, req)) {
            Some(token) => {
                self.by_key.insert((req.dst_port, req.src_port), token);
                self.mark_ready(token);
            }
            None => self.queue_reset(req.reset_reply()),
        }
    }

    /// The first connection in the RX list that has a packet to send; connections with
    /// nothing to say leave the list.
    fn front_ready(&mut self) -> Option<u64> {
        while let Some(&token) = self.ready.front() {
            if self
                .conns
                .get(&token)
                .is_some_and(|c| c.next_packet(usize::MAX).is_some())
            {
                return Some(token);
            }
            self.ready.pop_front();
            self.ready_set.remove(&token);
        }
        None
    }

    /// Whether a packet waits for an RX buffer.
    pub fn has_rx_work(&mut self) -> bool {
        !self.resets.is_empty() || self.front_ready().is_some()
    }

    /// Fill RX buffers while packets wait and the guest offers buffers. Returns the
    /// number of buffers used.
    pub fn fill_rx<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<usize, WorkerError> {
        let ring = |e: virtio_queue::Error| WorkerError::new(format!("rx queue: {e}"));
        let mut used = 0;
        let mut rechecked = false;
        loop {
            let conn_token = if self.resets.is_empty() {
                match self.front_ready() {
                    Some(t) => Some(t),
                    None => break,
                }
            } else {
                None
            };
            let Some(chain) = pop_chain(queue, mem)? else {
                // Out of buffers with packets waiting: ask for a kick when the driver
                // adds some. With EVENT_IDX a driver that added buffers just now saw the
                // old avail_event and did not kick, so look again (once: a ring that
                // shows buffers it cannot give is not worth spinning on).
                if !rechecked && queue.enable_notification(mem).map_err(ring)? {
                    rechecked = true;
                    continue;
                }
                return Ok(used);
            };
            rechecked = false;
            let head = chain.head_index();
            let len = match conn_token {
                None => self.write_reset(mem, chain),
                Some(token) => self.write_conn_packet(mem, chain, token),
            };
            if len > 0 {
                self.metrics.rx_packets_count.inc();
                let payload = (len as usize).saturating_sub(packet::HDR_SIZE);
                self.metrics.rx_bytes_count.add(payload as u64);
            }
            queue.add_used(mem, head, len).map_err(ring)?;
            used += 1;
        }
        queue.enable_notification(mem).map_err(ring)?;
        Ok(used)
    }

    fn write_reset<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: virtio_queue::DescriptorChain<&M>,
    ) -> u32 {
        let Some(&hdr) = self.resets.front() else {
            return 0;
        };
        match packet::write_rx(mem, chain, |_| Some((hdr, &[][..]))) {
            Ok(Some(len)) => {
                self.resets.pop_front();
                len
            }
            Ok(None) => 0,
            Err(e) => {
                log::debug!("vsock: unusable rx buffer: {e}");
                0
            }
        }
    }

    fn write_conn_packet<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: virtio_queue::DescriptorChain<&M>,
        token: u64,
    ) -> u32 {
        let Some(conn) = self.conns.get_mut(&token) else {
            return 0;
        };
        let cid = self.guest_cid;
        let mut sent = None;
        let result = packet::write_rx(mem, chain, |room| {
            let p = conn.next_packet(room)?;
            sent = Some(p);
            Some((conn.header(cid, p.0, p.1), conn.data(p.2)))
        });
        let len = match result {
            Ok(Some(len)) => len,
            Ok(None) => 0,
            Err(e) => {
                log::debug!("vsock: unusable rx buffer: {e}");
                return 0;
            }
        };
        if let Some(p) = sent.filter(|_| len > 0) {
            conn.commit(p);
            let verdict = conn.pump_read();
            // Round robin: a connection with more to say goes to the back of the list.
            self.ready.pop_front();
            self.ready_set.remove(&token);
            self.settle(token, verdict);
        }
        len
    }
}
