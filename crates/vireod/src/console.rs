//! A VM's serial console as vireod keeps it: one connection to its `vireo`'s console
//! socket, a bounded log on disk, the last 64 KiB in memory, and any number of viewers.
//!
//! - Output from the guest goes to the log (`console.log`, rotated to `console.log.1`
//!   past 1 MiB, so at most 2 MiB per VM), to the in-memory history (what a new viewer
//!   is shown first and what a crash report quotes) and to every viewer. A viewer that
//!   cannot keep up for two seconds is dropped, never the guest.
//! - Input from every viewer goes to the guest, interleaved as it comes.
//! - `vireo` keeps what the guest prints while nobody is connected, so a vireod that
//!   restarts and connects again loses nothing recent.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of output kept in memory.
pub const HISTORY_BYTES: usize = 64 << 10;
/// Size at which the log file is rotated.
pub const LOG_MAX_BYTES: u64 = 1 << 20;
/// How long a viewer may block output before it is dropped.
const VIEWER_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

struct Viewer {
    id: u64,
    stream: UnixStream,
}

struct Inner {
    history: VecDeque<u8>,
    viewers: Vec<Viewer>,
    /// The connection to `vireo`, for input; `None` while not connected.
    vmm: Option<UnixStream>,
    log: Option<File>,
    log_len: u64,
}

/// One VM's console.
pub struct Console {
    log_path: PathBuf,
    inner: Mutex<Inner>,
    next_viewer: AtomicU64,
    /// Bumped at each `connect`: a reader of an earlier run stops touching the console.
    run: AtomicU64,
}

impl Console {
    /// The console of a VM whose log is `log_path`; the log's tail becomes the history
    /// (a restarted vireod still shows a crashed VM's last lines).
    pub fn new(log_path: &Path) -> Arc<Self> {
        let mut history = VecDeque::new();
        if let Ok(bytes) = std::fs::read(log_path) {
            let start = bytes.len().saturating_sub(HISTORY_BYTES);
            history.extend(&bytes[start..]);
        }
        Arc::new(Self {
            log_path: log_path.to_path_buf(),
            inner: Mutex::new(Inner {
                history,
                viewers: Vec::new(),
                vmm: None,
                log: None,
                log_len: 0,
            }),
            next_viewer: AtomicU64::new(1),
            run: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it left whole bytes behind; go on with them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connect to `socket` (retrying while `alive()` says the VMM lives, up to
    /// `patience`) and relay its output on a new thread until it closes.
    pub fn connect(
        self: &Arc<Self>,
        socket: PathBuf,
        patience: Duration,
        alive: impl Fn() -> bool + Send + 'static,
    ) {
        let run = self.run.fetch_add(1, Ordering::SeqCst) + 1;
        let console = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                let deadline = Instant::now() + patience;
                let stream = loop {
                    match UnixStream::connect(&socket) {
                        Ok(s) => break s,
                        Err(_) if alive() && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            log::warn!("console {}: cannot connect: {e}", socket.display());
                            return;
                        }
                    }
                };
                console.relay(run, stream);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a console thread: {e}");
        }
    }

    fn relay(&self, run: u64, mut stream: UnixStream) {
        match stream.try_clone() {
            Ok(input) => self.lock().vmm = Some(input),
            Err(e) => log::warn!("console input disabled: {e}"),
        }
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if self.run.load(Ordering::SeqCst) == run => self.output(&buf[..n]),
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if self.run.load(Ordering::SeqCst) == run {
            self.lock().vmm = None;
        }
    }

    /// Take guest output: log, history, viewers.
    pub fn output(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        inner.history.extend(bytes);
        let excess = inner.history.len().saturating_sub(HISTORY_BYTES);
        inner.history.drain(..excess);
        self.write_log(&mut inner, bytes);
        inner
            .viewers
            .retain_mut(|v| v.stream.write_all(bytes).is_ok());
    }

    fn write_log(&self, inner: &mut Inner, bytes: &[u8]) {
        if inner.log.is_some() && inner.log_len + bytes.len() as u64 > LOG_MAX_BYTES {
            inner.log = None;
            let mut old = self.log_path.clone().into_os_string();
            old.push(".1");
            if let Err(e) = std::fs::rename(&self.log_path, &old) {
                log::warn!("cannot rotate {}: {e}", self.log_path.display());
            }
        }
        if inner.log.is_none() {
            match File::options()
                .create(true)
                .append(true)
                .open(&self.log_path)
            {
                Ok(f) => {
                    inner.log_len = f.metadata().map_or(0, |m| m.len());
                    inner.log = Some(f);
                }
                Err(e) => {
                    log::warn!("console log {}: {e}", self.log_path.display());
                    return;
                }
            }
        }
        if let Some(f) = &mut inner.log {
            match f.write_all(bytes) {
                Ok(()) => inner.log_len += bytes.len() as u64,
                Err(e) => {
                    log::warn!("console log {}: {e}", self.log_path.display());
                    inner.log = None;
                }
            }
        }
    }

    /// Add a viewer: it is sent the last `history` bytes, then all output; what it
    /// sends goes to the guest. Returns once the viewer leaves (closes its end).
    pub fn attach(&self, stream: UnixStream, history: usize) -> std::io::Result<()> {
        let id = self.next_viewer.fetch_add(1, Ordering::Relaxed);
        let mut output = stream.try_clone()?;
        output.set_write_timeout(Some(VIEWER_WRITE_TIMEOUT))?;
        {
            let mut inner = self.lock();
            let skip = inner.history.len().saturating_sub(history);
            let (a, b) = inner.history.as_slices();
            let past: Vec<u8> = a.iter().chain(b).skip(skip).copied().collect();
            output.write_all(&past)?;
            inner.viewers.push(Viewer { id, stream: output });
        }
        let mut input = stream;
        let mut buf = [0u8; 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Cloned out of the lock: a guest that reads slowly must not stall
                    // the output path.
                    let vmm = self.lock().vmm.as_ref().and_then(|s| s.try_clone().ok());
                    if let Some(mut vmm) = vmm {
                        let _ = vmm.write_all(&buf[..n]);
                    }
                }
            }
        }
        self.lock().viewers.retain(|v| v.id != id);
        Ok(())
    }

