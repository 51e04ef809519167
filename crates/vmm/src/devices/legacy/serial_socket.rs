//! The serial console's output side on a Unix socket (`--serial socket:PATH`): what the
//! UART writes to, the connected client's sending end, and the output no client has
//! taken yet.
//!
//! The UART writes on a vCPU thread, which must never wait for a client: a byte goes to
//! the client with a non-blocking send when nothing is waiting before it, and otherwise
//! (no client, or one whose socket buffer is full) into an [`OutputBuffer`] that keeps
//! the newest [`CONSOLE_BUFFER_BYTES`]. The event loop (`event_loop::SerialSocket`, which
//! also owns the listening socket and reads the client's input) attaches each new client,
//! which gets that buffer first, and sends the rest of it when the socket is writable
//! again; the UART side wakes it (an eventfd) when output starts waiting for a connected
//! client, or the client's socket failed.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;
use vsock::unix::send_nosignal;

/// Output kept for the next client: 64 KiB, the oldest bytes dropped first.
pub const CONSOLE_BUFFER_BYTES: usize = 64 << 10;

/// The newest `capacity` bytes written and not yet taken, oldest first.
#[derive(Debug)]
pub struct OutputBuffer {
    bytes: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
}

impl OutputBuffer {
    /// An empty buffer that holds at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// Append `data`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let keep = data.len().min(self.capacity);
        let (lost, data) = data.split_at(data.len() - keep);
        let over = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..over);
        self.bytes.extend(data);
        self.dropped += (lost.len() + over) as u64;
    }

    /// The oldest bytes held, as one slice (empty only when nothing is held; the rest
    /// follows once these are consumed).
    pub fn front(&self) -> &[u8] {
        self.bytes.as_slices().0
    }

    /// Forget the `n` oldest bytes (they were delivered).
    pub fn consume(&mut self, n: usize) {
        self.bytes.drain(..n.min(self.bytes.len()));
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes dropped so far to stay within the capacity.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// What became of the output waiting for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// All of it was sent, or there is no client to send it to.
    Done,
    /// The client's socket is full: send again when it is writable.
    Blocked,
    /// The client's socket failed (it is gone): detach it.
    Broken,
}

struct State {
    pending: OutputBuffer,
    /// The client's sending end (the event loop holds the same socket for reading).
    client: Option<UnixStream>,
    /// A send to the client failed.
    broken: bool,
    /// The event loop knows output is waiting (it was woken, or watches for writable).
    woken: bool,
}

impl State {
    fn flush(&mut self) -> Flush {
        let Some(client) = self.client.as_ref() else {
            return Flush::Done;
        };
        loop {
            if self.broken {
                return Flush::Broken;
            }
            let front = self.pending.front();
            if front.is_empty() {
                self.woken = false;
                return Flush::Done;
            }
            match send_nosignal(client, front) {
                Ok(0) => return Flush::Blocked,
                Ok(n) => self.pending.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.woken = true;
                    return Flush::Blocked;
                }
                Err(_) => self.broken = true,
            }
        }
    }
}

/// The console's shared state: between the UART (through [`SocketOutput`]) and the event
/// loop. Lock order: the UART's lock, then this one; the event loop never holds this
/// one while it takes the UART's.
pub struct SocketConsole {
    state: Mutex<State>,
    wake: EventFd,
}

