//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! [`MmioTransport`] is the register file a driver sees in its 4 KiB MMIO window: magic,
//! version, device id, feature negotiation, queue set-up, interrupt status and
//! acknowledgement, device status, and the device's configuration space at 0x100. It
//! owns the [`VirtioDevice`], the queues until activation, one kick eventfd per queue and
//! the interrupt eventfd. The VMM registers the kick eventfds as KVM ioeventfds on the
//! `QueueNotify` register (datamatch = queue index) and the interrupt eventfd as an
//! irqfd, so neither a kick nor an interrupt goes through a vCPU exit handler; a notify
//! that reaches [`MmioTransport::write`] anyway (no ioeventfd, or an unusual value) is
//! forwarded to the same eventfd.
//!
//! A driver that breaks the protocol (features it was not offered, queue registers
//! written while running, accesses of the wrong width) is logged and ignored; nothing it
//! writes can make the VMM fail.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{ActivateContext, Interrupt, QueueSnapshot, VirtioDevice, VmMemory, features};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the `QueueNotify` register, where the VMM puts the ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5652_4f45; // "VROE"
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may run.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits.
const INT_USED_RING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// The transport's interrupt line: status bits the driver reads and acknowledges, and
/// the eventfd that raises the guest interrupt (a KVM irqfd). It also keeps
/// `ConfigGeneration`, which a configuration change signalled through it bumps.
pub struct MmioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    evt: EventFd,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1)
    }
}

impl Interrupt for MmioInterrupt {
    fn signal_used_queue(&self, _index: usize) -> io::Result<()> {
        self.raise(INT_USED_RING)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        // The device changed its configuration space before calling this: a driver
        // reading it sees the new generation with the new values (virtio 1.2, 4.2.2.1).
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG)
    }

    fn device_failed(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        if let Err(e) = self.raise(INT_CONFIG) {
            log::error!("cannot signal a device failure: {e}");
        }
    }
}

/// A transport's registers and queues in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioState {
    /// The device behind it (checked on restore).
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Device status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether the device was running.
    pub activated: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    /// Every queue.
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state ([`VirtioDevice::snapshot_state`]), if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_state: Option<serde_json::Value>,
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<VmMemory>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<MmioInterrupt>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
    /// Registers already reported as misused, so a looping driver logs once.
    warned: u64,
}

