//! Layer 3: real Linux virtio drivers against Vireo's device models, served over
//! vhost-user (TESTING.md, "Layer 3").
//!
//! KVM on the project's machines is emulated and too slow for Linux, so the guest runs
//! in QEMU in TCG mode instead; QEMU is only the frontend: it owns the PCI transport and
//! hands each virtqueue to the backend, `vireo vhost-user <device>`, which serves it with
//! the same device worker `vireo run` uses. The guest's own virtio_blk, virtio_net,
//! virtio-rng and vsock drivers are the clients.
//!
//! How a test runs (helpers in `layer3/mod.rs`):
//! 1. The Debian guest (`scripts/guest-image.sh`: cloud kernel + busybox initramfs with
//!    the virtio modules, cached in `~/.cache/vireo/guest`) gets an extra newc archive
//!    appended to its initrd, carrying `/vireo/test.sh` (which the guest's `/init` runs
//!    after loading the modules) and the test's data and tools.
//! 2. The backend starts on a Unix socket; QEMU boots with its RAM in a shared memfd and
//!    the vhost-user device on that socket; the guest runs the script, reports on its
//!    second serial port (`result KEY VALUE...` lines, a file on the host, away from the
//!    kernel's console messages) and reboots, which ends QEMU (`-no-reboot`).
//! 3. The test checks the results against what the host knows (checksums of the data it
//!    generated, bytes it sent or received), that the backend exited 0 by itself when
//!    QEMU disconnected, and whatever it can check on the host (the disk image).
//!
//! Each QEMU run is bounded ([`layer3::RUN_DEADLINE`]), killed on timeout, with the
//! console's tail in the failure message. Runs take one at a time (TCG is CPU-bound).
//! Tests need `qemu-system-x86_64`; the blk tests mke2fs, e2fsck and debugfs, the net
//! test root and `ip` (it makes a network namespace), the vsock test `gcc` (the guest's
//! vsock tool is built static at test time: `layer3/vsock_cat.c`), the qcow2 test
//! `qemu-img`. Without one a test goes through test-support's skip policy: skipped and
//! reported (`SKIP <test>: <why>`, and in `VIREO_SKIP_LOG`), a failure under `CI=true`.
//! `.ci/run` installs all of them. `VIREO_L3_KEEP=1` keeps each
//! test's scratch directory (images, results, initrd).
//!
//! Devices:
//! - blk: the guest runs mkfs.ext4 (the host's e2fsprogs binary and libraries, carried in
//!   the archive: busybox only makes ext2) on a 64 MiB disk, copies files, syncs, checks
//!   them after dropping its caches; a second boot with a new backend reads them again
//!   and adds a file; on the host e2fsck and debugfs read the image back. Raw and qcow2;
//!   qemu-storage-daemon's export runs the same first boot as a reference.
//! - rng: the guest's hw_random core picks virtio_rng and `/dev/hwrng` gives bytes.
//! - net: a TAP in a network namespace made by the test; the guest pings the host side
//!   and downloads and uploads a file over HTTP (busybox wget against a server thread of
//!   the test inside the namespace).
//! - vsock: Firecracker's Unix-socket host side; the host connects in (`CONNECT 1234`)
//!   and the guest echoes a stream back; the guest connects out to CID 2 and the host's
//!   `<socket>_1235` listener receives a stream.
//!
//! Known issues:
//! - QEMU's virtio-net sends `SET_VRING_ENABLE` for a vhost-user netdev before any
//!   `SET_FEATURES` (from `peer_attach`, when the device is reset and when the driver
//!   sets its features; QEMU checks only that the backend *offers*
//!   `VHOST_USER_F_PROTOCOL_FEATURES`). vhost 0.18 and vhost-user-backend 0.24 refuse it
//!   unless `SET_FEATURES` already acked that bit and close the connection. Vireo's
//!   backends put a relay on the frontend's socket (`vhost_user_backends::relay`) that
//!   sends the daemon a `SET_FEATURES` with that bit first; this test is what shows it.
//! - QEMU 7.2 in TCG mode segfaults starting a vhost-user NIC whose driver uses MSI-X
//!   (in `vhost_net_start` -> `msix_set_vector_notifiers`); the NIC is given
//!   `vectors=0` (INTx), see [`layer3::vhost_user_device`].

mod common;
mod layer3;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

use layer3::{
    Backend, GUEST_IP, GuestFiles, GuestRun, HOST_IP, HTTP_PORT, Qemu, TempDir, exclusive,
    guest_dir, http_server, image_tools, pattern, qemu, run_ok, sha256, vhost_user_device,
};
use test_support::netns::Netns;
use test_support::require;
use test_support::skip;

