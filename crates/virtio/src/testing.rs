//! Test helpers for device models (feature `test-utils`): guest memory, an [`Interrupt`]
//! that counts, and a driver that speaks the MMIO transport's registers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vm_memory::GuestAddress;

use crate::device::{Interrupt, VmMemory};
use crate::mmio::{MmioTransport, status};

/// Guest memory of `size` bytes at guest address 0.
pub fn guest_memory(size: usize) -> Arc<VmMemory> {
    Arc::new(VmMemory::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory"))
}

/// An interrupt line that counts what it was asked to signal.
#[derive(Default)]
pub struct TestInterrupt {
    /// Used-buffer notifications, per call.
    pub used: AtomicUsize,
    /// Configuration-change notifications.
    pub config: AtomicUsize,
    /// Whether a worker reported a fatal error.
    pub failed: AtomicBool,
}

impl TestInterrupt {
    /// How many used-buffer notifications so far.
    pub fn used_count(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

impl Interrupt for TestInterrupt {
    fn signal_used_queue(&self, _index: usize) -> std::io::Result<()> {
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn signal_config_change(&self) -> std::io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn device_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// A driver's view of an [`MmioTransport`]: 32-bit register reads and writes.
pub struct MmioDriver<'a>(pub &'a mut MmioTransport);

impl MmioDriver<'_> {
    /// Read a 32-bit register.
    pub fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.0.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Write a 32-bit register.
    pub fn write(&mut self, offset: u64, v: u32) {
        self.0.write(offset, &v.to_le_bytes());
    }

    /// The 64-bit feature set the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.write(0x14, 0);
        let lo = self.read(0x10);
        self.write(0x14, 1);
        let hi = self.read(0x10);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Reset, acknowledge, offer `features` and set FEATURES_OK. Returns whether the
    /// device kept FEATURES_OK (accepted the features).
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write(0x70, 0);
        self.write(0x70, status::ACKNOWLEDGE);
        self.write(0x70, status::ACKNOWLEDGE | status::DRIVER);
        self.write(0x24, 0);
        self.write(0x20, features as u32);
        self.write(0x24, 1);
        self.write(0x20, (features >> 32) as u32);
        self.write(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.read(0x70) & status::FEATURES_OK != 0
    }

    /// Set up queue `index` with `size` entries at the given ring addresses and enable it.
    pub fn setup_queue(&mut self, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
        self.write(0x30, index);
        self.write(0x38, size);
        for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            self.write(reg, addr as u32);
            self.write(reg + 4, (addr >> 32) as u32);
        }
        self.write(0x44, 1);
    }

    /// Set DRIVER_OK.
    pub fn driver_ok(&mut self) {
        self.write(
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }
}
