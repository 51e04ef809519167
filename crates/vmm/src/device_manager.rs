//! Placing virtio devices in the machine: each gets a 4 KiB virtio-mmio window in the
//! 32-bit MMIO hole and an interrupt line, and the guest learns of both twice over.
//!
//! - **Windows** start at [`VIRTIO_MMIO_BASE`], one page apart; with Firecracker's boot
//!   timer (`--boot-timer`), which takes that first page, one page higher.
//! - **Interrupts** are IOAPIC pins not used by the legacy devices ([`VIRTIO_IRQS`]):
//!   the transport's interrupt eventfd is a KVM irqfd on that pin. The first
//!   `VIRTIO_IRQS.len()` devices have a pin each; the next ones (up to
//!   [`MAX_VIRTIO_DEVICES`]) share the PCI pins ([`SHARED_IRQS`]) in turn, described as
//!   shared in the DSDT: Linux's virtio-mmio driver takes its interrupt shared and reads
//!   each device's InterruptStatus, and every irqfd write is an edge of its own, so a
//!   device's interrupt is never lost in another's. The last pin, 23, is
//!   the VM generation ID's ([`crate::devices::vmgenid::VMGENID_GSI`]).
//! - **Kicks**: each queue's eventfd is a KVM ioeventfd on the window's `QueueNotify`
//!   register, matching the queue index, so a notify is a write to an eventfd inside
//!   KVM and the device's worker thread wakes without a vCPU exit to user space.
//! - **Discovery**: a `virtio_mmio.device=4K@BASE:IRQ` entry on the kernel command line
//!   (kernels built with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`) and an `LNRO0005` device
//!   in the DSDT (kernels without it, such as Debian's cloud kernel). A kernel with both
//!   finds each device twice; the second probe fails harmlessly on the busy MMIO region.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_devices::device::VirtioDevice;
use virtio_devices::mmio::{MMIO_WINDOW_SIZE, MmioState, MmioTransport, QUEUE_NOTIFY_OFFSET};

use crate::arch::x86_64::acpi::{AcpiError, DsdtDevice, DsdtResource, IrqPolarity, IrqTrigger};
use crate::bus::{Bus, BusDevice, BusError};
use crate::devices::boot_timer::{BOOT_TIMER_LEN, BootTimer};
use crate::memory::GuestMemory;

/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Firecracker's boot timer, where its guests' init writes (x86): the first window.
pub const BOOT_TIMER_BASE: u64 = VIRTIO_MMIO_BASE;
/// IOAPIC pins given to virtio devices, in order: the ISA lines the legacy devices
/// (PIT 0, keyboard 1, cascade 2, COM2/COM1 3-4, RTC 8, mouse 12, ATA 13) leave free,
/// then the PCI pins.
pub const VIRTIO_IRQS: [u32; 15] = [5, 6, 7, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22];
/// The pins devices past the first `VIRTIO_IRQS.len()` share, in turn.
pub const SHARED_IRQS: [u32; 7] = [16, 17, 18, 19, 20, 21, 22];
/// Most virtio devices a VM can have (Firecracker's virtio-mmio: 19 on x86).
pub const MAX_VIRTIO_DEVICES: usize = 32;

/// Why a virtio device could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// Every slot is taken.
    #[error("too many virtio devices: at most {MAX_VIRTIO_DEVICES} fit")]
    TooManyDevices,
    /// The transport's eventfds could not be made.
    #[error("{name}: cannot create the transport: {source}")]
    Transport {
        /// The device.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused an ioeventfd or irqfd.
    #[error("{name}: cannot wire {what}: {source}")]
    Kvm {
        /// The device.
        name: String,
        /// "queue 0 kick", "interrupt".
        what: String,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The window overlaps another device.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The DSDT entry could not be made.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
}

/// Where one virtio device lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Base of its MMIO window.
    pub base: u64,
    /// Its IOAPIC pin (GSI).
    pub irq: u32,
}