impl MmioTransport {
    /// Put `device` behind a register window, with guest memory `mem`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: Arc<VmMemory>) -> io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: bad queue size {max}: {e}", device.name()),
                    )
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let queue_evts = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let interrupt = Arc::new(MmioInterrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
        });
        Ok(Self {
            device,
            mem,
            queues,
            queue_evts,
            interrupt,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            warned: 0,
        })
    }

    /// The kick eventfd of each queue, to register as ioeventfds on
    /// [`QUEUE_NOTIFY_OFFSET`] with the queue index as datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt eventfd, to register as an irqfd.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.interrupt.evt
    }

    /// Raise the interrupt line again if the interrupt status has a cause set. For a
    /// restored VM, once its vCPUs exist: an interrupt raised while it was restored (by
    /// the device itself, or by a queue served at reactivation) reached no vCPU, and the
    /// driver reads the status only when interrupted.
    pub fn reassert_interrupt(&self) -> io::Result<()> {
        if self.interrupt.status.load(Ordering::SeqCst) != 0 {
            self.interrupt.evt.write(1)?;
        }
        Ok(())
    }

    /// The device behind the window.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the window, to change it (a new backend, new limits). A
    /// device that changes its configuration space while activated tells the driver
    /// through its [`Interrupt::signal_config_change`], which bumps `ConfigGeneration`.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// `ConfigGeneration` as the driver reads it.
    pub fn config_generation(&self) -> u32 {
        self.interrupt.config_generation.load(Ordering::SeqCst)
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.interrupt.needs_reset.load(Ordering::SeqCst) {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    /// Whether the device is running (the driver set `DRIVER_OK` and activation worked).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Park the device's worker (the VM pauses); nothing to do before activation.
    pub fn pause(&mut self) {
        if self.activated {
            self.device.pause();
        }
    }

    /// Let the device's worker go on after [`MmioTransport::pause`].
    pub fn resume(&mut self) {
        if self.activated {
            self.device.resume();
        }
    }

    /// The register file and queues, for a snapshot of a paused VM. A running device is
    /// asked for its queues' live state ([`VirtioDevice::snapshot_queues`]); a device
    /// that cannot be snapshotted yet refuses.
    pub fn state(&mut self) -> Result<MmioState, String> {
        let queues = match self.activated {
            true => self.device.snapshot_queues()?.ok_or_else(|| {
                format!(
                    "{}: activated but its worker is not running",
                    self.device.name()
                )
            })?,
            false => self.queues.iter().map(QueueSnapshot::of).collect(),
        };
        // After the queues: finishing the worker's requests may change the device's state.
        let device_state = self.device.snapshot_state()?;
        Ok(MmioState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation(),
            activated: self.activated,
            interrupt_status: self.interrupt.status.load(Ordering::SeqCst),
            needs_reset: self.interrupt.needs_reset.load(Ordering::SeqCst),
            queues,
            device_state,
        })
    }

    /// Take the registers and queues of a snapshot; the device gets its own state
    /// ([`VirtioDevice::restore_state`]), then, if it was running, is activated again
    /// with its queues where they were. Call before the guest runs.
    pub fn restore(&mut self, state: &MmioState) -> Result<(), String> {
        let name = self.device.name().to_string();
        if state.device_type != self.device.device_type() {
            return Err(format!(
                "{name}: the snapshot has a device of type {} in this slot",
                state.device_type
            ));
        }
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "{name}: the snapshot has {} queues, the device {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        let queues = state
            .queues
            .iter()
            .map(QueueSnapshot::to_queue)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}: queue state refused: {e}"))?;
        if state.driver_features & !self.device.features() != 0 {
            return Err(format!(
                "{name}: the snapshot's driver features {:#x} are not all offered",
                state.driver_features
            ));
        }
        self.device.restore_state(state.device_state.as_ref())?;
        self.queues = queues;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.interrupt
            .config_generation
            .store(state.config_generation, Ordering::SeqCst);
        self.interrupt
            .status
            .store(state.interrupt_status, Ordering::SeqCst);
        self.interrupt
            .needs_reset
            .store(state.needs_reset, Ordering::SeqCst);
        if state.activated {
            self.activate();
            if !self.activated {
                return Err(format!("{name}: cannot start the device again"));
            }
            // Requests the driver made available before the snapshot and the device had
            // not taken are served now.
            for evt in &self.queue_evts {
                let _ = evt.write(1);
            }
        }
        Ok(())
    }

    fn warn_once(&mut self, offset: u64, what: std::fmt::Arguments) {
        let bit = 1u64 << ((offset / 4) % 64);
        if self.warned & bit == 0 {
            self.warned |= bit;
            log::warn!("{}: {what}", self.device.name());
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A read of `data.len()` bytes at `offset` into the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 {
            self.warn_once(
                offset,
                format_args!("{}-byte read of register {offset:#x} ignored", data.len()),
            );
            data.fill(0);
            return;
        }
        let value = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.device.features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status.load(Ordering::SeqCst),
            0x70 => self.status(),
            // No shared memory regions: their length reads as -1.
            0xb0 | 0xb4 => u32::MAX,
            0xfc => self.config_generation(),
            _ => {
                self.warn_once(
                    offset,
                    format_args!("read of write-only or unknown register {offset:#x}"),
                );
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A write of `data` at `offset` into the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & status::DRIVER != 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
                self.interrupt
                    .config_generation
                    .fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.warn_once(
                offset,
                format_args!("{}-byte write of register {offset:#x} ignored", data.len()),
            );
            return;
        };
        let v = u32::from_le_bytes(bytes);
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => self.write_driver_features(v),
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => self.write_queue(offset, v),
            0x50 => self.notify(v),
            0x64 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.write_status(v),
            0xac => {} // SHMSel: there are no regions to select.
            _ => self.warn_once(
                offset,
                format_args!("write of read-only or unknown register {offset:#x}"),
            ),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            self.warn_once(
                0x20,
                format_args!("driver features written outside negotiation"),
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    fn write_queue(&mut self, offset: u64, v: u32) {
        if self.status & status::FEATURES_OK == 0 || self.status & status::DRIVER_OK != 0 {
            self.warn_once(
                offset,
                format_args!("queue register {offset:#x} written outside queue set-up"),
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        if q.ready() && offset != 0x44 {
            // The driver must disable a queue before changing it.
            return;
        }
        match offset {
            0x38 => q.set_size(v as u16),
            0x44 => q.set_ready(v == 1),
            0x80 => q.set_desc_table_address(Some(v), None),
            0x84 => q.set_desc_table_address(None, Some(v)),
            0x90 => q.set_avail_ring_address(Some(v), None),
            0x94 => q.set_avail_ring_address(None, Some(v)),
            0xa0 => q.set_used_ring_address(Some(v), None),
            0xa4 => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    fn notify(&mut self, index: u32) {
        if let Some(evt) = self.queue_evts.get(index as usize) {
            if let Err(e) = evt.write(1) {
                log::error!("{}: cannot forward a queue kick: {e}", self.device.name());
            }
        } else {
            self.warn_once(0x50, format_args!("notify of missing queue {index}"));
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits may only be added, never cleared, short of a reset.
        if v & old != old {
            self.warn_once(0x70, format_args!("status {v:#x} clears bits of {old:#x}"));
            return;
        }
        let added = v & !old;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let unknown = self.driver_features & !offered;
            if unknown != 0 || self.driver_features & features::VERSION_1 == 0 {
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                log::warn!(
                    "{}: driver features {:#x} refused (offered {offered:#x}; VERSION_1 is required)",
                    self.device.name(),
                    self.driver_features
                );
                self.status = v & !status::FEATURES_OK;
                return;
            }
            let event_idx = self.driver_features & features::EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
        }
        self.status = v;
        if added & status::DRIVER_OK != 0 && v & status::FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(self.mem.as_ref()) {
                log::warn!(
                    "{}: queue {i} lies outside guest memory or is misaligned",
                    self.device.name()
                );
                self.interrupt.device_failed();
                return;
            }
        }
        let evts = match self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(e) => e,
            Err(e) => {
                log::error!("{}: cannot clone kick eventfds: {e}", self.device.name());
                self.interrupt.device_failed();
                return;
            }
        };
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(q) => q,
            Err(e) => {
                log::warn!("{}: bad queue set-up: {e}", self.device.name());
                self.interrupt.device_failed();
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("{}: cannot activate: {e}", self.device.name());
                self.interrupt.device_failed();
            }
        }
    }

    fn reset(&mut self) {
        let resettable = !self.activated || self.device.reset();
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.status = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.device_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
        self.interrupt
            .needs_reset
            .store(!resettable, Ordering::SeqCst);
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
