//! A small vhost-user frontend for the tests: shared guest memory in a file, split
//! queues laid out by test-support's driver ([`TestQueue`]), and vhost's own `Frontend`
//! speaking the protocol to a [`Server`] running on a thread.

#![allow(dead_code, missing_docs)]

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use test_support::virtq::SplitQueue;
pub use test_support::virtq::WRITE;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_backends::daemon::{ServeError, Server};
use vhost_user_backends::served::Served;
use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const MEM_SIZE: usize = 4 << 20;
pub const PROTOCOL_FEATURES: u64 = 1 << 30;

/// A unique path in the temp dir, removed (if still there) on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("vhost-user-test-{}-{tag}-{n}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Guest memory backed by an unlinked file, so the backend can map it too.
pub fn shared_memory() -> GuestMemoryMmap<()> {
    let path = TempPath::new("mem");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path.0)
        .unwrap();
    file.set_len(MEM_SIZE as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// Translate a guest address into the frontend's own address (what vhost-user wants in
/// SET_VRING_ADDR).
pub fn host_addr(mem: &GuestMemoryMmap<()>, addr: GuestAddress) -> u64 {
    let region = mem.iter().next().unwrap();
    region.as_ptr() as u64 + addr.raw_value()
}

/// A server for `served` on a fresh socket, serving on a thread.
pub struct Running {
    pub socket: TempPath,
    pub thread: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    pub fn start<S: Served>(served: S) -> Self {
        let socket = TempPath::new("sock");
        let server = Server::bind(&socket.0, served).unwrap();
        let thread = std::thread::spawn(move || server.serve_one());
        Self {
            socket,
            thread: Some(thread),
        }
    }

    pub fn connect(&self, queues: u64) -> Frontend {
        Frontend::connect(&self.socket.0, queues).unwrap()
    }

    /// Wait (5 s at most) for the server to return.
    pub fn join(mut self) -> Result<(), ServeError> {
        let t = self.thread.take().unwrap();
        let start = Instant::now();
        while !t.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join().expect("server thread panicked")
    }
}

/// Owner, features (those offered, masked by `want`, plus PROTOCOL_FEATURES), protocol
/// features (MQ, RESET_DEVICE and CONFIG, those of them offered) and the memory table.
pub fn handshake(fe: &mut Frontend, mem: &GuestMemoryMmap<()>, want: u64) -> u64 {
    fe.set_owner().unwrap();
    let offered = fe.get_features().unwrap();
    assert_ne!(offered & PROTOCOL_FEATURES, 0, "PROTOCOL_FEATURES offered");
    let acked = (offered & want) | PROTOCOL_FEATURES;
    let proto = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(
        proto
            & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::RESET_DEVICE
                | VhostUserProtocolFeatures::CONFIG),
    )
    .unwrap();
    fe.set_features(acked).unwrap();
    let regions: Vec<_> = mem
        .iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect();
    fe.set_mem_table(&regions).unwrap();
    offered
}

/// The eventfds of one queue, as the frontend holds them.
pub struct QueueFds {
    pub kick: EventFd,
    pub call: EventFd,
}

/// A split virtqueue the test lays out in the shared guest memory: test-support's
/// driver side.
pub type TestQueue<'a> = SplitQueue<'a, GuestMemoryMmap<()>>;

/// Hand queue `index`, laid out by `q`, to the backend and enable it.
pub fn setup_queue(fe: &mut Frontend, index: usize, q: &TestQueue<'_>) -> QueueFds {
    let mem = q.mem();
    fe.set_vring_num(index, q.size).unwrap();
    fe.set_vring_addr(
        index,
        &VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: host_addr(mem, q.desc),
            used_ring_addr: host_addr(mem, q.used),
            avail_ring_addr: host_addr(mem, q.avail),
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(index, 0).unwrap();
    let fds = QueueFds {
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        call: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    fe.set_vring_call(index, &fds.call).unwrap();
    fe.set_vring_kick(index, &fds.kick).unwrap();
    fe.set_vring_enable(index, true).unwrap();
    fds
}

/// Wait (5 s at most) until `cond` holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether the call eventfd was written (and drain it).
pub fn called(call: &EventFd) -> bool {
    call.read().is_ok()
}
