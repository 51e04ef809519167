//! The device event loop: one thread, one epoll (event-manager), for device work that is not
//! a vCPU exit. For now that is host input to the serial console; virtio queues join later.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::legacy::serial::SerialDevice;

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
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.input_capacity();
        if room == 0 {
            drop(serial);
            self.watch_input(ops, false);
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                drop(serial);
                self.watch_input(ops, false); // End of input.
            }
            Ok(n) => {
                if let Err(e) = serial.enqueue_input(&buf[..n]) {
                    log::warn!("{e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial input: {e}");
                drop(serial);
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
    use std::io::Write;
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

        // The guest reads the receive buffer register until the three bytes are there.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 3 && Instant::now() < deadline {
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
        event_loop.stop();
        assert_eq!(got, b"ls\n");
    }
}
