//! Snapshots: the rings move to a new device over the same guest memory; connections do
//! not (their host sockets belonged to the old device), so the restored device tells the
//! driver with a transport reset event.

use std::time::Instant;

use virtio_devices::device::{VirtioDevice, features};
use virtio_devices::mmio::MmioTransport;
use virtio_devices::testing::MmioDriver;

use super::*;
use crate::device::{EVENT_QUEUE, EVENT_SIZE, EVENT_TRANSPORT_RESET, F_STREAM, Vsock, VsockState};

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The guest's three queues, as its driver sees them.
struct Driver {
    rx: QueueDriver,
    tx: QueueDriver,
    ev: QueueDriver,
}

/// Negotiate, set up the three queues (fresh rings) and start the device.
fn start(t: &mut MmioTransport, mem: &VmMemory) -> Driver {
    mem.write_slice(&vec![0u8; 0x3_0000], GuestAddress(0x1_0000))
        .unwrap();
    let mut d = MmioDriver(t);
    assert!(d.negotiate(features::VERSION_1 | features::EVENT_IDX | F_STREAM));
    let mut drivers = Vec::new();
    for i in 0..3u32 {
        let (drv, _) = QueueDriver::create(mem, GuestAddress(0x1_0000 * u64::from(i + 1)));
        let (desc, avail, used) = drv.addrs();
        d.setup_queue(i, u32::from(QUEUE_SIZE), desc, avail, used);
        drivers.push(drv);
    }
    d.driver_ok();
    assert!(t.is_activated());
    let mut it = drivers.into_iter();
    Driver {
        rx: it.next().unwrap(),
        tx: it.next().unwrap(),
        ev: it.next().unwrap(),
    }
}

fn writable(addr: u64, len: u32) -> [Desc; 1] {
    [Desc {
        addr,
        len,
        write: true,
    }]
}

/// The header of the packet in the RX buffer at `addr`.
fn rx_header(mem: &VmMemory, addr: u64) -> Header {
    let mut raw = [0u8; HDR_SIZE];
    mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
    Header::from_bytes(&raw)
}

fn config(dir: &TempDir) -> api::VsockConfig {
    api::VsockConfig {
        cid: CID as u32,
        socket: dir.path().join("snap.sock"),
    }
}

/// A running device with an established connection is snapshotted and restored into a
/// new device over the same memory: the event buffer the driver offered before the
/// snapshot (untouched until then) receives one TRANSPORT_RESET and the driver is
/// signalled; the RX buffer left in the ring carries the next host connection; the old
/// host connection is gone.
#[test]
fn restored_device_sends_a_transport_reset_into_the_drivers_event_buffer() {
    let dir = TempDir::new();
    let cfg = config(&dir);
    let mem = guest_memory(MEM_SIZE);
    let dev = Vsock::new(&cfg, "vsock-snap").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let mut drv = start(&mut t, &mem);

    const EV_BUF: u64 = DATA_START;
    const RX1: u64 = DATA_START + 0x1000;
    const RX2: u64 = DATA_START + 0x3000;
    const TX_HDR: u64 = DATA_START + 0x5000;
    mem.write_slice(&[0xffu8; 4], GuestAddress(EV_BUF)).unwrap();
    drv.ev.add(&mem, &writable(EV_BUF, EVENT_SIZE), None);
    drv.rx.add(&mem, &writable(RX1, RX_BUF), None);
    drv.rx.add(&mem, &writable(RX2, RX_BUF), None);
    let mut d = MmioDriver(&mut t);
    d.write(0x50, EVENT_QUEUE as u32);
    d.write(0x50, RX_QUEUE as u32);

    // A host connection, accepted by the guest.
    let mut host = UnixStream::connect(&cfg.socket).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    host.write_all(b"CONNECT 80\n").unwrap();
    let mut used = Vec::new();
    wait_for("the REQUEST", || {
        used.extend(drv.rx.take_used(&mem));
        !used.is_empty()
    });
    let req = rx_header(&mem, RX1);
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 80));
    let resp = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 80,
        dst_port: req.src_port,
        type_: TYPE_STREAM,
        op: op::RESPONSE,
        buf_alloc: GUEST_BUF,
        ..Header::default()
    };
    mem.write_slice(&resp.to_bytes(), GuestAddress(TX_HDR))
        .unwrap();
    drv.tx.add(
        &mem,
        &[Desc {
            addr: TX_HDR,
            len: HDR_SIZE as u32,
            write: false,
        }],
        None,
    );
    MmioDriver(&mut t).write(0x50, TX_QUEUE as u32);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    wait_for("the TX buffer back", || !drv.tx.take_used(&mem).is_empty());
    assert!(drv.ev.take_used(&mem).is_empty(), "no event while running");

    // The snapshot: nothing taken and unanswered, the event buffer still in the ring.
    t.pause();
    let state = t.state().unwrap();
    assert_eq!(
        state.device_state,
        Some(serde_json::json!({ "transport_reset": true }))
    );
    let q = &state.queues;
    assert_eq!((q[RX_QUEUE].next_avail, q[RX_QUEUE].next_used), (1, 1));
    assert_eq!((q[TX_QUEUE].next_avail, q[TX_QUEUE].next_used), (1, 1));
    assert_eq!(
        (q[EVENT_QUEUE].next_avail, q[EVENT_QUEUE].next_used),
        (0, 0)
    );
    drop(t);
    assert!(host_sees_eof(&mut host), "the old process's connection");

    // A new process: the socket bound again, the state given back.
    let dev = Vsock::new(&cfg, "vsock-restored").unwrap();
    let mut restored = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    restored.restore(&state).unwrap();
    assert!(restored.is_activated());
    let mut events = Vec::new();
    wait_for("the transport reset event", || {
        events.extend(drv.ev.take_used(&mem));
        !events.is_empty()
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, EVENT_SIZE, "used length");
    let id: u32 = mem.read_obj(GuestAddress(EV_BUF)).unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    wait_for("the interrupt", || restored.interrupt_evt().read().is_ok());
    assert_ne!(
        MmioDriver(&mut restored).read(0x60) & 1,
        0,
        "used-ring interrupt"
    );

    // One event only: a buffer the driver adds afterwards stays unused.
    drv.ev
        .add(&mem, &writable(EV_BUF + 0x100, EVENT_SIZE), None);
    MmioDriver(&mut restored).write(0x50, EVENT_QUEUE as u32);
    std::thread::sleep(Duration::from_millis(50));
    assert!(drv.ev.take_used(&mem).is_empty(), "a second event");
    assert_eq!(drv.ev.outstanding(), 1);

    // The RX buffer offered before the snapshot carries the next host connection.
    let mut host2 = UnixStream::connect(&cfg.socket).unwrap();
    host2.write_all(b"CONNECT 81\n").unwrap();
    let mut used = Vec::new();
    wait_for("the second REQUEST", || {
        used.extend(drv.rx.take_used(&mem));
        !used.is_empty()
    });
    let req = rx_header(&mem, RX2);
    assert_eq!((req.op, req.dst_port, req.dst_cid), (op::REQUEST, 81, CID));
    MmioDriver(&mut restored).write(0x70, 0);
}