impl SocketConsole {
    /// A console with no client and an empty buffer of [`CONSOLE_BUFFER_BYTES`].
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            state: Mutex::new(State {
                pending: OutputBuffer::new(CONSOLE_BUFFER_BYTES),
                client: None,
                broken: false,
                woken: false,
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is whole even if a holder panicked: bytes and a socket.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Written when output waits for the connected client or its socket failed: the
    /// event loop then calls [`SocketConsole::flush`].
    pub fn wake_event(&self) -> &EventFd {
        &self.wake
    }

    /// What the UART writes to.
    pub fn output(self: &Arc<Self>) -> SocketOutput {
        SocketOutput(self.clone())
    }

    /// `client` (its sending end) replaces the previous client and is sent the waiting
    /// output first, as much as its socket takes now.
    pub fn attach(&self, client: UnixStream) -> Flush {
        let mut state = self.lock();
        state.client = Some(client);
        state.broken = false;
        state.woken = false;
        let dropped = state.pending.dropped();
        if dropped > 0 {
            log::debug!("serial console: {dropped} bytes of output dropped so far, unclaimed");
        }
        state.flush()
    }

    /// No client any more: output waits for the next one.
    pub fn detach(&self) {
        let mut state = self.lock();
        state.client = None;
        state.broken = false;
        state.woken = false;
    }

    /// Send the waiting output to the client.
    pub fn flush(&self) -> Flush {
        self.lock().flush()
    }

    /// Bytes waiting for a client.
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    fn write_output(&self, data: &[u8]) {
        let mut state = self.lock();
        let mut rest = data;
        if state.pending.is_empty()
            && !state.broken
            && let Some(client) = state.client.as_ref()
        {
            match send_nosignal(client, rest) {
                Ok(n) => rest = &rest[n.min(rest.len())..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => state.broken = true,
            }
        }
        if rest.is_empty() {
            return;
        }
        state.pending.push(rest);
        if state.client.is_some() && !state.woken {
            state.woken = true;
            // A failed write only delays the output until the next event.
            let _ = self.wake.write(1);
        }
    }
}

/// Whether a socket file at `path` is one the kernel lists (`/proc/net/unix`) as
/// listening, bound by that name made absolute. A socket file's owner may be alive or gone;
/// `HostListener::bind` tells them apart by connecting, but a live console server would
/// take that probe for a client and hand it the output it keeps for the next one, so the
/// kernel is asked first. A socket its binder named otherwise (relative to another
/// directory, through a symlink) is not found here; the probe then decides.
pub fn live_socket_at(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    let absolute = std::path::absolute(path).ok();
    let (true, Some(absolute)) = (is_socket, absolute.as_deref().and_then(Path::to_str)) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    // "Num RefCount Protocol Flags Type St Inode Path": listening is flag __SO_ACCEPTCON
    // (0x10000) in state 01; the path, which may hold spaces, ends the line.
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let listening = fields.nth(3) == Some("00010000") && fields.nth(1) == Some("01");
        listening
            && line
                .strip_suffix(absolute)
                .is_some_and(|rest| rest.ends_with(' '))
    })
}

/// The UART's output stream for a socket console: never blocks, never fails.
pub struct SocketOutput(Arc<SocketConsole>);

impl Write for SocketOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_output(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn held(b: &OutputBuffer) -> Vec<u8> {
        b.bytes.iter().copied().collect()
    }

    #[test]
    fn buffer_keeps_the_newest_bytes() {
        let mut b = OutputBuffer::new(8);
        assert!(b.is_empty());
        assert_eq!(b.front(), b"");
        b.push(b"abc");
        b.push(b"defg");
        assert_eq!(held(&b), b"abcdefg");
        assert_eq!(b.dropped(), 0);
        b.push(b"hij");
        assert_eq!(held(&b), b"cdefghij", "the two oldest dropped");
        assert_eq!((b.len(), b.dropped()), (8, 2));
        b.push(b"0123456789AB");
        assert_eq!(held(&b), b"456789AB", "more than fits: its tail only");
        assert_eq!(b.dropped(), 2 + 8 + 4);
        b.push(b"");
        assert_eq!(b.len(), 8);
    }

    #[test]
    fn buffer_front_and_consume_walk_the_bytes_in_order() {
        let mut b = OutputBuffer::new(8);
        b.push(b"abcdefgh");
        b.consume(5);
        b.push(b"ijkl"); // Wraps around inside the deque.
        let mut out = Vec::new();
        while !b.is_empty() {
            let n = b.front().len().min(3);
            out.extend_from_slice(&b.front()[..n]);
            b.consume(n);
        }
        assert_eq!(out, b"fghijkl");
        b.consume(100);
        assert!(b.is_empty());
    }

    #[test]
    fn buffer_of_the_full_size_drops_at_64_kib() {
        let mut b = OutputBuffer::new(CONSOLE_BUFFER_BYTES);
        let data: Vec<u8> = (0..CONSOLE_BUFFER_BYTES + 100).map(|i| i as u8).collect();
        for chunk in data.chunks(1000) {
            b.push(chunk);
        }
        assert_eq!(b.len(), CONSOLE_BUFFER_BYTES);
        assert_eq!(b.dropped(), 100);
        assert_eq!(held(&b), &data[100..]);
    }

    #[test]
    fn output_waits_for_a_client_then_goes_straight_to_it() {
        let console = SocketConsole::new().unwrap();
        let mut out = console.output();
        out.write_all(b"before\n").unwrap();
        assert_eq!(console.pending_len(), 7);
        assert!(
            console.wake_event().read().is_err(),
            "no client: nothing to wake for"
        );

        let (vmm_end, mut client) = UnixStream::pair().unwrap();
        assert_eq!(console.attach(vmm_end), Flush::Done);
        assert_eq!(console.pending_len(), 0);
        out.write_all(b"after\n").unwrap();
        let mut got = [0u8; 13];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"before\nafter\n");

        console.detach();
        out.write_all(b"x").unwrap();
        assert_eq!(console.pending_len(), 1, "detached: kept for the next one");
    }

