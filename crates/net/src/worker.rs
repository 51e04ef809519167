//! Serving virtio-net's queues: [`NetWorker`] moves frames between guest chains and a
//! [`NetBackend`].
//!
//! - **tx** (queue 1): each chain is a virtio-net header and a frame in device-readable
//!   buffers. It is gathered into one buffer and written to the backend in one call (the
//!   header is kept: the TAP takes it). Malformed chains (a device-writable descriptor, a
//!   buffer outside guest memory, shorter than the header, longer than
//!   [`MAX_BUFFER_LEN`]) are dropped, counted and returned. If the backend says
//!   `WouldBlock`, or the rate limiter refuses, the frame is kept and sent first when the
//!   backend is writable or the limiter's timer fires.
//! - **rx** (queue 0): when the backend is readable, frames are read one at a time and
//!   written into device-writable chains. With `VIRTIO_NET_F_MRG_RXBUF` a frame may fill
//!   several chains (`num_buffers` in its header says how many); without it each chain
//!   must hold a whole frame (a frame too big for the chain is dropped, the chain kept).
//!   A frame read but not yet placed is kept, so nothing is lost or reordered. With no
//!   room for it, the worker stops polling the backend (the kernel keeps the data) until
//!   the driver kicks the rx queue.
//!
//! - **MMDS**: on a NIC that allows metadata service requests
//!   ([`NetWorker::set_mmds`]), each admitted tx frame is offered to the
//!   [`mmds::MmdsStack`] first; the service's frames (ARP and TCP to its address) stop
//!   there. Its answers go to the guest ahead of the backend's frames, through the same
//!   rx path (and rx limiter); its retransmission timer is one more extra fd.
//!
//! The backend is polled through an inner epoll (the worker thread's first extra fd), so
//! its interest can follow the device's state: readable only while rx can make
//! progress, writable only while a tx frame waits. Chains popped for rx but not used
//! yet are kept in the worker between calls; they are lost only by a reset, which
//! discards the queues anyway.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use std::time::Instant;

use mmds::MmdsStack;
use rate_limiter::{RateLimiter, Timer};
use virtio_bindings::virtio_net;
use virtio_devices::device::{DeviceWorker, Interrupt, WorkerError, notify_if_needed, pop_chain};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::backend::NetBackend;
use crate::device::{NetMetrics, RX_QUEUE, TX_QUEUE};
use crate::{MAX_BUFFER_LEN, NET_HDR_LEN};

/// Most frames received per wakeup, so a flood on rx cannot starve tx.
pub const RX_BUDGET: usize = 256;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What each of the worker's extra fds is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    Backend,
    RxTimer,
    TxTimer,
    MmdsTimer,
}

/// The metadata service on this NIC: its stack and the timer of its retransmissions.
struct MmdsPort {
    stack: MmdsStack,
    timer: Timer,
    /// When the timer is set to fire.
    armed: Option<Instant>,
}

/// A receive chain popped from the avail ring and checked: its writable buffers, all
/// inside guest memory.
struct RxChain {
    head: u16,
    regions: Vec<(GuestAddress, u32)>,
    capacity: u64,
}

/// A transmit frame gathered into the tx buffer but not sent yet.
struct TxFrame {
    head: u16,
    len: usize,
    /// The rate limiter already let it through.
    admitted: bool,
}

/// Whether the held rx chains can take the pending frame.
enum Room {
    Fits,
    /// The frame can never fit the driver's buffers: drop it.
    Never,
    /// Wait for the driver to add buffers.
    Wait,
}

/// Serves one NIC's rx and tx queues over a [`NetBackend`].
pub struct NetWorker<B: NetBackend> {
    backend: B,
    epoll: Epoll,
    interest: EventSet,
    mrg_rxbuf: bool,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    extras: Vec<(Extra, RawFd)>,
    rx_buf: Vec<u8>,
    rx_pending: Option<usize>,
    rx_chains: VecDeque<RxChain>,
    rx_capacity: u64,
    /// rx cannot progress until a kick or a timer: the backend is not polled for input.
    rx_stalled: bool,
    tx_buf: Vec<u8>,
    tx_pending: Option<TxFrame>,
    tx_wait_writable: bool,
    /// The NIC's MAC, if it has one of its own: frames sent from another are counted.
    mac: Option<[u8; 6]>,
    mmds: Option<MmdsPort>,
    metrics: Arc<NetMetrics>,
}

