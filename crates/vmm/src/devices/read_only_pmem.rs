//! A read-only pmem region as the MMIO bus sees it.
//!
//! KVM maps a read-only pmem file into the guest with a read-only memory slot: the
//! guest's reads never leave KVM, and its writes become MMIO exits (where KVM can decode
//! the instruction). This device takes them: a write is dropped, with one warning per
//! region (as Firecracker drops and warns), and a read that comes here anyway is
//! answered with the file's bytes.

use std::sync::Arc;

use crate::bus::BusDevice;

/// The MMIO window over one read-only pmem region.
pub struct ReadOnlyPmem {
    backing: Arc<pmem::Backing>,
    warned: bool,
}

impl ReadOnlyPmem {
    /// The window over `backing`'s region.
    pub fn new(backing: Arc<pmem::Backing>) -> Self {
        Self {
            backing,
            warned: false,
        }
    }
}

impl BusDevice for ReadOnlyPmem {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if self.backing.read_at(offset, data).is_err() {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !self.warned {
            self.warned = true;
            log::warn!(
                "pmem {} is read-only: the guest's {}-byte write at offset {offset:#x} was \
                 dropped (further writes to it are dropped unlogged)",
                self.backing.path().display(),
                data.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_dropped_and_reads_are_the_files() {
        let dir = std::env::temp_dir().join(format!("vireo-ro-pmem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ro.img");
        std::fs::write(&path, b"0123456789").unwrap();
        let backing = Arc::new(pmem::Backing::open(&path, true).unwrap());
        let mut w = ReadOnlyPmem::new(backing);
        w.write(0, b"xx");
        w.write(4, b"yy");
        let mut buf = [0u8; 10];
        w.read(0, &mut buf);
        assert_eq!(&buf, b"0123456789");
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        let mut past = [0u8; 4];
        w.read(pmem::ALIGNMENT - 2, &mut past);
        assert_eq!(past, [0xff; 4], "past the region");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
