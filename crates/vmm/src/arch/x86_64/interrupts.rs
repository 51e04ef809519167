//! Local APIC set-up: LINT0 delivers the legacy PIC's interrupts (ExtINT), LINT1 NMIs,
//! as a PC's firmware leaves them.

use kvm_bindings::kvm_lapic_state;

/// Offset of the LVT LINT0 register in the APIC page.
const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the APIC page.
const APIC_LVT1: usize = 0x360;
/// Delivery mode field of an LVT entry (bits 8..11).
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_MODE_EXTINT: u32 = 0x7 << 8;
const DELIVERY_MODE_NMI: u32 = 0x4 << 8;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as i8;
    }
}

/// Route LINT0 as ExtINT and LINT1 as NMI in `lapic` (as read from KVM).
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(
        lapic,
        APIC_LVT0,
        (lvt0 & !DELIVERY_MODE_MASK) | DELIVERY_MODE_EXTINT,
    );
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(
        lapic,
        APIC_LVT1,
        (lvt1 & !DELIVERY_MODE_MASK) | DELIVERY_MODE_NMI,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes_keep_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_LVT0, 0x0001_0400); // masked, NMI
        set_reg(&mut lapic, APIC_LVT1, 0x0001_0000); // masked, fixed
        set_lint(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&lapic, APIC_LVT1), 0x0001_0400);
    }
}
