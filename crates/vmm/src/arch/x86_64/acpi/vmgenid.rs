//! What the DSDT says about the VM generation ID ([`crate::devices::vmgenid`]): where the
//! guest finds the 16-byte ID, and how it learns that the ID changed.
//!
//! Two devices in `\_SB_`:
//!
//! - `VGEN`, the generation ID device of Microsoft's "Virtual Machine Generation ID"
//!   specification: `_HID` "VMGENCTR" and `_CID` "VM_Gen_Counter" (ACPICA upper-cases a
//!   string `_CID`, so Linux's `vmgenid` driver, which lists "VMGENCTR" and
//!   "VM_GEN_COUNTER", matches either), `_DDN` "VM_Gen_Counter", and the method `ADDR`,
//!   which returns the ID's guest physical address as a package of two integers, low
//!   and high 32 bits.
//! - `GED_`, a Generic Event Device ("ACPI0013"): a hardware-reduced platform has no
//!   GPE blocks, so an event reaches the OS as an interrupt its `_CRS` names. Linux's
//!   `evged` driver requests that interrupt ("ACPI:Ged" in /proc/interrupts) and, when it
//!   fires, runs `_EVT` with the GSI as its argument; `_EVT` then sends `VGEN` notify
//!   0x80, on which the vmgenid driver reads the ID again and, if it changed, reseeds the
//!   kernel's RNG ("crng reseeded due to virtual machine fork").
//!
//! The interrupt is edge-triggered and active high: Vireo raises it through a KVM irqfd,
//! which pulses the IOAPIC pin.

use acpi_tables::{Aml, AmlSink, aml};

/// The generation ID device's name in `\_SB_`.
pub const VMGENID_DEVICE_NAME: &str = "VGEN";
/// The Generic Event Device's name in `\_SB_`.
pub const GED_DEVICE_NAME: &str = "GED_";
/// `_HID` of the generation ID device, as Linux's driver matches it.
pub const VMGENID_HID: &str = "VMGENCTR";
/// `_CID` and `_DDN` of the generation ID device, as the specification spells them.
pub const VMGENID_CID: &str = "VM_Gen_Counter";
/// `_HID` of a Generic Event Device.
pub const GED_HID: &str = "ACPI0013";
/// The notification the OS gets when the ID changed.
pub const VMGENID_NOTIFY: u8 = 0x80;

/// The generation ID as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmGenIdAcpi {
    /// Guest physical address of the 16-byte ID.
    pub addr: u64,
    /// The GSI (IOAPIC pin) the Generic Event Device's interrupt arrives on.
    pub gsi: u32,
}