// ---------------------------------------------------------------------------------------
// virtio-blk
// ---------------------------------------------------------------------------------------

/// The disk's size.
const DISK_MIB: u64 = 64;

/// Files the guest writes to the disk: odd sizes, so requests end mid-sector and
/// mid-block, and one large enough for multi-segment requests.
fn blk_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("hello.txt", b"Hello from Vireo's layer-3 test.\n".to_vec()),
        ("odd.bin", pattern(1, (1 << 20) + 4097)),
        ("big.bin", pattern(2, 6 << 20)),
    ]
}

/// The file the second boot adds.
const SECOND_FILE: (&str, &str) = ("second.txt", "written by the second boot\n");

/// First boot: make an ext4 file system, copy the files, sync, drop the caches, read
/// them back.
const BLK_WRITE: &str = r#"
result sectors $(cat /sys/block/vda/size)
result write_cache $(cat /sys/block/vda/queue/write_cache)
result discard_max_bytes $(cat /sys/block/vda/queue/discard_max_bytes)
MKE2FS -t ext4 -q -F -L vireo-l3 /dev/vda
mount -t ext4 /dev/vda /mnt
mkdir /mnt/data
cp /vireo/data/* /mnt/data/
sync
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 -o ro /dev/vda /mnt
for f in /mnt/data/*; do result written ${f##*/} $(sha256sum < $f | cut -d' ' -f1); done
umount /mnt
"#;

/// Second boot (a fresh backend on the same image): read the files, add one.
const BLK_VERIFY: &str = r#"
mount -t ext4 /dev/vda /mnt
for f in /mnt/data/*; do result read ${f##*/} $(sha256sum < $f | cut -d' ' -f1); done
echo "written by the second boot" > /mnt/data/second.txt
sync
umount /mnt
"#;

/// The archive for a blk boot running `script`: mke2fs with its libraries, the files.
fn blk_archive(script: &str) -> GuestFiles {
    let mke2fs = skip::which("mke2fs").expect("mke2fs (e2fsprogs)");
    let script = script.replace("MKE2FS", &GuestFiles::host_program_command("mke2fs"));
    let mut files = GuestFiles::with_script(&script);
    files.host_program("mke2fs", &mke2fs);
    if Path::new("/etc/mke2fs.conf").exists() {
        files.host_file("etc/mke2fs.conf", Path::new("/etc/mke2fs.conf"));
    }
    for (name, data) in blk_files() {
        files.file(&format!("vireo/data/{name}"), &data, 0o644);
    }
    files
}

/// `name HASH` lines for `files`, sorted, as the guest reports them.
fn expected_sums<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    let mut sums: Vec<String> = files
        .into_iter()
        .map(|(name, data)| format!("{name} {}", sha256(data)))
        .collect();
    sums.sort();
    sums
}

fn sorted(values: Vec<&str>) -> Vec<String> {
    let mut v: Vec<String> = values.into_iter().map(str::to_string).collect();
    v.sort();
    v
}

/// What the guest's driver saw of the disk: 64 MiB, a volatile write cache (so `sync`
/// sends FLUSH), discard.
fn check_blk_queue(run: &GuestRun) {
    assert_eq!(run.get("sectors"), (DISK_MIB << 20 >> 9).to_string());
    assert_eq!(
        run.get("write_cache"),
        "write back",
        "VIRTIO_BLK_F_FLUSH not negotiated"
    );
    let discard: u64 = run.get("discard_max_bytes").parse().unwrap();
    assert!(discard > 0, "VIRTIO_BLK_F_DISCARD not negotiated");
}

/// `raw`, a raw image of the file system the guest made: check it with e2fsck and read
/// every file back with debugfs (the tests required [`image_tools`] first).
fn check_image_on_host(raw: &Path, second_boot: bool) {
    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(raw));
    let mut files: Vec<(String, Vec<u8>)> = blk_files()
        .into_iter()
        .map(|(n, d)| (n.to_string(), d))
        .collect();
    if second_boot {
        files.push((SECOND_FILE.0.into(), SECOND_FILE.1.as_bytes().to_vec()));
    }
    for (name, data) in files {
        let out = run_ok(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat /data/{name}"))
                .arg(raw),
        );
        assert!(
            out == data,
            "/data/{name} in the image differs from what the guest wrote ({} bytes, expected {})",
            out.len(),
            data.len()
        );
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Raw,
    Qcow2,
}