fn ring_err(index: usize) -> impl Fn(virtio_queue::Error) -> WorkerError {
    move |e| WorkerError::new(format!("virtio-net queue {index}: {e}"))
}

impl<B: NetBackend> NetWorker<B> {
    /// A worker for a driver that accepted `acked_features`. Sets no offloads (the
    /// caller does, with [`NetBackend::set_offload`]).
    pub fn new(
        backend: B,
        rx_limiter: RateLimiter,
        tx_limiter: RateLimiter,
        acked_features: u64,
        metrics: Arc<NetMetrics>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            backend.raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        Ok(Self::from_parts(
            backend,
            epoll,
            rx_limiter,
            tx_limiter,
            acked_features,
            metrics,
        ))
    }

    /// A worker from an inner `epoll` in which the backend's fd is already registered
    /// for input.
    pub(crate) fn from_parts(
        backend: B,
        epoll: Epoll,
        rx_limiter: RateLimiter,
        tx_limiter: RateLimiter,
        acked_features: u64,
        metrics: Arc<NetMetrics>,
    ) -> Self {
        let mut extras = vec![(Extra::Backend, epoll.as_raw_fd())];
        if let Some(fd) = rx_limiter.timer_fd() {
            extras.push((Extra::RxTimer, fd));
        }
        if let Some(fd) = tx_limiter.timer_fd() {
            extras.push((Extra::TxTimer, fd));
        }
        Self {
            backend,
            epoll,
            interest: EventSet::IN,
            mrg_rxbuf: acked_features & (1 << virtio_net::VIRTIO_NET_F_MRG_RXBUF) != 0,
            rx_limiter,
            tx_limiter,
            extras,
            rx_buf: vec![0; MAX_BUFFER_LEN],
            rx_pending: None,
            rx_chains: VecDeque::new(),
            rx_capacity: 0,
            rx_stalled: false,
            tx_buf: vec![0; MAX_BUFFER_LEN],
            tx_pending: None,
            tx_wait_writable: false,
            mac: None,
            mmds: None,
            metrics,
        }
    }

    /// Answer the metadata service's frames with `stack` (before the worker starts:
    /// its timer is one of [`DeviceWorker::extra_fds`]).
    pub fn set_mmds(&mut self, stack: MmdsStack) -> io::Result<()> {
        let timer = Timer::new()?;
        self.extras.push((Extra::MmdsTimer, timer.as_raw_fd()));
        self.mmds = Some(MmdsPort {
            stack,
            timer,
            armed: None,
        });
        Ok(())
    }

    /// The metadata service's stack on this NIC, if it has one.
    pub fn mmds(&self) -> Option<&MmdsStack> {
        self.mmds.as_ref().map(|m| &m.stack)
    }

    /// Whether the metadata service has frames for the guest.
    fn mmds_has_output(&self) -> bool {
        self.mmds.as_ref().is_some_and(|m| m.stack.has_output())
    }

