//! Tests of the MMIO transport, driven the way a Linux driver drives it, with the
//! entropy device behind it.

use std::time::{Duration, Instant};

use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::device::features as f;
use crate::rng::Rng;
use crate::testing::{MmioDriver, guest_memory};

const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

fn transport() -> MmioTransport {
    MmioTransport::new(Box::new(Rng::new("rng-test")), guest_memory(1 << 20)).unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn identity_registers() {
    let mut t = transport();
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0x00), 0x7472_6976);
    assert_eq!(d.read(0x04), 2);
    assert_eq!(d.read(0x08), crate::device::device_type::RNG);
    assert_eq!(d.read(0x0c), VENDOR_ID);
    assert_eq!(d.device_features(), f::COMMON);
    d.write(0x30, 0);
    assert_eq!(d.read(0x34), u32::from(crate::rng::QUEUE_SIZE));
    d.write(0x30, 7);
    assert_eq!(d.read(0x34), 0, "a missing queue has max size 0");
    assert_eq!(d.read(0xb0), u32::MAX, "no shared memory regions");
}

#[test]
fn feature_negotiation_accepts_a_subset_with_version_1() {
    let mut t = transport();
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(f::VERSION_1));
    assert!(d.negotiate(f::COMMON));
}

#[test]
fn feature_negotiation_refuses_unoffered_or_legacy() {
    let mut t = transport();
    let mut d = MmioDriver(&mut t);
    assert!(
        !d.negotiate(f::VERSION_1 | 1 << 40),
        "bit 40 is not offered"
    );
    assert!(!d.negotiate(f::EVENT_IDX), "VERSION_1 is required");
}

#[test]
fn queue_registers_are_ignored_outside_setup() {
    let mut t = transport();
    let mut d = MmioDriver(&mut t);
    // Before FEATURES_OK.
    d.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
    d.write(0x30, 0);
    assert_eq!(d.read(0x44), 0);
    assert!(!t.queues[0].ready());
}

#[test]
fn wrong_width_and_unknown_registers_are_harmless() {
    let mut t = transport();
    let mut b2 = [0xffu8; 2];
    t.read(0x00, &mut b2);
    assert_eq!(b2, [0, 0]);
    t.write(0x70, &[1, 0]);
    assert_eq!(t.status(), 0);
    let mut d = MmioDriver(&mut t);
    d.write(0x00, 5); // read-only
    d.write(0xe0, 5); // unknown
    assert_eq!(d.read(0xe0), 0);
    assert_eq!(d.read(0x00), 0x7472_6976);
    // Config space of the rng is empty and reads as zero.
    assert_eq!(d.read(0x100), 0);
}

#[test]
fn status_bits_cannot_be_cleared_without_reset() {
    let mut t = transport();
    let mut d = MmioDriver(&mut t);
    d.write(0x70, status::ACKNOWLEDGE | status::DRIVER);
    d.write(0x70, status::ACKNOWLEDGE);
    assert_eq!(d.read(0x70), status::ACKNOWLEDGE | status::DRIVER);
    d.write(0x70, 0);
    assert_eq!(d.read(0x70), 0);
}

/// The whole path: negotiate, set up the queue, DRIVER_OK, kick; the worker thread fills
/// the buffer, puts it in the used ring and raises the interrupt; reset stops it.
#[test]
fn rng_request_through_the_transport() {
    let mem = guest_memory(1 << 20);
    let rng = Rng::new("rng-test");
    let metrics = rng.metrics();
    let mut t = MmioTransport::new(Box::new(rng), mem.clone()).unwrap();
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
    let buf = GuestAddress(0x8_0000);
    mem.write_slice(&[0u8; 64], buf).unwrap();
    vq.add_desc_chains(
        &[RawDescriptor::from(SplitDescriptor::new(
            buf.0, 64, WRITE, 0,
        ))],
        0,
    )
    .unwrap();

    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(f::VERSION_1 | f::INDIRECT_DESC));
    d.setup_queue(
        0,
        16,
        vq.desc_table_addr().0,
        vq.avail_addr().0,
        vq.used_addr().0,
    );
    d.driver_ok();
    assert!(t.is_activated());
    let mut d = MmioDriver(&mut t);
    d.write(0x50, 0);

    let used_idx = vq.used_addr().unchecked_add(2);
    wait_for("the used ring", || {
        mem.read_obj::<u16>(used_idx).unwrap() == 1
    });
    let elem_len: u32 = mem.read_obj(vq.used_addr().unchecked_add(8)).unwrap();
    assert_eq!(elem_len, 64);
    let mut data = [0u8; 64];
    mem.read_slice(&mut data, buf).unwrap();
    assert_ne!(data, [0u8; 64], "random bytes were written");
    let counted = metrics.take();
    assert_eq!(
        (counted.entropy_bytes, counted.entropy_event_count),
        (64, 1)
    );
    assert_eq!(counted.host_rng_fails + counted.entropy_event_fails, 0);
    wait_for("the interrupt", || t.interrupt_evt().read().is_ok());
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0x60), INT_USED_RING);
    d.write(0x64, INT_USED_RING);
    assert_eq!(d.read(0x60), 0);

    d.write(0x70, 0);
    assert!(!t.is_activated());
    let mut d = MmioDriver(&mut t);
    d.write(0x30, 0);
    assert_eq!(d.read(0x44), 0, "reset disables the queues");
}

