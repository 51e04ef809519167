//! Layer 2: virtio drivers written in tiny guests (crates/test-guests: `virtio_rng.s`,
//! `virtio_blk.s`, `virtio.inc`) drive Vireo's virtio devices through the virtio-mmio
//! transport on real KVM: probe, feature negotiation, queue set-up, a kick through the
//! KVM ioeventfd, the device's worker filling the used ring, and the interrupt through
//! the irqfd and the IOAPIC to the guest's own handler. Each guest prints one line per
//! step; the tests compare the output exactly and check that `vireo` exited cleanly.

mod common;

use std::path::PathBuf;

use common::run_guest;
use test_guests::expected;

/// Size of the test disk, in 512-byte sectors.
const DISK_SECTORS: u64 = 16;
/// What the test disk holds before the guest runs.
const FILL: u8 = 0xee;

/// A fresh file name for this test under the temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-virtio-guests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn rng_guest_gets_random_bytes_and_an_interrupt() {
    let run = run_guest(test_guests::VIRTIO_RNG, &["--rng"]);
    assert_eq!(run.stdout, expected::VIRTIO_RNG, "stderr: {}", run.stderr);
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn rng_guest_without_the_device_finds_nothing() {
    let run = run_guest(test_guests::VIRTIO_RNG, &[]);
    assert_eq!(
        run.stdout,
        expected::VIRTIO_RNG_NO_DEVICE,
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn blk_guest_refuses_a_device_of_another_type() {
    // The entropy device sits in slot 0; the block driver must see ID 4 and stop.
    let run = run_guest(test_guests::VIRTIO_BLK, &["--rng"]);
    assert_eq!(
        run.stdout, "virtio-blk: wrong device id 0x00000004\n",
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn blk_guest_writes_reads_back_and_gets_ioerr_past_the_end() {
    let image = scratch("blk.img");
    let before = vec![FILL; (DISK_SECTORS * 512) as usize];
    std::fs::write(&image, &before).unwrap();
    let disk = format!("path={}", image.display());

    let run = run_guest(test_guests::VIRTIO_BLK, &["--disk", &disk]);
    let after = std::fs::read(&image).unwrap();
    let _ = std::fs::remove_file(&image);

    assert_eq!(
        run.stdout,
        expected::virtio_blk(DISK_SECTORS),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);

    // The host sees the guest's write at sector 1, and nothing else changed.
    assert_eq!(after.len(), before.len(), "image size changed");
    let at = (test_guests::VIRTIO_BLK_SECTOR * 512) as usize;
    assert_eq!(
        &after[at..at + 512],
        &test_guests::virtio_blk_pattern()[..],
        "sector 1 of the image"
    );
    assert!(
        after[..at].iter().all(|&b| b == FILL),
        "sector 0 of the image changed"
    );
    assert!(
        after[at + 512..].iter().all(|&b| b == FILL),
        "sectors after 1 of the image changed"
    );
}

#[test]
fn balloon_guest_inflates_a_page_and_the_host_releases_it() {
    // 1 MiB = 256 balloon pages. The guest checks itself that the inflated page reads
    // back as zero and that its neighbour kept its content.
    let run = run_guest(test_guests::VIRTIO_BALLOON, &["--balloon", "size=1"]);
    assert_eq!(
        run.stdout,
        expected::virtio_balloon(256),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn balloon_guest_num_pages_follows_the_size_and_extra_features_stay_unused() {
    // 3 MiB = 768 pages. The device also offers STATS_VQ and DEFLATE_ON_OOM; the guest
    // accepts only VERSION_1, so the device must start with just the inflate and deflate
    // queues ready.
    let run = run_guest(
        test_guests::VIRTIO_BALLOON,
        &["--balloon", "size=3,stats=1,deflate_on_oom"],
    );
    assert_eq!(
        run.stdout,
        expected::virtio_balloon(768),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn balloon_guest_is_served_when_hinting_and_reporting_are_offered_but_not_accepted() {
    // The device declares five queues (statistics, hinting, reporting); a driver that
    // accepts none of them sets up inflate and deflate only, and the device starts.
    let run = run_guest(
        test_guests::VIRTIO_BALLOON,
        &[
            "--balloon",
            "size=1,stats=1,free_page_hinting,free_page_reporting",
        ],
    );
    assert_eq!(
        run.stdout,
        expected::virtio_balloon(256),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn rng_guest_refuses_the_balloon() {
    // The balloon sits in slot 0; the entropy driver must see ID 5 and stop.
    let run = run_guest(test_guests::VIRTIO_RNG, &["--balloon", "size=1"]);
    assert_eq!(
        run.stdout, "virtio-rng: wrong device id 0x00000005\n",
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}