/// Two boots on one image, each with a new `vireo vhost-user blk`; then the host reads
/// the image.
fn blk_two_boots(test: &str, format: Format) {
    let name = skip::current_test();
    require!(&name, qemu());
    require!(&name, skip::tool("mke2fs", "e2fsprogs"));
    require!(&name, image_tools());
    if format == Format::Qcow2 {
        require!(&name, skip::tool("qemu-img", "qemu-utils"));
    }
    let _one = exclusive();
    let dir = TempDir::new(test);
    let guest = guest_dir();
    let image = dir.join("disk.img");
    let disk = match format {
        Format::Raw => {
            std::fs::File::create(&image)
                .and_then(|f| f.set_len(DISK_MIB << 20))
                .expect("create the raw image");
            format!("path={}", image.display())
        }
        Format::Qcow2 => {
            run_ok(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&image)
                    .arg(format!("{DISK_MIB}M")),
            );
            format!("path={},format=qcow2", image.display())
        }
    };
    let socket = dir.join("blk.sock");
    let devices = vhost_user_device("blk", &socket, None);
    let files = blk_files();
    let want = expected_sums(files.iter().map(|(n, d)| (*n, d.as_slice())));

    // First boot: mkfs, write, sync, read back.
    let initrd = dir.join("write.initrd");
    blk_archive(BLK_WRITE).initrd(&guest, &initrd);
    let backend = Backend::start(
        "vireo vhost-user blk",
        Backend::vireo_command("blk", &socket, &["--disk", &disk]),
        &socket,
    );
    let run = Qemu::start(
        &format!("{test}-write"),
        dir.path(),
        &initrd,
        &devices,
        &backend,
    )
    .finish();
    backend.expect_clean_exit();
    check_blk_queue(&run);
    assert_eq!(
        sorted(run.all("written")),
        want,
        "checksums after the first boot"
    );

    // Second boot, new backend process: the files are on the disk, not in a cache.
    let initrd = dir.join("verify.initrd");
    blk_archive(BLK_VERIFY).initrd(&guest, &initrd);
    let backend = Backend::start(
        "vireo vhost-user blk",
        Backend::vireo_command("blk", &socket, &["--disk", &disk]),
        &socket,
    );
    let run = Qemu::start(
        &format!("{test}-verify"),
        dir.path(),
        &initrd,
        &devices,
        &backend,
    )
    .finish();
    backend.expect_clean_exit();
    assert_eq!(
        sorted(run.all("read")),
        want,
        "checksums after the second boot"
    );

    // The host's view of the image.
    let raw = match format {
        Format::Raw => image,
        Format::Qcow2 => {
            let check = run_ok(Command::new("qemu-img").arg("check").arg(&image));
            let check = String::from_utf8_lossy(&check);
            assert!(
                check.contains("No errors were found on the image."),
                "qemu-img check:\n{check}"
            );
            let raw = dir.join("converted.raw");
            run_ok(
                Command::new("qemu-img")
                    .args(["convert", "-f", "qcow2", "-O", "raw"])
                    .arg(&image)
                    .arg(&raw),
            );
            raw
        }
    };
    check_image_on_host(&raw, true);
}

#[test]
fn blk_raw_mkfs_write_reboot_read() {
    blk_two_boots("blk_raw", Format::Raw);
}

#[test]
fn blk_qcow2_mkfs_write_reboot_read() {
    blk_two_boots("blk_qcow2", Format::Qcow2);
}

