//! The io_uring engine for raw images: reads, writes and flushes are submitted when the
//! queue is kicked and completed when the ring's eventfd (registered with the ring) says
//! so, so up to a queue's worth of requests are in flight at once.
//!
//! Each in-flight request owns a slot holding its `iovec` array (which must outlive the
//! submission) and what is needed to answer it. Guest memory pointed to by the iovecs
//! must stay mapped until the request completes: the worker drains the ring
//! ([`Uring::wait_idle`]) before it is stopped for good or reset, and on drop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{IoUring, opcode, squeue, types};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::request::{Buffer, status};

/// What a finished request needs to be answered.
#[derive(Debug)]
pub(crate) struct Meta {
    /// Head of the descriptor chain.
    pub head: u16,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// Bytes written into the chain on success (data + status byte).
    pub used_len: u32,
    /// Guest buffers the device writes (reads): marked dirty in the guest memory's
    /// bitmap when the request completes, whatever its status (the kernel writes them
    /// from raw host addresses, which vm-memory does not see).
    pub dirty: Vec<Buffer>,
    /// What it does, for the disk's counters.
    pub op: Op,
    /// When it was submitted.
    pub started: Instant,
}

/// The kind of a request in flight, with the bytes it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read(u64),
    Write(u64),
    Flush,
}

struct InFlight {
    meta: Meta,
    /// Bytes the operation must transfer (0 for a flush).
    expected: u64,
    /// Kept alive until completion: the kernel may read it when the request is issued.
    _iovecs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `_iovecs` point into guest memory, which is shared with the
// guest and the kernel anyway; they are never dereferenced by Rust code, only handed to
// the kernel, so moving the slot to another thread is harmless.
unsafe impl Send for InFlight {}

/// A finished request: its answer.
#[derive(Debug)]
pub(crate) struct Completion {
    /// The request.
    pub meta: Meta,
    /// `VIRTIO_BLK_S_*`.
    pub status: u8,
}

/// An io_uring with a completion eventfd and a slot per request in flight.
pub(crate) struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
}

impl Uring {
    /// A ring for up to `depth` requests in flight.
    pub(crate) fn new(depth: u32) -> io::Result<Self> {
        let ring = IoUring::new(depth)?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let depth = depth as usize;
        Ok(Self {
            ring,
            eventfd,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
        })
    }

    /// Whether io_uring works on this host.
    pub(crate) fn probe() -> io::Result<()> {
        Self::new(2).map(drop)
    }

    /// The eventfd written when completions arrive.
    pub(crate) fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Make the completion eventfd readable with nothing to reap, so the worker looks at
    /// its queue again (after completions were taken outside its event loop).
    pub(crate) fn wake(&self) -> io::Result<()> {
        self.eventfd.write(1)
    }

    /// Whether another request can be submitted.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Requests submitted and not yet reaped.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn push(&mut self, entry: squeue::Entry, inflight: InFlight) -> io::Result<()> {
        let Some(slot) = self.free.pop() else {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "ring full"));
        };
        let entry = entry.user_data(slot as u64);
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: the entry's iovec array lives in the slot until the completion is
        // reaped, and the memory it points to is guaranteed mapped by the caller of
        // `read`/`write` until then.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.free.push(slot);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "submission queue full",
            ));
        }
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(inflight);
        }
        Ok(())
    }

    /// Queue a vectored read (`write` false) or write of `iovecs` at `offset` of `fd`.
    ///
    /// # Safety
    /// The iovecs must point to memory that stays valid (and, for reads, writable) until
    /// the completion is reaped by [`Uring::reap`] or [`Uring::wait_idle`].
    pub(crate) unsafe fn rw(
        &mut self,
        fd: RawFd,
        write: bool,
        offset: u64,
        iovecs: Vec<libc::iovec>,
        meta: Meta,
    ) -> io::Result<()> {
        let expected: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
        let count = u32::try_from(iovecs.len())
            .ok()
            .filter(|&n| n <= 1024)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many buffers"))?;
        let entry = if write {
            opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), count)
                .offset(offset)
                .build()
        } else {
            opcode::Readv::new(types::Fd(fd), iovecs.as_ptr(), count)
                .offset(offset)
                .build()
        };
        self.push(
            entry,
            InFlight {
                meta,
                expected,
                _iovecs: iovecs,
            },
        )
    }

    /// Queue an `fdatasync` of `fd` that starts only after everything submitted before
    /// it has completed (`IOSQE_IO_DRAIN`).
    pub(crate) fn flush(&mut self, fd: RawFd, meta: Meta) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .flags(squeue::Flags::IO_DRAIN);
        self.push(
            entry,
            InFlight {
                meta,
                expected: 0,
                _iovecs: Vec::new(),
            },
        )
    }

    /// Hand queued entries to the kernel. A busy kernel is not an error: the entries
    /// stay queued and go with the next call.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Drain the eventfd and collect every finished request.
    pub(crate) fn reap(&mut self) -> Vec<Completion> {
        // Drain first: a completion posted after this read writes the eventfd again.
        let _ = self.eventfd.read();
        let mut done = Vec::new();
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (slot, result) in cqes {
            let Some(inflight) = usize::try_from(slot)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
                .and_then(Option::take)
            else {
                continue;
            };
            self.free.push(slot as usize);
            let ok = result >= 0 && result as u64 == inflight.expected;
            if !ok {
                log::warn!(
                    "virtio-blk: request {} failed: {}",
                    inflight.meta.head,
                    if result < 0 {
                        io::Error::from_raw_os_error(-result).to_string()
                    } else {
                        format!("{result} of {} bytes", inflight.expected)
                    }
                );
            }
            done.push(Completion {
                meta: inflight.meta,
                status: if ok { status::OK } else { status::IOERR },
            });
        }
        done
    }

    /// Wait until nothing is in flight; the completions are returned, not answered.
    pub(crate) fn wait_idle(&mut self) -> Vec<Completion> {
        let mut all = Vec::new();
        while self.in_flight() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    log::error!("virtio-blk: cannot wait for io_uring completions: {e}");
                    break;
                }
            }
            all.extend(self.reap());
        }
        all
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel must not write into guest memory (or read freed iovecs) after the
        // worker is gone.
        self.wait_idle();
    }
}
