//! The hardware-reduced ACPI power-management device: how the guest powers off or resets
//! the machine once it runs with ACPI.
//!
//! A hardware-reduced ACPI platform has no PM1 event/control blocks; the FADT instead points
//! at three 8-bit registers (ACPI 6.5, 4.8.3.6-4.8.3.7 and 4.8.4.6), which this device owns
//! on the port-I/O bus at [`ACPI_PM_BASE`]:
//!
//! | port  | offset                   | register       | guest access                        |
//! |-------|--------------------------|----------------|-------------------------------------|
//! | 0x600 | [`SLEEP_CONTROL_OFFSET`] | sleep control  | SLP_TYP (bits 2-4), SLP_EN (bit 5)  |
//! | 0x601 | [`SLEEP_STATUS_OFFSET`]  | sleep status   | WAK_STS (bit 7), write 1 to clear   |
//! | 0x602 | [`RESET_OFFSET`]         | reset register | [`RESET_VALUE`] resets the machine  |
//! | 0x603 | -                        | reserved       | reads 0, writes ignored             |
//!
//! What the guest can ask for, and what happens:
//! - Power off (S5): SLP_EN with SLP_TYP = [`S5_SLP_TYP`], the value the DSDT's `\_S5_`
//!   object hands the guest. The device fires its stop trigger.
//! - Reset: [`RESET_VALUE`] written to the reset register (Linux's `reboot=acpi`, its
//!   default). Vireo exits when the guest resets, so this signals the same eventfd.
//! - Any other sleep state (S1-S4): the DSDT offers none, so only a confused guest asks.
//!   The request is logged (once per SLP_TYP) and answered as an immediate wake-up: WAK_STS
//!   rises, which ends the guest's wait for the wake-up (ACPICA polls WAK_STS after writing
//!   the sleep control register and would otherwise spin forever).
//!
//! Accesses wider than a byte are taken one byte per port, as the ports would see them;
//! no offset, width or empty access panics.
//!
//! The port range stays clear of every other PC port Vireo answers or KVM emulates (PIC,
//! PIT, i8042, RTC, POST, ELCR, VGA, COM ports, PCI config), and of the ranges ACPICA refuses
//! to touch.

use vm_superio::Trigger;

use crate::bus::BusDevice;

/// First port of the device, as a 16-bit I/O port number.
const BASE_PORT: u16 = 0x600;
/// First port of the device on the port-I/O bus.
pub const ACPI_PM_BASE: u64 = BASE_PORT as u64;
/// Number of ports the device owns (three registers and a reserved byte).
pub const ACPI_PM_LEN: u64 = 4;

/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;

/// The value that resets the machine when written to the reset register; the FADT's
/// RESET_VALUE. (The same value as a full reset through the PC's port 0xcf9.)
pub const RESET_VALUE: u8 = 0x06;
/// The sleep type (SLP_TYP) meaning S5, soft off: what the DSDT's `\_S5_` package holds
/// and what the device takes as a power-off.
pub const S5_SLP_TYP: u8 = 5;

/// Sleep control register: SLP_TYP field (bits 2-4).
const SLP_TYP_MASK: u8 = 0b0001_1100;
/// Sleep control register: position of the SLP_TYP field.
const SLP_TYP_SHIFT: u8 = 2;
/// Sleep control register: SLP_EN, "enter the sleep state in SLP_TYP now".
const SLP_EN: u8 = 1 << 5;
/// Sleep status register: WAK_STS, the platform has woken up (write 1 to clear).
const WAK_STS: u8 = 1 << 7;

/// The sleep control value that powers the machine off: SLP_TYP = S5 with SLP_EN.
pub const S5_SLEEP_CONTROL: u8 = (S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN;

/// Where the guest finds the device's registers: what the FADT points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPmPorts {
    /// Port of the sleep control register.
    pub sleep_control: u16,
    /// Port of the sleep status register.
    pub sleep_status: u16,
    /// Port of the reset register.
    pub reset: u16,
}

