//! Process-wide signals and start-up notices: SIGTERM/SIGINT stop the VM cleanly, and an
//! incomplete KVM is reported once.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

/// The stop eventfd the handler writes, or -1.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received, or 0.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn handle_stop(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNAL.store(signal, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is the stop eventfd, kept open for the
        // life of the VM, and we pass a valid 8-byte buffer.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Make SIGTERM and SIGINT write `stop` (and be remembered for [`pending_signal`]).
pub fn install_stop_handlers(stop: &EventFd) -> Result<(), vmm_sys_util::errno::Error> {
    STOP_FD.store(stop.as_raw_fd(), Ordering::SeqCst);
    register_signal_handler(libc::SIGTERM, handle_stop)?;
    register_signal_handler(libc::SIGINT, handle_stop)
}

/// The stop signal received, if any.
pub fn pending_signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The probe waits this long first: a VM that is done by then (a tiny guest, a bad config)
/// pays nothing for it, and it never competes with the boot path for a CPU.
const PROBE_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// In the background, shortly after start, check that KVM runs the instructions Linux
/// needs (`vmm::kvm_probe`, the same probe as `vireo probe-kvm`); if it does not, say once
/// which instruction failed and what follows.
pub fn warn_if_kvm_is_incomplete(raw_terminal: bool) {
    let _ = std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            std::thread::sleep(PROBE_DELAY);
            let Ok(kvm) = kvm_ioctls::Kvm::new() else {
                return;
            };
            match vmm::kvm_probe::probe_capabilities(&kvm) {
                Ok(capability) => {
                    if let Some(message) = capability.message() {
                        let eol = if raw_terminal { "\r\n" } else { "\n" };
                        eprint!("vireo: warning: {message}{eol}");
                    }
                }
                Err(e) => log::debug!("{e}"),
            }
        });
}
