//! The contract between a virtio device model and the transport that carries it.
//!
//! A device is split in two along the line the virtio spec draws:
//! - [`VirtioDevice`]: what the driver sees before the device runs (type, features,
//!   configuration space, queue sizes). The transport owns it and calls it from the vCPU
//!   exit path.
//! - [`DeviceWorker`]: what serves the queues once the driver has set `DRIVER_OK`. It is
//!   told when a queue was kicked or one of its own file descriptors is ready, and handed
//!   the queues and guest memory. The same worker runs inside `vireo` (on a
//!   [`crate::worker::WorkerThread`]) and behind a vhost-user socket, so the code that
//!   parses guest requests is the same in both.
//!
//! Nothing here knows about KVM: interrupts go through [`Interrupt`], kicks arrive on
//! eventfds handed in at activation.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as the VMM's transports hand it to devices.
///
/// Each region carries a dirty bitmap (one bit per 4 KiB page): every write through
/// vm-memory's `Bytes` and `VolatileSlice` marks the pages it touches, and code that
/// lets the kernel write guest memory from raw host addresses (io_uring reads) marks
/// them itself. KVM's dirty log does not see these writes; a Diff snapshot reads both.
pub type VmMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Virtio device type numbers (virtio 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon (traditional).
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;
    /// Persistent memory.
    pub const PMEM: u32 = 27;
}

/// Feature bits every Vireo device offers, whatever its type.
pub mod features {
    /// Indirect descriptors (`VIRTIO_F_INDIRECT_DESC`, bit 28).
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// Used/avail event index (`VIRTIO_F_EVENT_IDX`, bit 29).
    pub const EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.x, not legacy (`VIRTIO_F_VERSION_1`, bit 32).
    pub const VERSION_1: u64 = 1 << 32;
    /// The transport-level features each device adds to its own.
    pub const COMMON: u64 = INDIRECT_DESC | EVENT_IDX | VERSION_1;
}

/// How a worker tells the driver about used buffers or a configuration change.
///
/// The MMIO transport sets its interrupt-status bits and writes an irqfd; the vhost-user
/// backend writes the vring's call eventfd.
pub trait Interrupt: Send + Sync {
    /// Queue `index` has new used buffers.
    fn signal_used_queue(&self, index: usize) -> io::Result<()>;
    /// The configuration space changed (or the device needs a reset).
    fn signal_config_change(&self) -> io::Result<()>;
    /// The worker hit a [`WorkerError`] and stopped serving: the transport should set
    /// `DEVICE_NEEDS_RESET` and tell the driver.
    fn device_failed(&self) {}
}

/// A worker's fatal error: the device stops serving and asks the driver for a reset.
///
/// Errors a guest can cause in one request (a bad sector, a short buffer) are not
/// `WorkerError`s: they are answered in the request's status. This is for what leaves the
/// queue unusable, such as an avail ring outside guest memory.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkerError(pub String);

impl WorkerError {
    /// A worker error from anything displayable.
    pub fn new(msg: impl std::fmt::Display) -> Self {
        Self(msg.to_string())
    }
}

/// Serves a device's queues once it is running.
///
/// Methods are called with every queue of the device (`queues[i]` is queue `i`) and the
/// guest memory; a worker pops chains, answers them, adds them to the used ring, and
/// signals the driver with [`notify_if_needed`] (which honours `VIRTIO_F_EVENT_IDX`).
pub trait DeviceWorker: Send + 'static {
    /// File descriptors beyond the queue kicks that the worker waits on (a TAP device,
    /// an io_uring completion eventfd, a rate limiter's timerfd, an inner epoll).
    /// Asked once, at start; [`DeviceWorker::process_extra`] gets their index in this list.
    fn extra_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// The driver kicked queue `index` (its eventfd has been drained already).
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError>;

    /// A snapshot is about to be taken (the worker is parked): finish every request
    /// already taken from the rings (answer it, add it to the used ring, signal the
    /// driver) so that the rings and guest memory alone describe the device's work.
    /// Requests still in the avail ring are left there; they are served after restore.
    fn prepare_snapshot<M: GuestMemory>(
        &mut self,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let _ = (queues, mem, interrupt);
        Ok(())
    }

    /// Extra fd number `index` (in [`DeviceWorker::extra_fds`] order) is readable.
    fn process_extra<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        interrupt: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        let _ = (index, queues, mem, interrupt);
        Ok(())
    }
}

/// Signal queue `index` if the driver wants to hear about the buffers just used.
///
/// With `VIRTIO_F_EVENT_IDX` this asks the queue (the driver's used_event); without it,
/// it honours `VIRTQ_AVAIL_F_NO_INTERRUPT`. Both are `Queue::needs_notification`.
pub fn notify_if_needed<M: GuestMemory>(
    queue: &mut Queue,
    index: usize,
    mem: &M,
    interrupt: &dyn Interrupt,
) -> Result<(), WorkerError> {
    use virtio_queue::QueueT;
    let needed = queue
        .needs_notification(mem)
        .map_err(|e| WorkerError::new(format!("queue {index}: cannot read used_event: {e}")))?;
    if needed {
        interrupt
            .signal_used_queue(index)
            .map_err(|e| WorkerError::new(format!("queue {index}: cannot signal: {e}")))?;
    }
    Ok(())
}

/// Take the next available chain of `queue`, or `None` when the driver has offered
/// nothing new. A corrupt avail ring (an index more than a queue's worth ahead) is a
/// [`WorkerError`]: the queue cannot be trusted any more.
pub fn pop_chain<'m, M: GuestMemory>(
    queue: &mut Queue,
    mem: &'m M,
) -> Result<Option<DescriptorChain<&'m M>>, WorkerError> {
    use virtio_queue::QueueOwnedT;
    match queue.iter(mem) {
        Ok(mut it) => Ok(it.next()),
        Err(e) => Err(WorkerError::new(format!("avail ring: {e}"))),
    }
}