impl AcpiPmPorts {
    /// The registers of a device whose range starts at port `base`.
    pub const fn at(base: u16) -> Self {
        Self {
            sleep_control: base.wrapping_add(SLEEP_CONTROL_OFFSET as u16),
            sleep_status: base.wrapping_add(SLEEP_STATUS_OFFSET as u16),
            reset: base.wrapping_add(RESET_OFFSET as u16),
        }
    }
}

impl Default for AcpiPmPorts {
    /// The registers of the device at [`ACPI_PM_BASE`].
    fn default() -> Self {
        Self::at(BASE_PORT)
    }
}

/// The power-management device, as a bus device.
#[derive(Debug)]
pub struct AcpiPm<T: Trigger> {
    /// Fired when the guest powers off or resets the machine.
    stop: T,
    /// WAK_STS of the sleep status register.
    woken: bool,
    /// Bit n set: a request for SLP_TYP n was logged already.
    logged_sleep_types: u8,
}

impl<T: Trigger> AcpiPm<T> {
    /// A device that fires `stop` when the guest powers off or resets the machine.
    pub fn new(stop: T) -> Self {
        Self {
            stop,
            woken: false,
            logged_sleep_types: 0,
        }
    }

    /// WAK_STS, the one register the guest can observe, for a snapshot.
    pub fn woken(&self) -> bool {
        self.woken
    }

    /// Set WAK_STS from a snapshot.
    pub fn set_woken(&mut self, woken: bool) {
        self.woken = woken;
    }

    fn signal_stop(&self, what: &str) {
        log::info!("acpi: the guest asked for a {what}; stopping the VM");
        if let Err(e) = self.stop.trigger() {
            log::error!("acpi: cannot signal the {what}: {e:?}");
        }
    }

    fn write_sleep_control(&mut self, value: u8) {
        if value & SLP_EN == 0 {
            return;
        }
        let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if sleep_type == S5_SLP_TYP {
            self.signal_stop("power-off (S5)");
            return;
        }
        let bit = 1u8 << sleep_type;
        if self.logged_sleep_types & bit == 0 {
            self.logged_sleep_types |= bit;
            log::warn!(
                "acpi: the guest asked for sleep type {sleep_type}, which Vireo does not \
                 offer; waking it at once"
            );
        }
        self.woken = true;
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        match offset {
            SLEEP_CONTROL_OFFSET => self.write_sleep_control(value),
            // WAK_STS is write-1-to-clear.
            SLEEP_STATUS_OFFSET if value & WAK_STS != 0 => self.woken = false,
            RESET_OFFSET => {
                if value == RESET_VALUE {
                    self.signal_stop("reset");
                } else {
                    log::debug!("acpi: ignoring {value:#04x} written to the reset register");
                }
            }
            _ => {}
        }
    }

    fn read_byte(&self, offset: u64) -> u8 {
        match offset {
            SLEEP_STATUS_OFFSET if self.woken => WAK_STS,
            _ => 0,
        }
    }
}