/// The harness itself, with a backend we did not write: qemu-storage-daemon's
/// vhost-user-blk export runs the first boot of the blk tests. If this passes and the
/// Vireo tests fail, the fault is Vireo's.
#[test]
fn blk_reference_backend_qemu_storage_daemon() {
    let test = "blk_reference";
    let name = "blk_reference_backend_qemu_storage_daemon";
    require!(name, qemu());
    require!(
        name,
        skip::tool("qemu-storage-daemon", "qemu-system-common")
    );
    require!(name, skip::tool("mke2fs", "e2fsprogs"));
    require!(name, image_tools());
    let _one = exclusive();
    let dir = TempDir::new(test);
    let guest = guest_dir();
    let image = dir.join("disk.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(DISK_MIB << 20))
        .expect("create the raw image");
    let socket = dir.join("blk.sock");
    let mut qsd = Command::new("qemu-storage-daemon");
    qsd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=disk,filename={},discard=unmap",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ));
    // qemu-storage-daemon keeps serving after QEMU leaves: dropping it kills it.
    let qsd = Backend::start("qemu-storage-daemon", qsd, &socket);
    let initrd = dir.join("write.initrd");
    blk_archive(BLK_WRITE).initrd(&guest, &initrd);
    let devices = vhost_user_device("blk", &socket, None);
    let run = Qemu::start(test, dir.path(), &initrd, &devices, &qsd).finish();
    let files = blk_files();
    assert_eq!(
        sorted(run.all("written")),
        expected_sums(files.iter().map(|(n, d)| (*n, d.as_slice())))
    );
    check_image_on_host(&image, false);
}

// ---------------------------------------------------------------------------------------
// virtio-rng
// ---------------------------------------------------------------------------------------

const RNG: &str = r#"
result rng_current $(cat /sys/class/misc/hw_random/rng_current)
dd if=/dev/hwrng of=/tmp/small bs=512 count=1 2>/dev/null
dd if=/dev/hwrng of=/tmp/large bs=4096 count=16 2>/dev/null
result small $(od -An -tx1 -v /tmp/small | tr -d ' \n')
result large_bytes $(wc -c < /tmp/large)
"#;

/// The hw_random core picks the virtio-rng device, and `/dev/hwrng` reads are served.
#[test]
fn rng_hwrng_reads() {
    let test = "rng";
    require!("rng_hwrng_reads", qemu());
    let _one = exclusive();
    let dir = TempDir::new(test);
    let guest = guest_dir();
    let socket = dir.join("rng.sock");
    let initrd = dir.join("initrd");
    GuestFiles::with_script(RNG).initrd(&guest, &initrd);
    let backend = Backend::start(
        "vireo vhost-user rng",
        Backend::vireo_command("rng", &socket, &[]),
        &socket,
    );
    let run = Qemu::start(
        test,
        dir.path(),
        &initrd,
        &vhost_user_device("rng", &socket, None),
        &backend,
    )
    .finish();
    backend.expect_clean_exit();

    assert!(
        run.get("rng_current").starts_with("virtio_rng"),
        "hw_random uses {}",
        run.get("rng_current")
    );
    assert_eq!(run.get("large_bytes"), "65536");
    let small = run.get("small");
    assert_eq!(small.len(), 1024, "512 bytes in hex: {small}");
    // 512 random bytes take ~221 distinct values on average; a stuck or patterned source
    // takes far fewer.
    let distinct: std::collections::BTreeSet<&str> =
        (0..512).map(|i| &small[2 * i..2 * i + 2]).collect();
    assert!(
        distinct.len() > 150,
        "512 bytes from /dev/hwrng take only {} distinct values: {small}",
        distinct.len()
    );
}

// ---------------------------------------------------------------------------------------
// virtio-net
// ---------------------------------------------------------------------------------------

const GUEST_MAC: &str = "52:54:00:4c:33:01";

/// The guest's side: address, ping, download, upload.
fn net_script() -> String {
    format!(
        r#"
ip link set lo up
ip addr add {GUEST_IP}/24 dev eth0
ip link set eth0 up
result mac $(cat /sys/class/net/eth0/address)
result driver $(basename $(readlink /sys/class/net/eth0/device/driver))
ping -c 3 -w 30 {HOST_IP} > /tmp/ping || {{ cat /tmp/ping; exit 1; }}
result ping $(grep -o '[0-9]* packets received' /tmp/ping)
wget -q -O /tmp/down http://{HOST_IP}:{HTTP_PORT}/data
result download $(wc -c < /tmp/down) $(sha256sum < /tmp/down | cut -d' ' -f1)
wget -q -O /tmp/reply --post-file /vireo/data/up.bin http://{HOST_IP}:{HTTP_PORT}/upload
result upload $(cat /tmp/reply)
"#
    )
}

/// The guest on a TAP inside a network namespace: ping the host side, download and
/// upload a file over HTTP.
#[test]
fn net_tap_ping_and_http_transfer() {
    let test = "net";
    let name = "net_tap_ping_and_http_transfer";
    require!(name, qemu());
    // Root, /dev/net/tun and ip.
    let ns = require!(name, Netns::new("l3"));
    let _one = exclusive();
    let dir = TempDir::new(test);
    let guest = guest_dir();
    let tap = "vtap0";
    ns.add_tap(tap, &format!("{HOST_IP}/24")).unwrap();

    let down = pattern(3, (2 << 20) + 11);
    // busybox wget posts the file as a C string: no NUL byte in it.
    let up: Vec<u8> = pattern(4, (1 << 20) + 5)
        .into_iter()
        .map(|b| b'!' + b % 94)
        .collect();
    let server = http_server(ns.name(), down.clone());

    let mut files = GuestFiles::with_script(&net_script());
    files.file("vireo/data/up.bin", &up, 0o644);
    let initrd = dir.join("initrd");
    files.initrd(&guest, &initrd);

    let socket = dir.join("net.sock");
    let vireo = Backend::vireo_command(
        "net",
        &socket,
        &["--net", &format!("tap={tap},mac={GUEST_MAC}")],
    );
    let mut cmd = ns.command(vireo.get_program());
    cmd.args(vireo.get_args()).env("VIREO_LOG", "info");
    let backend = Backend::start("vireo vhost-user net", cmd, &socket);
    let run = Qemu::start(
        test,
        dir.path(),
        &initrd,
        &vhost_user_device("net", &socket, Some(GUEST_MAC)),
        &backend,
    )
    .finish();
    backend.expect_clean_exit();

    assert_eq!(run.get("driver"), "virtio_net");
    assert_eq!(run.get("mac"), GUEST_MAC);
    assert_eq!(run.get("ping"), "3 packets received");
    assert_eq!(
        run.get("download"),
        format!("{} {}", down.len(), sha256(&down)),
        "the file downloaded by the guest"
    );
    assert_eq!(run.get("upload"), format!("received {}", up.len()));
    let uploaded = server
        .join()
        .expect("HTTP server thread")
        .expect("HTTP server");
    assert!(
        uploaded == up,
        "the host received {} bytes that differ from the guest's {} bytes",
        uploaded.len(),
        up.len()
    );
}

// ---------------------------------------------------------------------------------------
// virtio-vsock
// ---------------------------------------------------------------------------------------

const GUEST_CID: u32 = 3;
const ECHO_PORT: u32 = 1234;
const HOST_PORT: u32 = 1235;

fn vsock_script() -> String {
    format!(
        r#"
result cid $(/vireo/bin/vsock_cat cid)
/vireo/bin/vsock_cat echo {ECHO_PORT} >&3 &
wait $!
/vireo/bin/vsock_cat send 2 {HOST_PORT} < /vireo/data/up.bin > /tmp/reply
result reply $(cat /tmp/reply)
"#
    )
}

/// Host to guest (`CONNECT`, echoed stream) and guest to host (`<socket>_PORT`).
#[test]
fn vsock_host_and_guest_connections() {
    let test = "vsock";
    let name = "vsock_host_and_guest_connections";
    require!(name, qemu());
    require!(name, skip::tool("gcc", "gcc"));
    let _one = exclusive();
    let dir = TempDir::new(test);
    let guest = guest_dir();
    let vsock_cat = layer3::build_vsock_cat(dir.path());
    let to_guest = pattern(5, (2 << 20) + 3);
    let from_guest = pattern(6, (1 << 20) + 7);

    let mut files = GuestFiles::with_script(&vsock_script());
    files.host_file("vireo/bin/vsock_cat", &vsock_cat);
    files.file("vireo/data/up.bin", &from_guest, 0o644);
    let initrd = dir.join("initrd");
    files.initrd(&guest, &initrd);

    let host_socket = dir.join("vsock.sock");
    let host_port = UnixListener::bind(format!("{}_{HOST_PORT}", host_socket.display()))
        .expect("bind the host port's socket");
    let received = layer3::accept_guest_stream(host_port);

    let socket = dir.join("vu-vsock.sock");
    let backend = Backend::start(
        "vireo vhost-user vsock",
        Backend::vireo_command(
            "vsock",
            &socket,
            &[
                "--vsock",
                &format!("cid={GUEST_CID},socket={}", host_socket.display()),
            ],
        ),
        &socket,
    );
    let mut qemu = Qemu::start(
        test,
        dir.path(),
        &initrd,
        &vhost_user_device("vsock", &socket, None),
        &backend,
    );
    qemu.wait_for_result(&format!("listening {ECHO_PORT}"), layer3::RUN_DEADLINE);
    let echoed = layer3::echo_through_guest(&host_socket, ECHO_PORT, &to_guest);
    let run = qemu.finish();
    backend.expect_clean_exit();

    assert_eq!(run.get("cid"), GUEST_CID.to_string());
    assert_eq!(run.get("echoed"), to_guest.len().to_string());
    assert!(
        echoed == to_guest,
        "the guest echoed {} bytes that differ from the {} sent",
        echoed.len(),
        to_guest.len()
    );
    assert_eq!(run.get("reply"), format!("received {}", from_guest.len()));
    let got = received
        .join()
        .expect("host listener thread")
        .expect("guest-to-host stream");
    assert!(
        got == from_guest,
        "the host received {} bytes that differ from the guest's {}",
        got.len(),
        from_guest.len()
    );
}
