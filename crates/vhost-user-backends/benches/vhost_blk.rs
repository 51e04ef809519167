//! Host-side vhost-user-blk benchmark: this program is the frontend (vhost's `Frontend`
//! on the socket, guest memory in a shared file, one split queue laid out by hand) and
//! drives the same workload through each backend on the same raw image in /dev/shm:
//! 4 KiB random read/write at queue depth 1 and 32, 1 MiB sequential read/write at queue
//! depth 8. Completions are counted from the used ring after waiting on the call eventfd
//! (as a guest waits for its interrupt); kicks honour the used ring's NO_NOTIFY flag.
//!
//! Backends (`VHOST_BLK_BACKENDS`, comma-separated; default all of them):
//! - `qsd`: `qemu-storage-daemon` with the file driver (`cache.direct=off`, its default
//!   `aio=threads`) and a `vhost-user-blk` export;
//! - `qsd-uring`: the same with `aio=io_uring` (and `locking=off`: both daemons have the
//!   image open at once);
//! - `vireo`, `vireo-sync`: Vireo's `BlkServed` with the io_uring and the synchronous
//!   engine. In this process (a server thread) by default; with `VIREO_BIN=path/to/vireo`
//!   as a separate `vireo vhost-user blk --socket ... --disk path=...,io=...` process.
//!
//! Every backend is started and connected first; then, case by case, the backends take
//! turns: `BLK_BENCH_ROUNDS` rounds (default 5) of `BLK_BENCH_SECS` each (default 0.5 s),
//! each round starting with the next backend, so drift on a shared machine hits them all
//! alike. Each line gives the median over the rounds and the range.
//!
//! Run with `cargo bench -p vhost-user-backends --bench vhost_blk`. A backend that cannot
//! start is reported and skipped.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use common::{QueueFds, Running, TestQueue, WRITE, handshake, setup_queue};
use test_support::virtq::NEXT;
use vhost::vhost_user::Frontend;
use vhost_user_backends::BlkServed;
use virtio_devices::device::features;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
const RINGS: u64 = 0x1_0000;
/// Header (16 bytes) and status byte of each slot, 32 bytes apart.
const SLOTS: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
const MEM_BYTES: usize = 16 << 20;
const DISK_BYTES: u64 = 256 << 20;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
/// `VRING_USED_F_NO_NOTIFY`.
const NO_NOTIFY: u16 = 1;

/// The workloads: name, write, random, request size, queue depth.
const CASES: [(&str, bool, bool, u32, u16); 6] = [
    ("4k randread  qd1 ", false, true, 4096, 1),
    ("4k randread  qd32", false, true, 4096, 32),
    ("4k randwrite qd1 ", true, true, 4096, 1),
    ("4k randwrite qd32", true, true, 4096, 32),
    ("1m seqread   qd8 ", false, false, 1 << 20, 8),
    ("1m seqwrite  qd8 ", true, false, 1 << 20, 8),
];

fn shm_dir() -> PathBuf {
    if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

/// Guest memory in an unlinked file of /dev/shm, so a backend can map it.
fn shared_memory() -> GuestMemoryMmap<()> {
    let path = shm_dir().join(format!("vireo-vhost-blk-bench-mem-{}", std::process::id()));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("guest memory file");
    let _ = std::fs::remove_file(&path);
    file.set_len(MEM_BYTES as u64).expect("size guest memory");
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEM_BYTES,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("map guest memory")
}

/// The raw image, written fully so reads hit real pages rather than holes.
fn image() -> PathBuf {
    let path = shm_dir().join(format!("vireo-vhost-blk-bench-{}.raw", std::process::id()));
    let f = File::create(&path).expect("bench image");
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..DISK_BYTES >> 20 {
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i << 20).expect("fill image");
    }
    path
}

/// A backend serving the image on a socket: a thread here or a child process.
enum Backend {
    InProcess(Running),
    Process {
        child: Child,
        socket: PathBuf,
        /// Whether it exits when the frontend hangs up (vireo does, qemu-storage-daemon
        /// keeps listening).
        exits: bool,
    },
}

impl Backend {
    fn socket(&self) -> &Path {
        match self {
            Backend::InProcess(r) => &r.socket.0,
            Backend::Process { socket, .. } => socket,
        }
    }