    /// Set the service's timer to its earliest retransmission, if that changed.
    fn rearm_mmds_timer(&mut self) -> Result<(), WorkerError> {
        let rx_can_take = !self.rx_stalled;
        let Some(m) = &mut self.mmds else {
            return Ok(());
        };
        // Frames left after an rx budget ran out: come back at once (nothing else would
        // wake the worker for them; with no rx buffers the driver's kick will).
        let due = if rx_can_take && m.stack.has_output() {
            Some(Instant::now())
        } else {
            m.stack.next_deadline()
        };
        if due == m.armed || due.is_none() {
            return Ok(());
        }
        if let Some(due) = due {
            let wait = due.saturating_duration_since(Instant::now());
            m.timer
                .arm(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX))
                .map_err(|e| WorkerError::new(format!("virtio-net MMDS timer: {e}")))?;
        }
        m.armed = due;
        Ok(())
    }

    /// Count the frames the guest sends from a source address other than `mac`.
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.mac = Some(mac);
    }

    /// Take back the backend and the rx and tx limiters (after the thread stopped).
    /// Held chains and frames are dropped: a reset discards the queues.
    pub fn into_parts(self) -> (B, RateLimiter, RateLimiter) {
        (self.backend, self.rx_limiter, self.tx_limiter)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The counters this worker updates.
    pub fn metrics(&self) -> &NetMetrics {
        &self.metrics
    }

    /// The receive and transmit limits in force.
    pub fn rate_limits(&self) -> (api::RateLimit, api::RateLimit) {
        (self.rx_limiter.limit(), self.tx_limiter.limit())
    }

    /// Replace the receive and/or transmit limits (`None` leaves one as it is): both
    /// or neither ([`RateLimiter::update`]). A frame held back by an old limit is looked
    /// at again at once: the limiter's timer fires.
    pub fn set_rate_limits(
        &mut self,
        rx: Option<&api::RateLimit>,
        tx: Option<&api::RateLimit>,
    ) -> io::Result<()> {
        update_limiters(&mut self.rx_limiter, rx, &mut self.tx_limiter, tx)
    }

    /// Whether a received frame is waiting for guest buffers (or the rate limiter).
    pub fn has_pending_rx(&self) -> bool {
        self.rx_pending.is_some()
    }

    /// Whether a transmit frame is waiting for the backend (or the rate limiter).
    pub fn has_pending_tx(&self) -> bool {
        self.tx_pending.is_some()
    }

    /// Poll the backend for exactly what can make progress now.
    fn update_interest(&mut self) -> Result<(), WorkerError> {
        let mut want = EventSet::empty();
        if !self.rx_stalled {
            want |= EventSet::IN;
        }
        if self.tx_wait_writable {
            want |= EventSet::OUT;
        }
        if want != self.interest {
            self.epoll
                .ctl(
                    ControlOperation::Modify,
                    self.backend.raw_fd(),
                    EpollEvent::new(want, 0),
                )
                .map_err(|e| WorkerError::new(format!("virtio-net epoll: {e}")))?;
            self.interest = want;
        }
        Ok(())
    }

    fn process_rx<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        self.rx_stalled = true;
        let Some(queue) = queues.get_mut(RX_QUEUE) else {
            return Ok(());
        };
        if !queue.ready() {
            return Ok(());
        }
        self.rx_stalled = false;
        queue
            .disable_notification(mem)
            .map_err(ring_err(RX_QUEUE))?;
        let mut used = false;
        let result = self.rx_loop(queue, mem, &mut used);
        if used {
            notify_if_needed(queue, RX_QUEUE, mem, interrupt)?;
        }
        result
    }

    fn rx_loop<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        used: &mut bool,
    ) -> Result<(), WorkerError> {
        for _ in 0..RX_BUDGET {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self
                    .mmds_frame()
                    .map_or_else(|| self.read_frame(), |n| Ok(Some(n)))?
                {
                    None => return Ok(()),
                    Some(n) if n < NET_HDR_LEN => {
                        self.metrics.rx_fails.inc();
                        continue;
                    }
                    Some(n) => {
                        self.rx_pending = Some(n);
                        n
                    }
                },
            };
            match self.gather_rx_chains(queue, mem, len, used)? {
                Room::Wait => {
                    self.metrics.no_rx_avail_buffer.inc();
                    self.rx_stalled = true;
                    return Ok(());
                }
                Room::Never => {
                    log::debug!("virtio-net: {len}-byte frame does not fit the rx buffers");
                    self.metrics.rx_fails.inc();
                    self.rx_pending = None;
                    continue;
                }
                Room::Fits => {}
            }
            if !self.rx_limiter.consume(1, (len - NET_HDR_LEN) as u64) {
                self.metrics.rx_rate_limiter_throttled.inc();
                self.rx_stalled = true;
                return Ok(());
            }
            self.deliver(queue, mem, len)?;
            *used = true;
            self.rx_pending = None;
        }
        Ok(())
    }

    /// The metadata service's next frame for the guest, with a zeroed virtio-net header,
    /// into the rx buffer; its length with the header.
    fn mmds_frame(&mut self) -> Option<usize> {
        let m = self.mmds.as_mut()?;
        let n = m
            .stack
            .write_frame(&mut self.rx_buf[NET_HDR_LEN..], Instant::now())?;
        self.rx_buf[..NET_HDR_LEN].fill(0);
        Some(NET_HDR_LEN + n)
    }

    /// Read the next frame from the backend into the rx buffer, `None` if none.
    fn read_frame(&mut self) -> Result<Option<usize>, WorkerError> {
        loop {
            match self
                .backend
                .read_frame(&mut [IoSliceMut::new(&mut self.rx_buf)])
            {
                Ok(n) => {
                    self.metrics.rx_count.inc();
                    return Ok(Some(n.min(self.rx_buf.len())));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.metrics.tap_read_fails.inc();
                    return Err(WorkerError::new(format!("virtio-net backend read: {e}")));
                }
            }
        }
    }

    fn room_for(&self, len: usize, queue_size: u16) -> Room {
        if self.mrg_rxbuf {
            if self.rx_capacity >= len as u64 {
                Room::Fits
            } else if self.rx_chains.len() >= usize::from(queue_size) {
                Room::Never
            } else {
                Room::Wait
            }
        } else {
            match self.rx_chains.front() {
                Some(c) if c.capacity >= len as u64 => Room::Fits,
                Some(_) => Room::Never,
                None => Room::Wait,
            }
        }
    }

    /// Pop rx chains until the held ones can take a `len`-byte frame, answering
    /// malformed ones empty. When the ring runs dry, ask the driver for a kick.
    fn gather_rx_chains<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        len: usize,
        used: &mut bool,
    ) -> Result<Room, WorkerError> {
        loop {
            while let Room::Wait = self.room_for(len, queue.size()) {
                let Some(chain) = pop_chain(queue, mem)? else {
                    break;
                };
                match parse_rx_chain(mem, chain) {
                    Ok(c) => {
                        self.rx_capacity += c.capacity;
                        self.rx_chains.push_back(c);
                    }
                    Err((head, why)) => {
                        log::debug!("virtio-net: rx chain {head} answered empty: {why}");
                        self.metrics.rx_fails.inc();
                        queue.add_used(mem, head, 0).map_err(ring_err(RX_QUEUE))?;
                        *used = true;
                    }
                }
            }
            match self.room_for(len, queue.size()) {
                Room::Wait => {}
                room => return Ok(room),
            }
            if !queue.enable_notification(mem).map_err(ring_err(RX_QUEUE))? {
                return Ok(Room::Wait);
            }
        }
    }

    /// Write the pending `len`-byte frame into the front held chains and use them.
    fn deliver<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        len: usize,
    ) -> Result<(), WorkerError> {
        let mut nbufs = 1usize;
        if self.mrg_rxbuf {
            let mut cap = 0u64;
            nbufs = 0;
            for c in &self.rx_chains {
                cap += c.capacity;
                nbufs += 1;
                if cap >= len as u64 {
                    break;
                }
            }
        }
        let nb = u16::try_from(nbufs).unwrap_or(u16::MAX);
        let frame = self
            .rx_buf
            .get_mut(..len)
            .ok_or_else(|| WorkerError::new("virtio-net: rx frame longer than its buffer"))?;
        frame[NUM_BUFFERS_OFFSET..NET_HDR_LEN].copy_from_slice(&nb.to_le_bytes());
        let mut off = 0usize;
        for _ in 0..nbufs {
            let Some(chain) = self.rx_chains.pop_front() else {
                break;
            };
            self.rx_capacity -= chain.capacity;
            let mut written = 0usize;
            for &(addr, dlen) in &chain.regions {
                if off >= len {
                    break;
                }
                let n = (dlen as usize).min(len - off);
                mem.write_slice(&frame[off..off + n], addr)
                    .map_err(|e| WorkerError::new(format!("virtio-net rx buffer: {e}")))?;
                off += n;
                written += n;
            }
            queue
                .add_used(mem, chain.head, written as u32)
                .map_err(ring_err(RX_QUEUE))?;
        }
        self.metrics.rx_packets_count.inc();
        self.metrics.rx_bytes_count.add((len - NET_HDR_LEN) as u64);
        Ok(())
    }

    fn process_tx<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let Some(queue) = queues.get_mut(TX_QUEUE) else {
            return Ok(());
        };
        if !queue.ready() {
            return Ok(());
        }
        let mut used = false;
        let result = self.tx_loop(queue, mem, &mut used);
        if used {
            notify_if_needed(queue, TX_QUEUE, mem, interrupt)?;
        }
        result?;
        if self.mmds_has_output() {
            self.process_rx(queues, mem, interrupt)?;
        }
        Ok(())
    }

    fn tx_loop<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        used: &mut bool,
    ) -> Result<(), WorkerError> {
        if self.tx_pending.is_some() {
            let Some(head) = self.send_pending() else {
                self.metrics.tx_remaining_reqs_count.inc();
                return Ok(());
            };
            queue.add_used(mem, head, 0).map_err(ring_err(TX_QUEUE))?;
            *used = true;
        }
        loop {
            queue
                .disable_notification(mem)
                .map_err(ring_err(TX_QUEUE))?;
            while let Some(chain) = pop_chain(queue, mem)? {
                let head = chain.head_index();
                match gather_tx_chain(mem, chain, &mut self.tx_buf) {
                    Err(why) => {
                        log::debug!("virtio-net: tx chain {head} dropped: {why}");
                        self.metrics.tx_malformed_frames.inc();
                    }
                    Ok(len) => {
                        self.tx_pending = Some(TxFrame {
                            head,
                            len,
                            admitted: false,
                        });
                        if self.send_pending().is_none() {
                            // Kept for when the backend is writable or the timer fires.
                            self.metrics.tx_remaining_reqs_count.inc();
                            return Ok(());
                        }
                    }
                }
                queue.add_used(mem, head, 0).map_err(ring_err(TX_QUEUE))?;
                *used = true;
            }
            if !queue.enable_notification(mem).map_err(ring_err(TX_QUEUE))? {
                return Ok(());
            }
        }
    }

    /// Try to send the pending tx frame. Returns its head once it is done with (sent, or
    /// refused by the backend with a hard error and dropped); `None` if it must wait.
    fn send_pending(&mut self) -> Option<u16> {
        let frame = self.tx_pending.as_mut()?;
        let payload = (frame.len - NET_HDR_LEN) as u64;
        if !frame.admitted {
            if !self.tx_limiter.consume(1, payload) {
                self.metrics.tx_rate_limiter_throttled.inc();
                return None;
            }
            frame.admitted = true;
        }
        let data = self.tx_buf.get(..frame.len)?;
        if let Some(mac) = self.mac
            && data
                .get(NET_HDR_LEN + 6..NET_HDR_LEN + 12)
                .is_some_and(|src| src != mac)
        {
            self.metrics.tx_spoofed_mac_count.inc();
        }
        if let Some(m) = &mut self.mmds {
            let checksum_partial = data[0] & virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0;
            if m.stack
                .detour(&data[NET_HDR_LEN..], checksum_partial, Instant::now())
            {
                // The metadata service's: answered (or dropped) here, never sent.
                let head = frame.head;
                self.tx_pending = None;
                return Some(head);
            }
        }
        loop {
            let started = std::time::Instant::now();
            let written = self.backend.write_frame(&[IoSlice::new(data)]);
            self.metrics.tap_write_agg.record_since(started);
            match written {
                Ok(_) => {
                    self.metrics.tx_count.inc();
                    self.metrics.tx_packets_count.inc();
                    self.metrics.tx_bytes_count.add(payload);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx_wait_writable = true;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("virtio-net: backend refused a frame: {e}");
                    self.metrics.tap_write_fails.inc();
                    self.metrics.tx_fails.inc();
                    break;
                }
            }
        }
        self.tx_wait_writable = false;
        let head = frame.head;
        self.tx_pending = None;
        Some(head)
    }
}

