//! The generic adapter with a test device that has two queues, a configuration space and
//! an extra fd (the way net has its TAP and blk its io_uring eventfd): configuration
//! reads and writes, extra-fd events, the worker's lifetime across ring stops.

mod common;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost_user_backends::{AdapterError, Served, VhostUserDevice};
use virtio_devices::device::{DeviceWorker, Interrupt, WorkerError, features, serve_queue};
use virtio_queue::{Queue, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const CONFIG: [u8; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// Shared between the test and the device.
#[derive(Default)]
struct Counters {
    made: AtomicUsize,
    dropped: AtomicUsize,
    config_writes: Mutex<Vec<(u32, Vec<u8>)>>,
}

/// Queue 0 is answered on kicks with 0x11 bytes; queue 1 only when the extra eventfd
/// fires, with 0x22 bytes (like a NIC's receive queue fed by its TAP).
struct TestDevice {
    counters: Arc<Counters>,
    extra: EventFd,
    queues: usize,
    max_size: u16,
}

impl TestDevice {
    fn new(counters: Arc<Counters>) -> Self {
        Self {
            counters,
            extra: EventFd::new(EFD_NONBLOCK).unwrap(),
            queues: 2,
            max_size: 64,
        }
    }
}

struct TestWorker {
    counters: Arc<Counters>,
    extra: EventFd,
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.counters.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn fill<M: GuestMemory>(
    q: &mut Queue,
    index: usize,
    mem: &M,
    irq: &dyn Interrupt,
    byte: u8,
) -> Result<(), WorkerError> {
    serve_queue(q, index, mem, irq, |chain| {
        let Ok(mut w) = Writer::new(mem, chain) else {
            return 0;
        };
        let n = w.available_bytes();
        let _ = io::Write::write_all(&mut w, &vec![byte; n]);
        w.bytes_written() as u32
    })
}

impl DeviceWorker for TestWorker {
    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.extra.as_raw_fd()]
    }

    fn process_queue<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        irq: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        assert_eq!(queues.len(), 2, "the worker sees every queue");
        if index == 0 {
            fill(queues[0], 0, mem, irq, 0x11)?;
        }
        Ok(())
    }

    fn process_extra<M: GuestMemory>(
        &mut self,
        index: usize,
        queues: &mut [&mut Queue],
        mem: &M,
        irq: &dyn Interrupt,
    ) -> Result<(), WorkerError> {
        assert_eq!(index, 0);
        let _ = self.extra.read();
        fill(queues[1], 1, mem, irq, 0x22)
    }
}

impl Served for TestDevice {
    type Worker = TestWorker;

    fn name(&self) -> &str {
        "vhost-user-test"
    }

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> u16 {
        self.max_size
    }

    fn features(&self) -> u64 {
        features::COMMON | 1
    }

    fn config(&self) -> Vec<u8> {
        CONFIG.to_vec()
    }

    fn write_config(&self, offset: u32, data: &[u8]) -> io::Result<()> {
        self.counters
            .config_writes
            .lock()
            .unwrap()
            .push((offset, data.to_vec()));
        Ok(())
    }

    fn new_worker(&self, acked: u64) -> io::Result<TestWorker> {
        assert_eq!(acked & 1, 1, "the worker learns the acked device features");
        self.counters.made.fetch_add(1, Ordering::SeqCst);
        Ok(TestWorker {
            counters: self.counters.clone(),
            extra: self.extra.try_clone()?,
        })
    }
}

fn connect_with_config(
    server: &Running,
    mem: &vm_memory::GuestMemoryMmap<()>,
) -> vhost::vhost_user::Frontend {
    let mut fe = server.connect(2);
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    assert_eq!(offered & (features::COMMON | 1), features::COMMON | 1);
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
    fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ)
        .unwrap();
    fe.set_features(features::COMMON | 1 | PROTOCOL_FEATURES)
        .unwrap();
    let regions: Vec<_> = vm_memory::GuestMemoryBackend::iter(mem)
        .map(|r| vhost::VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect();
    fe.set_mem_table(&regions).unwrap();
    fe
}