/// Serve every chain the driver has made available on queue `index`, synchronously:
/// `handle` answers one chain and returns how many bytes it wrote into it; the chain
/// then goes to the used ring. Notifications are suppressed while draining and the
/// driver is signalled once at the end if it asked to be (`VIRTIO_F_EVENT_IDX` aware).
pub fn serve_queue<M, F>(
    queue: &mut Queue,
    index: usize,
    mem: &M,
    interrupt: &dyn Interrupt,
    mut handle: F,
) -> Result<(), WorkerError>
where
    M: GuestMemory,
    F: FnMut(DescriptorChain<&M>) -> u32,
{
    use virtio_queue::QueueT;
    let ring_err = |e: virtio_queue::Error| WorkerError::new(format!("queue {index}: {e}"));
    let mut used = 0usize;
    loop {
        queue.disable_notification(mem).map_err(ring_err)?;
        while let Some(chain) = pop_chain(queue, mem)? {
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len).map_err(ring_err)?;
            used += 1;
        }
        if !queue.enable_notification(mem).map_err(ring_err)? {
            break;
        }
    }
    if used > 0 {
        notify_if_needed(queue, index, mem, interrupt)?;
    }
    Ok(())
}

/// A virtqueue's state in a snapshot (virtio-queue's `QueueState`, with serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// The next avail ring entry to take.
    pub next_avail: u16,
    /// The next used ring entry to fill.
    pub next_used: u16,
    /// `VIRTIO_F_EVENT_IDX` negotiated.
    pub event_idx_enabled: bool,
    /// Size chosen by the driver.
    pub size: u16,
    /// The driver enabled the queue.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Avail ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl QueueSnapshot {
    /// The state of `queue`.
    pub fn of(queue: &Queue) -> Self {
        let s = queue.state();
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }

    /// A queue in this state; a state virtio-queue refuses (a size that is not a power
    /// of two, say) is an error, not a panic.
    pub fn to_queue(&self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// What a transport hands a device when the driver sets `DRIVER_OK`.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: Arc<VmMemory>,
    /// The queues as the driver set them up, `queues[i]` being queue `i`. Queues the
    /// driver did not enable are included, not ready.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, written when the driver kicks it.
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt line.
    pub interrupt: Arc<dyn Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs was not set up by the driver.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The worker thread could not be started.
    #[error("cannot start the device worker: {0}")]
    Worker(#[source] io::Error),
    /// The device's backend refused (file, socket, TAP).
    #[error("{0}")]
    Backend(String),
}

/// A virtio device as its transport sees it.
///
/// It is [`Any`](std::any::Any), so the VMM can reach the concrete device behind a
/// transport (`&mut dyn VirtioDevice` upcasts to `&mut dyn Any`) to change what only that
/// kind of device has: a disk's image, a NIC's limits.
pub trait VirtioDevice: Send + std::any::Any {
    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Every feature the device offers, [`features::COMMON`] included.
    fn features(&self) -> u64;

    /// Read `data.len()` bytes of the configuration space at `offset`. Bytes beyond the
    /// configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver wrote the configuration space. Most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver set `DRIVER_OK`: start serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// The VM pauses: stop serving the queues at the next request boundary and return
    /// once the worker is parked. Kicks that arrive meanwhile are served on
    /// [`VirtioDevice::resume`]. A device that is not running does nothing.
    fn pause(&mut self) {}

    /// The VM runs again after [`VirtioDevice::pause`].
    fn resume(&mut self) {}

    /// For a snapshot of a paused VM: the running queues' state, after the worker has
    /// finished the requests it had taken ([`DeviceWorker::prepare_snapshot`]); `None`
    /// when the device is not running. A device whose state a snapshot cannot capture
    /// yet refuses (the default), which refuses the snapshot.
    fn snapshot_queues(&mut self) -> Result<Option<Vec<QueueSnapshot>>, String> {
        Err(format!(
            "{}: snapshots of this device are not supported yet",
            self.name()
        ))
    }

    /// For a snapshot, after [`VirtioDevice::snapshot_queues`] (or instead of it when the
    /// device is not running): the device's own state that neither the transport's
    /// registers nor the queues hold and that the restored device needs (a balloon's
    /// target, a statistics buffer it keeps), as JSON. `None`, the default, when there is
    /// none.
    fn snapshot_state(&mut self) -> Result<Option<serde_json::Value>, String> {
        Ok(None)
    }

    /// Restoring a snapshot into this freshly built device: `state` is what
    /// [`VirtioDevice::snapshot_state`] gave (`None` when it gave nothing). Called before
    /// the transport activates the device again (if it was running); a state the device
    /// cannot take is refused, which refuses the restore.
    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        match state {
            None => Ok(()),
            Some(_) => Err(format!(
                "{}: the snapshot has device state this device does not take",
                self.name()
            )),
        }
    }

    /// The driver reset the device (or the VM stops): stop serving, drop the queues and
    /// return to the state before activation. Returns `false` if the device cannot be
    /// reset; the transport then leaves it stopped and sets `DEVICE_NEEDS_RESET`.
    fn reset(&mut self) -> bool;

    /// A short name for logs ("virtio-blk", "virtio-net"...).
    fn name(&self) -> &str;
}

/// Copy `data.len()` bytes of a configuration space `config` at `offset` into `data`,
/// zero past its end. Devices use it for [`VirtioDevice::read_config`].
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_are_clipped_and_zero_filled() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 10, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
        let mut one = [0u8; 1];
        read_config_bytes(&cfg, 0, &mut one);
        assert_eq!(one, [1]);
    }
}
