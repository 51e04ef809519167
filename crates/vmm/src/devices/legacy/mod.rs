//! Legacy PC devices: serial port (and its Unix-socket console), i8042 keyboard controller (reset, Ctrl+Alt+Del), CMOS RTC and the probed-for ports.

pub mod acpi_pm;
pub mod i8042;
pub mod ports;
pub mod rtc;
pub mod serial;
pub mod serial_socket;
pub mod trigger;