#[test]
fn config_space_reads_are_clipped_and_zero_padded_and_writes_reach_the_device() {
    let counters = Arc::new(Counters::default());
    let server = Running::start(TestDevice::new(counters.clone()));
    let mem = shared_memory();
    let mut fe = connect_with_config(&server, &mem);
    assert_eq!(fe.get_queue_num().unwrap(), 2);

    let (_, whole) = fe
        .get_config(0, 16, VhostUserConfigFlags::WRITABLE, &[0; 16])
        .unwrap();
    assert_eq!(&whole[..10], &CONFIG);
    assert_eq!(&whole[10..], &[0; 6]);
    let (_, tail) = fe
        .get_config(8, 4, VhostUserConfigFlags::WRITABLE, &[0; 4])
        .unwrap();
    assert_eq!(tail, [9, 10, 0, 0]);
    let (_, beyond) = fe
        .get_config(0x800, 4, VhostUserConfigFlags::WRITABLE, &[0; 4])
        .unwrap();
    assert_eq!(beyond, [0; 4]);

    fe.set_config(2, VhostUserConfigFlags::WRITABLE, &[7, 7])
        .unwrap();
    // Messages are in order: once this reply is back, SET_CONFIG was handled.
    fe.get_queue_num().unwrap();
    assert_eq!(
        *counters.config_writes.lock().unwrap(),
        vec![(2, vec![7, 7])]
    );
    drop(fe);
    assert!(server.join().is_ok());
}

#[test]
fn extra_fd_events_reach_the_worker_and_stop_unwatches_them() {
    let counters = Arc::new(Counters::default());
    let device = TestDevice::new(counters.clone());
    let extra = device.extra.try_clone().unwrap();
    let server = Running::start(device);
    let mem = shared_memory();
    let mut fe = connect_with_config(&server, &mem);

    let mut q0 = TestQueue::new(&mem, GuestAddress(0x1_0000), 16);
    let mut q1 = TestQueue::new(&mem, GuestAddress(0x2_0000), 16);
    let fds0 = setup_queue(&mut fe, 0, &q0);
    let fds1 = setup_queue(&mut fe, 1, &q1);

    // Queue 0 on its kick.
    q0.add_chain(&[(0x10_0000, 100, WRITE)]);
    fds0.kick.write(1).unwrap();
    wait_for("queue 0", || q0.used_idx() == 1);
    assert_eq!(q0.used_elem(0), (0, 100));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0x11);
    wait_for("queue 0's interrupt", || called(&fds0.call));
    assert_eq!(counters.made.load(Ordering::SeqCst), 1);

    // Queue 1 is not served on its own kick, only when the extra fd fires.
    q1.add_chain(&[(0x11_0000, 50, WRITE), (0x11_1000, 50, WRITE)]);
    fds1.kick.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(q1.used_idx(), 0);
    extra.write(1).unwrap();
    wait_for("queue 1", || q1.used_idx() == 1);
    assert_eq!(q1.used_elem(0), (0, 100));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x11_1031)).unwrap(), 0x22);
    wait_for("queue 1's interrupt", || called(&fds1.call));
    assert!(!called(&fds0.call), "only queue 1 was signalled");

    // Stopping a ring drops the worker and its fds are no longer watched.
    assert_eq!(fe.get_vring_base(0).unwrap(), 1);
    assert_eq!(counters.dropped.load(Ordering::SeqCst), 1);
    q1.add_chain(&[(0x12_0000, 10, WRITE)]);
    extra.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(q1.used_idx(), 1, "no worker, no service");

    // A kick on the ring still running starts a new worker, which watches the fd again.
    fds1.kick.write(1).unwrap();
    wait_for("a new worker", || counters.made.load(Ordering::SeqCst) == 2);
    wait_for("queue 1 served again", || q1.used_idx() == 2);

    drop(fe);
    assert!(server.join().is_ok());
    assert_eq!(
        counters.dropped.load(Ordering::SeqCst),
        2,
        "the worker is dropped when the frontend goes away"
    );
}

#[test]
fn devices_that_virtio_cannot_carry_are_refused() {
    let bad_size = TestDevice {
        max_size: 100,
        ..TestDevice::new(Arc::default())
    };
    assert!(matches!(
        VhostUserDevice::new(bad_size),
        Err(AdapterError::BadQueueSize { size: 100, .. })
    ));
    let no_queue = TestDevice {
        queues: 0,
        ..TestDevice::new(Arc::default())
    };
    assert!(matches!(
        VhostUserDevice::new(no_queue),
        Err(AdapterError::BadQueueCount { count: 0, .. })
    ));
    let ok = VhostUserDevice::new(TestDevice::new(Arc::default())).unwrap();
    assert!(!ok.is_running());
}
