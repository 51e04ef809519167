//! The VM-wide state KVM keeps: the in-kernel interrupt controllers (two 8259 PICs and
//! the IOAPIC), the PIT, and the kvmclock.

use kvm_bindings::{
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    kvm_clock_data, kvm_irqchip, kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Why the VM's state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("VM state ({what}): {source}")]
pub struct VmStateError {
    /// Which part of the state.
    pub what: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

/// The in-kernel devices' state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// Master PIC, slave PIC, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT's three channels.
    pub pit: kvm_pit_state2,
    /// The kvmclock.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

const CHIPS: [(u32, &str); 3] = [
    (KVM_IRQCHIP_PIC_MASTER, "master PIC"),
    (KVM_IRQCHIP_PIC_SLAVE, "slave PIC"),
    (KVM_IRQCHIP_IOAPIC, "IOAPIC"),
];

impl VmState {
    /// Read the state of a VM whose vCPUs are all paused.
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        let mut irqchips = Vec::with_capacity(CHIPS.len());
        for (chip_id, what) in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(err(what))?;
            irqchips.push(chip);
        }
        Ok(Self {
            irqchips,
            pit: vm.get_pit2().map_err(err("PIT"))?,
            clock: vm.get_clock().map_err(err("kvmclock"))?,
        })
    }

    /// Write this state into a VM that has its irqchip and PIT, before any vCPU runs.
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        for chip in &self.irqchips {
            let what = CHIPS
                .iter()
                .find(|(id, _)| *id == chip.chip_id)
                .map_or("irqchip", |(_, w)| w);
            vm.set_irqchip(chip).map_err(err(what))?;
        }
        vm.set_pit2(&self.pit).map_err(err("PIT"))?;
        // Only the clock value may be set: KVM refuses flags it computes itself.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            flags: self.clock.flags
                & !KVM_CLOCK_TSC_STABLE
                & !kvm_bindings::KVM_CLOCK_REALTIME
                & !kvm_bindings::KVM_CLOCK_HOST_TSC,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(err("kvmclock"))?;
        Ok(())
    }
}