#[test]
fn queue_outside_memory_sets_needs_reset() {
    let mut t = transport();
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(f::VERSION_1));
    d.setup_queue(0, 16, 0xfff_0000, 0xfff_1000, 0xfff_2000);
    d.driver_ok();
    assert!(!t.is_activated());
    assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    assert!(t.interrupt_evt().read().is_ok(), "the driver is told");
    let mut d = MmioDriver(&mut t);
    d.write(0x70, 0);
    assert_eq!(t.status(), 0, "a reset clears DEVICE_NEEDS_RESET");
}

#[test]
fn garbage_avail_index_fails_the_device_not_the_vmm() {
    let mem = guest_memory(1 << 20);
    let mut t = MmioTransport::new(Box::new(Rng::new("rng-test")), mem.clone()).unwrap();
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(f::VERSION_1));
    d.setup_queue(
        0,
        16,
        vq.desc_table_addr().0,
        vq.avail_addr().0,
        vq.used_addr().0,
    );
    d.driver_ok();
    // avail.idx 1000 ahead of what the device has seen: more than a queue's worth.
    mem.write_obj(1000u16, vq.avail_addr().unchecked_add(2))
        .unwrap();
    let mut d = MmioDriver(&mut t);
    d.write(0x50, 0);
    wait_for("DEVICE_NEEDS_RESET", || {
        t.status() & status::DEVICE_NEEDS_RESET != 0
    });
    // The driver can still reset the device and start again.
    let mut d = MmioDriver(&mut t);
    d.write(0x70, 0);
    assert_eq!(d.read(0x70), 0);
}

#[test]
fn notify_of_a_missing_queue_is_ignored() {
    let mut t = transport();
    let mut d = MmioDriver(&mut t);
    d.write(0x50, 9);
    assert!(t.queue_evts()[0].read().is_err());
}

/// A paused device leaves kicks pending and serves them once resumed.
#[test]
fn paused_worker_serves_nothing_until_resumed() {
    let mem = guest_memory(1 << 20);
    let mut t = MmioTransport::new(Box::new(Rng::new("rng-test")), mem.clone()).unwrap();
    t.pause(); // Before activation: nothing to pause.
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
    vq.add_desc_chains(
        &[RawDescriptor::from(SplitDescriptor::new(
            0x8_0000, 64, WRITE, 0,
        ))],
        0,
    )
    .unwrap();
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(f::VERSION_1));
    d.setup_queue(
        0,
        16,
        vq.desc_table_addr().0,
        vq.avail_addr().0,
        vq.used_addr().0,
    );
    d.driver_ok();
    t.pause();
    MmioDriver(&mut t).write(0x50, 0);
    let used_idx = vq.used_addr().unchecked_add(2);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        mem.read_obj::<u16>(used_idx).unwrap(),
        0,
        "served while paused"
    );
    t.resume();
    wait_for("the used ring after resume", || {
        mem.read_obj::<u16>(used_idx).unwrap() == 1
    });
    MmioDriver(&mut t).write(0x70, 0);
}

