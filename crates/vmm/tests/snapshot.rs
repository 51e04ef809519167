//! Pause, snapshot and restore of a running tiny guest on real KVM (layer 2), in
//! process: the `count` guest (crates/test-guests/guests/count.s) increments a u64 at
//! 0x12000 and prints "." every 256 iterations.
//!
//! Paused, its counter and console stand still; a Full snapshot of it, restored into a
//! new VM after the first is shut down, has identical memory and the same counter, and
//! once resumed counts on from there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::{SerialConfig, VmConfig};
use vm_memory::{Bytes, GuestAddress};
use vmm::snapshot::format::FormatError;
use vmm::snapshot::memory::same_contents;
use vmm::snapshot_vm::{RestoreOptions, SnapshotError, SnapshotKind, VmSnapshot, restore};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-vmm-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn counter(vmm: &vmm::builder::Vmm) -> u64 {
    vmm.guest_memory()
        .read_obj(GuestAddress(test_guests::COUNT_COUNTER_ADDR))
        .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn console_len(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.len())
}

fn count_guest(memory: u64, console: &Path) -> vmm::builder::Vmm {
    count_guest_with(memory, console, false)
}

fn count_guest_with(memory: u64, console: &Path, track_dirty_pages: bool) -> vmm::builder::Vmm {
    let mut config = VmConfig::new(test_guests::path(test_guests::COUNT));
    config.memory_bytes = memory;
    config.track_dirty_pages = track_dirty_pages;
    config.serial = SerialConfig::File(console.to_path_buf());
    vmm::builder::build_and_boot(&config).expect("boot the count guest")
}

#[test]
fn a_paused_count_guest_restores_identical_and_counts_on() {
    let console = scratch("console-before");
    let mut vm = count_guest(32 << 20, &console);
    wait_until("two dots", || console_len(&console) >= 2);

    // Not paused yet: a snapshot is refused.
    let state = scratch("state");
    let mem = scratch("mem");
    assert!(matches!(
        vm.snapshot(SnapshotKind::Full, &state, &mem),
        Err(SnapshotError::NotPaused)
    ));

    vm.pause().unwrap();
    let paused_at = counter(&vm);
    let dots = console_len(&console);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counter(&vm), paused_at, "the counter moved while paused");
    assert_eq!(
        console_len(&console),
        dots,
        "the console moved while paused"
    );
    assert!(paused_at >= 512, "counter {paused_at} after two dots");

    let info = vm.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    assert!(info.state_bytes > 0);
    // The guest's pages (boot structures, code, counter), not the zero rest.
    assert!(
        info.memory_bytes_written > 0 && info.memory_bytes_written < 1 << 20,
        "{info:?}"
    );
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 32 << 20);
    // Copy the memory before the VM goes away, to compare with the restored one.
    let before = vmm::memory::create_guest_memory(32 << 20, false).unwrap();
    let mut buf = vec![0u8; 32 << 20];
    vm.guest_memory()
        .read_slice(&mut buf, GuestAddress(0))
        .unwrap();
    before.write_slice(&buf, GuestAddress(0)).unwrap();
    vm.shutdown();

    // Restore, paused: identical memory, same counter.
    let console_after = scratch("console-after");
    let options = RestoreOptions {
        serial: SerialConfig::File(console_after.clone()),
        ..Default::default()
    };
    let mut restored = restore(&state, &mem, &options).expect("restore");
    assert!(restored.is_paused());
    assert!(same_contents(&before, restored.guest_memory()));
    assert_eq!(counter(&restored), paused_at);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counter(&restored), paused_at, "ran while restored paused");

    // Resumed: it counts on from where it stopped, dots and all.
    restored.resume().unwrap();
    wait_until("the counter to pass a 256 boundary", || {
        counter(&restored) > (paused_at | 0xff) + 1
    });
    wait_until("a dot on the new console", || {
        console_len(&console_after) >= 1
    });
    let text = std::fs::read_to_string(&console_after).unwrap();
    assert!(text.chars().all(|c| c == '.'), "console: {text:?}");
    restored.pause().unwrap();
    let now = counter(&restored);
    assert!(now > paused_at, "{now} <= {paused_at}");
    restored.shutdown();
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(&mem);
}

