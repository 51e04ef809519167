//! The devices the DSDT lists in `\_SB_`, and how they encode as AML.
//!
//! A [`DsdtDevice`] is a named device with a hardware id, a unique id and the resources its
//! `_CRS` lists ([`DsdtResource`]: I/O ports, a 32-bit MMIO window, an interrupt line with
//! its [`IrqTrigger`] and [`IrqPolarity`]). This module owns their description, the
//! validation of their names and ids, and their `Aml` encodings; the parent module puts
//! them into the DSDT and writes the tables (see there for why the ISA devices must be
//! listed at all).

use acpi_tables::{Aml, AmlSink, aml};

use super::AcpiError;

/// When an interrupt line signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqTrigger {
    /// On an edge (ISA devices, KVM irqfds).
    Edge,
    /// While the line is asserted.
    Level,
}

/// Which level or edge of an interrupt line is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqPolarity {
    /// High level or rising edge (ISA devices).
    ActiveHigh,
    /// Low level or falling edge (PCI INTx).
    ActiveLow,
}

/// One resource a device decodes, as its `_CRS` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsdtResource {
    /// I/O ports `[base, base + len)`, 16-bit decode.
    Io {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u8,
    },
    /// A read-write MMIO window `[base, base + len)` below 4 GiB.
    Mmio32 {
        /// First address.
        base: u32,
        /// Length in bytes.
        len: u32,
    },
    /// An interrupt line, by its GSI (= IOAPIC pin).
    Interrupt {
        /// Global system interrupt.
        gsi: u32,
        /// Edge or level.
        trigger: IrqTrigger,
        /// Active high or low.
        polarity: IrqPolarity,
        /// Other devices raise it too (their drivers must take it shared).
        shared: bool,
    },
}

impl Aml for DsdtResource {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        match *self {
            Self::Io { base, len } => {
                // Fixed range: minimum = maximum = base, byte aligned.
                aml::IO::new(base, base, 1, len).to_aml_bytes(sink);
            }
            Self::Mmio32 { base, len } => {
                aml::Memory32Fixed::new(true, base, len).to_aml_bytes(sink);
            }
            Self::Interrupt {
                gsi,
                trigger,
                polarity,
                shared,
            } => aml::Interrupt::new(
                true,
                trigger == IrqTrigger::Edge,
                polarity == IrqPolarity::ActiveLow,
                shared,
                gsi,
            )
            .to_aml_bytes(sink),
        }
    }
}

/// A device in the DSDT's `\_SB_` scope: `Device (NAME) { _HID, _UID, _CRS }`.
///
/// Build one with [`DsdtDevice::new`] and [`DsdtDevice::with_resource`], or with the
/// constructors for the PC devices Vireo has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsdtDevice {
    /// Four-character ACPI name, validated.
    name: String,
    /// Hardware id, validated.
    hid: String,
    /// Whether `hid` is a PNP id (encoded as a compressed EISA id) or an ACPI id (a string).
    hid_is_pnp: bool,
    /// Unique id among the devices with the same `hid`.
    uid: u32,
    /// What `_CRS` lists, in order; no `_CRS` when empty.
    resources: Vec<DsdtResource>,
}

/// Whether `name` is a valid four-character ACPI name segment.
fn is_acpi_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 4
        && (bytes[0].is_ascii_uppercase() || bytes[0] == b'_')
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

/// Whether `id` is a PNP id: three uppercase letters and four hex digits ("PNP0501").
fn is_pnp_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 7
        && bytes[..3].iter().all(u8::is_ascii_uppercase)
        && bytes[3..].iter().all(is_upper_hex)
}

/// Whether `id` is an ACPI id: four uppercase letters or digits and four hex digits
/// ("LNRO0005").
fn is_acpi_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 8
        && bytes[..4]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && bytes[4..].iter().all(is_upper_hex)
}

fn is_upper_hex(b: &u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(b)
}

