//! [`VhostUserDevice`]: any [`Served`] device as a `vhost_user_backend::VhostUserBackend`.
//!
//! The vhost-user daemon owns the vrings (one `VringMutex` per queue) and runs one event
//! loop thread that waits on the queues' kick eventfds. The adapter turns that loop's
//! events into [`DeviceWorker`] calls:
//! - event `i < num_queues` (queue `i` kicked, or just enabled) → `process_queue(i)`;
//! - event `num_queues + 1 + j` (the worker's extra fd number `j` is readable) →
//!   `process_extra(j)` (event `num_queues` is reserved by the daemon for its own exit and
//!   vring-enable notifications).
//!
//! A worker is made when the first queue event arrives after the frontend set the device
//! up, and handed back to the device ([`Served::recycle`]) when the frontend stops a ring
//! (`GET_VRING_BASE`, which QEMU sends on a driver reset, a guest reboot and at exit) or
//! resets the device. Its extra fds are registered with the event loop while it serves.
//! The frontend starts the rings one at a time (a ring's start is itself a queue event),
//! so the worker can be called while some of its queues are not ready yet: it must
//! leave those alone, not fail, and serve them on their own start event.
//!
//! For each call every vring is locked, in index order, for the whole call: the worker
//! gets all the queues at once, and the frontend cannot change a ring under it. The
//! [`Interrupt`] handed to the worker writes the vring's call eventfd every time it is
//! asked: the worker itself decides whether the driver wants a notification
//! (`notify_if_needed`, which honours `VIRTIO_F_EVENT_IDX`; the daemon sets the queues'
//! event-idx mode from the acked features).
//!
//! A worker that fails ([`WorkerError`]) is dropped and the device stays quiet until the
//! frontend stops or resets it; the error is logged. A misbehaving frontend cannot make
//! the adapter panic: bad indices and missing memory are ignored with a log line.

use std::io;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringMutex, VringState, VringT};
use virtio_devices::device::{DeviceWorker, Interrupt, WorkerError};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::served::Served;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30 of the virtio feature word in vhost-user).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The frontend's guest memory as the daemon maps it. Without a dirty bitmap: the
/// frontend tracks its own guest's pages, and vhost-user-backend's bitmap types
/// (`BitmapReplace`) do not include vm-memory's `AtomicBitmap` that [`VmMemory`] has.
/// The device workers are generic over the memory type, so they serve both.
///
/// [`VmMemory`]: virtio_devices::device::VmMemory
pub type VhostMemory = vm_memory::GuestMemoryMmap<()>;

/// Guest memory as the vhost-user daemon shares it with its backends.
pub type AtomicMemory = GuestMemoryAtomic<VhostMemory>;

/// One vring of the daemon.
pub type Vring = VringMutex<AtomicMemory>;

/// The daemon's event loop, as the adapter sees it.
pub type EventLoop<S> = VringEpollHandler<Arc<VhostUserDevice<S>>>;

/// Why a device cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The device reported a queue size virtio does not allow.
    #[error("{name}: maximum queue size {size} is not a power of two between 1 and 32768")]
    BadQueueSize {
        /// The device.
        name: String,
        /// What it reported.
        size: u16,
    },
    /// The device reported no queue, or more than the event ids can name.
    #[error("{name}: {count} queues (1 to 64 are supported)")]
    BadQueueCount {
        /// The device.
        name: String,
        /// What it reported.
        count: usize,
    },
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    #[error("{0}: the device does not offer VIRTIO_F_VERSION_1")]
    NotVersion1(String),
}

/// What the adapter knows of the running device.
struct State<W> {
    /// The worker, while the device runs.
    worker: Option<W>,
    /// The worker's extra fds, registered with the event loop under
    /// `num_queues + 1 + index`.
    extra_fds: Vec<RawFd>,
    /// The worker failed: ignore events until the frontend stops or resets the device.
    failed: bool,
    /// Every memory table the running worker has been handed. A worker may have I/O in
    /// flight on host addresses of an older table (io_uring): after the frontend sends
    /// a new one, the old mapping must stay until the worker has been stopped, which
    /// waits for that I/O.
    pinned: Vec<Arc<VhostMemory>>,
}

/// A [`Served`] device behind a vhost-user socket. Hand an `Arc` of it to
/// `vhost_user_backend::VhostUserDaemon::new`, then [`VhostUserDevice::attach`] the
/// daemon's event loop (or use [`crate::serve`], which does both).
pub struct VhostUserDevice<S: Served> {
    served: S,
    num_queues: usize,
    max_queue_size: u16,
    state: Mutex<State<S::Worker>>,
    mem: Mutex<Option<AtomicMemory>>,
    event_loop: OnceLock<Weak<EventLoop<S>>>,
    acked_features: AtomicU64,
    event_idx: AtomicBool,
}

