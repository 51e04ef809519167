//! A small vhost-user frontend for the tests: shared guest memory in a file, split
//! queues laid out with virtio-queue's mock, and vhost's own `Frontend` speaking the
//! protocol to a [`Server`] running on a thread.

#![allow(dead_code, missing_docs)]

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_backends::daemon::{ServeError, Server};
use vhost_user_backends::served::Served;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const MEM_SIZE: usize = 4 << 20;
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
pub const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

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

/// A split virtqueue laid out in guest memory by the test (virtio 1.2, 2.7): descriptor
/// table at `base`, avail ring right after, used ring 4-aligned after that.
pub struct TestQueue<'a> {
    pub mem: &'a GuestMemoryMmap<()>,
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a> TestQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap<()>, base: GuestAddress, size: u16) -> Self {
        let desc = base;
        let avail = desc.unchecked_add(16 * u64::from(size));
        let used_unaligned = avail.unchecked_add(6 + 2 * u64::from(size));
        let used = GuestAddress((used_unaligned.0 + 3) & !3);
        let end = used.unchecked_add(6 + 8 * u64::from(size));
        mem.write_slice(&vec![0u8; (end.0 - base.0) as usize], base)
            .unwrap();
        Self {
            mem,
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Write a chain of (address, length, flags) buffers and make it available; returns
    /// its head. NEXT flags are added.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, flags)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if last { *flags } else { *flags | NEXT };
            let next = (idx + 1) % self.size;
            self.write_desc(idx, *addr, *len, flags, next);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc.unchecked_add(16 * u64::from(idx));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Put `head` in the avail ring and bump its index.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % self.size;
        self.mem
            .write_obj(head, self.avail.unchecked_add(4 + 2 * u64::from(slot)))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, self.avail.unchecked_add(2))
            .unwrap();
    }

    /// The driver's `used_event` (after the avail ring).
    pub fn set_used_event(&self, v: u16) {
        self.mem
            .write_obj(v, self.avail.unchecked_add(4 + 2 * u64::from(self.size)))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(self.used.unchecked_add(2))
            .unwrap()
    }

    /// Element `i` of the used ring: (descriptor head, length written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used.unchecked_add(4 + 8 * u64::from(i % self.size));
        (
            self.mem.read_obj::<u32>(at).unwrap(),
            self.mem.read_obj::<u32>(at.unchecked_add(4)).unwrap(),
        )
    }
}

pub const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

/// Hand queue `index`, laid out by `q`, to the backend and enable it.
pub fn setup_queue(fe: &mut Frontend, index: usize, q: &TestQueue<'_>) -> QueueFds {
    let mem = q.mem;
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