    /// Send `bytes` to the guest as if typed; false when no VMM is connected.
    pub fn input(&self, bytes: &[u8]) -> bool {
        let vmm = self.lock().vmm.as_ref().and_then(|s| s.try_clone().ok());
        vmm.is_some_and(|mut s| s.write_all(bytes).is_ok())
    }

    /// Whether the VMM's console is connected.
    pub fn connected(&self) -> bool {
        self.lock().vmm.is_some()
    }

    /// The number of viewers.
    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    /// The last `n` lines of output.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let inner = self.lock();
        let (a, b) = inner.history.as_slices();
        let bytes: Vec<u8> = a.iter().chain(b).copied().collect();
        crate::process::last_lines(&bytes, n)
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Stop relaying (the VM stopped): an old reader stops, input is refused.
    pub fn disconnect(&self) {
        self.run.fetch_add(1, Ordering::SeqCst);
        if let Some(s) = self.lock().vmm.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireod-console-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn read_until(s: &mut UnixStream, want: &str) -> String {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains(want) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn output_reaches_the_log_the_history_and_every_viewer_and_input_the_vmm() {
        let dir = temp("relay");
        let sock = dir.join("console.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let console = Console::new(&dir.join("console.log"));
        console.connect(sock, Duration::from_secs(5), || true);
        let (mut vmm, _) = listener.accept().unwrap();
        vmm.write_all(b"boot line 1\n").unwrap();

        let (mut a, a_end) = UnixStream::pair().unwrap();
        let (mut b, b_end) = UnixStream::pair().unwrap();
        let c1 = Arc::clone(&console);
        let t1 = std::thread::spawn(move || c1.attach(a_end, HISTORY_BYTES));
        // The first viewer sees the history, so the line printed before it came.
        assert!(read_until(&mut a, "boot line 1\n").ends_with("boot line 1\n"));
        let c2 = Arc::clone(&console);
        let t2 = std::thread::spawn(move || c2.attach(b_end, 0));
        while console.viewers() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm.write_all(b"prompt# ").unwrap();
        read_until(&mut a, "prompt# ");
        assert_eq!(read_until(&mut b, "prompt# "), "prompt# ");

        // Each viewer's input reaches the guest (one viewer after the other: two at once
        // interleave as they come).
        vmm.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        a.write_all(b"ls\n").unwrap();
        let mut typed = [0u8; 3];
        vmm.read_exact(&mut typed).unwrap();
        assert_eq!(&typed, b"ls\n");
        b.write_all(b"q").unwrap();
        let mut typed = [0u8; 1];
        vmm.read_exact(&mut typed).unwrap();
        assert_eq!(&typed, b"q");

        drop(a);
        t1.join().unwrap().unwrap();
        assert_eq!(console.viewers(), 1);
        drop(b);
        t2.join().unwrap().unwrap();
        assert_eq!(console.viewers(), 0);
        let log = std::fs::read_to_string(dir.join("console.log")).unwrap();
        assert_eq!(log, "boot line 1\nprompt# ");
        assert_eq!(console.last_lines(1), ["prompt# "]);
        // A new Console (vireod restarted) starts from the log's tail.
        let again = Console::new(&dir.join("console.log"));
        assert_eq!(again.last_lines(2), ["boot line 1", "prompt# "]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_is_bounded_by_rotation_and_history_by_size() {
        let dir = temp("rotate");
        let console = Console::new(&dir.join("console.log"));
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..40 {
            console.output(&chunk);
        }
        let len = |p: &str| std::fs::metadata(dir.join(p)).unwrap().len();
        // 16 chunks fill a file; the 17th and the 33rd rotate: the current file holds
        // the last 8 chunks, the previous one 16, the oldest 16 are gone.
        assert_eq!(len("console.log"), 8 * (64 << 10));
        assert_eq!(len("console.log.1"), LOG_MAX_BYTES);
        assert_eq!(console.lock().history.len(), HISTORY_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_viewer_that_stops_reading_is_dropped_and_output_goes_on() {
        let dir = temp("slow");
        let console = Console::new(&dir.join("console.log"));
        let (_slow, slow_end) = UnixStream::pair().unwrap();
        let c = Arc::clone(&console);
        std::thread::spawn(move || c.attach(slow_end, 0));
        while console.viewers() < 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let chunk = vec![b'y'; 64 << 10];
        let start = Instant::now();
        while console.viewers() > 0 {
            console.output(&chunk);
            assert!(start.elapsed() < Duration::from_secs(30), "never dropped");
        }
        assert!(!console.input(b"x"), "no VMM connected: input is refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