impl<S: Served> VhostUserDevice<S> {
    /// Wrap `served`, after checking what it reports about itself.
    pub fn new(served: S) -> Result<Self, AdapterError> {
        let name = served.name().to_string();
        let num_queues = served.num_queues();
        if !(1..=64).contains(&num_queues) {
            return Err(AdapterError::BadQueueCount {
                name,
                count: num_queues,
            });
        }
        let max_queue_size = served.max_queue_size();
        if !max_queue_size.is_power_of_two() {
            return Err(AdapterError::BadQueueSize {
                name,
                size: max_queue_size,
            });
        }
        if served.features() & virtio_devices::device::features::VERSION_1 == 0 {
            return Err(AdapterError::NotVersion1(name));
        }
        Ok(Self {
            served,
            num_queues,
            max_queue_size,
            state: Mutex::new(State {
                worker: None,
                extra_fds: Vec::new(),
                failed: false,
                pinned: Vec::new(),
            }),
            mem: Mutex::new(None),
            event_loop: OnceLock::new(),
            acked_features: AtomicU64::new(0),
            event_idx: AtomicBool::new(false),
        })
    }

    /// The device being served.
    pub fn served(&self) -> &S {
        &self.served
    }

    /// Give the adapter the daemon's event loop, where it registers the worker's extra
    /// fds. Without it a worker's extra fds are never watched (queues still work).
    pub fn attach(&self, event_loop: &Arc<EventLoop<S>>) {
        let _ = self.event_loop.set(Arc::downgrade(event_loop));
    }

    /// Whether a worker is currently serving the queues.
    pub fn is_running(&self) -> bool {
        self.lock_state().worker.is_some()
    }

    /// Whether the driver negotiated `VIRTIO_F_EVENT_IDX`.
    pub fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Relaxed)
    }

    /// Stop serving: drop the worker (closing what it holds) and unregister its fds.
    pub fn stop(&self) {
        let mut st = self.lock_state();
        self.deactivate(&mut st);
        st.failed = false;
    }

    fn lock_state(&self) -> MutexGuard<'_, State<S::Worker>> {
        // A poisoned lock means a worker panicked mid-request; the state itself (an
        // Option and a list of fds) is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event_loop(&self) -> Option<Arc<EventLoop<S>>> {
        self.event_loop.get().and_then(Weak::upgrade)
    }

    fn extra_event_id(&self, index: usize) -> u64 {
        (self.num_queues + 1 + index) as u64
    }

    /// Make the worker and watch its fds.
    fn activate(&self, st: &mut State<S::Worker>) -> io::Result<()> {
        let worker = self
            .served
            .new_worker(self.acked_features.load(Ordering::Relaxed))?;
        let fds = worker.extra_fds();
        if !fds.is_empty() {
            match self.event_loop() {
                Some(ev) => {
                    for (i, fd) in fds.iter().enumerate() {
                        if let Err(e) =
                            ev.register_listener(*fd, EventSet::IN, self.extra_event_id(i))
                        {
                            for (j, done) in fds.iter().enumerate().take(i) {
                                let _ = ev.unregister_listener(
                                    *done,
                                    EventSet::IN,
                                    self.extra_event_id(j),
                                );
                            }
                            return Err(e);
                        }
                    }
                }
                None => log::warn!(
                    "{}: no event loop attached; the worker's own fds are not watched",
                    self.served.name()
                ),
            }
        }
        st.extra_fds = fds;
        st.worker = Some(worker);
        log::debug!("{}: device started", self.served.name());
        Ok(())
    }

    fn deactivate(&self, st: &mut State<S::Worker>) {
        if let Some(ev) = self.event_loop() {
            for (i, fd) in st.extra_fds.iter().enumerate() {
                let _ = ev.unregister_listener(*fd, EventSet::IN, self.extra_event_id(i));
            }
        }
        st.extra_fds.clear();
        if let Some(worker) = st.worker.take() {
            self.served.recycle(worker);
            log::debug!("{}: device stopped", self.served.name());
        }
        // The worker's I/O is over: older memory tables may be unmapped now.
        st.pinned.clear();
    }

    /// Run the worker for one event, with every vring locked.
    fn dispatch(&self, event: Event, vrings: &[Vring]) -> io::Result<()> {
        let mut st = self.lock_state();
        if st.failed {
            return Ok(());
        }
        let Some(atomic) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            log::debug!(
                "{}: event before the memory table, ignored",
                self.served.name()
            );
            return Ok(());
        };
        if st.worker.is_none() {
            if matches!(event, Event::Extra(_)) {
                return Ok(());
            }
            if let Err(e) = self.activate(&mut st) {
                log::error!("{}: cannot start the device: {e}", self.served.name());
                st.failed = true;
                return Ok(());
            }
        }
        let mem = atomic.memory();
        let table = mem.clone().into_inner();
        if !st.pinned.iter().any(|p| Arc::ptr_eq(p, &table)) {
            st.pinned.push(table);
        }
        let result = {
            let Some(worker) = st.worker.as_mut() else {
                return Ok(());
            };
            run_locked(vrings, self.max_queue_size, |queues, irq| match event {
                Event::Queue(i) => worker.process_queue(i, queues, mem.deref(), irq),
                Event::Extra(j) => worker.process_extra(j, queues, mem.deref(), irq),
            })
        };
        if let Err(e) = result {
            log::error!(
                "{}: device failed, waiting for the driver to reset it: {e}",
                self.served.name()
            );
            self.deactivate(&mut st);
            st.failed = true;
        }
        Ok(())
    }
}