impl DsdtDevice {
    /// A device named `name` (four characters, e.g. "COM1") with hardware id `hid` (a PNP
    /// id such as "PNP0501" or an ACPI id such as "LNRO0005") and unique id `uid`, with no
    /// resources yet.
    pub fn new(name: &str, hid: &str, uid: u32) -> Result<Self, AcpiError> {
        if !is_acpi_name(name) {
            return Err(AcpiError::InvalidName(name.to_owned()));
        }
        let hid_is_pnp = is_pnp_id(hid);
        if !hid_is_pnp && !is_acpi_id(hid) {
            return Err(AcpiError::InvalidHid(hid.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            hid: hid.to_owned(),
            hid_is_pnp,
            uid,
            resources: Vec::new(),
        })
    }

    /// The device with `resource` appended to its `_CRS`.
    pub fn with_resource(mut self, resource: DsdtResource) -> Self {
        self.resources.push(resource);
        self
    }

    /// A 16550A UART ("PNP0501") named `name` at I/O `port` (8 ports), raising the ISA
    /// interrupt `gsi` (edge, active high).
    pub fn uart_16550(name: &str, uid: u32, port: u16, gsi: u32) -> Result<Self, AcpiError> {
        Ok(Self::new(name, "PNP0501", uid)?
            .with_resource(DsdtResource::Io { base: port, len: 8 })
            .with_resource(isa_interrupt(gsi)))
    }

    /// The i8042 keyboard controller ("PNP0303"), named `PS2_`, with its data and
    /// command/status ports and, if it has one, its keyboard interrupt (edge, active high).
    pub fn i8042(data_port: u16, command_port: u16, gsi: Option<u32>) -> Self {
        let mut device = Self {
            name: "PS2_".to_owned(),
            hid: "PNP0303".to_owned(),
            hid_is_pnp: true,
            uid: 0,
            resources: vec![
                DsdtResource::Io {
                    base: data_port,
                    len: 1,
                },
                DsdtResource::Io {
                    base: command_port,
                    len: 1,
                },
            ],
        };
        if let Some(gsi) = gsi {
            device.resources.push(isa_interrupt(gsi));
        }
        device
    }

    /// The MC146818 CMOS RTC ("PNP0B00"), named `RTC_`, at I/O `port` (index and data
    /// ports), without an interrupt: Linux's driver then runs it without alarms.
    pub fn cmos_rtc(port: u16) -> Self {
        Self {
            name: "RTC_".to_owned(),
            hid: "PNP0B00".to_owned(),
            hid_is_pnp: true,
            uid: 0,
            resources: vec![DsdtResource::Io { base: port, len: 2 }],
        }
    }

    /// The device's ACPI name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What its `_CRS` lists.
    pub fn resources(&self) -> &[DsdtResource] {
        &self.resources
    }
}

/// An ISA interrupt line: edge triggered, active high.
fn isa_interrupt(gsi: u32) -> DsdtResource {
    DsdtResource::Interrupt {
        gsi,
        trigger: IrqTrigger::Edge,
        polarity: IrqPolarity::ActiveHigh,
        shared: false,
    }
}

impl Aml for DsdtDevice {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Name and ids were validated when the device was built, so the encoders below,
        // which assert on malformed input, accept them.
        let pnp_hid;
        let acpi_hid;
        let hid: &dyn Aml = if self.hid_is_pnp {
            pnp_hid = aml::EISAName::new(&self.hid);
            &pnp_hid
        } else {
            acpi_hid = self.hid.clone();
            &acpi_hid
        };
        let hid = aml::Name::new("_HID".into(), hid);
        let uid = aml::Name::new("_UID".into(), &self.uid);
        let resources: Vec<&dyn Aml> = self.resources.iter().map(|r| r as &dyn Aml).collect();
        let template = aml::ResourceTemplate::new(resources);
        let crs = aml::Name::new("_CRS".into(), &template);
        let mut children: Vec<&dyn Aml> = vec![&hid, &uid];
        if !self.resources.is_empty() {
            children.push(&crs);
        }
        aml::Device::new(self.name.as_str().into(), children).to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{contains, dsdt_of, pc_devices, setup};
    use super::*;