impl Aml for VmGenIdAcpi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // The VGEN device.
        let hid = aml::Name::new("_HID".into(), &VMGENID_HID);
        let cid = aml::Name::new("_CID".into(), &VMGENID_CID);
        let ddn = aml::Name::new("_DDN".into(), &VMGENID_CID);
        // Truncation intended: the two halves of the address.
        let low = self.addr as u32;
        let high = (self.addr >> 32) as u32;
        let package = aml::Package::new(vec![&low, &high]);
        let ret = aml::Return::new(&package);
        let addr = aml::Method::new("ADDR".into(), 0, false, vec![&ret]);
        aml::Device::new(VMGENID_DEVICE_NAME.into(), vec![&hid, &cid, &ddn, &addr])
            .to_aml_bytes(sink);

        // The Generic Event Device.
        let hid = aml::Name::new("_HID".into(), &GED_HID);
        let irq = aml::Interrupt::new(true, true, false, false, self.gsi);
        let template = aml::ResourceTemplate::new(vec![&irq]);
        let crs = aml::Name::new("_CRS".into(), &template);
        let target = aml::Path::new("\\_SB_.VGEN");
        let notify = aml::Notify::new(&target, &VMGENID_NOTIFY);
        let is_ours = aml::Equal::new(&aml::Arg(0), &self.gsi);
        let when_ours = aml::If::new(&is_ours, vec![&notify]);
        let evt = aml::Method::new("_EVT".into(), 1, true, vec![&when_ours]);
        aml::Device::new(GED_DEVICE_NAME.into(), vec![&hid, &crs, &evt]).to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aml_of(acpi: VmGenIdAcpi) -> Vec<u8> {
        let mut bytes = Vec::new();
        acpi.to_aml_bytes(&mut bytes);
        bytes
    }

    /// `Name (NAME, "value")`: NameOp, the name, StringPrefix, the string, NUL.
    fn name_string(name: &[u8; 4], value: &str) -> Vec<u8> {
        let mut b = vec![0x08];
        b.extend_from_slice(name);
        b.push(0x0d);
        b.extend_from_slice(value.as_bytes());
        b.push(0);
        b
    }

    /// A one-byte PkgLength (bits 7-6 zero: at most 63 bytes, itself included) in front
    /// of `body`.
    fn with_pkg_length(body: Vec<u8>) -> Vec<u8> {
        let len = body.len() + 1;
        assert!(len < 64, "{len} needs a longer PkgLength");
        let mut b = vec![len as u8];
        b.extend(body);
        b
    }

    /// The AML, byte for byte, written out from the ACPI specification's encoding
    /// (section 20, "AML Specification") rather than from the encoder under test.
    fn expected(addr_low: &[u8], addr_high: &[u8], gsi: u32, gsi_term: &[u8]) -> Vec<u8> {
        // Device (VGEN) { _HID, _CID, _DDN, Method (ADDR, 0) { Return (Package (2) {..}) } }
        let mut package = vec![0x02]; // NumElements
        package.extend_from_slice(addr_low);
        package.extend_from_slice(addr_high);
        let mut method = b"ADDR".to_vec();
        method.push(0x00); // MethodFlags: no arguments, not serialized
        method.push(0xa4); // ReturnOp
        method.push(0x12); // PackageOp
        method.extend(with_pkg_length(package));
        let mut vgen = b"VGEN".to_vec();
        vgen.extend(name_string(b"_HID", "VMGENCTR"));
        vgen.extend(name_string(b"_CID", "VM_Gen_Counter"));
        vgen.extend(name_string(b"_DDN", "VM_Gen_Counter"));
        vgen.push(0x14); // MethodOp
        vgen.extend(with_pkg_length(method));
        // DeviceOp, with a two-byte PkgLength: VGEN is longer than 63 bytes.
        let len = vgen.len() + 2;
        let mut out = vec![0x5b, 0x82, 0x40 | (len & 0xf) as u8, (len >> 4) as u8];
        out.extend(vgen);

        // Device (GED_) { _HID, _CRS, Method (_EVT, 1, Serialized) { If (Arg0 == gsi)
        // { Notify (\_SB_.VGEN, 0x80) } } }
        let mut ged = b"GED_".to_vec();
        ged.extend(name_string(b"_HID", "ACPI0013"));
        // Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge,
        // ActiveHigh, Exclusive) { gsi } }): a buffer of the descriptor and an end tag.
        let mut descriptor = vec![0x89, 0x06, 0x00, 0b0000_0011, 0x01];
        descriptor.extend_from_slice(&gsi.to_le_bytes());
        descriptor.extend_from_slice(&[0x79, 0x00]); // EndTag, checksum 0
        let mut buffer = vec![0x0a, descriptor.len() as u8]; // BufferSize as a byte
        buffer.extend(descriptor);
        ged.extend_from_slice(b"\x08_CRS\x11");
        ged.extend(with_pkg_length(buffer));
        let mut then = vec![0x93, 0x68]; // LEqualOp Arg0
        then.extend_from_slice(gsi_term);
        then.push(0x86); // NotifyOp
        then.extend_from_slice(b"\\\x2e_SB_VGEN"); // root, DualNamePrefix, two segments
        then.extend_from_slice(&[0x0a, 0x80]); // BytePrefix 0x80
        let mut evt = b"_EVT".to_vec();
        evt.push(0x09); // MethodFlags: one argument, serialized
        evt.push(0xa0); // IfOp
        evt.extend(with_pkg_length(then));
        ged.push(0x14);
        ged.extend(with_pkg_length(evt));
        let len = ged.len() + 2;
        out.extend_from_slice(&[0x5b, 0x82, 0x40 | (len & 0xf) as u8, (len >> 4) as u8]);
        out.extend(ged);
        out
    }

    #[test]
    fn the_devices_are_encoded_as_the_specification_says() {
        let aml = aml_of(VmGenIdAcpi {
            addr: 0xd_f000,
            gsi: 23,
        });
        // 0xdf000 needs a DWordPrefix, the high half is ZeroOp; GSI 23 is a BytePrefix.
        let want = expected(&[0x0c, 0x00, 0xf0, 0x0d, 0x00], &[0x00], 23, &[0x0a, 23]);
        assert_eq!(aml, want, "\n got: {aml:02x?}\nwant: {want:02x?}");
    }

    #[test]
    fn an_address_above_4_gib_has_both_halves() {
        let aml = aml_of(VmGenIdAcpi {
            addr: 0x1_2345_6000,
            gsi: 23,
        });
        // Low half 0x23456000 (DWordPrefix), high half 1 (OneOp).
        let want = expected(&[0x0c, 0x00, 0x60, 0x45, 0x23], &[0x01], 23, &[0x0a, 23]);
        assert_eq!(aml, want, "\n got: {aml:02x?}\nwant: {want:02x?}");
    }
}