/// Update the rx and tx limiters to the limits given (`None`: left as they are), both
/// or neither.
pub(crate) fn update_limiters(
    rx_limiter: &mut RateLimiter,
    rx: Option<&api::RateLimit>,
    tx_limiter: &mut RateLimiter,
    tx: Option<&api::RateLimit>,
) -> io::Result<()> {
    if let Some(l) = rx {
        rx_limiter.check_update(l)?;
    }
    if let Some(l) = tx {
        tx_limiter.check_update(l)?;
    }
    if let Some(l) = rx {
        rx_limiter.update(l)?;
    }
    if let Some(l) = tx {
        tx_limiter.update(l)?;
    }
    Ok(())
}

/// Check an rx chain: device-writable buffers inside guest memory, room for a header.
/// On error, the head to answer and why.
fn parse_rx_chain<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
) -> Result<RxChain, (u16, &'static str)> {
    let head = chain.head_index();
    let mut regions = Vec::new();
    let mut capacity = 0u64;
    for desc in chain {
        if !desc.is_write_only() {
            return Err((head, "device-readable descriptor in an rx chain"));
        }
        if desc.len() == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return Err((head, "buffer outside guest memory"));
        }
        capacity += u64::from(desc.len());
        regions.push((desc.addr(), desc.len()));
    }
    if capacity < NET_HDR_LEN as u64 {
        return Err((head, "no room for the virtio-net header"));
    }
    Ok(RxChain {
        head,
        regions,
        capacity,
    })
}

