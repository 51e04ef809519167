//! An `EventFd` as vm-superio's interrupt/event `Trigger`.

use std::io;
use std::ops::Deref;

use vmm_sys_util::eventfd::EventFd;

/// An eventfd that devices signal: an irqfd for an interrupt line, or a VMM event.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wrap `fd`.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}