/// A paused, running device's registers and queues move to a new transport over the
/// same memory: a request made available before the snapshot and not yet taken is
/// served by the restored device, and the used ring goes on from where it was.
#[test]
fn state_moves_a_running_device_to_a_new_transport() {
    let mem = guest_memory(1 << 20);
    let mut t = MmioTransport::new(Box::new(Rng::new("rng-test")), mem.clone()).unwrap();
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
    let chain = |addr: u64| {
        [RawDescriptor::from(SplitDescriptor::new(
            addr, 64, WRITE, 0,
        ))]
    };
    vq.add_desc_chains(&chain(0x8_0000), 0).unwrap();
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(f::VERSION_1 | f::EVENT_IDX));
    d.setup_queue(
        0,
        16,
        vq.desc_table_addr().0,
        vq.avail_addr().0,
        vq.used_addr().0,
    );
    d.driver_ok();
    d.write(0x50, 0);
    let used_idx = vq.used_addr().unchecked_add(2);
    wait_for("the first request", || {
        mem.read_obj::<u16>(used_idx).unwrap() == 1
    });

    // A second request, made available while paused: not taken before the snapshot.
    t.pause();
    vq.add_desc_chains(&chain(0x9_0000), 1).unwrap();
    let state = t.state().unwrap();
    assert!(state.activated);
    assert_eq!(state.queues[0].next_avail, 1);
    assert_eq!(state.queues[0].next_used, 1);
    assert!(state.queues[0].event_idx_enabled);
    assert_eq!(state.driver_features, f::VERSION_1 | f::EVENT_IDX);
    drop(t);

    let mut restored = MmioTransport::new(Box::new(Rng::new("rng-test")), mem.clone()).unwrap();
    restored.restore(&state).unwrap();
    assert!(restored.is_activated());
    assert_eq!(restored.status(), state.status);
    wait_for("the second request, served after restore", || {
        mem.read_obj::<u16>(used_idx).unwrap() == 2
    });
    let mut data = [0u8; 64];
    mem.read_slice(&mut data, GuestAddress(0x9_0000)).unwrap();
    assert_ne!(data, [0u8; 64]);
    MmioDriver(&mut restored).write(0x70, 0);
}

/// A state that does not fit the device is refused, not applied.
#[test]
fn a_state_of_another_device_or_shape_is_refused() {
    let mut t = transport();
    let mut state = t.state().unwrap();
    let mut other = state.clone();
    other.device_type = 2;
    assert!(t.restore(&other).unwrap_err().contains("type 2"));
    other = state.clone();
    other.queues.push(other.queues[0]);
    assert!(t.restore(&other).unwrap_err().contains("2 queues"));
    other = state.clone();
    other.queues[0].size = 3;
    other.queues[0].max_size = 3;
    assert!(t.restore(&other).is_err());
    other = state.clone();
    other.driver_features = 1 << 50;
    assert!(t.restore(&other).unwrap_err().contains("not all offered"));
    state.status = 0;
    t.restore(&state).unwrap();
    assert!(!t.is_activated());
}

/// The entropy device with a piece of device state of its own, recorded where the test
/// can see it.
struct Stateful {
    rng: Rng,
    value: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
}