/// Gather a tx chain (header and frame) into `buf`; returns its length.
fn gather_tx_chain<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    buf: &mut [u8],
) -> Result<usize, &'static str> {
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err("device-writable descriptor in a tx chain");
        }
        let end = len
            .checked_add(desc.len() as usize)
            .filter(|&end| end <= buf.len())
            .ok_or("frame longer than 64 KiB")?;
        let dst = buf.get_mut(len..end).ok_or("frame longer than 64 KiB")?;
        mem.read_slice(dst, desc.addr())
            .map_err(|_| "buffer outside guest memory")?;
        len = end;
    }
    if len < NET_HDR_LEN {
        return Err("shorter than the virtio-net header");
    }
    Ok(len)
}

impl<B: NetBackend> DeviceWorker for NetWorker<B> {
    fn extra_fds(&self) -> Vec<RawFd> {
        self.extras.iter().map(|&(_, fd)| fd).collect()
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let result = match index {
            RX_QUEUE => {
                self.metrics.rx_queue_event_count.inc();
                self.process_rx(queues, mem, interrupt)
            }
            TX_QUEUE => {
                self.metrics.tx_queue_event_count.inc();
                if let Some(q) = queues.get(TX_QUEUE)
                    && q.ready()
                    && q.avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                        .is_ok_and(|a| a.0 == q.next_avail())
                {
                    self.metrics.no_tx_avail_buffer.inc();
                }
                self.process_tx(queues, mem, interrupt)
            }
            _ => Ok(()),
        };
        result
            .and_then(|()| self.update_interest())
            .and_then(|()| self.rearm_mmds_timer())
            .inspect_err(|_| self.metrics.event_fails.inc())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        self.serve_extra(index, queues, mem, interrupt)
            .inspect_err(|_| self.metrics.event_fails.inc())
    }
}

