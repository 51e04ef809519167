//! Firecracker's boot timer (`--boot-timer`): a one-byte MMIO register the guest's init
//! writes 123 to once the guest is up. Vireo then logs, at info level, the wall-clock
//! and process CPU time since the VM was built, in Firecracker's words
//! (`Guest-boot-time = ...`), which boot-time tooling greps for.
//!
//! Only a one-byte write of the magic value at offset 0 counts; anything else a guest
//! writes is ignored, and reads give zeros.

use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// What the guest writes when its boot is done.
pub const BOOT_DONE: u8 = 123;
/// Length of the device's MMIO range.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// The boot timer: started when built, read when the guest signals.
pub struct BootTimer {
    start: Instant,
    start_cpu_us: u64,
    last: Option<Duration>,
}

impl BootTimer {
    /// A timer that starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            start_cpu_us: process_cpu_us(),
            last: None,
        }
    }

    /// The boot time the guest last signalled.
    pub fn boot_time(&self) -> Option<Duration> {
        self.last
    }
}

impl Default for BootTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [BOOT_DONE] {
            return;
        }
        let wall = self.start.elapsed();
        let cpu_us = process_cpu_us().saturating_sub(self.start_cpu_us);
        let us = wall.as_micros();
        log::info!(
            "Guest-boot-time = {us:>6} us {} ms, {cpu_us:>6} CPU us {} CPU ms",
            us / 1000,
            cpu_us / 1000
        );
        self.last = Some(wall);
    }
}

/// CPU time of the whole process (every thread), in microseconds.
fn process_cpu_us() -> u64 {
    crate::metrics::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_stops_the_timer() {
        let mut timer = BootTimer::new();
        timer.write(0, &[BOOT_DONE - 1]);
        timer.write(1, &[BOOT_DONE]);
        timer.write(0, &[BOOT_DONE, 0]);
        timer.write(0, &[BOOT_DONE, 0, 0, 0]);
        assert_eq!(timer.boot_time(), None);
        std::thread::sleep(Duration::from_millis(5));
        timer.write(0, &[BOOT_DONE]);
        let first = timer.boot_time().expect("signalled");
        assert!(first >= Duration::from_millis(5), "{first:?}");
        // Each signal measures again from the build (Firecracker logs every one).
        timer.write(0, &[BOOT_DONE]);
        assert!(timer.boot_time().unwrap() >= first);
    }

    #[test]
    fn reads_are_zero() {
        let mut timer = BootTimer::new();
        let mut data = [0xffu8; 4];
        timer.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
