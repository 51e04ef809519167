//! A running device: one thread per activated device, waiting in epoll on the queue
//! kicks, the worker's own fds and a control eventfd.
//!
//! Kicks arrive on eventfds that KVM writes directly (ioeventfd), so a guest's notify
//! never goes through a vCPU exit handler; the thread pops the chains and signals the
//! interrupt. The transport keeps the thread's handle and uses it to pause, resume and
//! stop the device; stopping hands back the worker and the queues (reset, snapshot).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{ActivateContext, DeviceWorker, Interrupt, QueueSnapshot, VmMemory};

enum Command {
    Pause(Sender<()>),
    Resume,
    Snapshot(Sender<Result<Vec<QueueSnapshot>, String>>),
    Stop,
}

/// The handle of a device's worker thread.
pub struct WorkerThread<W: DeviceWorker> {
    control: EventFd,
    commands: Sender<Command>,
    thread: Option<JoinHandle<(W, Vec<Queue>)>>,
}

struct Running<W> {
    worker: W,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    mem: Arc<VmMemory>,
    interrupt: Arc<dyn Interrupt>,
    control: EventFd,
    commands: Receiver<Command>,
    name: String,
}

impl<W: DeviceWorker> WorkerThread<W> {
    /// Start `worker` on a thread named `name`, serving the queues in `ctx`.
    pub fn spawn(name: &str, worker: W, ctx: ActivateContext) -> io::Result<Self> {
        let control = EventFd::new(EFD_NONBLOCK)?;
        let (tx, rx) = channel();
        let running = Running {
            worker,
            queues: ctx.queues,
            queue_evts: ctx.queue_evts,
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            control: control.try_clone()?,
            commands: rx,
            name: name.to_string(),
        };
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || running.run())?;
        Ok(Self {
            control,
            commands: tx,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok() && self.control.write(1).is_ok()
    }

    /// Stop processing at the next event boundary; returns once the thread is parked,
    /// so no request is half done. Returns `false` if the thread is gone.
    pub fn pause(&self) -> bool {
        let (tx, rx) = channel();
        self.send(Command::Pause(tx)) && rx.recv().is_ok()
    }

    /// Continue after [`WorkerThread::pause`]; kicks that arrived meanwhile are served.
    pub fn resume(&self) -> bool {
        self.send(Command::Resume)
    }

    /// For a snapshot of the paused device: the worker finishes the requests it had
    /// taken ([`DeviceWorker::prepare_snapshot`]), then the queues' state. Refused
    /// unless paused.
    pub fn snapshot(&self) -> Result<Vec<QueueSnapshot>, String> {
        let (tx, rx) = channel();
        if !self.send(Command::Snapshot(tx)) {
            return Err("the device's worker thread has ended".into());
        }
        rx.recv()
            .map_err(|_| "the device's worker thread has ended".to_string())?
    }

    /// Stop the thread and take back the worker and the queues.
    pub fn stop(mut self) -> Option<(W, Vec<Queue>)> {
        self.send(Command::Stop);
        self.thread.take()?.join().ok()
    }
}

impl<W: DeviceWorker> Drop for WorkerThread<W> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.send(Command::Stop);
            let _ = thread.join();
        }
    }
}

impl<W: DeviceWorker> Running<W> {
    fn run(mut self) -> (W, Vec<Queue>) {
        if let Err(e) = self.serve() {
            log::error!("{}: worker stopped: {e}", self.name);
            self.interrupt.device_failed();
            // Keep the thread until the transport stops it, so that stop() still gets
            // the worker and queues back.
            while !matches!(self.commands.recv(), Ok(Command::Stop) | Err(_)) {}
        }
        (self.worker, self.queues)
    }

    /// Answer a snapshot request: only while paused.
    fn snapshot(&mut self, paused: bool) -> Result<Vec<QueueSnapshot>, String> {
        if !paused {
            return Err(format!("{}: not paused", self.name));
        }
        let mut queues: Vec<&mut Queue> = self.queues.iter_mut().collect();
        self.worker
            .prepare_snapshot(&mut queues, &*self.mem, &*self.interrupt)
            .map_err(|e| format!("{}: {e}", self.name))?;
        Ok(self.queues.iter().map(QueueSnapshot::of).collect())
    }

    fn serve(&mut self) -> Result<(), String> {
        let epoll = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
        let nq = self.queue_evts.len();
        let extras = self.worker.extra_fds();
        let control_token = (nq + extras.len()) as u64;
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| format!("epoll add: {e}"))
        };
        for (i, evt) in self.queue_evts.iter().enumerate() {
            add(evt.as_raw_fd(), i as u64)?;
        }
        for (i, fd) in extras.iter().enumerate() {
            add(*fd, (nq + i) as u64)?;
        }
        add(self.control.as_raw_fd(), control_token)?;

        let mut events = vec![EpollEvent::default(); nq + extras.len() + 1];
        let mut paused = false;
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("epoll wait: {e}")),
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == control_token {
                    let _ = self.control.read();
                    while let Ok(cmd) = self.commands.try_recv() {
                        match cmd {
                            Command::Stop => return Ok(()),
                            Command::Pause(ack) => {
                                paused = true;
                                let _ = ack.send(());
                            }
                            Command::Resume => paused = false,
                            Command::Snapshot(reply) => {
                                let _ = reply.send(self.snapshot(paused));
                            }
                        }
                    }
                    continue;
                }
                if paused {
                    // Leave the event pending: level-triggered epoll reports it again
                    // after resume. Sleep until the next command instead of spinning.
                    match self.commands.recv() {
                        Ok(Command::Stop) | Err(_) => return Ok(()),
                        Ok(Command::Resume) => paused = false,
                        Ok(Command::Pause(ack)) => {
                            let _ = ack.send(());
                        }
                        Ok(Command::Snapshot(reply)) => {
                            let _ = reply.send(self.snapshot(paused));
                        }
                    }
                    let _ = self.control.read();
                    continue;
                }
                let token = token as usize;
                let mut queues: Vec<&mut Queue> = self.queues.iter_mut().collect();
                let mem = &*self.mem;
                let irq = &*self.interrupt;
                let result = if token < nq {
                    // A failed read means the counter was already zero: nothing to drain.
                    let _ = self.queue_evts[token].read();
                    self.worker.process_queue(token, &mut queues, mem, irq)
                } else {
                    self.worker.process_extra(token - nq, &mut queues, mem, irq)
                };
                result.map_err(|e| e.to_string())?;
            }
        }
    }
}