impl<B: NetBackend> NetWorker<B> {
    fn serve_extra<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        match self.extras.get(index).map(|&(kind, _)| kind) {
            Some(Extra::Backend) => {
                let mut events = [EpollEvent::default(); 2];
                let n = match self.epoll.wait(0, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                    Err(e) => return Err(WorkerError::new(format!("virtio-net epoll: {e}"))),
                };
                let mut ready = EventSet::empty();
                for ev in events.iter().take(n) {
                    ready |= ev.event_set();
                }
                if ready.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    return Err(WorkerError::new(
                        "virtio-net: the backend failed (was the TAP deleted?)",
                    ));
                }
                if ready.contains(EventSet::OUT) {
                    self.process_tx(queues, mem, interrupt)?;
                }
                if ready.contains(EventSet::IN) {
                    self.metrics.rx_tap_event_count.inc();
                    self.process_rx(queues, mem, interrupt)?;
                }
            }
            Some(Extra::RxTimer) => {
                self.metrics.rx_event_rate_limiter_count.inc();
                self.rx_limiter.on_timer();
                self.process_rx(queues, mem, interrupt)?;
            }
            Some(Extra::TxTimer) => {
                self.metrics.tx_rate_limiter_event_count.inc();
                self.tx_limiter.on_timer();
                self.process_tx(queues, mem, interrupt)?;
            }
            Some(Extra::MmdsTimer) => {
                if let Some(m) = &mut self.mmds {
                    m.timer.drain();
                    m.armed = None;
                    m.stack.on_timer(Instant::now());
                }
                self.process_rx(queues, mem, interrupt)?;
            }
            None => {}
        }
        self.update_interest()?;
        self.rearm_mmds_timer()
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
