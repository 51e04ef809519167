//! Stopping the VM: the one place vCPUs, devices and signal handlers say that the machine
//! is done, and the one place the VMM waits for it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset or powered off the machine (i8042, KVM system event).
    GuestReset,
    /// A vCPU hit a triple fault (KVM shutdown exit).
    TripleFault {
        /// The vCPU.
        vcpu: u32,
        /// Its registers at the time.
        registers: String,
    },
    /// KVM could not go on running a vCPU.
    VcpuError {
        /// The vCPU.
        vcpu: u32,
        /// What happened.
        what: String,
        /// Its registers at the time.
        registers: String,
    },
    /// The VMM got a termination signal.
    Signal(i32),
}

/// The one place vCPUs, devices and signal handlers report that the VM should stop.
/// The first recorded reason wins; the eventfd wakes whoever waits for the stop.
pub struct StopSignal {
    evt: EventFd,
    reason: Mutex<Option<StopReason>>,
    requested: AtomicBool,
}

impl StopSignal {
    /// A signal with a fresh (blocking) eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(0)?,
            reason: Mutex::new(None),
            requested: AtomicBool::new(false),
        })
    }

    /// The eventfd that [`StopSignal::wait`] blocks on; a signal handler may write it.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Whether a stop was asked for (one atomic load: cheap enough for every vCPU exit).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Record `reason` (unless one is recorded already) and wake the waiter.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(reason);
        drop(slot);
        self.requested.store(true, Ordering::SeqCst);
        // An eventfd write fails only on counter overflow, which cannot matter here.
        let _ = self.evt.write(1);
    }

    /// Block until a stop is signalled; a bare eventfd write means a guest reset.
    pub fn wait(&self) -> StopReason {
        // A read error (EINTR) is retried by the loop; the count itself does not matter.
        while self.evt.read().is_err() {}
        self.take().unwrap_or(StopReason::GuestReset)
    }

    /// The recorded reason, if any.
    pub fn take(&self) -> Option<StopReason> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A device-side handle that stops the VM as a guest reset or power-off: the
/// `vm_superio::Trigger` the i8042 and the ACPI PM device fire.
#[derive(Clone)]
pub struct ResetTrigger(pub Arc<StopSignal>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.stop(StopReason::GuestReset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_superio::Trigger;

    #[test]
    fn first_stop_reason_wins() {
        let stop = StopSignal::new().unwrap();
        stop.stop(StopReason::Signal(15));
        stop.stop(StopReason::GuestReset);
        assert_eq!(stop.wait(), StopReason::Signal(15));
    }

    #[test]
    fn bare_eventfd_write_means_reset() {
        let stop = StopSignal::new().unwrap();
        stop.eventfd().write(1).unwrap();
        assert_eq!(stop.wait(), StopReason::GuestReset);
    }

    #[test]
    fn reset_trigger_requests_a_guest_reset() {
        let stop = Arc::new(StopSignal::new().unwrap());
        assert!(!stop.is_requested());
        ResetTrigger(stop.clone()).trigger().unwrap();
        assert!(stop.is_requested());
        assert_eq!(stop.wait(), StopReason::GuestReset);
    }
}