impl VirtioSlot {
    /// The slot of the `index`th virtio device, if it fits ([`MAX_VIRTIO_DEVICES`]).
    pub fn nth(index: usize) -> Option<Self> {
        if index >= MAX_VIRTIO_DEVICES {
            return None;
        }
        let irq = match VIRTIO_IRQS.get(index) {
            Some(&irq) => irq,
            None => SHARED_IRQS[(index - VIRTIO_IRQS.len()) % SHARED_IRQS.len()],
        };
        Some(Self {
            base: VIRTIO_MMIO_BASE + index as u64 * MMIO_WINDOW_SIZE,
            irq,
        })
    }

    /// The kernel command line entry that declares this device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW_SIZE >> 10,
            self.base,
            self.irq
        )
    }
}

/// The MMIO transport on the VMM's bus.
struct BusTransport(MmioTransport);

impl BusDevice for BusTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// The virtio devices of a VM.
#[derive(Default)]
pub struct VirtioDevices {
    devices: Vec<(VirtioSlot, String, Arc<Mutex<BusTransport>>)>,
    /// Windows at the start of the range that another device holds.
    reserved_windows: u64,
    /// Restored from a snapshot, and the interrupts not raised again yet
    /// ([`VirtioDevices::reassert_restored_interrupts`]).
    restored: AtomicBool,
}

impl VirtioDevices {
    /// No devices yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// No devices yet; the first `n` windows belong to other devices (the boot timer),
    /// so the virtio devices start after them (their interrupts do not move).
    pub fn after_windows(n: u64) -> Self {
        Self {
            devices: Vec::new(),
            reserved_windows: n,
            restored: AtomicBool::new(false),
        }
    }

    /// The virtio devices of a VM with or without Firecracker's boot timer, which is put
    /// on `mmio` in the first window here (the build and a restore place both alike).
    pub fn for_vm(boot_timer: bool, mmio: &mut Bus) -> Result<Self, DeviceManagerError> {
        if !boot_timer {
            return Ok(Self::new());
        }
        let timer = Arc::new(Mutex::new(BootTimer::new()));
        mmio.insert(timer, BOOT_TIMER_BASE, BOOT_TIMER_LEN)?;
        Ok(Self::after_windows(
            BOOT_TIMER_LEN.div_ceil(MMIO_WINDOW_SIZE),
        ))
    }