    #[test]
    fn a_full_client_socket_never_blocks_the_writer() {
        let console = SocketConsole::new().unwrap();
        let (vmm_end, mut client) = UnixStream::pair().unwrap();
        vmm_end.set_nonblocking(true).unwrap();
        assert_eq!(console.attach(vmm_end), Flush::Done);
        let mut out = console.output();
        // Far more than a socket buffer: the writer returns at once every time.
        let chunk = vec![b'x'; 4096];
        for _ in 0..1024 {
            out.write_all(&chunk).unwrap();
        }
        assert!(console.pending_len() > 0, "the socket filled up");
        assert!(console.pending_len() <= CONSOLE_BUFFER_BYTES);
        assert_eq!(console.wake_event().read().unwrap(), 1, "woken once");
        assert_eq!(console.flush(), Flush::Blocked);

        // The client reads; the event loop's flush then delivers the rest.
        client.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match client.read(&mut sink) {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if console.flush() == Flush::Done {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        while let Ok(n) = client.read(&mut sink) {
            total += n;
        }
        assert_eq!(console.pending_len(), 0);
        assert!(total > CONSOLE_BUFFER_BYTES, "read {total}");
    }

    #[test]
    fn a_client_that_went_away_is_reported_and_output_kept() {
        let console = SocketConsole::new().unwrap();
        let (vmm_end, client) = UnixStream::pair().unwrap();
        assert_eq!(console.attach(vmm_end), Flush::Done);
        drop(client);
        let mut out = console.output();
        out.write_all(b"lost?").unwrap();
        assert_eq!(console.wake_event().read().unwrap(), 1);
        assert_eq!(console.flush(), Flush::Broken);
        console.detach();
        assert_eq!(console.pending_len(), 5, "kept for the next client");
        let (vmm_end, mut client) = UnixStream::pair().unwrap();
        assert_eq!(console.attach(vmm_end), Flush::Done);
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"lost?");
    }

    #[test]
    fn a_live_socket_is_found_in_the_kernels_table() {
        let dir = std::env::temp_dir().join(format!("vireo-live-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("with space.sock");
        assert!(!live_socket_at(&path), "nothing there");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(live_socket_at(&path));
        drop(live);
        assert!(path.exists());
        assert!(!live_socket_at(&path), "a stale socket file");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(!live_socket_at(&path), "not a socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
