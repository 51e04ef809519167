//! Ports Linux probes on a PC that a VM without PCI answers trivially.
//!
//! - PCI configuration mechanism #1 (0xcf8..0xcff): while the VM has no PCI bus, every read
//!   is all-ones ("no device") and writes are dropped, so the guest finds no host bridge.
//! - POST diagnostic port 0x80: the kernel writes it as an I/O delay; writes are dropped and
//!   reads are all-ones.

use crate::bus::BusDevice;

/// PCI config address/data ports.
pub const PCI_CONFIG_BASE: u64 = 0xcf8;
/// Length of the PCI config window (address + data).
pub const PCI_CONFIG_LEN: u64 = 8;
/// POST code / I/O delay port.
pub const POST_PORT: u64 = 0x80;

/// Answers every read with all-ones and ignores writes.
#[derive(Debug, Default)]
pub struct AllOnes;

impl BusDevice for AllOnes {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_probe_sees_no_host_bridge() {
        let mut dev = AllOnes;
        dev.write(0, &0x8000_0000u32.to_le_bytes());
        let mut addr = [0u8; 4];
        dev.read(0, &mut addr);
        // Linux's type-1 check reads the address register back: it must not match.
        assert_ne!(u32::from_le_bytes(addr), 0x8000_0000);
        let mut data = [0u8; 4];
        dev.read(4, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0xffff_ffff);
    }
}