impl VirtioDevice for Stateful {
    fn device_type(&self) -> u32 {
        self.rng.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.rng.queue_max_sizes()
    }
    fn features(&self) -> u64 {
        self.rng.features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.rng.read_config(offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), crate::device::ActivateError> {
        self.rng.activate(ctx)
    }
    fn pause(&mut self) {
        self.rng.pause();
    }
    fn resume(&mut self) {
        self.rng.resume();
    }
    fn snapshot_queues(&mut self) -> Result<Option<Vec<QueueSnapshot>>, String> {
        self.rng.snapshot_queues()
    }
    fn snapshot_state(&mut self) -> Result<Option<serde_json::Value>, String> {
        Ok(self.value.lock().unwrap().clone())
    }
    fn restore_state(&mut self, state: Option<&serde_json::Value>) -> Result<(), String> {
        if state.is_some_and(|v| !v.is_u64()) {
            return Err("stateful: not a number".into());
        }
        *self.value.lock().unwrap() = state.cloned();
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.rng.reset()
    }
    fn name(&self) -> &str {
        "stateful"
    }
}

/// A device's own state goes into the transport's state and back into the device of
/// the new transport, before that device is activated again; a device without state
/// has none, and refuses some.
#[test]
fn device_state_travels_with_the_transport_state() {
    let mem = guest_memory(1 << 20);
    let saved = Arc::new(std::sync::Mutex::new(Some(serde_json::json!(42))));
    let dev = Stateful {
        rng: Rng::new("rng-test"),
        value: saved.clone(),
    };
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    let vq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x1_0000), 16);
    let mut d = MmioDriver(&mut t);
    assert!(d.negotiate(f::VERSION_1));
    d.setup_queue(
        0,
        16,
        vq.desc_table_addr().0,
        vq.avail_addr().0,
        vq.used_addr().0,
    );
    d.driver_ok();
    t.pause();
    let state = t.state().unwrap();
    assert_eq!(state.device_state, Some(serde_json::json!(42)));
    drop(t);

    // Through the state file's JSON and back.
    let json = serde_json::to_string(&state).unwrap();
    let state: MmioState = serde_json::from_str(&json).unwrap();
    let restored_value = Arc::new(std::sync::Mutex::new(None));
    let dev = Stateful {
        rng: Rng::new("rng-test"),
        value: restored_value.clone(),
    };
    let mut restored = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    restored.restore(&state).unwrap();
    assert!(restored.is_activated());
    assert_eq!(*restored_value.lock().unwrap(), Some(serde_json::json!(42)));

    // A state the device refuses refuses the restore and leaves the transport alone.
    let mut bad = state.clone();
    bad.device_state = Some(serde_json::json!("forty-two"));
    let dev = Stateful {
        rng: Rng::new("rng-test"),
        value: Arc::new(std::sync::Mutex::new(None)),
    };
    let mut other = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    assert!(other.restore(&bad).unwrap_err().contains("not a number"));
    assert!(!other.is_activated());
    assert_eq!(other.status(), 0);
    MmioDriver(&mut restored).write(0x70, 0);

    // The entropy device has no state of its own: none saved, and some is refused.
    let mut rng = transport();
    let plain = rng.state().unwrap();
    assert_eq!(plain.device_state, None);
    assert!(
        !serde_json::to_string(&plain)
            .unwrap()
            .contains("device_state"),
        "no state, no field"
    );
    let older: MmioState = serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
    assert_eq!(older, plain, "a state without the field reads as no state");
    assert!(rng.restore(&bad).unwrap_err().contains("does not take"));
}

/// A configuration change signalled through the transport's interrupt (a device whose
/// backend changed) bumps ConfigGeneration and raises the config interrupt; the
/// generation travels with the state.
#[test]
fn a_config_change_bumps_the_generation_and_interrupts() {
    let mut t = transport();
    let before = MmioDriver(&mut t).read(0xfc);
    let _ = t.interrupt_evt().read();
    t.interrupt.signal_config_change().unwrap();
    let mut d = MmioDriver(&mut t);
    assert_eq!(d.read(0xfc), before.wrapping_add(1));
    assert_eq!(d.read(0x60) & INT_CONFIG, INT_CONFIG);
    assert_eq!(t.interrupt_evt().read().unwrap(), 1);
    MmioDriver(&mut t).write(0x64, INT_CONFIG);
    assert_eq!(MmioDriver(&mut t).read(0x60), 0, "acknowledged");
    let state = t.state().unwrap();
    assert_eq!(state.config_generation, before.wrapping_add(1));
    let mut u = transport();
    u.restore(&state).unwrap();
    assert_eq!(MmioDriver(&mut u).read(0xfc), before.wrapping_add(1));
    // The device behind the window can be reached by its type.
    let any: &mut dyn std::any::Any = u.device_mut();
    assert!(any.downcast_mut::<Rng>().is_some());
}

/// After a restore the line is raised again only while the interrupt status has a cause
/// set (an interrupt raised before the vCPUs existed reached none).
#[test]
fn the_interrupt_is_raised_again_only_with_a_cause_pending() {
    let mut t = transport();
    let _ = t.interrupt_evt().read();
    t.reassert_interrupt().unwrap();
    assert!(
        t.interrupt_evt().read().is_err(),
        "no cause: nothing raised"
    );
    t.interrupt.signal_config_change().unwrap();
    assert_eq!(t.interrupt_evt().read().unwrap(), 1);
    t.reassert_interrupt().unwrap();
    assert_eq!(t.interrupt_evt().read().unwrap(), 1, "raised again");
    MmioDriver(&mut t).write(0x64, INT_CONFIG);
    t.reassert_interrupt().unwrap();
    assert!(t.interrupt_evt().read().is_err(), "acknowledged: nothing");
}
