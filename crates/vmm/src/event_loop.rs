//! The device event loop: one thread, one epoll (event-manager), for device work that is not
//! a vCPU exit: the serial console's host side, either stdin ([`SerialInput`]) or a Unix
//! socket ([`SerialSocket`]: its clients, their input, output they could not take at once).

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;
use vsock::unix::HostListener;

use crate::devices::legacy::serial::SerialDevice;
use crate::devices::legacy::serial_socket::{Flush, SocketConsole};

/// What one read of host input into the UART's receive FIFO did.
enum Fed {
    /// Bytes went in.
    Bytes,
    /// The FIFO has no room: wait for the guest to drain it.
    FifoFull,
    /// The input ended (EOF).
    End,
    /// Nothing to read now.
    Again,
    /// The input failed.
    Failed(std::io::Error),
}

/// Read from `input` into `serial`'s receive FIFO, at most what the FIFO has room for.
fn feed(serial: &Mutex<SerialDevice>, mut input: impl Read) -> Fed {
    let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
    let room = serial.input_capacity();
    if room == 0 {
        return Fed::FifoFull;
    }
    let mut buf = [0u8; 64];
    let want = room.min(buf.len());
    match input.read(&mut buf[..want]) {
        Ok(0) => Fed::End,
        Ok(n) => {
            if let Err(e) = serial.enqueue_input(&buf[..n]) {
                log::warn!("{e}");
            }
            Fed::Bytes
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            Fed::Again
        }
        Err(e) => Fed::Failed(e),
    }
}

/// Something the event loop serves.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Copies host input (a pollable fd, e.g. stdin) into the UART's receive FIFO, no faster than
/// the guest drains it: when the FIFO is full, the input fd is dropped from the interest list
/// until the UART reports room (`input_ready`).
pub struct SerialInput<R> {
    input: R,
    serial: Arc<Mutex<SerialDevice>>,
    input_ready: EventFd,
    watching_input: bool,
}

impl<R: Read + AsRawFd> SerialInput<R> {
    /// Feed `input` to `serial`; `input_ready` is the eventfd the UART signals when it has room.
    pub fn new(input: R, serial: Arc<Mutex<SerialDevice>>, input_ready: EventFd) -> Self {
        Self {
            input,
            serial,
            input_ready,
            watching_input: false,
        }
    }

    fn watch_input(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching_input {
            return;
        }
        let events = Events::new_raw(self.input.as_raw_fd(), EventSet::IN);
        let result = if on {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.watching_input = on,
            // E.g. stdin is a regular file or /dev/null, which epoll refuses: no console input.
            Err(e) => log::debug!("serial input not watched: {e:?}"),
        }
    }

    fn forward_input(&mut self, ops: &mut EventOps) {
        match feed(&self.serial, &mut self.input) {
            Fed::Bytes | Fed::Again => {}
            Fed::FifoFull | Fed::End => self.watch_input(ops, false),
            Fed::Failed(e) => {
                log::warn!("serial input: {e}");
                self.watch_input(ops, false);
            }
        }
    }
}

impl<R: Read + AsRawFd> MutEventSubscriber for SerialInput<R> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input_ready, EventSet::IN)) {
            log::warn!("serial: cannot watch the FIFO-ready event: {e:?}");
        }
        self.watch_input(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_ready.as_raw_fd() {
            let _ = self.input_ready.read();
            self.watch_input(ops, true);
        } else if events.fd() == self.input.as_raw_fd() {
            self.forward_input(ops);
        }
    }
}

/// Serves the serial console's Unix socket (`--serial socket:PATH`): accepts clients (a
/// new one replaces the previous, which is dropped), reads what the client sends into the
/// UART's receive FIFO no faster than the guest drains it (as [`SerialInput`] does), and
/// sends the output its socket could not take at once when it is writable again. A
/// client that hangs up is dropped once its last bytes are in the FIFO; output then
/// waits for the next one ([`SocketConsole`]). Dropping this closes the listening socket
/// and removes its file.
pub struct SerialSocket {
    listener: HostListener,
    console: Arc<SocketConsole>,
    serial: Arc<Mutex<SerialDevice>>,
    input_ready: EventFd,
    /// The receive FIFO had no room: input waits for `input_ready`.
    fifo_full: bool,
    /// The last accept failed (logged once until one succeeds).
    accept_failing: bool,
    client: Option<Client>,
}

