//! A minimal MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data).
//!
//! Linux reads it once at boot for the wall-clock time. This module owns the register file
//! and the conversion of a UNIX time into the RTC's calendar registers; the time itself
//! comes from an injected clock (the host's UTC clock by default), so the device does no
//! I/O and keeps no timers. There are no interrupts: the periodic, alarm and update-ended
//! flags never rise.
//!
//! Registers:
//! - 0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 day of week (1 = Sunday), 0x07 day of
//!   month, 0x08 month, 0x09 year (two digits), 0x32 century: read from the clock, in BCD
//!   unless register B selects binary, 24-hour unless register B selects 12-hour (then
//!   bit 7 of the hours is PM). Guest writes to them are ignored: the host clock rules.
//! - 0x0a register A: divider and rate, writable; update-in-progress always reads clear.
//! - 0x0b register B: writable (data mode, 12/24-hour, ...); 0x02 (BCD, 24-hour) at reset.
//! - 0x0c register C: reads 0 (no interrupt flags). 0x0d register D: reads 0x80 (time
//!   and RAM valid). Both ignore writes.
//! - 0x01, 0x03, 0x05 (alarms) and every other byte up to 0x7f: plain NVRAM.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Offset of the index port (0x70) in the device's range.
pub const INDEX_OFFSET: u64 = 0;
/// Offset of the data port (0x71) in the device's range.
pub const DATA_OFFSET: u64 = 1;

/// Bytes of CMOS: registers and NVRAM, addressed by the low 7 bits of the index.
const CMOS_SIZE: usize = 128;
/// Index bit 7: the NMI mask, which shares the index port.
const NMI_MASK: u8 = 0x80;
/// What reads of the write-only index port (and of offsets past the data port) return.
const OPEN_BUS: u8 = 0xff;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// Register A: update in progress.
const REG_A_UIP: u8 = 0x80;
/// Register A at reset: 32.768 kHz time base, 1024 Hz periodic rate.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: data mode binary (clear: BCD).
const REG_B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode (clear: 12-hour).
const REG_B_24H: u8 = 0x02;
/// Register B at reset: BCD, 24-hour.
const REG_B_DEFAULT: u8 = REG_B_24H;
/// Register D: valid RAM and time.
const REG_D_VRT: u8 = 0x80;
/// Hours bit 7 in 12-hour mode: PM.
const HOURS_PM: u8 = 0x80;

/// A clock returning seconds since the UNIX epoch (UTC).
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// A UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: i64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// 0 = Sunday ..= 6 = Saturday.
    pub weekday: u8,
}

/// The proleptic Gregorian UTC date and time `secs` seconds after 1970-01-01 00:00:00.
///
/// Works for every `i64` without overflow (days are counted in 400-year eras).
pub fn civil_from_unix(secs: i64) -> DateTime {
    const SECS_PER_DAY: i64 = 86_400;
    const DAYS_PER_ERA: i64 = 146_097; // 400 years
    let days = secs.div_euclid(SECS_PER_DAY);
    let time = secs.rem_euclid(SECS_PER_DAY);

    // Count from 0000-03-01 so the leap day ends each year: 719_468 days before 1970-01-01.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(DAYS_PER_ERA);
    let day_of_era = shifted.rem_euclid(DAYS_PER_ERA); // 0..=146_096
    // Years into the era: take out the leap days of every 4th, 100th and 400th year.
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524
        - day_of_era / (DAYS_PER_ERA - 1))
        / 365; // 0..=399
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, whose lengths repeat 31,30,31,30,31 every five months.
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + i64::from(month <= 2);

    // 1970-01-01 was a Thursday.
    let weekday = (days + 4).rem_euclid(7);
    // Every value below is bounded (see the ranges above), so the casts are exact.
    DateTime {
        year,
        month: month as u8,
        day: day as u8,
        hour: (time / 3_600) as u8,
        minute: (time / 60 % 60) as u8,
        second: (time % 60) as u8,
        weekday: weekday as u8,
    }
}

/// Seconds since the UNIX epoch by the host's clock (negative before 1970).
fn host_clock() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// `value` (0..=99) in packed BCD.
fn to_bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// The RTC's registers in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcState {
    /// Selected register.
    pub index: u8,
    /// NMI mask bit.
    pub nmi_masked: bool,
    /// Register file and NVRAM.
    pub cmos: Vec<u8>,
}

