//! Shared harness of the device fuzz targets: the fuzzer's bytes become guest memory
//! (descriptor table, rings and buffers alike), the queues point into it, and a device
//! worker serves one queue, as it would after a guest kick.

use virtio_devices::device::{DeviceWorker, Interrupt};
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory size of every run.
pub const MEM_SIZE: usize = 256 << 10;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 16;

/// Fill guest memory with `data`, lay out `queues` queues whose rings live in that
/// memory, and let `worker` serve queue `data[0] % queues` (twice, so state left by the
/// first call is exercised too). `data[1]` bit 0 turns EVENT_IDX on.
pub fn serve<W: DeviceWorker>(worker: &mut W, queues: usize, data: &[u8]) {
    if data.len() < 2 || queues == 0 {
        return;
    }
    let mem = guest_memory(MEM_SIZE);
    let body = &data[2..];
    let _ = mem.write_slice(&body[..body.len().min(MEM_SIZE)], GuestAddress(0));
    let mut qs: Vec<Queue> = (0..queues)
        .map(|i| {
            let mut q = Queue::new(QUEUE_SIZE).expect("queue size");
            let base = i as u64 * 0x3000;
            q.set_size(QUEUE_SIZE);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
            q.set_event_idx(data[1] & 1 == 1);
            q.set_ready(true);
            q
        })
        .collect();
    let irq = TestInterrupt::default();
    let index = usize::from(data[0]) % queues;
    for _ in 0..2 {
        let mut refs: Vec<&mut Queue> = qs.iter_mut().collect();
        let irq: &dyn Interrupt = &irq;
        if worker.process_queue(index, &mut refs, mem.as_ref(), irq).is_err() {
            return;
        }
    }
}