/// What woke the event loop, from the worker's point of view.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// Queue `i` was kicked (or enabled).
    Queue(usize),
    /// Extra fd `j` is readable.
    Extra(usize),
}

/// Lock every vring, lend their queues to `f` together with an [`Interrupt`] on their call
/// eventfds, and put the queues back.
fn run_locked<F>(vrings: &[Vring], max_size: u16, f: F) -> Result<(), WorkerError>
where
    F: FnOnce(&mut [&mut Queue], &dyn Interrupt) -> Result<(), WorkerError>,
{
    let mut guards: Vec<_> = vrings.iter().map(VringT::get_mut).collect();
    // Take each queue out of its locked vring (leaving a blank one that nobody can see
    // while the lock is held), so the guards stay shared for the interrupt below.
    let mut queues = Vec::with_capacity(guards.len());
    for g in guards.iter_mut() {
        let blank = Queue::new(max_size)
            .map_err(|e| WorkerError::new(format!("cannot make a queue: {e}")))?;
        queues.push(std::mem::replace(g.get_queue_mut(), blank));
    }
    let result = {
        let irq = VringInterrupt { vrings: &guards };
        let mut refs: Vec<&mut Queue> = queues.iter_mut().collect();
        f(&mut refs, &irq)
    };
    for (g, q) in guards.iter_mut().zip(queues) {
        *g.get_queue_mut() = q;
    }
    result
}

/// Interrupts through the vrings' call eventfds (the frontend turns them into the
/// guest's MSI-X vectors).
struct VringInterrupt<'a, G> {
    vrings: &'a [G],
}

impl<G> Interrupt for VringInterrupt<'_, G>
where
    G: Deref<Target = VringState<AtomicMemory>> + Sync,
{
    fn signal_used_queue(&self, index: usize) -> io::Result<()> {
        match self.vrings.get(index) {
            Some(v) => v.signal_used_queue(),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no queue {index}"),
            )),
        }
    }

    fn signal_config_change(&self) -> io::Result<()> {
        // The backend-to-frontend channel of vhost 0.18 cannot send CONFIG_CHANGE_MSG.
        log::warn!("configuration change cannot be signalled over vhost-user");
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

impl<S: Served> VhostUserBackend for VhostUserDevice<S> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.max_queue_size)
    }

    fn features(&self) -> u64 {
        self.served.features() | VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.served.protocol_features()
    }

    fn reset_device(&self) {
        self.stop();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.served.config();
        // The daemon caps messages far below this; refuse anything bigger outright.
        let Ok(size) = usize::try_from(size) else {
            return Vec::new();
        };
        if size > 0x1000 {
            return Vec::new();
        }
        let mut out = vec![0u8; size];
        virtio_devices::device::read_config_bytes(&config, u64::from(offset), &mut out);
        out
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.served.write_config(offset, buf)
    }

    fn update_memory(&self, mem: AtomicMemory) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        log::debug!(
            "{}: frontend stopped ring {queue_index}",
            self.served.name()
        );
        self.stop();
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        let id = usize::from(device_event);
        let event = if id < self.num_queues {
            Event::Queue(id)
        } else if id > self.num_queues {
            Event::Extra(id - self.num_queues - 1)
        } else {
            return Ok(());
        };
        self.dispatch(event, vrings)
    }
}
