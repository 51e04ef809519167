//! The virtio-vsock device (virtio 1.2, section 5.10) as the transport sees it, and the
//! worker that serves its queues.
//!
//! [`Vsock`] owns the register side (type, features, the guest CID in the configuration
//! space) and, while the device is not running, the worker; activation moves the worker
//! to a [`WorkerThread`], reset takes it back and drops every connection. The
//! [`VsockWorker`] moves packets between the queues and the [`Muxer`].
//!
//! Snapshots: connections cannot outlive the process (their host-side Unix sockets
//! belong to it), so a snapshot keeps only the rings; the worker holds no buffer between
//! events (every RX and TX chain it takes is answered at once, and it takes an event
//! buffer only to fill it), so the rings are whole as they are. A device restored while
//! the driver was running puts a `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event in the event
//! queue (virtio 1.2, 5.10.6.5): the driver drops its connections and reads the guest CID
//! again.

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT, Writer};
use vm_memory::GuestMemory;

use virtio_devices::device::{
    ActivateContext, ActivateError, DeviceWorker, Interrupt, VirtioDevice, WorkerError,
    device_type, features, notify_if_needed, pop_chain,
};
use virtio_devices::worker::WorkerThread;

use crate::metrics::VsockMetrics;
use crate::muxer::Muxer;
use crate::packet;
use crate::unix::{HostListener, UnixError};

/// Size of each queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Queue the device writes packets for the guest into.
pub const RX_QUEUE: usize = 0;
/// Queue the guest sends packets on.
pub const TX_QUEUE: usize = 1;
/// Event queue: the device tells the driver of a transport reset after a restore.
pub const EVENT_QUEUE: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, the `id` of a `virtio_vsock_event`.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Size of a `virtio_vsock_event` (`le32 id`).
pub const EVENT_SIZE: u32 = 4;
/// `VIRTIO_VSOCK_F_STREAM`: stream sockets (bit 0).
pub const F_STREAM: u64 = 1 << 0;

/// The features the device offers: stream sockets and the transport's
/// [`features::COMMON`].
pub const OFFERED_FEATURES: u64 = features::COMMON | F_STREAM;

/// The configuration space: `guest_cid` (le64).
pub fn config_space(cid: u64) -> [u8; 8] {
    cid.to_le_bytes()
}

/// Refuse a reserved guest CID (0, 1, 2) or `VMADDR_CID_ANY`.
pub fn check_cid(cid: u32) -> Result<u64, VsockError> {
    if cid < 3 || cid == u32::MAX {
        return Err(VsockError::ReservedCid(cid));
    }
    Ok(u64::from(cid))
}

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved (0, 1, 2) or `u32::MAX` (`VMADDR_CID_ANY`).
    #[error("guest cid {0} is reserved")]
    ReservedCid(u32),
    /// The host socket could not be bound.
    #[error("vsock host socket: {0}")]
    Socket(#[from] UnixError),
    /// The device's epoll set could not be created.
    #[error("vsock epoll: {0}")]
    Epoll(#[source] std::io::Error),
}

/// The device's own state in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    /// The driver was running the device: the restored device sends it a transport
    /// reset event, since its connections are gone.
    pub transport_reset: bool,
}

