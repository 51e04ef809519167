//! Host-side benchmark of the virtio-blk worker: drives [`block::BlockWorker`] directly
//! (no VM, no worker thread) on a raw image in /dev/shm, with a split queue laid out in
//! guest memory, and prints requests/s and MB/s for the sync and io_uring engines:
//! 4 KiB random read/write at queue depth 1 and 32, 1 MiB sequential read/write at
//! queue depth 8.
//!
//! Run with `cargo bench -p block --bench blk`; `BLK_BENCH_SECS` sets the time per case
//! (default 1 s).

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use block::BlockWorker;
use block::request::req_type;
use test_support::virtq::{NEXT, SplitQueue, WRITE};
use virtio_devices::device::{DeviceWorker, VmMemory};
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};

const QSIZE: u16 = 256;
const RINGS: u64 = 0x1_0000;
const SLOTS: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
const DISK_BYTES: u64 = 256 << 20;

struct Bench<'m> {
    mem: &'m VmMemory,
    /// The driver's side of the queue.
    vq: SplitQueue<'m, VmMemory>,
    /// The device's side, handed to the worker.
    queue: Queue,
    worker: BlockWorker,
    irq: TestInterrupt,
    used_seen: u16,
    rng: u64,
}

impl<'m> Bench<'m> {
    fn new(mem: &'m VmMemory, worker: BlockWorker) -> Self {
        let vq = SplitQueue::new(mem, GuestAddress(RINGS), QSIZE);
        let queue = vq.queue();
        Self {
            mem,
            vq,
            queue,
            worker,
            irq: TestInterrupt::default(),
            used_seen: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Slot `slot` uses descriptors 3*slot..3*slot+2, a header, a data buffer and a
    /// status byte of its own.
    fn submit(&mut self, slot: u16, write: bool, sector: u64, io_size: u32) {
        let hdr = GuestAddress(SLOTS + u64::from(slot) * 32);
        let status = hdr.unchecked_add(16);
        let data = GuestAddress(DATA + u64::from(slot) * u64::from(io_size));
        let mut h = [0u8; 16];
        let t = if write { req_type::OUT } else { req_type::IN };
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, hdr).expect("header");
        let d = 3 * slot;
        let data_flags = if write { NEXT } else { NEXT | WRITE };
        self.vq.write_desc(d, hdr.0, 16, NEXT, d + 1);
        self.vq
            .write_desc(d + 1, data.0, io_size, data_flags, d + 2);
        self.vq.write_desc(d + 2, status.0, 1, WRITE, 0);
        self.vq.publish(d);
    }

    fn kick(&mut self) {
        self.worker
            .process_queue(0, &mut [&mut self.queue], self.mem, &self.irq)
            .expect("worker");
    }

    fn wait_completions(&mut self) {
        let fds: Vec<RawFd> = self.worker.extra_fds();
        let Some(&fd) = fds.first() else { return };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack.
        unsafe { libc::poll(&mut p, 1, 5000) };
        self.worker
            .process_extra(0, &mut [&mut self.queue], self.mem, &self.irq)
            .expect("completions");
    }

    /// Used heads (slot numbers) since the last call.
    fn take_used(&mut self) -> Vec<u16> {
        let idx = self.vq.used_idx();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let (id, _len) = self.vq.used_elem(self.used_seen);
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(SLOTS + u64::from(id / 3) * 32 + 16))
                .expect("status");
            assert_eq!(status, 0, "request failed");
            out.push((id / 3) as u16);
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    fn next_sector(&mut self, io_size: u32, seq: &mut u64, random: bool) -> u64 {
        let blocks = DISK_BYTES / u64::from(io_size);
        let block = if random {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % blocks
        } else {
            *seq = (*seq + 1) % blocks;
            *seq
        };
        block * u64::from(io_size) / 512
    }

    fn run(
        &mut self,
        write: bool,
        random: bool,
        io_size: u32,
        depth: u16,
        secs: f64,
    ) -> (f64, f64) {
        let mut seq = 0;
        for slot in 0..depth {
            let s = self.next_sector(io_size, &mut seq, random);
            self.submit(slot, write, s, io_size);
        }
        let start = Instant::now();
        let limit = Duration::from_secs_f64(secs);
        let mut done = 0u64;
        let mut stopping = false;
        let mut outstanding = u64::from(depth);
        self.kick();
        while outstanding > 0 {
            let used = self.take_used();
            if used.is_empty() {
                self.wait_completions();
                continue;
            }
            done += used.len() as u64;
            outstanding -= used.len() as u64;
            if !stopping && start.elapsed() >= limit {
                stopping = true;
            }
            if !stopping {
                for slot in used {
                    let s = self.next_sector(io_size, &mut seq, random);
                    self.submit(slot, write, s, io_size);
                    outstanding += 1;
                }
                self.kick();
            }
        }
        let t = start.elapsed().as_secs_f64();
        let rps = done as f64 / t;
        (rps, rps * f64::from(io_size) / 1e6)
    }
}

fn image() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("vireo-blk-bench-{}.raw", std::process::id()));
    let f = std::fs::File::create(&path).expect("bench image");
    // Write it fully, so reads hit real pages rather than holes.
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..DISK_BYTES >> 20 {
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i << 20).expect("fill image");
    }
    path
}

fn main() {
    let secs: f64 = std::env::var("BLK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let path = image();
    let mut engines = vec![("sync", api::IoEngine::Sync)];
    if block::io_uring_available() {
        engines.push(("io_uring", api::IoEngine::IoUring));
    } else {
        println!("io_uring: unavailable on this host, skipped");
    }
    let cases = [
        ("4k randread  qd1 ", false, true, 4096, 1),
        ("4k randread  qd32", false, true, 4096, 32),
        ("4k randwrite qd1 ", true, true, 4096, 1),
        ("4k randwrite qd32", true, true, 4096, 32),
        ("1m seqread   qd8 ", false, false, 1 << 20, 8),
        ("1m seqwrite  qd8 ", true, false, 1 << 20, 8),
    ];
    println!(
        "virtio-blk worker on {} ({} s per case)",
        path.display(),
        secs
    );
    for (ename, engine) in engines {
        for (name, write, random, size, depth) in cases {
            let cfg = api::DiskConfig {
                id: None,
                path: path.clone(),
                readonly: false,
                format: api::DiskFormat::Raw,
                serial: None,
                rate_limit: api::RateLimit::default(),
                io_engine: engine,
            };
            let worker = BlockWorker::new(&cfg).expect("open bench image");
            let mem = guest_memory(DATA as usize + size as usize * usize::from(depth) + 4096);
            let mut b = Bench::new(&mem, worker);
            let (rps, mbs) = b.run(write, random, size, depth, secs);
            println!("{ename:9} {name}  {rps:>10.0} req/s  {mbs:>9.1} MB/s");
        }
    }
    let _ = std::fs::remove_file(&path);
}