#[test]
fn a_corrupted_truncated_or_foreign_state_file_is_refused() {
    let mut vm = count_guest(16 << 20, &scratch("console-c"));
    vm.pause().unwrap();
    let state = scratch("state-c");
    let mem = scratch("mem-c");
    vm.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    vm.shutdown();
    let good = std::fs::read(&state).unwrap();
    let opts = RestoreOptions {
        serial: SerialConfig::None,
        ..Default::default()
    };

    let bad = scratch("bad");
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x20;
    std::fs::write(&bad, &corrupt).unwrap();
    let err = restore(&bad, &mem, &opts).err().unwrap();
    assert!(
        matches!(err, SnapshotError::Format(FormatError::Checksum { .. })),
        "{err}"
    );

    std::fs::write(&bad, &good[..good.len() - 100]).unwrap();
    let err = restore(&bad, &mem, &opts).err().unwrap();
    assert!(
        matches!(err, SnapshotError::Format(FormatError::Truncated { .. })),
        "{err}"
    );

    std::fs::write(&bad, b"{\"not\": \"a snapshot\"}").unwrap();
    let err = restore(&bad, &mem, &opts).err().unwrap();
    assert!(err.to_string().contains("not a Vireo snapshot"), "{err}");

    // A memory file of another size.
    let small = scratch("mem-small");
    std::fs::write(&small, [0u8; 4096]).unwrap();
    let err = restore(&state, &small, &opts).err().unwrap();
    assert!(err.to_string().contains("holds 4096 bytes"), "{err}");
    for f in [&state, &mem, &bad, &small] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_restored_vm_takes_the_console_of_the_restore() {
    // Snapshotted with its console in a file, restored with it on a socket.
    let mut vm = count_guest(16 << 20, &scratch("console-s"));
    vm.pause().unwrap();
    let state = scratch("state-s");
    let mem = scratch("mem-s");
    vm.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    vm.shutdown();
    let sock = scratch("console-s.sock");
    let options = RestoreOptions {
        serial: SerialConfig::Socket(sock.clone()),
        resume: true,
        ..Default::default()
    };
    let restored = restore(&state, &mem, &options).expect("restore");
    assert_eq!(restored.vm_config().serial, options.serial);
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut dot = [0u8; 1];
    std::io::Read::read_exact(&mut client, &mut dot).unwrap();
    assert_eq!(&dot, b".");
    restored.shutdown();
    assert!(!sock.exists(), "the socket goes with the VM");
    for f in [&state, &mem] {
        let _ = std::fs::remove_file(f);
    }
}

/// The guest's RAM, copied (to compare with a restored VM after the first is gone).
fn copy_memory(vm: &vmm::builder::Vmm, bytes: u64) -> vmm::memory::GuestMemory {
    let copy = vmm::memory::create_guest_memory(bytes, false).unwrap();
    let mut buf = vec![0u8; bytes as usize];
    vm.guest_memory()
        .read_slice(&mut buf, GuestAddress(0))
        .unwrap();
    copy.write_slice(&buf, GuestAddress(0)).unwrap();
    copy
}

#[test]
fn a_diff_snapshot_on_a_full_one_restores_the_later_state() {
    let mut vm = count_guest_with(16 << 20, &scratch("console-d"), true);
    wait_until("the counter to start", || counter(&vm) > 1000);
    vm.pause().unwrap();
    let state_full = scratch("state-full");
    let state_diff = scratch("state-diff");
    let mem = scratch("mem-d");
    vm.snapshot(SnapshotKind::Full, &state_full, &mem).unwrap();
    let at_full = counter(&vm);

    vm.resume().unwrap();
    wait_until("the counter to move on", || counter(&vm) > at_full + 1000);
    vm.pause().unwrap();
    let at_diff = counter(&vm);
    let info = vm.snapshot(SnapshotKind::Diff, &state_diff, &mem).unwrap();
    // The loop dirties the counter's page (and the stack page, if any): a few pages,
    // not the guest's 16 MiB nor the Full snapshot's pages.
    assert!(
        info.memory_bytes_written > 0 && info.memory_bytes_written <= 4 * 4096,
        "{info:?}"
    );
    let expected = copy_memory(&vm, 16 << 20);
    vm.shutdown();

    let opts = RestoreOptions {
        serial: SerialConfig::None,
        ..Default::default()
    };
    let restored = restore(&state_diff, &mem, &opts).unwrap();
    assert_eq!(counter(&restored), at_diff);
    assert!(same_contents(&expected, restored.guest_memory()));
    restored.shutdown();
    for f in [&state_full, &state_diff, &mem] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_diff_snapshot_needs_tracking_and_an_existing_memory_file() {
    let mut vm = count_guest(16 << 20, &scratch("console-n"));
    vm.pause().unwrap();
    let state = scratch("state-n");
    let mem = scratch("mem-n");
    let err = vm.snapshot(SnapshotKind::Diff, &state, &mem).unwrap_err();
    assert!(err.to_string().contains("track_dirty_pages"), "{err}");
    vm.shutdown();

    let mut vm = count_guest_with(16 << 20, &scratch("console-n2"), true);
    vm.pause().unwrap();
    let err = vm.snapshot(SnapshotKind::Diff, &state, &mem).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!state.exists() && !mem.exists(), "nothing written");
    vm.shutdown();
}

/// Where the `virtio_blk` guest reads sector 1 to (`BUF_C` of
/// crates/test-guests/guests/virtio.inc); only the device writes that page.
const VIRTIO_BLK_READ_BUF: u64 = 0x35000;

/// A VM with a virtio disk: its read of sector 1 lands in guest memory between a Full
/// and a Diff snapshot, written by the device alone (io_uring, or the worker thread
/// through the VMM's mapping: not in KVM's dirty log; the vCPU stays paused). Restored
/// from the memory file the Diff updated, the guest holds what the device wrote, all of
/// its memory is the VM's memory at the Diff, and, resumed, it checks the data and
/// finishes.
#[test]
fn a_diff_snapshot_holds_what_a_virtio_disk_wrote_into_guest_memory() {
    const SECTORS: u64 = 16;
    const MEM: u64 = 32 << 20;
    let image = scratch("blk-diff.img");
    std::fs::write(&image, vec![0xeeu8; (SECTORS * 512) as usize]).unwrap();
    let console = scratch("console-blk-diff");
    let mut config = VmConfig::new(test_guests::path(test_guests::VIRTIO_BLK));
    config.memory_bytes = MEM;
    config.track_dirty_pages = true;
    config.serial = SerialConfig::File(console.clone());
    // One request per second: after the write, the read waits in the avail ring while
    // the VM is paused and snapshotted.
    config.disks.push(api::DiskConfig {
        id: None,
        path: image.clone(),
        readonly: false,
        format: api::DiskFormat::Raw,
        serial: None,
        rate_limit: api::RateLimit {
            ops_per_sec: Some(1),
            bytes_per_sec: None,
            ..Default::default()
        },
        io_engine: api::IoEngine::Auto,
    });
    let mut vm = vmm::builder::build_and_boot(&config).expect("boot the virtio_blk guest");
    let text = || std::fs::read_to_string(&console).unwrap_or_default();
    wait_until("the write to complete", || {
        text().contains("write sector 1 ok")
    });
    vm.pause().unwrap();
    assert!(
        !text().contains("read sector 1 ok"),
        "the read finished before the Full snapshot: the test did not catch it in flight"
    );
    let state_full = scratch("state-blk-full");
    let state_diff = scratch("state-blk-diff");
    let mem = scratch("mem-blk");
    vm.snapshot(SnapshotKind::Full, &state_full, &mem).unwrap();
    let pattern = test_guests::virtio_blk_pattern();
    let read_buf = |m: &vmm::memory::GuestMemory| {
        let mut b = vec![0u8; pattern.len()];
        m.read_slice(&mut b, GuestAddress(VIRTIO_BLK_READ_BUF))
            .unwrap();
        b
    };
    assert_ne!(read_buf(vm.guest_memory()), pattern);

    // The device serves the read while the vCPU stays paused (resumed, the guest would
    // check the data and reset at once, faster than a pause can catch it).
    vm.with_devices_running(|| {
        wait_until("the device to read sector 1", || {
            read_buf(vm.guest_memory()) == pattern
        })
    })
    .expect("the VM is paused");
    let info = vm.snapshot(SnapshotKind::Diff, &state_diff, &mem).unwrap();
    assert!(
        info.memory_bytes_written >= 4096 && info.memory_bytes_written < MEM / 4,
        "{info:?}"
    );
    let expected = copy_memory(&vm, MEM);
    vm.shutdown();

    let opts = RestoreOptions {
        serial: SerialConfig::None,
        ..Default::default()
    };
    let restored = restore(&state_diff, &mem, &opts).unwrap();
    assert_eq!(
        read_buf(restored.guest_memory()),
        pattern,
        "the device's write is in the memory file"
    );
    assert!(same_contents(&expected, restored.guest_memory()));
    // The interrupt for the read was raised while the vCPU was paused: the restored
    // guest takes it, checks the data and goes on to the end.
    let mut restored = restored;
    restored.resume().unwrap();
    let reason = restored.wait();
    assert!(
        matches!(reason, vmm::stop::StopReason::GuestReset),
        "{reason:?}"
    );
    restored.shutdown();
    for f in [&state_full, &state_diff, &mem, &image, &console] {
        let _ = std::fs::remove_file(f);
    }
}

/// Firecracker's `smt`: each vCPU's CPUID, as KVM holds it (read back into the snapshot),
/// describes two threads per core with it and one without.
#[test]
fn smt_gives_the_vcpus_a_topology_of_two_threads_per_core() {
    for (smt, threads) in [(false, 1), (true, 2)] {
        let mut config = VmConfig::new(test_guests::path(test_guests::COUNT));
        config.memory_bytes = 16 << 20;
        config.vcpus = 2;
        config.smt = smt;
        config.serial = SerialConfig::None;
        let mut vm = vmm::builder::build_and_boot(&config).expect("boot the count guest");
        vm.pause().unwrap();
        let state = scratch(&format!("state-smt-{smt}"));
        let mem = scratch(&format!("mem-smt-{smt}"));
        vm.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
        vm.shutdown();
        let snapshot: VmSnapshot = vmm::snapshot::format::read_file(&state).unwrap();
        assert_eq!(snapshot.vcpus.len(), 2);
        for (index, vcpu) in (0u32..).zip(&snapshot.vcpus) {
            let leaf = |function, index| {
                vcpu.cpuid
                    .iter()
                    .find(|e| e.function == function && e.index == index)
            };
            // Intel's topology leaf, or AMD's, whichever the host's KVM has.
            let seen = match (leaf(0xb, 0), leaf(0x8000_001e, 0)) {
                (Some(l), _) => {
                    assert_eq!(l.edx, index, "x2APIC id");
                    l.ebx & 0xffff
                }
                (None, Some(l)) => ((l.ebx >> 8) & 0xff) + 1,
                (None, None) => panic!("KVM reports neither CPUID leaf 0xb nor 0x8000_001e"),
            };
            assert_eq!(seen, threads, "vCPU {index}, smt {smt}");
        }
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(&mem);
    }
}