impl<T: Trigger + Send> BusDevice for AcpiPm<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .map_or(0, |port| self.read_byte(port));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            if let Some(port) = offset.checked_add(i as u64) {
                self.write_byte(port, byte);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::trigger::EventFdTrigger;
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (AcpiPm<EventFdTrigger>, EventFd) {
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            AcpiPm::new(EventFdTrigger::new(stop.try_clone().unwrap())),
            stop,
        )
    }

    fn assert_not_signalled(stop: &EventFd) {
        assert!(stop.read().is_err(), "the stop eventfd was signalled");
    }

    fn read_status(dev: &mut AcpiPm<EventFdTrigger>) -> u8 {
        let mut data = [0xaa];
        dev.read(SLEEP_STATUS_OFFSET, &mut data);
        data[0]
    }

    #[test]
    fn ports_follow_the_base() {
        let ports = AcpiPmPorts::default();
        assert_eq!(
            ports,
            AcpiPmPorts {
                sleep_control: 0x600,
                sleep_status: 0x601,
                reset: 0x602,
            }
        );
        assert_eq!(AcpiPmPorts::at(0x1000).reset, 0x1002);
        assert!(u64::from(ports.reset) < ACPI_PM_BASE + ACPI_PM_LEN);
    }

    #[test]
    fn s5_write_powers_off() {
        let (mut dev, stop) = device();
        assert_eq!(S5_SLEEP_CONTROL, 0x34);
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_CONTROL]);
        assert_eq!(stop.read().unwrap(), 1);
        // Reserved bits set as well do not hide the request.
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_CONTROL | 0xc3]);
        assert_eq!(stop.read().unwrap(), 1);
    }

    #[test]
    fn acpica_power_off_sequence_powers_off() {
        // What ACPICA's extended sleep does: clear WAK_STS, then write SLP_TYP | SLP_EN.
        let (mut dev, stop) = device();
        dev.write(SLEEP_STATUS_OFFSET, &[WAK_STS]);
        assert_not_signalled(&stop);
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_CONTROL]);
        assert_eq!(stop.read().unwrap(), 1);
    }

    #[test]
    fn reset_value_resets() {
        let (mut dev, stop) = device();
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(stop.read().unwrap(), 1);
    }

    #[test]
    fn other_reset_values_do_nothing() {
        let (mut dev, stop) = device();
        for value in [0u8, 1, 0xfe, 0xff, RESET_VALUE ^ 1] {
            dev.write(RESET_OFFSET, &[value]);
        }
        // The reset value written to another register is not a reset either.
        dev.write(SLEEP_STATUS_OFFSET, &[RESET_VALUE]);
        dev.write(3, &[RESET_VALUE]);
        assert_not_signalled(&stop);
    }

    #[test]
    fn s5_without_slp_en_does_nothing() {
        let (mut dev, stop) = device();
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLP_TYP << SLP_TYP_SHIFT]);
        dev.write(SLEEP_CONTROL_OFFSET, &[0]);
        assert_not_signalled(&stop);
        assert_eq!(read_status(&mut dev), 0);
    }

    #[test]
    fn other_sleep_types_wake_at_once() {
        let (mut dev, stop) = device();
        for sleep_type in (0..8u8).filter(|t| *t != S5_SLP_TYP) {
            dev.write(
                SLEEP_CONTROL_OFFSET,
                &[(sleep_type << SLP_TYP_SHIFT) | SLP_EN],
            );
            assert_not_signalled(&stop);
            assert_eq!(read_status(&mut dev), WAK_STS, "sleep type {sleep_type}");
            // Write 1 to clear; writing 0 leaves it.
            dev.write(SLEEP_STATUS_OFFSET, &[0]);
            assert_eq!(read_status(&mut dev), WAK_STS);
            dev.write(SLEEP_STATUS_OFFSET, &[WAK_STS]);
            assert_eq!(read_status(&mut dev), 0);
        }
        // Asking twice logs once but still wakes.
        dev.write(SLEEP_CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(read_status(&mut dev), WAK_STS);
        assert_not_signalled(&stop);
    }

    #[test]
    fn reads_are_zero_but_wake_status() {
        let (mut dev, _stop) = device();
        let mut data = [0xaa; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0; 4]);
        dev.write(SLEEP_CONTROL_OFFSET, &[(1 << SLP_TYP_SHIFT) | SLP_EN]);
        dev.read(0, &mut data);
        assert_eq!(data, [0, WAK_STS, 0, 0]);
    }

    #[test]
    fn wide_accesses_split_into_bytes() {
        let (mut dev, stop) = device();
        // A 16-bit write at the sleep control register also writes the status register.
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_CONTROL, WAK_STS]);
        assert_eq!(stop.read().unwrap(), 1);
        // A 32-bit write whose third byte is the reset value resets.
        dev.write(0, &u32::from_le_bytes([0, 0, RESET_VALUE, 0]).to_le_bytes());
        assert_eq!(stop.read().unwrap(), 1);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut dev, stop) = device();
        dev.write(0, &[]);
        dev.read(0, &mut []);
        for offset in [3, 4, 0xff, u64::MAX - 1, u64::MAX] {
            dev.write(offset, &[S5_SLEEP_CONTROL, RESET_VALUE, 0xff, 0xff]);
            let mut data = [0xaa; 8];
            dev.read(offset, &mut data);
            assert_eq!(data, [0; 8], "offset {offset:#x}");
        }
        let mut big = [0xaa; 64];
        dev.read(0, &mut big);
        dev.write(3, &big);
        assert_not_signalled(&stop);
    }
}