    /// Put `device` in the next slot: transport on the MMIO bus, kicks as ioeventfds,
    /// interrupt as an irqfd.
    pub fn add(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        mem: &Arc<GuestMemory>,
        device: Box<dyn VirtioDevice>,
    ) -> Result<VirtioSlot, DeviceManagerError> {
        let mut slot =
            VirtioSlot::nth(self.devices.len()).ok_or(DeviceManagerError::TooManyDevices)?;
        slot.base += self.reserved_windows * MMIO_WINDOW_SIZE;
        let name = format!("{}@{:#x}", device.name(), slot.base);
        let transport = MmioTransport::new(device, mem.clone()).map_err(|source| {
            DeviceManagerError::Transport {
                name: name.clone(),
                source,
            }
        })?;
        let kvm_err = |what: String| {
            let name = name.clone();
            move |source| DeviceManagerError::Kvm { name, what, source }
        };
        let notify = IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY_OFFSET);
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &notify, index as u32)
                .map_err(kvm_err(format!("queue {index} kick")))?;
        }
        vm.register_irqfd(transport.interrupt_evt(), slot.irq)
            .map_err(kvm_err("interrupt".to_string()))?;
        let shared = Arc::new(Mutex::new(BusTransport(transport)));
        mmio.insert(shared.clone(), slot.base, MMIO_WINDOW_SIZE)?;
        log::debug!("{name}: irq {}", slot.irq);
        self.devices.push((slot, name, shared));
        Ok(slot)
    }

    /// Every transport's registers and queues, in slot order, for a snapshot of the
    /// paused VM; the first device that cannot be snapshotted refuses it.
    pub fn states(&self) -> Result<Vec<MmioState>, String> {
        self.devices
            .iter()
            .map(|(_, name, transport)| {
                transport
                    .lock()
                    .map_err(|_| format!("{name}: transport lock poisoned"))?
                    .0
                    .state()
            })
            .collect()
    }

    /// Give the devices, in slot order, the registers and queues of a snapshot.
    pub fn restore(&self, states: &[MmioState]) -> Result<(), String> {
        if states.len() != self.devices.len() {
            return Err(format!(
                "the snapshot has {} virtio devices, this VM {}",
                states.len(),
                self.devices.len()
            ));
        }
        for ((_, name, transport), state) in self.devices.iter().zip(states) {
            transport
                .lock()
                .map_err(|_| format!("{name}: transport lock poisoned"))?
                .0
                .restore(state)?;
        }
        self.restored.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Once the vCPUs of a restored VM run: raise again the interrupt of every device
    /// whose interrupt status has a cause set ([`MmioTransport::reassert_interrupt`]),
    /// since what the devices raised while they were restored, before the vCPUs existed,
    /// reached none (a balloon ending a hinting run, a queue served at reactivation).
    /// Once per restore; nothing for a booted VM.
    pub fn reassert_restored_interrupts(&self) {
        if !self.restored.swap(false, Ordering::SeqCst) {
            return;
        }
        for (_, name, transport) in &self.devices {
            match transport.lock() {
                Ok(t) => {
                    if let Err(e) = t.0.reassert_interrupt() {
                        log::warn!("{name}: cannot raise its interrupt after the restore: {e}");
                    }
                }
                Err(_) => log::warn!("{name}: transport lock poisoned after the restore"),
            }
        }
    }

    /// Run `f` on the device in slot `index` if it is a `T` (a [`block::Block`], a
    /// [`net::Net`]...), with its transport locked: the vCPUs wait at that device's
    /// window meanwhile. `None` if there is no such slot or the device there is another
    /// kind; a poisoned lock is an error.
    pub fn with_device<T: VirtioDevice, R>(
        &self,
        index: usize,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<Option<R>, String> {
        let Some((_, name, transport)) = self.devices.get(index) else {
            return Ok(None);
        };
        let mut t = transport
            .lock()
            .map_err(|_| format!("{name}: transport lock poisoned"))?;
        let device: &mut dyn std::any::Any = t.0.device_mut();
        Ok(device.downcast_mut::<T>().map(f))
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The command line entries declaring every device, space separated.
    pub fn cmdline_entries(&self) -> String {
        self.devices
            .iter()
            .map(|(slot, _, _)| slot.cmdline_entry())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The DSDT entries declaring every device (`VR00`, `VR01`...; HID `LNRO0005`), an
    /// interrupt another device also has marked shared.
    pub fn dsdt_devices(&self) -> Result<Vec<DsdtDevice>, AcpiError> {
        let slots: Vec<VirtioSlot> = self.devices.iter().map(|(slot, _, _)| *slot).collect();
        dsdt_entries(&slots)
    }

    /// Park every running device's worker thread at a request boundary (the VM pauses);
    /// returns once all are parked.
    pub fn pause(&self) {
        self.each("pause", MmioTransport::pause);
    }

    /// Let every parked worker go on.
    pub fn resume(&self) {
        self.each("resume", MmioTransport::resume);
    }

    fn each(&self, what: &str, f: fn(&mut MmioTransport)) {
        for (_, name, transport) in &self.devices {
            match transport.lock() {
                Ok(mut t) => f(&mut t.0),
                Err(_) => log::warn!("{name}: transport lock poisoned at {what}"),
            }
        }
    }

    /// Stop every device's worker thread (the VM is going away).
    pub fn shutdown(&mut self) {
        for (_, name, transport) in self.devices.drain(..) {
            match transport.lock() {
                Ok(mut t) => t.0.write(0x70, &0u32.to_le_bytes()),
                Err(_) => log::warn!("{name}: transport lock poisoned at shutdown"),
            }
        }
    }
}

fn dsdt_entries(slots: &[VirtioSlot]) -> Result<Vec<DsdtDevice>, AcpiError> {
    slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let shared = slots.iter().filter(|s| s.irq == slot.irq).count() > 1;
            dsdt_entry(i, slot, shared)
        })
        .collect()
}

fn dsdt_entry(index: usize, slot: &VirtioSlot, shared: bool) -> Result<DsdtDevice, AcpiError> {
    Ok(
        DsdtDevice::new(&format!("VR{index:02X}"), "LNRO0005", index as u32)?
            .with_resource(DsdtResource::Mmio32 {
                base: slot.base as u32,
                len: MMIO_WINDOW_SIZE as u32,
            })
            .with_resource(DsdtResource::Interrupt {
                gsi: slot.irq,
                trigger: IrqTrigger::Edge,
                polarity: IrqPolarity::ActiveHigh,
                shared,
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_pages_apart_with_free_irqs() {
        let a = VirtioSlot::nth(0).unwrap();
        let b = VirtioSlot::nth(1).unwrap();
        assert_eq!(a.base, 0xd000_0000);
        assert_eq!(b.base, 0xd000_1000);
        assert_eq!((a.irq, b.irq), (5, 6));
        // Past the dedicated pins, the PCI pins in turn; then none.
        let shared: Vec<u32> = (VIRTIO_IRQS.len()..MAX_VIRTIO_DEVICES)
            .map(|i| VirtioSlot::nth(i).unwrap().irq)
            .collect();
        assert_eq!(shared[..8], [16, 17, 18, 19, 20, 21, 22, 16]);
        assert!(VirtioSlot::nth(MAX_VIRTIO_DEVICES).is_none());
        for irq in VIRTIO_IRQS {
            assert!(
                ![0, 1, 2, 3, 4, 8, 12, 13].contains(&irq),
                "{irq} is a legacy line"
            );
        }
        let last = VirtioSlot::nth(MAX_VIRTIO_DEVICES - 1).unwrap();
        assert!(last.base + MMIO_WINDOW_SIZE <= crate::arch::x86_64::layout::IOAPIC_START);
    }

    #[test]
    fn the_boot_timer_takes_the_first_window_and_the_virtio_devices_move_up() {
        let mut mmio = Bus::new();
        let plain = VirtioDevices::for_vm(false, &mut mmio).unwrap();
        assert_eq!(plain.reserved_windows, 0);
        assert!(mmio.resolve(BOOT_TIMER_BASE).is_none());

        let timed = VirtioDevices::for_vm(true, &mut mmio).unwrap();
        assert_eq!(timed.reserved_windows, 1);
        let (_, offset) = mmio
            .resolve(BOOT_TIMER_BASE)
            .expect("the timer is on the bus");
        assert_eq!(offset, 0);
        assert!(mmio.write(BOOT_TIMER_BASE, &[123]));
        // The next window is free for the first virtio device.
        assert!(mmio.resolve(VIRTIO_MMIO_BASE + MMIO_WINDOW_SIZE).is_none());
    }

    #[test]
    fn cmdline_entry_form() {
        assert_eq!(
            VirtioSlot::nth(2).unwrap().cmdline_entry(),
            "virtio_mmio.device=4K@0xd0002000:7"
        );
    }

    #[test]
    fn dsdt_names_are_unique_and_valid() {
        let slots: Vec<VirtioSlot> = (0..MAX_VIRTIO_DEVICES)
            .map(|i| VirtioSlot::nth(i).unwrap())
            .collect();
        let entries = dsdt_entries(&slots).unwrap();
        let names: Vec<String> = entries.iter().map(|d| d.name().to_string()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert_eq!(names[10], "VR0A");
        assert_eq!(names[31], "VR1F");
        // Only pins with two devices are shared: 5 is not, 16 is (slots 8 and 15).
        let shared = |d: &DsdtDevice| {
            d.resources()
                .iter()
                .any(|r| matches!(r, DsdtResource::Interrupt { shared: true, .. }))
        };
        assert!(!shared(&entries[0]));
        assert!(shared(&entries[8]) && shared(&entries[15]));
        let alone = dsdt_entries(&slots[..15]).unwrap();
        assert!(alone.iter().all(|d| !shared(d)), "15 devices share nothing");
    }
}
