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

/// A pmem backing file of 3 MiB + 5 bytes (a region of 4 MiB): a 16-byte head the guest
/// prints, then a byte pattern.
fn pmem_file(name: &str) -> (PathBuf, Vec<u8>) {
    let path = scratch(name);
    let mut data: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i % 241) as u8).collect();
    data[..16].copy_from_slice(b"vireo pmem head!");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

#[test]
fn pmem_guest_finds_the_file_where_the_config_space_says_and_its_store_reaches_the_file() {
    let (file, before) = pmem_file("pmem.img");
    let pmem = format!("path={}", file.display());
    let run = run_guest(test_guests::VIRTIO_PMEM, &["--pmem", &pmem]);
    let after = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);

    // 4 GiB: above a 128 MiB guest's RAM and the MMIO hole; 4 MiB: the file rounded up
    // to 2 MiB. The head the guest read there is the file's.
    assert_eq!(
        run.stdout,
        expected::virtio_pmem(4 << 30, 4 << 20, b"vireo pmem head!", true),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    // The guest's store is in the file, and nothing else changed.
    let at = test_guests::VIRTIO_PMEM_MARK_OFFSET as usize;
    assert_eq!(after.len(), before.len(), "file size changed");
    assert_eq!(&after[at..at + 16], test_guests::VIRTIO_PMEM_MARK);
    assert_eq!(&after[..at], &before[..at]);
    assert_eq!(&after[at + 16..], &before[at + 16..]);
}

#[test]
fn a_read_only_pmem_guest_reads_the_file_and_its_stores_go_nowhere() {
    let (file, before) = pmem_file("pmem-ro.img");
    let pmem = format!("path={},readonly", file.display());
    let run = run_guest(test_guests::VIRTIO_PMEM, &["--pmem", &pmem]);
    let after = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        run.stdout,
        expected::virtio_pmem(4 << 30, 4 << 20, b"vireo pmem head!", false),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(after, before, "a read-only file is never written");
    // The dropped stores are said once, at warning level.
    let warning = "is read-only: the guest's 8-byte write at offset 0x1000 was dropped";
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);
}

#[test]
fn a_pmem_file_that_cannot_be_mapped_stops_the_build_naming_it() {
    let empty = scratch("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let pmem = format!("path={},id=scratch", empty.display());
    let run = run_guest(test_guests::VIRTIO_PMEM, &["--pmem", &pmem]);
    let _ = std::fs::remove_file(&empty);
    assert_eq!(run.code(), Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("Cannot create pmem device scratch: Error backing file size is 0"),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.stdout, "", "the guest never ran");
}
