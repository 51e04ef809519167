//! Fuzz the virtio-mmio register file: any sequence of reads and writes of any width at
//! any offset, with guest memory the driver controls, must never panic the VMM.
//!
//! Input: a sequence of 7-byte operations `[kind, offset_lo, offset_hi, v0, v1, v2, v3]`:
//! kind bit 0 = write, bits 1-2 = width (1, 2, 4, 8 bytes); offsets cover the 4 KiB
//! window. Operations that set up queues point them anywhere in or outside memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_devices::mmio::MmioTransport;
use virtio_devices::rng::Rng;
use virtio_devices::testing::guest_memory;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    let mem = guest_memory(64 << 10);
    // Let the input also be guest memory, so rings can hold anything.
    let _ = mem.write_slice(&data[..data.len().min(64 << 10)], GuestAddress(0));
    let Ok(mut t) = MmioTransport::new(Box::new(Rng::new("fuzz-rng")), mem) else {
        return;
    };
    for op in data.chunks_exact(7) {
        let write = op[0] & 1 == 1;
        let width = 1usize << ((op[0] >> 1) & 3);
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1ff);
        let value = [op[3], op[4], op[5], op[6], op[3], op[4], op[5], op[6]];
        if write {
            t.write(offset, &value[..width]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..width]);
        }
    }
});