    /// Start `cmd`, which listens on `socket`; wait (10 s at most) for the socket.
    fn spawn(mut cmd: Command, socket: PathBuf, exits: bool) -> Result<Self, String> {
        let _ = std::fs::remove_file(&socket);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(format!("exited ({status}): {}", err.trim()));
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no socket after 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Backend::Process {
            child,
            socket,
            exits,
        })
    }

    fn start(name: &str, image: &Path) -> Result<Self, String> {
        let socket = std::env::temp_dir().join(format!(
            "vireo-vhost-blk-bench-{}-{name}.sock",
            std::process::id()
        ));
        match name {
            "qsd" | "qsd-uring" => {
                // Both daemons run at once on the same image: the second one must not
                // take QEMU's image lock, which the first holds.
                let aio = if name == "qsd-uring" {
                    ",aio=io_uring,locking=off"
                } else {
                    ""
                };
                let mut cmd = Command::new("qemu-storage-daemon");
                cmd.arg("--blockdev")
                    .arg(format!(
                        "driver=file,node-name=f,filename={},cache.direct=off{aio}",
                        image.display()
                    ))
                    .arg("--export")
                    .arg(format!(
                        "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                        socket.display()
                    ));
                Self::spawn(cmd, socket, false)
            }
            "vireo" | "vireo-sync" => {
                let io = if name == "vireo" { "uring" } else { "sync" };
                let disk = format!("path={},io={io}", image.display());
                if let Ok(bin) = std::env::var("VIREO_BIN") {
                    let mut cmd = Command::new(bin);
                    cmd.args(["vhost-user", "blk", "--socket"])
                        .arg(&socket)
                        .args(["--disk", &disk]);
                    return Self::spawn(cmd, socket, true);
                }
                let cfg: api::DiskConfig = disk.parse().map_err(|e| format!("{e}"))?;
                let served = BlkServed::new(&cfg).map_err(|e| e.to_string())?;
                Ok(Backend::InProcess(Running::start(served)))
            }
            _ => Err(format!(
                "unknown backend {name:?} (qsd, qsd-uring, vireo, vireo-sync)"
            )),
        }
    }

    /// After the frontend hung up: let the backend go (a process gets 5 s to exit after
    /// the disconnect, then is killed: qemu-storage-daemon keeps listening).
    fn stop(self) {
        match self {
            Backend::InProcess(r) => {
                if let Err(e) = r.join() {
                    println!("  backend ended with an error: {e}");
                }
            }
            Backend::Process {
                mut child,
                socket,
                exits,
            } => {
                let start = Instant::now();
                while exits
                    && child.try_wait().ok().flatten().is_none()
                    && start.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if child.try_wait().ok().flatten().is_none() {
                    if exits {
                        println!("  backend still running 5 s after the disconnect: killed");
                    }
                    let _ = child.kill();
                }
                let _ = child.wait();
                let _ = std::fs::remove_file(&socket);
            }
        }
    }
}

/// The frontend: one queue, `depth` request slots of three descriptors each.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap<()>,
    vq: TestQueue<'a>,
    fds: QueueFds,
    used_seen: u16,
    rng: u64,
    kicks: u64,
    waits: u64,
}

impl<'a> Driver<'a> {
    fn new(fe: &mut Frontend, mem: &'a GuestMemoryMmap<()>) -> Self {
        handshake(fe, mem, features::VERSION_1);
        let vq = TestQueue::new(mem, GuestAddress(RINGS), QSIZE);
        let fds = setup_queue(fe, 0, &vq);
        Self {
            mem,
            vq,
            fds,
            used_seen: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            kicks: 0,
            waits: 0,
        }
    }

    /// Slot `slot` uses descriptors 3*slot..3*slot+2: header, data, status.
    fn submit(&mut self, slot: u16, write: bool, sector: u64, io_size: u32) {
        let hdr = GuestAddress(SLOTS + u64::from(slot) * 32);
        let status = hdr.unchecked_add(16);
        let data = DATA + u64::from(slot) * u64::from(io_size);
        let mut h = [0u8; 16];
        let t = if write { T_OUT } else { T_IN };
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, hdr).expect("header");
        self.mem.write_obj(0xffu8, status).expect("status");
        let d = 3 * slot;
        let data_flags = NEXT | if write { 0 } else { WRITE };
        self.vq.write_desc(d, hdr.0, 16, NEXT, d + 1);
        self.vq.write_desc(d + 1, data, io_size, data_flags, d + 2);
        self.vq.write_desc(d + 2, status.0, 1, WRITE, 0);
        // Descriptors before the avail entry and index (x86 keeps stores in order; the
        // fence keeps the compiler from moving them).
        fence(Ordering::Release);
        self.vq.publish(d);
    }

    /// Kick unless the backend said it is polling (NO_NOTIFY in the used ring's flags).
    fn kick(&mut self) {
        fence(Ordering::SeqCst);
        if self.vq.used_flags() & NO_NOTIFY == 0 {
            self.fds.kick.write(1).expect("kick");
            self.kicks += 1;
        }
    }

    /// Wait for the call eventfd (5 s at most) and clear it.
    fn wait_call(&mut self) {
        let mut p = libc::pollfd {
            fd: self.fds.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, 5000) };
        assert!(n > 0, "no completion from the backend within 5 s");
        let _ = self.fds.call.read();
        self.waits += 1;
    }

    /// Slots of the requests used since the last call; checks their status.
    fn take_used(&mut self) -> Vec<u16> {
        let idx = self.vq.used_idx();
        fence(Ordering::Acquire);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let (id, _len) = self.vq.used_elem(self.used_seen);
            let slot = (id / 3) as u16;
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(SLOTS + u64::from(slot) * 32 + 16))
                .expect("status");
            assert_eq!(status, 0, "request {id} failed (status {status})");
            out.push(slot);
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

    /// Keep `depth` requests in flight for `secs`, then drain; requests done and the
    /// time taken.
    fn run(
        &mut self,
        write: bool,
        random: bool,
        io_size: u32,
        depth: u16,
        secs: f64,
    ) -> (u64, f64) {
        let mut seq = 0;
        for slot in 0..depth {
            let s = self.next_sector(io_size, &mut seq, random);
            self.submit(slot, write, s, io_size);
        }
        let start = Instant::now();
        let limit = Duration::from_secs_f64(secs);
        let mut done = 0u64;
        let mut outstanding = u64::from(depth);
        self.kick();
        while outstanding > 0 {
            let used = self.take_used();
            if used.is_empty() {
                self.wait_call();
                continue;
            }
            done += used.len() as u64;
            outstanding -= used.len() as u64;
            if start.elapsed() < limit {
                for slot in used {
                    let s = self.next_sector(io_size, &mut seq, random);
                    self.submit(slot, write, s, io_size);
                    outstanding += 1;
                }
                self.kick();
            }
        }
        (done, start.elapsed().as_secs_f64())
    }
}

