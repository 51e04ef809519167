//! Port-I/O and MMIO buses: map an exit's address to the device that owns it.
//!
//! A [`Bus`] holds non-overlapping address ranges, each owned by one device. The vCPU exit
//! path looks the address up and calls the device with the offset inside its range.
//! Insertion refuses any overlap, so one address always has at most one owner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes on a bus.
///
/// Devices hold logic only; what they need (guest memory, an interrupt line, an output
/// stream) is handed to them when they are built.
pub trait BusDevice: Send {
    /// Fill `data` with the value read at `offset` bytes into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Take the value `data` written at `offset` bytes into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the vCPU threads and the event loop.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus insertion.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// First address of the range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// The range overlaps one that is already taken.
    #[error("bus range {base:#x}+{len:#x} overlaps {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// First address of the refused range.
        base: u64,
        /// Its length.
        len: u64,
        /// First address of the range it overlaps.
        other_base: u64,
        /// Length of the range it overlaps.
        other_len: u64,
    },
}

/// An address space (PIO or MMIO) of non-overlapping device ranges.
#[derive(Default, Clone)]
pub struct Bus {
    /// Keyed by the first address of each range: (length, device).
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Give `device` the range `[base, base + len)`; refuses empty ranges and overlaps.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let last = base
            .checked_add(len.wrapping_sub(1))
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The only ranges that can overlap are the last one starting at or before `last`.
        if let Some((&other_base, (other_len, _))) = self.ranges.range(..=last).next_back()
            && other_base + (other_len - 1) >= base
        {
            return Err(BusError::Overlap {
                base,
                len,
                other_base,
                other_len: *other_len,
            });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device owning `addr` and the offset of `addr` inside its range.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, (len, device)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then_some((device, offset))
    }

    /// Dispatch a read; returns false (leaving `data` untouched) when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, going on with its state if another thread panicked while holding it:
/// device state is plain data, and one failed access must not stop the whole VM.
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access so tests can see which device got it and at what offset.
    #[derive(Default)]
    struct Probe {
        last: Option<(bool, u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.last = Some((false, offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((true, offset, data.to_vec()));
        }
    }

    fn probe() -> (Arc<Mutex<Probe>>, SharedDevice) {
        let p = Arc::new(Mutex::new(Probe::default()));
        let shared: SharedDevice = p.clone();
        (p, shared)
    }

    #[test]
    fn refuses_overlaps_on_every_side() {
        let mut bus = Bus::new();
        bus.insert(probe().1, 0x100, 0x10).unwrap();
        for (base, len) in [
            (0x0f8, 0x10),
            (0x108, 0x10),
            (0x104, 2),
            (0x0f0, 0x100),
            (0x10f, 1),
        ] {
            assert!(
                matches!(
                    bus.insert(probe().1, base, len),
                    Err(BusError::Overlap {
                        other_base: 0x100,
                        ..
                    })
                ),
                "{base:#x}+{len:#x} should overlap"
            );
        }
        // Touching ranges on either side are fine.
        bus.insert(probe().1, 0x0f0, 0x10).unwrap();
        bus.insert(probe().1, 0x110, 0x10).unwrap();
    }

    #[test]
    fn refuses_empty_and_wrapping_ranges() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(probe().1, 0x10, 0),
            Err(BusError::InvalidRange { base: 0x10, len: 0 })
        );
        assert!(bus.insert(probe().1, u64::MAX, 2).is_err());
        bus.insert(probe().1, u64::MAX, 1).unwrap();
    }

    #[test]
    fn dispatches_with_offset_inside_range() {
        let mut bus = Bus::new();
        let (a, shared_a) = probe();
        let (b, shared_b) = probe();
        bus.insert(shared_a, 0x3f8, 8).unwrap();
        bus.insert(shared_b, 0x60, 1).unwrap();

        assert!(bus.write(0x3fb, &[0x80]));
        assert_eq!(a.lock().unwrap().last, Some((true, 3, vec![0x80])));
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(b.lock().unwrap().last.is_none());

        // Just outside either range: nobody answers and the buffer is untouched.
        let mut data = [0xaa; 2];
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(0x61, &mut data));
        assert!(!bus.write(0x3f7, &[1]));
        assert_eq!(data, [0xaa; 2]);
    }
}
