//! A running device: one thread per activated device, waiting in epoll on the queue
//! kicks, the worker's own fds and a control eventfd.
//!
//! Kicks arrive on eventfds that KVM writes directly (ioeventfd), so a guest's notify
//! never goes through a vCPU exit handler; the thread pops the chains and signals the
//! interrupt. The transport keeps the thread's handle and uses it to pause, resume and
//! stop the device; stopping hands back the worker and the queues (reset, snapshot).
//! [`WorkerThread::run`] runs a closure on the thread, between two events, with the
//! worker and its queues: the way a device changes its backend or limits while running.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{ActivateContext, DeviceWorker, Interrupt, QueueSnapshot, VmMemory};

/// What a job run on the worker thread is handed.
pub struct WorkerContext<'a> {
    /// Every queue of the device, `queues[i]` being queue `i`.
    pub queues: &'a mut [&'a mut Queue],
    /// Guest memory.
    pub mem: &'a VmMemory,
    /// The device's interrupt line.
    pub interrupt: &'a dyn Interrupt,
    /// Whether the VM is paused (the worker serves nothing until it resumes).
    pub paused: bool,
}

/// A closure for the worker thread ([`WorkerThread::run`]).
type Job<W> = Box<dyn FnOnce(&mut W, WorkerContext<'_>) + Send>;

enum Command<W> {
    Pause(Sender<()>),
    Resume,
    Snapshot(Sender<Result<Vec<QueueSnapshot>, String>>),
    Run(Job<W>),
    Stop,
}

/// The handle of a device's worker thread.
pub struct WorkerThread<W: DeviceWorker> {
    control: EventFd,
    commands: Sender<Command<W>>,
    thread: Option<JoinHandle<(W, Vec<Queue>)>>,
}

struct Running<W> {
    worker: W,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    mem: Arc<VmMemory>,
    interrupt: Arc<dyn Interrupt>,
    control: EventFd,
    commands: Receiver<Command<W>>,
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

    fn send(&self, cmd: Command<W>) -> bool {
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

    /// Run `job` on the worker thread, between two events, with the worker and its
    /// queues, and return what it returns. It runs whether the device is paused or
    /// not ([`WorkerContext::paused`] says which), and also after a fatal worker error
    /// (the worker is intact, only no longer serving). `None` if the thread is gone.
    ///
    /// The job must leave the worker's [`DeviceWorker::extra_fds`] as they are: they
    /// were registered in the thread's epoll at its start. Work the job leaves for the
    /// worker (requests it did not serve) needs an event to be noticed: a kick, or one
    /// of the worker's own fds made readable.
    pub fn run<R, F>(&self, job: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut W, WorkerContext<'_>) -> R + Send + 'static,
    {
        let (tx, rx) = channel();
        let job: Job<W> = Box::new(move |worker, ctx| {
            let _ = tx.send(job(worker, ctx));
        });
        if !self.send(Command::Run(job)) {
            return None;
        }
        rx.recv().ok()
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
            // the worker and queues back; jobs still run (on a worker that serves no
            // more), snapshots are refused.
            loop {
                match self.commands.recv() {
                    Ok(Command::Stop) | Err(_) => break,
                    Ok(Command::Run(job)) => self.run_job(job, true),
                    Ok(Command::Snapshot(reply)) => {
                        let _ = reply.send(Err(format!("{}: the worker has failed", self.name)));
                    }
                    Ok(Command::Pause(ack)) => {
                        let _ = ack.send(());
                    }
                    Ok(Command::Resume) => {}
                }
            }
        }
        (self.worker, self.queues)
    }

    fn run_job(&mut self, job: Job<W>, paused: bool) {
        let mut queues: Vec<&mut Queue> = self.queues.iter_mut().collect();
        job(
            &mut self.worker,
            WorkerContext {
                queues: &mut queues,
                mem: &self.mem,
                interrupt: &*self.interrupt,
                paused,
            },
        );
    }

    /// Act on one command; `true` for Stop.
    fn command(&mut self, cmd: Command<W>, paused: &mut bool) -> bool {
        match cmd {
            Command::Stop => return true,
            Command::Pause(ack) => {
                *paused = true;
                let _ = ack.send(());
            }
            Command::Resume => *paused = false,
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(*paused));
            }
            Command::Run(job) => self.run_job(job, *paused),
        }
        false
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
                        if self.command(cmd, &mut paused) {
                            return Ok(());
                        }
                    }
                    continue;
                }
                if paused {
                    // Leave the event pending: level-triggered epoll reports it again
                    // after resume. Sleep until the next command instead of spinning.
                    match self.commands.recv() {
                        Ok(cmd) => {
                            if self.command(cmd, &mut paused) {
                                return Ok(());
                            }
                        }
                        Err(_) => return Ok(()),
                    }
                    // Draining the control eventfd may take the wake-ups of commands
                    // sent after that one: take them now (each is in the channel
                    // before its wake-up is written), or they would wait for an event.
                    let _ = self.control.read();
                    while let Ok(cmd) = self.commands.try_recv() {
                        if self.command(cmd, &mut paused) {
                            return Ok(());
                        }
                    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::device::WorkerError;
    use crate::testing::{TestInterrupt, guest_memory};
    use virtio_queue::QueueT;
    use vm_memory::GuestMemory;

    /// Counts kicks; a job can read and change the count.
    #[derive(Default)]
    struct Counter {
        kicks: usize,
    }

    impl DeviceWorker for Counter {
        fn process_queue<M: GuestMemory>(
            &mut self,
            _index: usize,
            _queues: &mut [&mut Queue],
            _mem: &M,
            _interrupt: &dyn Interrupt,
        ) -> Result<(), WorkerError> {
            self.kicks += 1;
            Ok(())
        }
    }

    fn spawn() -> (WorkerThread<Counter>, EventFd, Arc<TestInterrupt>) {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(TestInterrupt::default());
        let ctx = ActivateContext {
            mem: guest_memory(1 << 16),
            queues: vec![Queue::new(16).unwrap()],
            queue_evts: vec![kick.try_clone().unwrap()],
            interrupt: irq.clone(),
            acked_features: 0,
        };
        let t = WorkerThread::spawn("worker-test", Counter::default(), ctx).unwrap();
        (t, kick, irq)
    }

    #[test]
    fn jobs_run_on_the_worker_thread_paused_or_not() {
        let (t, kick, irq) = spawn();
        kick.write(1).unwrap();
        let start = std::time::Instant::now();
        while t.run(|w, _| w.kicks).unwrap() == 0 {
            assert!(start.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(1));
        }
        let (name, paused, queues) = t
            .run(|_, ctx| {
                (
                    std::thread::current().name().map(String::from),
                    ctx.paused,
                    ctx.queues.len(),
                )
            })
            .unwrap();
        assert_eq!(name.as_deref(), Some("worker-test"));
        assert!(!paused);
        assert_eq!(queues, 1);
        assert!(t.pause());
        // A kick while paused stays pending; a job still runs, and knows it is paused.
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (kicks, paused) = t
            .run(|w, ctx| {
                ctx.interrupt.signal_config_change().unwrap();
                w.kicks += 100;
                (w.kicks, ctx.paused)
            })
            .unwrap();
        assert_eq!(kicks, 101, "the paused kick was not served");
        assert!(paused);
        assert_eq!(irq.config.load(Ordering::SeqCst), 1);
        assert!(t.resume());
        let start = std::time::Instant::now();
        while t.run(|w, _| w.kicks).unwrap() != 102 {
            assert!(start.elapsed() < Duration::from_secs(5), "the pending kick");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Resume and stop back to back: the stop is not lost.
        assert!(t.pause());
        assert!(t.resume());
        let (w, _) = t.stop().unwrap();
        assert_eq!(w.kicks, 102);
    }
}