/// The connected client, as the event loop sees it.
struct Client {
    stream: UnixStream,
    /// What epoll watches on it (hang-ups and errors always); `None`: not in the list.
    watched: Option<EventSet>,
    /// It shut down its sending side: nothing more to read.
    input_done: bool,
    /// It hung up (or its socket failed): its unread bytes are read as the FIFO has
    /// room, then it is dropped.
    hung_up: bool,
    /// A send to it failed: output goes to the buffer.
    output_gone: bool,
    /// Output waits for its socket to be writable.
    blocked: bool,
}

impl SerialSocket {
    /// Serve `listener` for `console`, feeding `serial`; `input_ready` is the eventfd the
    /// UART signals when its receive FIFO is empty.
    pub fn new(
        listener: HostListener,
        console: Arc<SocketConsole>,
        serial: Arc<Mutex<SerialDevice>>,
        input_ready: EventFd,
    ) -> Self {
        Self {
            listener,
            console,
            serial,
            input_ready,
            fifo_full: false,
            accept_failing: false,
            client: None,
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let stream = match self.listener.accept() {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(e) => {
                if !std::mem::replace(&mut self.accept_failing, true) {
                    log::warn!("serial console: cannot accept a client: {e}");
                }
                return;
            }
        };
        self.accept_failing = false;
        let sender = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("serial console: client refused: {e}");
                return;
            }
        };
        if self.client.is_some() {
            log::info!("serial console: a new client replaces the connected one");
            self.drop_client(ops);
        }
        self.client = Some(Client {
            stream,
            watched: None,
            input_done: false,
            hung_up: false,
            output_gone: false,
            blocked: false,
        });
        let flush = self.console.attach(sender);
        self.after_flush(flush);
        log::info!("serial console: client connected");
    }

    fn drop_client(&mut self, ops: &mut EventOps) {
        let Some(client) = self.client.take() else {
            return;
        };
        if client.watched.is_some()
            && let Err(e) = ops.remove(Events::empty(&client.stream))
        {
            log::debug!("serial console: {e:?}");
        }
        if !client.output_gone {
            self.console.detach();
        }
        log::info!("serial console: client dropped");
    }

    fn after_flush(&mut self, flush: Flush) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        match flush {
            Flush::Done => client.blocked = false,
            Flush::Blocked => client.blocked = true,
            Flush::Broken => {
                // Gone, or no longer reading: output waits for the next client, and what
                // it sent is still read.
                self.console.detach();
                client.output_gone = true;
                client.blocked = false;
            }
        }
    }

    /// Read the client's bytes into the FIFO: one read per event while it is connected,
    /// all that fits once it hung up (no further event will say there is more).
    fn read_input(&mut self) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        while !client.input_done {
            match feed(&self.serial, &client.stream) {
                Fed::Bytes => {}
                Fed::FifoFull => {
                    self.fifo_full = true;
                    break;
                }
                Fed::End => client.input_done = true,
                Fed::Again => break,
                Fed::Failed(e) => {
                    log::debug!("serial console: client input: {e}");
                    client.input_done = true;
                    client.hung_up = true;
                }
            }
            if !client.hung_up {
                break;
            }
        }
    }

    /// Drop the client if it is done with, else make epoll watch what it needs.
    fn settle(&mut self, ops: &mut EventOps) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if client.input_done && (client.hung_up || client.output_gone) {
            self.drop_client(ops);
            return;
        }
        // Hung up with bytes left and no room for them: out of the list, or its hang-up
        // would be reported again and again; `input_ready` resumes the reading.
        let want = (!(client.hung_up && self.fifo_full)).then(|| {
            let mut set = EventSet::empty();
            if !self.fifo_full && !client.input_done {
                set |= EventSet::IN;
            }
            if client.blocked && !client.output_gone {
                set |= EventSet::OUT;
            }
            set
        });
        if want == client.watched {
            return;
        }
        let result = match (client.watched, want) {
            (None, Some(set)) => ops.add(Events::new(&client.stream, set)),
            (Some(_), Some(set)) => ops.modify(Events::new(&client.stream, set)),
            (Some(_), None) => ops.remove(Events::empty(&client.stream)),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => client.watched = want,
            Err(e) => {
                log::warn!("serial console: cannot watch the client: {e:?}");
                self.drop_client(ops);
            }
        }
    }
}