/// A backend with its connection and queue.
struct Session {
    name: String,
    backend: Backend,
    fe: Frontend,
    driver: Driver<'static>,
}

impl Session {
    fn open(name: &str, image: &Path) -> Result<Self, String> {
        let backend = Backend::start(name, image)?;
        // Leaked: the driver borrows it, and it lives as long as the bench anyway.
        let mem: &'static GuestMemoryMmap<()> = Box::leak(Box::new(shared_memory()));
        let mut fe = Frontend::connect(backend.socket(), 1).map_err(|e| format!("connect: {e}"))?;
        let driver = Driver::new(&mut fe, mem);
        Ok(Self {
            name: name.to_string(),
            backend,
            fe,
            driver,
        })
    }

    fn close(self) {
        drop(self.driver);
        drop(self.fe);
        self.backend.stop();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs: f64 = env_or("BLK_BENCH_SECS", 0.5);
    let rounds: usize = env_or("BLK_BENCH_ROUNDS", 5usize).max(1);
    let names = std::env::var("VHOST_BLK_BACKENDS")
        .unwrap_or_else(|_| "qsd,qsd-uring,vireo,vireo-sync".into());
    let image = image();
    println!(
        "vhost-user-blk on {}: {rounds} rounds of {secs} s per case and backend, backends \
         taking turns; Vireo {}",
        image.display(),
        match std::env::var("VIREO_BIN") {
            Ok(b) => format!("as a process ({b})"),
            Err(_) => "in this process".into(),
        }
    );
    let mut sessions = Vec::new();
    for name in names.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Session::open(name, &image) {
            Ok(s) => sessions.push(s),
            Err(e) => println!("{name:10} skipped: {e}"),
        }
    }
    println!(
        "{:10} {:17}  {:>10}        {:>9}        {:>21}   per request",
        "backend", "case", "median", "median", "min-max req/s"
    );
    for (case, write, random, size, depth) in CASES {
        let mut rps: Vec<Vec<f64>> = vec![Vec::new(); sessions.len()];
        let mut kicks = vec![0u64; sessions.len()];
        let mut waits = vec![0u64; sessions.len()];
        let mut done = vec![0u64; sessions.len()];
        for round in 0..rounds {
            // Start each round with another backend, so none always runs first.
            for k in 0..sessions.len() {
                let i = (round + k) % sessions.len();
                let d = &mut sessions[i].driver;
                let (k0, w0) = (d.kicks, d.waits);
                let (n, t) = d.run(write, random, size, depth, secs);
                rps[i].push(n as f64 / t);
                kicks[i] += d.kicks - k0;
                waits[i] += d.waits - w0;
                done[i] += n;
            }
        }
        for (i, s) in sessions.iter().enumerate() {
            let (lo, hi) = rps[i]
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            let m = median(&mut rps[i]);
            let n = done[i].max(1) as f64;
            println!(
                "{:10} {case}  {m:>10.0} req/s  {:>9.1} MB/s  {lo:>10.0}-{hi:<10.0}   \
                 {:.2} kicks, {:.2} waits",
                s.name,
                m * f64::from(size) / 1e6,
                kicks[i] as f64 / n,
                waits[i] as f64 / n,
            );
        }
    }
    for s in sessions {
        s.close();
    }
    let _ = std::fs::remove_file(&image);
}