/// The CMOS RTC and NVRAM; see the module docs for the registers.
///
/// Bus accesses of any width act on the one port at their offset: a write takes its first
/// byte, a read fills every byte with the value. Reading the index port returns 0xff (it is
/// write-only on real hardware). Offsets past the data port read 0xff and ignore writes.
pub struct Rtc {
    /// Selected register, 0..=0x7f.
    index: u8,
    /// The NMI mask bit last written with the index; kept, otherwise ignored.
    nmi_masked: bool,
    /// Register file and NVRAM; the clock registers, C and D are not read from here.
    cmos: [u8; CMOS_SIZE],
    /// Source of the time.
    clock: Clock,
}

impl Rtc {
    /// An RTC following the host's UTC clock.
    pub fn new() -> Self {
        Self::with_clock(Box::new(host_clock))
    }

    /// An RTC following `clock` (seconds since the UNIX epoch, UTC).
    pub fn with_clock(clock: Clock) -> Self {
        let mut cmos = [0; CMOS_SIZE];
        cmos[usize::from(REG_A)] = REG_A_DEFAULT;
        cmos[usize::from(REG_B)] = REG_B_DEFAULT;
        Self {
            index: 0,
            nmi_masked: false,
            cmos,
            clock,
        }
    }

    /// The selected register, NMI mask and CMOS bytes, for a snapshot. The time is not
    /// part of it: a restored RTC follows the host clock.
    pub fn state(&self) -> RtcState {
        RtcState {
            index: self.index,
            nmi_masked: self.nmi_masked,
            cmos: self.cmos.to_vec(),
        }
    }

    /// Take the registers of a snapshot; a CMOS image of the wrong size is refused.
    pub fn restore(&mut self, state: &RtcState) -> Result<(), String> {
        if state.cmos.len() != CMOS_SIZE || state.index as usize >= CMOS_SIZE {
            return Err(format!(
                "RTC state: {} CMOS bytes, index {:#x} (expected {CMOS_SIZE} bytes)",
                state.cmos.len(),
                state.index
            ));
        }
        self.index = state.index;
        self.nmi_masked = state.nmi_masked;
        self.cmos.copy_from_slice(&state.cmos);
        Ok(())
    }