/// A device the driver had not started is restored without an event, also once the
/// driver starts it.
#[test]
fn device_not_running_at_the_snapshot_sends_no_event() {
    let dir = TempDir::new();
    let cfg = config(&dir);
    let mem = guest_memory(MEM_SIZE);
    let dev = Vsock::new(&cfg, "vsock-snap").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let state = t.state().unwrap();
    assert_eq!(
        state.device_state,
        Some(serde_json::json!({ "transport_reset": false }))
    );
    drop(t);
    let dev = Vsock::new(&cfg, "vsock-restored").unwrap();
    let mut restored = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    restored.restore(&state).unwrap();
    assert!(!restored.is_activated());
    let mut drv = start(&mut restored, &mem);
    drv.ev.add(&mem, &writable(DATA_START, EVENT_SIZE), None);
    MmioDriver(&mut restored).write(0x50, EVENT_QUEUE as u32);
    std::thread::sleep(Duration::from_millis(50));
    assert!(drv.ev.take_used(&mem).is_empty());
    MmioDriver(&mut restored).write(0x70, 0);
}

/// A state that is not the device's is refused.
#[test]
fn foreign_device_state_is_refused() {
    let dir = TempDir::new();
    let mut dev = Vsock::new(&config(&dir), "vsock-snap").unwrap();
    let e = dev
        .restore_state(Some(&serde_json::json!({ "target_pages": 3 })))
        .unwrap_err();
    assert!(e.contains("device state refused"), "{e}");
    dev.restore_state(None).unwrap();
    let s = VsockState {
        transport_reset: true,
    };
    dev.restore_state(Some(&serde_json::to_value(s).unwrap()))
        .unwrap();
    // A driver reset forgets it.
    assert!(dev.reset());
}

/// The worker keeps the event until the driver offers a buffer; a buffer too small for
/// it is given back empty and the next one is used; a driver without an event queue is
/// not told.
#[test]
fn transport_reset_waits_for_a_usable_event_buffer() {
    let mut h = Harness::new();
    let (mut ev, q) = QueueDriver::create(&h.mem, GuestAddress(0x3_0000));
    h.queues[EVENT_QUEUE] = q;
    h.worker.queue_transport_reset();
    h.kick(EVENT_QUEUE);
    h.kick(RX_QUEUE);
    assert!(h.worker.transport_reset_pending(), "no buffer yet");
    assert_eq!(h.irq.used_count(), 0);

    let mem = h.mem.clone();
    let small = h.alloc(16);
    let good = h.alloc(16);
    mem.write_slice(&[0xffu8; 4], GuestAddress(good)).unwrap();
    ev.add(&mem, &writable(small, 2), None);
    ev.add(
        &mem,
        &[Desc {
            addr: small,
            len: 4,
            write: false,
        }],
        None,
    );
    ev.add(&mem, &writable(good, 8), None);
    ev.add(&mem, &writable(good + 8, 8), None);
    h.kick(EVENT_QUEUE);
    assert!(!h.worker.transport_reset_pending());
    let used = ev.take_used(&mem);
    let lens: Vec<u32> = used.iter().map(|(_, len)| *len).collect();
    assert_eq!(lens, [0, 0, EVENT_SIZE], "the last buffer is left");
    assert_eq!(ev.outstanding(), 1);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(good)).unwrap(),
        EVENT_TRANSPORT_RESET
    );
    assert_eq!(h.irq.used_count(), 1);

    // No event queue set up by the driver: the event is dropped, nothing fails.
    let mut h = Harness::new();
    h.queues[EVENT_QUEUE] = Queue::new(QUEUE_SIZE).unwrap();
    h.worker.queue_transport_reset();
    h.kick(EVENT_QUEUE);
    assert!(!h.worker.transport_reset_pending());
    assert!(!h.irq.failed.load(std::sync::atomic::Ordering::SeqCst));
}
