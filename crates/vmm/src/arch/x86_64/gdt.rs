//! The boot GDT: flat segments for the entry mode, and their `kvm_segment` forms.

use kvm_bindings::kvm_segment;

/// Flags of a 64-bit code segment (present, DPL 0, execute/read, L=1, G=1).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit code segment (present, DPL 0, execute/read, D=1, G=1).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a data segment (present, DPL 0, read/write, B=1, G=1).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a 32/64-bit busy TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// Selector of the code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segments.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the task register.
pub const TSS_SELECTOR: u16 = 0x18;

/// Encode one GDT descriptor from its flags (type, S, DPL, P in bits 0..8; AVL, L, D/B, G
/// in bits 12..16), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The four descriptors of the boot GDT: null, code (64- or 32-bit), data, TSS.
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// The `kvm_segment` KVM wants for descriptor `entry` loaded with `selector`.
pub fn kvm_segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = bit(55) == 1;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_flat_segments() {
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn round_trips_base_limit_and_flags() {
        let entry = gdt_entry(DATA_FLAGS, 0x1234_5678, 0xabcde);
        let seg = kvm_segment_from_gdt(entry, DATA_SELECTOR);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcd_efff);
        assert_eq!(
            (seg.type_, seg.s, seg.present, seg.db, seg.g, seg.l),
            (3, 1, 1, 1, 1, 0)
        );
        assert_eq!(seg.unusable, 0);

        let code = kvm_segment_from_gdt(boot_gdt(true)[1], CODE_SELECTOR);
        assert_eq!(
            (code.type_, code.l, code.db, code.limit),
            (0xb, 1, 0, 0xffff_ffff)
        );
        let code32 = kvm_segment_from_gdt(boot_gdt(false)[1], CODE_SELECTOR);
        assert_eq!((code32.l, code32.db), (0, 1));
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