/// A virtio-vsock device whose host side is a Unix socket (Firecracker's scheme).
///
/// Host processes connect to the socket and write `CONNECT <port>\n` to reach a guest
/// port, and read `OK <local port>\n` back once the guest accepts. A guest connection to
/// host CID 2, port P, reaches the Unix socket `<socket>_P`.
pub struct Vsock {
    name: String,
    cid: u64,
    socket: std::path::PathBuf,
    idle: Option<VsockWorker>,
    running: Option<WorkerThread<VsockWorker>>,
    /// Restored from a snapshot of a running device: the next activation (the
    /// transport's, during the restore) sends the driver a transport reset.
    reset_on_activate: bool,
    metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// A device for `cfg`; binds the host socket now, so host connections queue until
    /// the guest driver starts the device. `name` names its worker thread.
    pub fn new(cfg: &api::VsockConfig, name: &str) -> Result<Self, VsockError> {
        let cid = check_cid(cfg.cid)?;
        let mut worker = VsockWorker::bind(cid, &cfg.socket)?;
        let metrics = worker.muxer().metrics().clone();
        Ok(Self {
            name: name.to_string(),
            cid,
            socket: cfg.socket.clone(),
            idle: Some(worker),
            running: None,
            reset_on_activate: false,
            metrics,
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// A worker on the device's socket again, counting into the same metrics.
    fn rebind(&self) -> Result<VsockWorker, VsockError> {
        let mut worker = VsockWorker::bind(self.cid, &self.socket)?;
        worker.muxer().set_metrics(self.metrics.clone());
        Ok(worker)
    }

    fn start(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        for q in [RX_QUEUE, TX_QUEUE] {
            if !ctx.queues.get(q).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(q));
            }
        }
        let mut worker = match self.idle.take() {
            Some(w) => w,
            None => self
                .rebind()
                .map_err(|e| ActivateError::Backend(e.to_string()))?,
        };
        if std::mem::take(&mut self.reset_on_activate) {
            worker.queue_transport_reset();
        }
        let thread = WorkerThread::spawn(&self.name, worker, ctx).map_err(ActivateError::Worker)?;
        self.running = Some(thread);
        Ok(())
    }

    /// The guest's context id.
    pub fn cid(&self) -> u64 {
        self.cid
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio_devices::device::read_config_bytes(&config_space(self.cid), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "vsock: configuration write at {offset} ({} bytes) ignored",
            data.len()
        );
        self.metrics.cfg_fails.inc();
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.start(ctx)
            .inspect_err(|_| self.metrics.activate_fails.inc())
    }

    fn pause(&mut self) {
        if let Some(w) = &self.running {
            w.pause();
        }
    }

    fn resume(&mut self) {
        if let Some(w) = &self.running {
            w.resume();
        }
    }

    fn snapshot_queues(
        &mut self,
    ) -> Result<Option<Vec<virtio_devices::device::QueueSnapshot>>, String> {
        // Nothing to finish: the worker answers every chain it takes before it parks.
        self.running.as_ref().map(|w| w.snapshot()).transpose()
    }

    fn snapshot_state(&mut self) -> Result<Option<serde_json::Value>, String> {
        let state = VsockState {
            transport_reset: self.running.is_some(),
        };
        serde_json::to_value(state)
            .map(Some)
            .map_err(|e| format!("{}: {e}", self.name()))
    }

    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        let Some(state) = state else {
            return Ok(());
        };
        let state: VsockState = serde_json::from_value(state.clone())
            .map_err(|e| format!("{}: device state refused: {e}", self.name()))?;
        self.reset_on_activate = state.transport_reset;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.reset_on_activate = false;
        if let Some(thread) = self.running.take() {
            match thread.stop() {
                Some((mut worker, _queues)) => {
                    worker.reset();
                    self.idle = Some(worker);
                }
                None => {
                    // The thread died with the worker: bind the socket again.
                    match self.rebind() {
                        Ok(w) => self.idle = Some(w),
                        Err(e) => {
                            log::error!("{}: cannot rebuild after reset: {e}", self.name);
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    fn name(&self) -> &str {
        "virtio-vsock"
    }
}

/// Serves the vsock queues: TX packets go to the [`Muxer`], what the muxer has for the
/// guest goes into RX buffers.
pub struct VsockWorker {
    muxer: Muxer,
    tx_stalled: bool,
    /// A transport reset event waits for an event queue buffer.
    transport_reset: bool,
}

impl VsockWorker {
    /// A worker for guest `cid` with its host socket bound at `socket`.
    pub fn bind(cid: u64, socket: &std::path::Path) -> Result<Self, VsockError> {
        let listener = HostListener::bind(socket)?;
        let muxer = Muxer::new(cid, listener).map_err(VsockError::Epoll)?;
        Ok(Self {
            muxer,
            tx_stalled: false,
            transport_reset: false,
        })
    }

    /// Tell the driver, at the next event, that the transport was reset (the device was
    /// restored from a snapshot): the event goes into the first event queue buffer the
    /// driver offers.
    pub fn queue_transport_reset(&mut self) {
        self.transport_reset = true;
    }

    /// Whether a transport reset event still waits for an event queue buffer.
    pub fn transport_reset_pending(&self) -> bool {
        self.transport_reset
    }

    /// The host side.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Back to the state before activation: every connection dropped.
    pub fn reset(&mut self) {
        self.muxer.reset();
        self.tx_stalled = false;
        self.transport_reset = false;
    }

    /// Put a pending transport reset event in the event queue, if the driver offers a
    /// buffer; otherwise it waits for the driver's next event queue kick. A buffer too
    /// small or not writable is given back empty and the next one is tried.
    fn send_events<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        if !self.transport_reset {
            return Ok(());
        }
        let Some(evq) = queues.get_mut(EVENT_QUEUE) else {
            self.transport_reset = false;
            return Ok(());
        };
        if !evq.ready() {
            log::debug!("vsock: no event queue, the transport reset is not sent");
            self.transport_reset = false;
            return Ok(());
        }
        let ring = |e: virtio_queue::Error| WorkerError::new(format!("event queue: {e}"));
        let mut used = 0;
        let mut rechecked = false;
        while self.transport_reset {
            let Some(chain) = pop_chain(evq, mem)? else {
                // With EVENT_IDX, ask for a kick when the driver adds buffers; buffers
                // added meanwhile came without one, so look again (once).
                if !rechecked && evq.enable_notification(mem).map_err(ring)? {
                    rechecked = true;
                    continue;
                }
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            let len = match write_event(mem, chain, EVENT_TRANSPORT_RESET) {
                Ok(()) => {
                    self.transport_reset = false;
                    EVENT_SIZE
                }
                Err(e) => {
                    log::debug!("vsock: unusable event buffer: {e}");
                    0
                }
            };
            evq.add_used(mem, head, len).map_err(ring)?;
            used += 1;
        }
        if used > 0 {
            notify_if_needed(evq, EVENT_QUEUE, mem, interrupt)?;
        }
        Ok(())
    }

    /// Take the guest's TX packets, unless replies already wait for RX buffers.
    fn process_tx<M: GuestMemory>(
        &mut self,
        tx: &mut Queue,
        mem: &M,
    ) -> Result<usize, WorkerError> {
        let ring = |e: virtio_queue::Error| WorkerError::new(format!("tx queue: {e}"));
        let mut used = 0;
        loop {
            tx.disable_notification(mem).map_err(ring)?;
            while !self.muxer.rx_backlog_full() {
                let Some(chain) = pop_chain(tx, mem)? else {
                    break;
                };
                let head = chain.head_index();
                match packet::read_tx(mem, chain) {
                    Ok((hdr, payload)) => {
                        let m = self.muxer.metrics();
                        m.tx_packets_count.inc();
                        if let Ok(data) = &payload {
                            m.tx_bytes_count.add(data.len() as u64);
                        }
                        self.muxer.handle_guest_packet(&hdr, payload)
                    }
                    Err(e) => log::debug!("vsock: dropped tx chain: {e}"),
                }
                tx.add_used(mem, head, 0).map_err(ring)?;
                used += 1;
            }
            self.tx_stalled = self.muxer.rx_backlog_full();
            if !tx.enable_notification(mem).map_err(ring)? || self.tx_stalled {
                break;
            }
        }
        Ok(used)
    }

    /// Move everything that can move: TX packets in, RX packets out, until neither side
    /// makes progress; then signal the driver.
    ///
    /// A queue that is not ready is left alone, which is not an error: behind vhost-user
    /// the frontend starts the rings one at a time and the worker runs from the first
    /// one started, so the RX queue can be served (and host connections accepted) while
    /// TX is still being set up, or the other way round. Packets for the guest wait in
    /// the muxer; the ring's start is an event of its own, which serves them.
    fn service<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let [rx, tx, ..] = queues else {
            return Err(WorkerError::new("vsock needs its rx and tx queues"));
        };
        let (mut rx_used, mut tx_used) = (0, 0);
        loop {
            let t = if tx.ready() {
                self.process_tx(tx, mem)?
            } else {
                0
            };
            let r = if rx.ready() {
                self.muxer.fill_rx(rx, mem)?
            } else {
                0
            };
            tx_used += t;
            rx_used += r;
            // Filling RX may have made room for the TX packets left waiting.
            if !(self.tx_stalled && !self.muxer.rx_backlog_full() && r > 0) {
                break;
            }
        }
        if tx_used > 0 {
            notify_if_needed(tx, TX_QUEUE, mem, interrupt)?;
        }
        if rx_used > 0 {
            notify_if_needed(rx, RX_QUEUE, mem, interrupt)?;
        }
        Ok(())
    }
}

impl DeviceWorker for VsockWorker {
    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let m = self.muxer.metrics().clone();
        let fails = match index {
            RX_QUEUE => {
                m.rx_queue_event_count.inc();
                &m.rx_queue_event_fails
            }
            TX_QUEUE => {
                m.tx_queue_event_count.inc();
                &m.tx_queue_event_fails
            }
            _ => &m.ev_queue_event_fails,
        };
        self.send_events(queues, mem, interrupt)
            .and_then(|()| {
                if index == EVENT_QUEUE {
                    Ok(())
                } else {
                    self.service(queues, mem, interrupt)
                }
            })
            .inspect_err(|_| fails.inc())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        _index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let m = self.muxer.metrics().clone();
        self.send_events(queues, mem, interrupt)
            .and_then(|()| {
                self.muxer.handle_host_events();
                self.service(queues, mem, interrupt)
            })
            .inspect_err(|_| m.muxer_event_fails.inc())
    }
}

/// Write a `virtio_vsock_event` with `id` into an event queue chain, which must offer
/// [`EVENT_SIZE`] device-writable bytes.
fn write_event<M: GuestMemory>(
    mem: &M,
    chain: virtio_queue::DescriptorChain<&M>,
    id: u32,
) -> Result<(), String> {
    let mut writer = Writer::new(mem, chain).map_err(|e| e.to_string())?;
    if writer.available_bytes() < EVENT_SIZE as usize {
        return Err(format!(
            "{} writable bytes, the event needs {EVENT_SIZE}",
            writer.available_bytes()
        ));
    }
    std::io::Write::write_all(&mut writer, &id.to_le_bytes()).map_err(|e| e.to_string())
}