impl MutEventSubscriber for SerialSocket {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, what) in [
            (self.listener.as_raw_fd(), "the listening socket"),
            (self.console.wake_event().as_raw_fd(), "the output event"),
            (self.input_ready.as_raw_fd(), "the FIFO-ready event"),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::warn!("serial console: cannot watch {what}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if fd == self.console.wake_event().as_raw_fd() {
            let _ = self.console.wake_event().read();
            let flush = self.console.flush();
            self.after_flush(flush);
        } else if fd == self.input_ready.as_raw_fd() {
            let _ = self.input_ready.read();
            self.fifo_full = false;
            self.read_input();
        } else if let Some(client) = self.client.as_mut()
            && fd == client.stream.as_raw_fd()
        {
            let set = events.event_set();
            if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                client.hung_up = true;
            }
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                self.read_input();
            }
            if set.contains(EventSet::OUT) {
                let flush = self.console.flush();
                self.after_flush(flush);
            }
        }
        self.settle(ops);
    }
}

/// Ends the loop when its eventfd is written.
struct Shutdown {
    evt: EventFd,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for Shutdown {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop: cannot watch the shutdown event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why the event loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// An eventfd or the epoll instance could not be made.
    #[error("cannot create the event loop: {0}")]
    Create(#[source] std::io::Error),
}

/// The running event-loop thread.
pub struct EventLoop {
    shutdown: EventFd,
    thread: JoinHandle<()>,
}

impl EventLoop {
    /// Start the `event-loop` thread serving `subscribers`.
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, EventLoopError> {
        let shutdown = EventFd::new(libc::EFD_NONBLOCK).map_err(EventLoopError::Create)?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopper = Shutdown {
            evt: shutdown.try_clone().map_err(EventLoopError::Create)?,
            done: done.clone(),
        };
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| EventLoopError::Create(std::io::Error::other(format!("{e:?}"))))?;
        let thread = std::thread::Builder::new()
            .name("event-loop".into())
            .spawn(move || {
                manager.add_subscriber(Box::new(stopper));
                for subscriber in subscribers {
                    manager.add_subscriber(subscriber);
                }
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        log::error!("event loop: {e:?}");
                        break;
                    }
                }
            })
            .map_err(EventLoopError::Create)?;
        Ok(Self { shutdown, thread })
    }

    /// Stop the thread and wait for it.
    pub fn stop(self) {
        let _ = self.shutdown.write(1);
        let _ = self.thread.join();
    }
}

/// Standard input, read unbuffered: a buffered reader could take in bytes that epoll then
/// never reports again, leaving them stuck short of the guest.
pub struct Stdin;

