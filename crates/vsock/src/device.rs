//! The virtio-vsock device (virtio 1.2, section 5.10) as the transport sees it, and the
//! worker that serves its queues.
//!
//! [`Vsock`] owns the register side (type, features, the guest CID in the configuration
//! space) and, while the device is not running, the worker; activation moves the worker
//! to a [`WorkerThread`], reset takes it back and drops every connection. The
//! [`VsockWorker`] moves packets between the queues and the [`Muxer`].

use std::os::fd::RawFd;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use virtio_devices::device::{
    ActivateContext, ActivateError, DeviceWorker, Interrupt, VirtioDevice, WorkerError,
    device_type, features, notify_if_needed, pop_chain,
};
use virtio_devices::worker::WorkerThread;

use crate::muxer::Muxer;
use crate::packet;
use crate::unix::{HostListener, UnixError};

/// Size of each queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Queue the device writes packets for the guest into.
pub const RX_QUEUE: usize = 0;
/// Queue the guest sends packets on.
pub const TX_QUEUE: usize = 1;
/// Event queue (transport resets after migration; unused here).
pub const EVENT_QUEUE: usize = 2;
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
}

impl Vsock {
    /// A device for `cfg`; binds the host socket now, so host connections queue until
    /// the guest driver starts the device. `name` names its worker thread.
    pub fn new(cfg: &api::VsockConfig, name: &str) -> Result<Self, VsockError> {
        let cid = check_cid(cfg.cid)?;
        let worker = VsockWorker::bind(cid, &cfg.socket)?;
        Ok(Self {
            name: name.to_string(),
            cid,
            socket: cfg.socket.clone(),
            idle: Some(worker),
            running: None,
        })
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

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        for q in [RX_QUEUE, TX_QUEUE] {
            if !ctx.queues.get(q).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(q));
            }
        }
        let worker = match self.idle.take() {
            Some(w) => w,
            None => VsockWorker::bind(self.cid, &self.socket)
                .map_err(|e| ActivateError::Backend(e.to_string()))?,
        };
        let thread = WorkerThread::spawn(&self.name, worker, ctx).map_err(ActivateError::Worker)?;
        self.running = Some(thread);
        Ok(())
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

    fn reset(&mut self) -> bool {
        if let Some(thread) = self.running.take() {
            match thread.stop() {
                Some((mut worker, _queues)) => {
                    worker.reset();
                    self.idle = Some(worker);
                }
                None => {
                    // The thread died with the worker: bind the socket again.
                    match VsockWorker::bind(self.cid, &self.socket) {
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
}

impl VsockWorker {
    /// A worker for guest `cid` with its host socket bound at `socket`.
    pub fn bind(cid: u64, socket: &std::path::Path) -> Result<Self, VsockError> {
        let listener = HostListener::bind(socket)?;
        let muxer = Muxer::new(cid, listener).map_err(VsockError::Epoll)?;
        Ok(Self {
            muxer,
            tx_stalled: false,
        })
    }

    /// The host side.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Back to the state before activation: every connection dropped.
    pub fn reset(&mut self) {
        self.muxer.reset();
        self.tx_stalled = false;
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
                    Ok((hdr, payload)) => self.muxer.handle_guest_packet(&hdr, payload),
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
            let t = self.process_tx(tx, mem)?;
            let r = self.muxer.fill_rx(rx, mem)?;
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
        if index == EVENT_QUEUE {
            return Ok(());
        }
        self.service(queues, mem, interrupt)
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        _index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        self.muxer.handle_host_events();
        self.service(queues, mem, interrupt)
    }
}