    /// Whether the guest last wrote the index with the NMI mask bit set. Informational
    /// only: NMIs are not gated by it.
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// The value of register `reg` (0..=0x7f).
    fn read_register(&self, reg: u8) -> u8 {
        match reg {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                self.clock_register(reg)
            }
            REG_A => self.cmos[usize::from(REG_A)] & !REG_A_UIP,
            REG_C => 0,
            REG_D => REG_D_VRT,
            _ => self.cmos[usize::from(reg)],
        }
    }

    /// Take a guest write of `value` to register `reg` (0..=0x7f).
    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                log::debug!("rtc: ignoring write of {value:#x} to clock register {reg:#x}");
            }
            REG_A => self.cmos[usize::from(REG_A)] = value & !REG_A_UIP,
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(reg)] = value,
        }
    }

    /// A clock register, read from the clock now and encoded as register B asks.
    fn clock_register(&self, reg: u8) -> u8 {
        let now = civil_from_unix((self.clock)());
        let reg_b = self.cmos[usize::from(REG_B)];
        let encode = |value: u8| {
            if reg_b & REG_B_DM_BINARY != 0 {
                value
            } else {
                to_bcd(value)
            }
        };
        match reg {
            SECONDS => encode(now.second),
            MINUTES => encode(now.minute),
            HOURS if reg_b & REG_B_24H != 0 => encode(now.hour),
            HOURS => {
                // 12-hour mode: 12 AM, 1..=11 AM, 12 PM, 1..=11 PM.
                let hour = match now.hour % 12 {
                    0 => 12,
                    h => h,
                };
                let pm = if now.hour >= 12 { HOURS_PM } else { 0 };
                encode(hour) | pm
            }
            DAY_OF_WEEK => encode(now.weekday + 1),
            DAY_OF_MONTH => encode(now.day),
            MONTH => encode(now.month),
            YEAR => encode(now.year.rem_euclid(100) as u8),
            // Years outside 0..=9999 wrap; the register has two digits.
            _ => encode(now.year.div_euclid(100).rem_euclid(100) as u8),
        }
    }
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.read_register(self.index),
            _ => OPEN_BUS,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            INDEX_OFFSET => {
                self.index = value & !NMI_MASK;
                self.nmi_masked = value & NMI_MASK != 0;
            }
            DATA_OFFSET => self.write_register(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// 2026-11-25 04:31:07 UTC, a Wednesday.
    const WEDNESDAY: i64 = 1_795_581_067;

    fn rtc_at(secs: i64) -> Rtc {
        Rtc::with_clock(Box::new(move || secs))
    }

    fn read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(INDEX_OFFSET, &[reg]);
        let mut data = [0u8];
        rtc.read(DATA_OFFSET, &mut data);
        data[0]
    }

    fn write(rtc: &mut Rtc, reg: u8, value: u8) {
        rtc.write(INDEX_OFFSET, &[reg]);
        rtc.write(DATA_OFFSET, &[value]);
    }

    /// (seconds, minutes, hours, weekday, day, month, year, century) as the guest reads them.
    fn clock(rtc: &mut Rtc) -> [u8; 8] {
        [
            SECONDS,
            MINUTES,
            HOURS,
            DAY_OF_WEEK,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ]
        .map(|reg| read(rtc, reg))
    }

    #[test]
    fn reads_the_time_in_bcd_by_default() {
        let mut rtc = rtc_at(WEDNESDAY);
        assert_eq!(read(&mut rtc, REG_B), 0x02);
        assert_eq!(
            clock(&mut rtc),
            [0x07, 0x31, 0x04, 0x04, 0x25, 0x11, 0x26, 0x20]
        );
    }

    #[test]
    fn reads_the_time_in_binary_when_register_b_asks() {
        let mut rtc = rtc_at(WEDNESDAY);
        write(&mut rtc, REG_B, REG_B_DM_BINARY | REG_B_24H);
        assert_eq!(read(&mut rtc, REG_B), 0x06);
        assert_eq!(clock(&mut rtc), [7, 31, 4, 4, 25, 11, 26, 20]);
    }

    #[test]
    fn twelve_hour_mode_sets_pm_bit() {
        for (hour, bcd, binary) in [
            (0, 0x12, 12),
            (4, 0x04, 4),
            (12, 0x92, 0x8c),
            (23, 0x91, 0x8b),
        ] {
            let mut rtc = rtc_at(WEDNESDAY - 4 * 3600 + hour * 3600);
            write(&mut rtc, REG_B, 0);
            assert_eq!(read(&mut rtc, HOURS), bcd, "hour {hour} in BCD");
            write(&mut rtc, REG_B, REG_B_DM_BINARY);
            assert_eq!(read(&mut rtc, HOURS), binary, "hour {hour} in binary");
        }
    }

    #[test]
    fn follows_the_clock() {
        let now = Arc::new(AtomicI64::new(WEDNESDAY));
        let source = now.clone();
        let mut rtc = Rtc::with_clock(Box::new(move || source.load(Ordering::Relaxed)));
        assert_eq!(read(&mut rtc, SECONDS), 0x07);
        now.store(WEDNESDAY + 60, Ordering::Relaxed);
        assert_eq!(
            (read(&mut rtc, SECONDS), read(&mut rtc, MINUTES)),
            (0x07, 0x32)
        );
    }

    #[test]
    fn leap_days_and_centuries() {
        // 2024-02-29 23:59:59, a Thursday.
        let mut rtc = rtc_at(1_709_251_199);
        assert_eq!(
            clock(&mut rtc),
            [0x59, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        // 2000-02-29 12:00:00, a Tuesday: 2000 is a leap year.
        let mut rtc = rtc_at(951_825_600);
        assert_eq!(
            clock(&mut rtc),
            [0x00, 0x00, 0x12, 0x03, 0x29, 0x02, 0x00, 0x20]
        );
        // 2100-03-01 00:00:00, a Monday: 2100 is not, so it follows 2100-02-28.
        let mut rtc = rtc_at(4_107_542_400);
        assert_eq!(
            clock(&mut rtc),
            [0x00, 0x00, 0x00, 0x02, 0x01, 0x03, 0x00, 0x21]
        );
        let mut rtc = rtc_at(4_107_542_400 - 1);
        assert_eq!(read(&mut rtc, DAY_OF_MONTH), 0x28);
        // 1999-12-31 13:05:09, a Friday.
        let mut rtc = rtc_at(946_645_509);
        assert_eq!(
            clock(&mut rtc),
            [0x09, 0x05, 0x13, 0x06, 0x31, 0x12, 0x99, 0x19]
        );
    }

    #[test]
    fn civil_dates_match_libc() {
        let mut secs = -5_000_000_000_i64;
        while secs < 10_000_000_000 {
            // SAFETY: an all-zero `tm` is valid (the pointer field is null).
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            let t: libc::time_t = secs;
            // SAFETY: both pointers are to live locals; gmtime_r writes only `tm`.
            assert!(!unsafe { libc::gmtime_r(&t, &mut tm) }.is_null());
            let expected = DateTime {
                year: i64::from(tm.tm_year) + 1900,
                month: (tm.tm_mon + 1) as u8,
                day: tm.tm_mday as u8,
                hour: tm.tm_hour as u8,
                minute: tm.tm_min as u8,
                second: tm.tm_sec as u8,
                weekday: tm.tm_wday as u8,
            };
            assert_eq!(civil_from_unix(secs), expected, "at {secs}");
            secs += 7_777_777;
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        for secs in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX] {
            let mut rtc = rtc_at(secs);
            let _ = clock(&mut rtc);
        }
        let epoch = civil_from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 4)
        );
        let before = civil_from_unix(-1);
        assert_eq!(
            (before.year, before.month, before.day, before.second),
            (1969, 12, 31, 59)
        );
    }

    #[test]
    fn status_registers() {
        let mut rtc = rtc_at(WEDNESDAY);
        assert_eq!(read(&mut rtc, REG_A), 0x26);
        assert_eq!(read(&mut rtc, REG_C), 0);
        assert_eq!(read(&mut rtc, REG_D), 0x80);
        // A keeps what the guest writes except update-in-progress; C and D ignore writes.
        write(&mut rtc, REG_A, 0xa6);
        assert_eq!(read(&mut rtc, REG_A), 0x26);
        write(&mut rtc, REG_A, 0x20);
        assert_eq!(read(&mut rtc, REG_A), 0x20);
        write(&mut rtc, REG_C, 0xff);
        write(&mut rtc, REG_D, 0x00);
        assert_eq!((read(&mut rtc, REG_C), read(&mut rtc, REG_D)), (0, 0x80));
    }

    #[test]
    fn clock_registers_ignore_writes() {
        let mut rtc = rtc_at(WEDNESDAY);
        for reg in [
            SECONDS,
            MINUTES,
            HOURS,
            DAY_OF_WEEK,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ] {
            write(&mut rtc, reg, 0x55);
        }
        assert_eq!(
            clock(&mut rtc),
            [0x07, 0x31, 0x04, 0x04, 0x25, 0x11, 0x26, 0x20]
        );
    }

    #[test]
    fn nvram_and_alarms_keep_what_is_written() {
        let mut rtc = rtc_at(WEDNESDAY);
        let storage: Vec<u8> = [0x01, 0x03, 0x05]
            .into_iter()
            .chain((0x0e..0x80).filter(|&reg| reg != CENTURY))
            .collect();
        for &reg in &storage {
            assert_eq!(read(&mut rtc, reg), 0, "register {reg:#x} starts clear");
            write(&mut rtc, reg, reg ^ 0xa5);
        }
        for &reg in &storage {
            assert_eq!(read(&mut rtc, reg), reg ^ 0xa5, "register {reg:#x}");
        }
    }

    #[test]
    fn nmi_bit_does_not_change_the_index() {
        let mut rtc = rtc_at(WEDNESDAY);
        rtc.write(INDEX_OFFSET, &[NMI_MASK | 0x40]);
        assert!(rtc.nmi_masked());
        rtc.write(DATA_OFFSET, &[0x5a]);
        assert_eq!(read(&mut rtc, 0x40), 0x5a);
        assert!(!rtc.nmi_masked());
        rtc.write(INDEX_OFFSET, &[NMI_MASK | MINUTES]);
        let mut data = [0u8];
        rtc.read(DATA_OFFSET, &mut data);
        assert_eq!(data, [0x31]);
    }

    #[test]
    fn accesses_of_any_width() {
        let mut rtc = rtc_at(WEDNESDAY);
        rtc.write(INDEX_OFFSET, &[DAY_OF_MONTH, 0xee, 0xee, 0xee]);
        let mut wide = [0u8; 4];
        rtc.read(DATA_OFFSET, &mut wide);
        assert_eq!(wide, [0x25; 4]);
        // The index port is write-only and reads as open bus.
        rtc.read(INDEX_OFFSET, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        // Wide writes to the data port take their first byte.
        rtc.write(INDEX_OFFSET, &[0x20]);
        rtc.write(DATA_OFFSET, &[0x12, 0x34]);
        assert_eq!(read(&mut rtc, 0x20), 0x12);

        // Empty accesses and offsets past the data port change nothing and do not panic.
        rtc.write(INDEX_OFFSET, &[0x20]);
        rtc.write(INDEX_OFFSET, &[]);
        rtc.write(DATA_OFFSET, &[]);
        rtc.read(DATA_OFFSET, &mut []);
        rtc.read(INDEX_OFFSET, &mut []);
        for offset in [2, 7, u64::MAX] {
            rtc.write(offset, &[0x77]);
            rtc.read(offset, &mut wide);
            assert_eq!(wide, [0xff; 4]);
        }
        assert_eq!(read(&mut rtc, 0x20), 0x12);
    }

    #[test]
    fn host_clock_is_after_2020() {
        let mut rtc = Rtc::new();
        assert_eq!(read(&mut rtc, CENTURY), 0x20);
        assert!(read(&mut rtc, YEAR) >= 0x20);
    }
}