impl Read for Stdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes into `buf`, which is valid for writes.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Stdin {
    fn as_raw_fd(&self) -> RawFd {
        libc::STDIN_FILENO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    #[test]
    fn host_input_reaches_the_guest_fifo() {
        let (mut host, vmm_side) = UnixStream::pair().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            ready.try_clone().unwrap(),
            Box::new(std::io::sink()),
        )));
        let event_loop = EventLoop::start(vec![Box::new(SerialInput::new(
            vmm_side,
            serial.clone(),
            ready,
        ))])
        .unwrap();
        host.write_all(b"ls\n").unwrap();
        let got = guest_reads(&serial, 3);
        event_loop.stop();
        assert_eq!(got, b"ls\n");
    }

    /// The guest's side of the UART: read the receive buffer until `n` bytes came.
    fn guest_reads(serial: &Mutex<SerialDevice>, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let mut dev = serial.lock().unwrap();
            let mut lsr = [0u8];
            crate::bus::BusDevice::read(&mut *dev, 5, &mut lsr);
            if lsr[0] & 1 == 1 {
                let mut byte = [0u8];
                crate::bus::BusDevice::read(&mut *dev, 0, &mut byte);
                got.push(byte[0]);
            } else {
                drop(dev);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    fn guest_writes(serial: &Mutex<SerialDevice>, bytes: &[u8]) {
        let mut dev = serial.lock().unwrap();
        for b in bytes {
            crate::bus::BusDevice::write(&mut *dev, 0, &[*b]);
        }
    }

    /// A UART whose console is a socket served by a running event loop.
    struct SocketRig {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
        serial: Arc<Mutex<SerialDevice>>,
        console: Arc<SocketConsole>,
        event_loop: Option<EventLoop>,
    }

    impl SocketRig {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vireo-console-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("console.sock");
            let listener = HostListener::bind(&path).unwrap();
            let console = SocketConsole::new().unwrap();
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let serial = Arc::new(Mutex::new(SerialDevice::new(
                irq,
                ready.try_clone().unwrap(),
                Box::new(console.output()),
            )));
            let server = SerialSocket::new(listener, console.clone(), serial.clone(), ready);
            let event_loop = EventLoop::start(vec![Box::new(server)]).unwrap();
            Self {
                dir,
                path,
                serial,
                console,
                event_loop: Some(event_loop),
            }
        }

        fn connect(&self) -> UnixStream {
            let client = UnixStream::connect(&self.path).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            client
        }
    }

    impl Drop for SocketRig {
        fn drop(&mut self) {
            if let Some(event_loop) = self.event_loop.take() {
                event_loop.stop();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn read_n(client: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        client.read_exact(&mut buf).unwrap();
        buf
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn socket_console_keeps_output_for_the_next_client_and_takes_its_input() {
        let rig = SocketRig::new("clients");
        guest_writes(&rig.serial, b"booted\n");
        assert_eq!(rig.console.pending_len(), 7, "no client yet: buffered");

        let mut first = rig.connect();
        assert_eq!(read_n(&mut first, 7), b"booted\n");
        first.write_all(b"ab").unwrap();
        assert_eq!(guest_reads(&rig.serial, 2), b"ab");
        guest_writes(&rig.serial, b"x");
        assert_eq!(read_n(&mut first, 1), b"x");

        // Gone: what the guest prints meanwhile waits for the next client.
        drop(first);
        guest_writes(&rig.serial, b"while away\n");
        let mut second = rig.connect();
        assert_eq!(read_n(&mut second, 11), b"while away\n");

        // A third client replaces the second, which is hung up on.
        let mut third = rig.connect();
        let mut byte = [0u8];
        assert_eq!(second.read(&mut byte).unwrap(), 0, "replaced: EOF");
        guest_writes(&rig.serial, b"3");
        assert_eq!(read_n(&mut third, 1), b"3");
        third.write_all(b"q").unwrap();
        assert_eq!(guest_reads(&rig.serial, 1), b"q");
    }

    #[test]
    fn socket_console_delivers_blocked_output_once_the_client_reads() {
        let rig = SocketRig::new("blocked");
        let mut client = rig.connect();
        // The client reads nothing while the guest writes far more than its socket and
        // the buffer hold: the guest is never held up, and the oldest of what waits is
        // dropped.
        let data: Vec<u8> = (0..40_000u32)
            .flat_map(|i| format!("{i:07}\n").into_bytes())
            .collect();
        guest_writes(&rig.serial, &data);
        assert_eq!(
            rig.console.pending_len(),
            crate::devices::legacy::serial_socket::CONSOLE_BUFFER_BYTES
        );

        // The guest prints nothing more: the event loop sends the rest as the socket
        // becomes writable.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while !got.ends_with(b"0039999\n") {
            let n = client.read(&mut buf).expect("the rest of the output");
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        let kept = crate::devices::legacy::serial_socket::CONSOLE_BUFFER_BYTES;
        let (direct, buffered) = got.split_at(got.len() - kept);
        assert!(data.starts_with(direct), "the socket took the start");
        assert!(data.ends_with(buffered), "then the newest 64 KiB");
        assert_eq!(rig.console.pending_len(), 0);
    }

    #[test]
    fn socket_console_reads_a_departed_clients_last_bytes() {
        let rig = SocketRig::new("departed");
        let mut client = rig.connect();
        // More than the receive FIFO holds, and gone at once.
        let typed: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        client.write_all(&typed).unwrap();
        drop(client);
        assert_eq!(guest_reads(&rig.serial, typed.len()), typed);

        // The next client is served as usual.
        let mut next = rig.connect();
        next.write_all(b"z").unwrap();
        assert_eq!(guest_reads(&rig.serial, 1), b"z");
        guest_writes(&rig.serial, b"ok");
        assert_eq!(read_n(&mut next, 2), b"ok");
    }

    #[test]
    fn socket_console_file_is_removed_with_the_event_loop() {
        let mut rig = SocketRig::new("removed");
        assert!(rig.path.exists());
        let client = rig.connect();
        rig.event_loop.take().unwrap().stop();
        wait_until("the socket file to go", || !rig.path.exists());
        drop(client);
    }
}