    #[test]
    fn dsdt_describes_the_devices() {
        // What a virtio-mmio device will look like, next to the PC devices.
        let mut devices = pc_devices();
        devices.push(
            DsdtDevice::new("VR00", "LNRO0005", 0)
                .unwrap()
                .with_resource(DsdtResource::Mmio32 {
                    base: 0xd000_0000,
                    len: 0x1000,
                })
                .with_resource(DsdtResource::Interrupt {
                    gsi: 5,
                    trigger: IrqTrigger::Edge,
                    polarity: IrqPolarity::ActiveHigh,
                    shared: true,
                }),
        );
        devices.push(
            DsdtDevice::new("LVL_", "ABCD00FF", 7)
                .unwrap()
                .with_resource(DsdtResource::Interrupt {
                    gsi: 23,
                    trigger: IrqTrigger::Level,
                    polarity: IrqPolarity::ActiveLow,
                    shared: false,
                }),
        );
        let mem = setup(1, &devices);
        let dsdt = dsdt_of(&mem);

        // ScopeOp, then \_SB_.
        assert!(contains(&dsdt, &[0x10]));
        assert!(contains(&dsdt, b"\\_SB_"));
        for name in ["COM1", "PS2_", "RTC_", "VR00", "LVL_"] {
            // ExtOpPrefix DeviceOp, a package length, then the name.
            assert!(contains(&dsdt, name.as_bytes()), "{name}");
        }
        // _HID: PNP ids compressed (DWordPrefix, EISA id), ACPI ids as strings.
        let eisa = |id: u32| {
            let mut b = vec![0x08, b'_', b'H', b'I', b'D', 0x0c];
            b.extend_from_slice(&id.to_le_bytes());
            b
        };
        assert!(contains(&dsdt, &eisa(0x0105_d041)), "PNP0501");
        assert!(contains(&dsdt, &eisa(0x0303_d041)), "PNP0303");
        assert!(contains(&dsdt, &eisa(0x000b_d041)), "PNP0B00");
        assert!(contains(&dsdt, b"\x08_HID\x0dLNRO0005\x00"));
        assert!(contains(&dsdt, b"\x08_HID\x0dABCD00FF\x00"));
        // _UID 1 for COM1 (OneOp), 7 for LVL_.
        assert!(contains(&dsdt, b"\x08_UID\x01"));
        assert!(contains(&dsdt, b"\x08_UID\x0a\x07"));
        // Resources: I/O descriptors, 32-bit fixed memory, extended interrupts.
        assert!(
            contains(&dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]),
            "COM1 ports"
        );
        assert!(
            contains(&dsdt, &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]),
            "i8042 data"
        );
        assert!(
            contains(&dsdt, &[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]),
            "i8042 command"
        );
        assert!(contains(&dsdt, &[0x47, 1, 0x70, 0, 0x70, 0, 1, 2]), "RTC");
        let irq = |flags: u8, gsi: u32| {
            let mut b = vec![0x89, 6, 0, flags, 1];
            b.extend_from_slice(&gsi.to_le_bytes());
            b
        };
        // Consumer (bit 0), edge (bit 1), active low (bit 2), shared (bit 3).
        assert!(contains(&dsdt, &irq(0b011, 4)), "COM1 IRQ");
        assert!(contains(&dsdt, &irq(0b011, 1)), "keyboard IRQ");
        assert!(contains(&dsdt, &irq(0b1011, 5)), "a shared virtio IRQ");
        assert!(contains(&dsdt, &irq(0b101, 23)), "level, active low");
        let mut mmio = vec![0x86, 9, 0, 1];
        mmio.extend_from_slice(&0xd000_0000u32.to_le_bytes());
        mmio.extend_from_slice(&0x1000u32.to_le_bytes());
        assert!(contains(&dsdt, &mmio));
        // The RTC has no interrupt: only three extended interrupt descriptors for the PC
        // devices and the virtio one, plus the level one.
        assert_eq!(dsdt.windows(3).filter(|w| *w == [0x89, 6, 0]).count(), 4);
    }

    #[test]
    fn devices_without_resources_have_no_crs() {
        let devices = [DsdtDevice::new("_XYZ", "PNP0C0A", 0).unwrap()];
        let mem = setup(1, &devices);
        let dsdt = dsdt_of(&mem);
        assert!(contains(&dsdt, b"_XYZ"));
        assert!(!contains(&dsdt, b"_CRS"));
    }

    #[test]
    fn refuses_bad_names_and_ids() {
        for name in ["", "COM", "COM12", "com1", "1COM", "CO-1", "ÄBC"] {
            assert!(
                matches!(DsdtDevice::new(name, "PNP0501", 0), Err(AcpiError::InvalidName(n)) if n == name),
                "{name:?}"
            );
        }
        for hid in [
            "",
            "PNP050",
            "pnp0501",
            "PNP050G",
            "PN10501",
            "LNRO000G",
            "LNRO00050",
        ] {
            assert!(
                matches!(DsdtDevice::new("DEV0", hid, 0), Err(AcpiError::InvalidHid(h)) if h == hid),
                "{hid:?}"
            );
        }
        assert!(matches!(
            DsdtDevice::uart_16550("com1", 1, 0x3f8, 4),
            Err(AcpiError::InvalidName(_))
        ));
        for name in ["_SB_", "A_9Z", "COM1"] {
            DsdtDevice::new(name, "LNRO0005", 0).unwrap();
        }
        // The fixed names of the PC constructors are valid.
        assert!(is_acpi_name(DsdtDevice::i8042(0x60, 0x64, None).name()));
        assert!(is_acpi_name(DsdtDevice::cmos_rtc(0x70).name()));
    }
}
