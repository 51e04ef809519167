//! The i8042 keyboard controller at 0x60/0x64, for the one thing guests need from it here:
//! command 0xfe on port 0x64 resets the machine, which stops the VM.

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// First port (data); the command/status port is 4 above it.
pub const I8042_BASE: u64 = 0x60;
/// The controller spans 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// The controller, as a bus device.
pub struct I8042<T: Trigger> {
    inner: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// A controller that fires `reset` when the guest asks for a CPU reset.
    pub fn new(reset: T) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.inner.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset))
            && let Err(e) = self.inner.write(offset, value)
        {
            log::error!("i8042: cannot signal the reset: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::trigger::EventFdTrigger;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_signals_the_vmm() {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger::new(reset.try_clone().unwrap()));
        dev.write(4, &[0xaa]); // Some other command: no reset.
        dev.write(0, &[0xfe]); // 0xfe to the data port is not a reset.
        assert!(reset.read().is_err(), "no reset yet");
        dev.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
        dev.write(4, &[]);
        dev.read(4, &mut []);
    }
}
