//! The i8042 keyboard controller at 0x60 (data) and 0x64 (status/command), with a PS/2
//! keyboard on its first port and nothing on its second (no mouse: it answers as an
//! AT-type controller, which has no aux port).
//!
//! What it does, enough for Linux's i8042 and atkbd drivers and for the VMM to press
//! Ctrl+Alt+Del ([`I8042::send_ctrl_alt_del`], Firecracker's `SendCtrlAltDel`):
//!
//! - **Status register** (read 0x64): OBF (a byte waits on 0x60), SYS (the command byte's
//!   system flag), CMD/DATA (the last write went to 0x64), keyboard not inhibited. IBF is
//!   never set: every write is handled before the vCPU runs on. No aux data, timeout or
//!   parity error, ever.
//! - **Command byte** (0x20 reads it, 0x60 then a data byte writes it): keyboard interrupt
//!   enable (bit 0), system flag (2), keyboard port disabled (4), aux port disabled (5,
//!   set at power-on: there is none), translation to scan code set 1 (6, on at power-on,
//!   as a PC BIOS leaves it and as Linux expects).
//! - **Controller commands** on 0x64: 0xaa self-test (answers 0x55), 0xab keyboard
//!   interface test (0x00), 0xad / 0xae disable / enable the keyboard port, 0xa7 / 0xa8
//!   accepted with no effect (no aux port: the command byte's aux bit does not move, which
//!   is how Linux tells), 0xd0 / 0xd1 read / write the output port (clearing bit 0 resets
//!   the machine), 0xd2 puts the next data byte in the output buffer as if the keyboard
//!   had sent it, 0xf0..=0xff pulse output lines: those with bit 0 clear (0xfe above all)
//!   pulse the CPU reset line, which stops the VM. Any other command (0xa9 and 0xd3 of
//!   PS/2 controllers with an aux port among them) is logged once and ignored, so the
//!   byte that follows on 0x60 goes to the keyboard as on an AT controller.
//! - **Keyboard commands**, bytes written to 0x60 when the controller waits for no
//!   parameter (such a write also re-enables the keyboard port, as real controllers do):
//!   0xff reset (0xfa, then 0xaa: self-test passed), 0xf2 identify (0xfa 0xab 0x83),
//!   0xf0 get/set scan code set, 0xed LEDs, 0xf3 typematic rate, 0xf4 / 0xf5 enable /
//!   disable scanning, 0xf6 defaults, 0xee echo (0xee), 0xfe resend, 0xf7..=0xfd (set 3
//!   key types) each acknowledged with 0xfa. Anything else is answered 0xfe (resend) and
//!   logged once; so is a bad parameter.
//! - **Output**: the output buffer register holds one byte; behind it wait a controller
//!   reply (first) and a FIFO of up to [`QUEUE_LEN`] keyboard bytes, which stay there
//!   while the keyboard port is disabled. Each time a byte lands in the output buffer and
//!   the command byte enables the keyboard interrupt, IRQ 1 is raised (an irqfd: see
//!   [`I8042::with_interrupt`]); enabling the interrupt with a byte waiting raises it too.
//!   Reading 0x60 with nothing there gives the last byte again.
//! - **Translation**: with bit 6 of the command byte set the guest reads scan code set 1
//!   whatever set the keyboard was told to use (only set 2 is meant to be translated, and
//!   no driver asks for another while translating), and the keyboard's replies go through
//!   the controller's translation (0x83 of the identify reply reads 0x41, the scan set
//!   numbers 1/2/3 read 0x43/0x41/0x3f). Without it the guest reads the keyboard's own
//!   set, 1, 2 (the default) or 3.
//!
//! Nothing the guest writes can make it panic or grow without bound.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// First port (data); the command/status port is 4 above it.
pub const I8042_BASE: u64 = 0x60;
/// The controller spans 0x60..=0x64.
pub const I8042_LEN: u64 = 5;
/// Keyboard bytes that may wait behind the output buffer (a PS/2 keyboard's own buffer
/// is about this size).
pub const QUEUE_LEN: usize = 16;

/// Offset of the data port (0x60).
const DATA: u64 = 0;
/// Offset of the status (read) / command (write) port (0x64).
const COMMAND: u64 = 4;

// Status register bits.
const STS_OBF: u8 = 0x01;
const STS_SYS: u8 = 0x04;
const STS_CMD: u8 = 0x08;
const STS_NOT_INHIBITED: u8 = 0x10;

// Command byte bits.
const CB_KBD_INT: u8 = 0x01;
const CB_SYS: u8 = 0x04;
const CB_KBD_DISABLED: u8 = 0x10;
const CB_AUX_DISABLED: u8 = 0x20;
const CB_TRANSLATE: u8 = 0x40;
/// The command byte at power-on, as a BIOS would leave it: keyboard interrupt on, POST
/// passed, aux port off (there is none), translation on.
const CB_POWER_ON: u8 = CB_KBD_INT | CB_SYS | CB_AUX_DISABLED | CB_TRANSLATE;

/// Output port bit 0: the CPU reset line, active low.
const OUTP_RESET_RELEASED: u8 = 0x01;
/// The output port at power-on: reset line released, A20 enabled.
const OUTP_POWER_ON: u8 = 0x03;

// Controller commands (port 0x64).
const CMD_READ_CB: u8 = 0x20;
const CMD_WRITE_CB: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_PULSE_FIRST: u8 = 0xf0;
const SELF_TEST_PASSED: u8 = 0x55;
const KBD_TEST_PASSED: u8 = 0x00;

// Keyboard commands (port 0x60) and replies.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_DEFAULTS: u8 = 0xf6;
const KBD_SET3_FIRST: u8 = 0xf7;
const KBD_SET3_LAST: u8 = 0xfd;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// Typematic rate and delay at reset: 10.9 characters/s after 500 ms.
const TYPEMATIC_DEFAULT: u8 = 0x2b;

/// Why the VMM's key presses were not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyboardError {
    /// The guest is not reading the keyboard: its buffer has no room for the keys.
    #[error("the i8042 keyboard buffer is full: the guest is not reading the keyboard")]
    BufferFull,
    /// The guest told the keyboard to stop scanning (command 0xf5): a keyboard drops
    /// key presses then.
    #[error("the guest has disabled the keyboard (scanning off): the keys would be lost")]
    ScanningDisabled,
}

/// The keyboard's registers in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyboardState {
    /// Scan code set: 1, 2 or 3.
    pub scan_set: u8,
    /// Whether key presses are reported (0xf4 / 0xf5).
    pub scanning: bool,
    /// LED bits last set with 0xed.
    pub leds: u8,
    /// Typematic rate and delay last set with 0xf3.
    pub typematic: u8,
    /// The command whose parameter byte comes next (0xed, 0xf0 or 0xf3), if any.
    pub awaiting: Option<u8>,
    /// The last byte the keyboard sent (as the guest reads it), for 0xfe (resend).
    pub last_sent: u8,
}

impl Default for KeyboardState {
    fn default() -> Self {
        Self {
            scan_set: 2,
            scanning: true,
            leds: 0,
            typematic: TYPEMATIC_DEFAULT,
            awaiting: None,
            last_sent: KBD_SELF_TEST_PASSED,
        }
    }
}

/// The controller's registers in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The controller command byte.
    pub command_byte: u8,
    /// The status register as the guest would read it (OBF and SYS follow the other
    /// fields on restore; the CMD/DATA bit is taken from here).
    pub status: u8,
    /// The output buffer register (port 0x60), if full.
    pub output: Option<u8>,
    /// A controller reply waiting behind the output buffer.
    pub reply: Option<u8>,
    /// Keyboard bytes waiting behind it, oldest first, as the guest will read them.
    pub queue: Vec<u8>,
    /// The byte a read of an empty output buffer gives again.
    pub last_output: u8,
    /// The controller command waiting for its parameter on port 0x60, if any.
    pub pending: Option<u8>,
    /// The output port (0xd0 / 0xd1).
    pub output_port: u8,
    /// The keyboard.
    pub keyboard: KeyboardState,
}

impl Default for I8042State {
    /// The power-on state.
    fn default() -> Self {
        Self {
            command_byte: CB_POWER_ON,
            status: STS_SYS | STS_NOT_INHIBITED,
            output: None,
            reply: None,
            queue: Vec::new(),
            last_output: 0,
            pending: None,
            output_port: OUTP_POWER_ON,
            keyboard: KeyboardState::default(),
        }
    }
}

/// Keys the VMM can press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    LeftCtrl,
    LeftAlt,
    Delete,
}

impl Key {
    /// The make code in scan code set `set` (1, 2 or 3).
    fn make(self, set: u8) -> &'static [u8] {
        match (set, self) {
            (1, Key::LeftCtrl) => &[0x1d],
            (1, Key::LeftAlt) => &[0x38],
            (1, Key::Delete) => &[0xe0, 0x53],
            (3, Key::LeftCtrl) => &[0x11],
            (3, Key::LeftAlt) => &[0x19],
            (3, Key::Delete) => &[0x64],
            (_, Key::LeftCtrl) => &[0x14],
            (_, Key::LeftAlt) => &[0x11],
            (_, Key::Delete) => &[0xe0, 0x71],
        }
    }

    /// The break code in scan code set `set`: set 1 sets bit 7 of the last byte; sets 2
    /// and 3 put 0xf0 before it.
    fn push_break(self, set: u8, out: &mut Vec<u8>) {
        let make = self.make(set);
        let (last, prefix) = make.split_last().unwrap_or((&0, &[]));
        out.extend_from_slice(prefix);
        if set == 1 {
            out.push(last | 0x80);
        } else {
            out.push(0xf0);
            out.push(*last);
        }
    }
}

/// The bytes of Ctrl+Alt+Del in scan code set `set`: Ctrl, Alt and Delete pressed in
/// that order, then released in the reverse order.
fn ctrl_alt_del(set: u8) -> Vec<u8> {
    let keys = [Key::LeftCtrl, Key::LeftAlt, Key::Delete];
    let mut out = Vec::with_capacity(12);
    for key in keys {
        out.extend_from_slice(key.make(set));
    }
    for key in keys.into_iter().rev() {
        key.push_break(set, &mut out);
    }
    out
}

/// What the controller's set 2 to set 1 translation makes of a keyboard reply byte. Only
/// the replies this keyboard can send are listed: the second identify byte and the scan
/// set numbers; acknowledgements and the other status bytes pass unchanged.
fn translate_reply(byte: u8) -> u8 {
    match byte {
        0x01 => 0x43,
        0x02 | 0x83 => 0x41,
        0x03 => 0x3f,
        other => other,
    }
}

/// A set of byte values, for "log once per command".
#[derive(Debug, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    /// Add `b`; true if it was not there yet.
    fn insert(&mut self, b: u8) -> bool {
        let (word, bit) = (usize::from(b >> 6), 1u64 << (b & 63));
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }
}

/// The controller and its keyboard, as a bus device.
pub struct I8042<T: Trigger> {
    reset: T,
    interrupt: Option<EventFd>,
    command_byte: u8,
    /// The last write went to the command port.
    last_write_command: bool,
    output: Option<u8>,
    reply: Option<u8>,
    queue: VecDeque<u8>,
    last_output: u8,
    pending: Option<u8>,
    output_port: u8,
    keyboard: KeyboardState,
    logged_commands: ByteSet,
    logged_keyboard: ByteSet,
    logged_overflow: bool,
    metrics: std::sync::Arc<crate::metrics::I8042Metrics>,
}

impl<T: Trigger> I8042<T> {
    /// Its counters.
    pub fn metrics(&self) -> std::sync::Arc<crate::metrics::I8042Metrics> {
        self.metrics.clone()
    }

    /// A controller in its power-on state that fires `reset` when the guest pulses the CPU
    /// reset line. It raises no interrupt until given one with [`I8042::with_interrupt`].
    pub fn new(reset: T) -> Self {
        let mut dev = Self {
            reset,
            interrupt: None,
            command_byte: 0,
            last_write_command: false,
            output: None,
            reply: None,
            queue: VecDeque::with_capacity(QUEUE_LEN),
            last_output: 0,
            pending: None,
            output_port: 0,
            keyboard: KeyboardState::default(),
            logged_commands: ByteSet::default(),
            logged_keyboard: ByteSet::default(),
            logged_overflow: false,
            metrics: Default::default(),
        };
        // The power-on state is valid by construction.
        let _ = dev.restore(&I8042State::default());
        dev
    }

    /// Raise IRQ 1 by writing `interrupt` (a KVM irqfd) when a byte becomes available and
    /// the command byte enables the keyboard interrupt.
    pub fn with_interrupt(mut self, interrupt: EventFd) -> Self {
        self.interrupt = Some(interrupt);
        self
    }

    /// Press and release Ctrl+Alt+Del: Ctrl, Alt and Delete down, then Delete, Alt and
    /// Ctrl up, as the guest reads them (scan code set 1 while the controller translates,
    /// Linux's default, else the keyboard's set). All or nothing: the bytes are queued
    /// only if they all fit.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), KeyboardError> {
        if !self.keyboard.scanning {
            return Err(KeyboardError::ScanningDisabled);
        }
        let set = if self.command_byte & CB_TRANSLATE != 0 {
            1
        } else {
            self.keyboard.scan_set
        };
        let bytes = ctrl_alt_del(set);
        if self.queue.len() + bytes.len() > QUEUE_LEN {
            return Err(KeyboardError::BufferFull);
        }
        for b in bytes {
            self.keyboard_sends(b, false);
        }
        self.refill();
        Ok(())
    }

    /// The registers, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            command_byte: self.command_byte,
            status: self.status(),
            output: self.output,
            reply: self.reply,
            queue: self.queue.iter().copied().collect(),
            last_output: self.last_output,
            pending: self.pending,
            output_port: self.output_port,
            keyboard: self.keyboard.clone(),
        }
    }

    /// Take the registers of a snapshot. A pending interrupt is raised again. A state no
    /// controller could be in is refused and changes nothing.
    pub fn restore(&mut self, state: &I8042State) -> Result<(), String> {
        let kbd = &state.keyboard;
        if state.queue.len() > QUEUE_LEN
            || !(1..=3).contains(&kbd.scan_set)
            || kbd
                .awaiting
                .is_some_and(|c| ![KBD_SET_LEDS, KBD_SCAN_SET, KBD_TYPEMATIC].contains(&c))
            || state
                .pending
                .is_some_and(|c| ![CMD_WRITE_CB, CMD_WRITE_OUTP, CMD_WRITE_KBD_OUTPUT].contains(&c))
        {
            return Err(format!("i8042 state out of range: {state:?}"));
        }
        self.command_byte = state.command_byte;
        self.last_write_command = state.status & STS_CMD != 0;
        self.output = state.output;
        self.reply = state.reply;
        self.queue = state.queue.iter().copied().collect();
        self.last_output = state.last_output;
        self.pending = state.pending;
        self.output_port = state.output_port;
        self.keyboard = kbd.clone();
        if self.output.is_some() {
            self.interrupt();
        } else {
            // Interrupts if a byte moves in.
            self.refill();
        }
        Ok(())
    }

    /// The status register.
    fn status(&self) -> u8 {
        let mut status = STS_NOT_INHIBITED;
        if self.output.is_some() {
            status |= STS_OBF;
        }
        if self.command_byte & CB_SYS != 0 {
            status |= STS_SYS;
        }
        if self.last_write_command {
            status |= STS_CMD;
        }
        status
    }

    /// Raise IRQ 1 if the command byte lets the keyboard interrupt.
    fn interrupt(&self) {
        if self.command_byte & CB_KBD_INT == 0 {
            return;
        }
        if let Some(irq) = &self.interrupt
            && let Err(e) = irq.write(1)
        {
            log::error!("i8042: cannot raise IRQ 1: {e}");
        }
    }

    /// Move the next waiting byte into an empty output buffer: a controller reply first,
    /// then a keyboard byte unless the keyboard port is disabled. Interrupts when it does.
    fn refill(&mut self) {
        if self.output.is_some() {
            return;
        }
        let next = match self.reply.take() {
            Some(b) => Some(b),
            None if self.command_byte & CB_KBD_DISABLED == 0 => self.queue.pop_front(),
            None => None,
        };
        if let Some(b) = next {
            self.output = Some(b);
            self.interrupt();
        }
    }

    /// A controller reply: into the output buffer, or right behind the byte in it.
    fn controller_replies(&mut self, byte: u8) {
        self.reply = Some(byte);
        self.refill();
    }

    /// A byte from the keyboard (`reply`: an answer to a command, translated with the
    /// controller's translation on; else a scan code, already in the set the guest reads).
    /// The caller calls [`Self::refill`].
    fn keyboard_sends(&mut self, byte: u8, reply: bool) {
        let byte = if reply && self.command_byte & CB_TRANSLATE != 0 {
            translate_reply(byte)
        } else {
            byte
        };
        self.keyboard.last_sent = byte;
        if self.queue.len() >= QUEUE_LEN {
            if !self.logged_overflow {
                self.logged_overflow = true;
                log::info!(
                    "i8042: keyboard buffer full (the guest does not read it); bytes dropped"
                );
            }
            return;
        }
        self.queue.push_back(byte);
    }

    /// The guest reads port 0x60.
    fn read_data(&mut self) -> u8 {
        match self.output.take() {
            Some(b) => {
                self.last_output = b;
                self.refill();
                b
            }
            None => self.last_output,
        }
    }

    /// The guest writes `cmd` to port 0x64.
    fn write_command(&mut self, cmd: u8) {
        self.last_write_command = true;
        self.pending = None;
        match cmd {
            CMD_READ_CB => self.controller_replies(self.command_byte),
            CMD_WRITE_CB | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUTPUT => self.pending = Some(cmd),
            // No aux port: nothing to enable or disable, and the aux bit does not move.
            CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            CMD_SELF_TEST => self.controller_replies(SELF_TEST_PASSED),
            CMD_KBD_TEST => self.controller_replies(KBD_TEST_PASSED),
            CMD_KBD_DISABLE => self.command_byte |= CB_KBD_DISABLED,
            CMD_KBD_ENABLE => {
                self.command_byte &= !CB_KBD_DISABLED;
                self.refill();
            }
            CMD_READ_OUTP => self.controller_replies(self.output_port),
            // Pulse output lines: bits 0-3 low pulse the line; bit 0 is the CPU reset.
            CMD_PULSE_FIRST..=0xff => {
                if cmd & OUTP_RESET_RELEASED == 0 {
                    self.fire_reset();
                }
            }
            _ => {
                if self.logged_commands.insert(cmd) {
                    log::info!("i8042: controller command {cmd:#04x} not supported; ignored");
                }
            }
        }
    }

    /// The guest writes `byte` to port 0x60.
    fn write_data(&mut self, byte: u8) {
        self.last_write_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CB) => {
                let was_enabled = self.command_byte & CB_KBD_INT != 0;
                self.command_byte = byte;
                if !was_enabled && self.output.is_some() {
                    // A byte was already waiting: the line is now "high".
                    self.interrupt();
                }
                self.refill();
            }
            Some(CMD_WRITE_OUTP) => {
                self.output_port = byte;
                if byte & OUTP_RESET_RELEASED == 0 {
                    self.fire_reset();
                }
            }
            Some(_) => self.controller_replies(byte),
            None => {
                // Sending to the keyboard enables its port again.
                self.command_byte &= !CB_KBD_DISABLED;
                self.keyboard_command(byte);
                self.refill();
            }
        }
    }

    fn fire_reset(&self) {
        self.metrics.reset_count.inc();
        if let Err(e) = self.reset.trigger() {
            self.metrics.error_count.inc();
            log::error!("i8042: cannot signal the reset: {e:?}");
        }
    }

    /// The keyboard receives `byte`: a parameter of the command it waits on, or a command.
    fn keyboard_command(&mut self, byte: u8) {
        if let Some(cmd) = self.keyboard.awaiting.take() {
            let accepted = match cmd {
                KBD_SET_LEDS => {
                    self.keyboard.leds = byte & 0x07;
                    true
                }
                KBD_TYPEMATIC if byte < 0x80 => {
                    self.keyboard.typematic = byte;
                    true
                }
                KBD_SCAN_SET if byte == 0 => {
                    self.keyboard_sends(KBD_ACK, true);
                    self.keyboard_sends(self.keyboard.scan_set, true);
                    return;
                }
                KBD_SCAN_SET if byte <= 3 => {
                    self.keyboard.scan_set = byte;
                    true
                }
                _ => false,
            };
            if accepted {
                self.keyboard_sends(KBD_ACK, true);
            } else {
                self.unknown_keyboard_byte(byte, "parameter");
            }
            return;
        }
        match byte {
            KBD_RESET => {
                self.queue.clear();
                self.keyboard = KeyboardState::default();
                self.keyboard_sends(KBD_ACK, true);
                self.keyboard_sends(KBD_SELF_TEST_PASSED, true);
            }
            KBD_RESEND => {
                let last = self.keyboard.last_sent;
                self.keyboard_sends(last, false);
            }
            KBD_SET_LEDS | KBD_SCAN_SET | KBD_TYPEMATIC => {
                self.keyboard.awaiting = Some(byte);
                self.keyboard_sends(KBD_ACK, true);
            }
            KBD_ECHO => self.keyboard_sends(KBD_ECHO, true),
            KBD_IDENTIFY => {
                self.keyboard_sends(KBD_ACK, true);
                for b in KBD_ID {
                    self.keyboard_sends(b, true);
                }
            }
            KBD_ENABLE => {
                self.queue.clear();
                self.keyboard.scanning = true;
                self.keyboard_sends(KBD_ACK, true);
            }
            // Both restore the defaults; 0xf5 also stops scanning.
            KBD_DISABLE | KBD_DEFAULTS => {
                if byte == KBD_DISABLE {
                    self.keyboard.scanning = false;
                }
                self.keyboard.typematic = TYPEMATIC_DEFAULT;
                self.keyboard.leds = 0;
                self.keyboard_sends(KBD_ACK, true);
            }
            KBD_SET3_FIRST..=KBD_SET3_LAST => self.keyboard_sends(KBD_ACK, true),
            _ => self.unknown_keyboard_byte(byte, "command"),
        }
    }

    /// A keyboard command or parameter it does not take: answer "resend".
    fn unknown_keyboard_byte(&mut self, byte: u8, what: &str) {
        if self.logged_keyboard.insert(byte) {
            log::info!("i8042: keyboard {what} {byte:#04x} not supported; answered resend");
        }
        self.keyboard_sends(KBD_RESEND, true);
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        self.metrics.read_count.inc();
        let value = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            _ => {
                self.metrics.missed_read_count.inc();
                0xff
            }
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        self.metrics.write_count.inc();
        match offset {
            DATA => self.write_data(value),
            COMMAND => self.write_command(value),
            _ => self.metrics.missed_write_count.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::trigger::EventFdTrigger;

    /// Ctrl+Alt+Del in set 1: Ctrl, Alt, Delete down; Delete, Alt, Ctrl up.
    const CAD_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

    struct Rig {
        dev: I8042<EventFdTrigger>,
        reset: EventFd,
        irq: EventFd,
    }

    fn rig() -> Rig {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(EventFdTrigger::new(reset.try_clone().unwrap()))
            .with_interrupt(irq.try_clone().unwrap());
        Rig { dev, reset, irq }
    }

    impl Rig {
        fn cmd(&mut self, b: u8) {
            self.dev.write(COMMAND, &[b]);
        }
        fn data(&mut self, b: u8) {
            self.dev.write(DATA, &[b]);
        }
        fn status(&mut self) -> u8 {
            let mut v = [0];
            self.dev.read(COMMAND, &mut v);
            v[0]
        }
        fn read(&mut self) -> u8 {
            let mut v = [0];
            self.dev.read(DATA, &mut v);
            v[0]
        }
        /// Every byte waiting, read the way a polling guest does.
        fn drain(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.status() & STS_OBF != 0 {
                out.push(self.read());
                assert!(out.len() <= QUEUE_LEN + 2, "no end: {out:x?}");
            }
            out
        }
        /// Interrupts raised since the last call.
        fn irqs(&self) -> u64 {
            self.irq.read().unwrap_or(0)
        }
        fn was_reset(&self) -> bool {
            self.reset.read().is_ok()
        }
        /// The guest reads the command byte.
        fn command_byte(&mut self) -> u8 {
            self.cmd(CMD_READ_CB);
            assert_ne!(self.status() & STS_OBF, 0);
            self.read()
        }
        fn set_command_byte(&mut self, cb: u8) {
            self.cmd(CMD_WRITE_CB);
            self.data(cb);
        }
        /// Interrupts off, so the tests that count them start from none.
        fn quiet(&mut self) {
            self.set_command_byte(CB_POWER_ON & !CB_KBD_INT);
            self.irqs();
        }
    }

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

    #[test]
    fn pulse_commands_reset_when_bit_0_is_low() {
        let mut r = rig();
        for cmd in [0xff, 0xf1, 0xfd, 0xef] {
            r.cmd(cmd);
            assert!(!r.was_reset(), "{cmd:#x}");
        }
        for cmd in [0xfe, 0xf0, 0xfc] {
            r.cmd(cmd);
            assert!(r.was_reset(), "{cmd:#x}");
        }
    }

    #[test]
    fn power_on_status_and_command_byte() {
        let mut r = rig();
        assert_eq!(r.status(), STS_SYS | STS_NOT_INHIBITED);
        r.cmd(CMD_READ_CB);
        assert_eq!(r.status(), STS_OBF | STS_SYS | STS_CMD | STS_NOT_INHIBITED);
        assert_eq!(
            r.read(),
            0x65,
            "kbd interrupt, system flag, no aux, translation"
        );
        assert_eq!(r.status() & STS_OBF, 0);
        // Nothing waits: the last byte again.
        assert_eq!(r.read(), 0x65);
        // Ports 0x61-0x63 are not the controller's.
        let mut v = [0; 2];
        r.dev.read(1, &mut v);
        assert_eq!(v, [0xff, 0xff]);
        r.dev.write(2, &[0x12]);
        assert_eq!(r.drain(), Vec::<u8>::new());
    }

    #[test]
    fn command_byte_write_and_read_back() {
        let mut r = rig();
        r.set_command_byte(0x00);
        assert_eq!(
            r.status() & (STS_CMD | STS_SYS),
            0,
            "data last; no system flag"
        );
        assert_eq!(r.command_byte(), 0x00);
        r.set_command_byte(0x47);
        assert_eq!(r.command_byte(), 0x47);
        assert_ne!(r.status() & STS_SYS, 0);
        // A command in between cancels the pending write: the byte goes to the keyboard.
        r.cmd(CMD_WRITE_CB);
        r.cmd(CMD_KBD_TEST);
        assert_eq!(r.drain(), [KBD_TEST_PASSED]);
        r.data(0x00);
        assert_eq!(r.drain(), [KBD_RESEND]);
        assert_eq!(r.command_byte(), 0x47);
    }

    #[test]
    fn self_test_and_keyboard_interface_test() {
        let mut r = rig();
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.drain(), [0x55]);
        r.cmd(CMD_KBD_TEST);
        assert_eq!(r.drain(), [0x00]);
    }

    #[test]
    fn no_aux_port() {
        let mut r = rig();
        r.cmd(CMD_AUX_ENABLE);
        assert_ne!(
            r.command_byte() & CB_AUX_DISABLED,
            0,
            "the aux bit does not move"
        );
        r.cmd(CMD_AUX_DISABLE);
        r.set_command_byte(0x45);
        r.cmd(CMD_AUX_DISABLE);
        assert_eq!(r.command_byte(), 0x45);
        // 0xa9 (aux test) is no command here: no answer, nothing else changes.
        r.cmd(0xa9);
        assert_eq!(r.drain(), Vec::<u8>::new());
        // 0xd3 (aux loopback) neither: its byte reaches the keyboard, which does not know
        // it. Linux's loop test sees a keyboard byte (no aux data bit) and gives up.
        r.cmd(0xd3);
        r.data(0x5a);
        assert_eq!(r.status() & 0x20, 0, "no aux data, ever");
        assert_eq!(r.drain(), [KBD_RESEND]);
    }

    #[test]
    fn keyboard_port_disable_holds_keyboard_bytes() {
        let mut r = rig();
        r.cmd(CMD_KBD_DISABLE);
        assert_ne!(r.command_byte() & CB_KBD_DISABLED, 0);
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(
            r.drain(),
            Vec::<u8>::new(),
            "held while the port is disabled"
        );
        // Controller replies are not held.
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.drain(), [0x55]);
        r.cmd(CMD_KBD_ENABLE);
        assert_eq!(r.dev.state().command_byte & CB_KBD_DISABLED, 0);
        assert_eq!(r.drain(), CAD_SET1);
        // Writing to the keyboard enables the port again.
        r.cmd(CMD_KBD_DISABLE);
        r.data(KBD_ECHO);
        assert_eq!(r.dev.state().command_byte & CB_KBD_DISABLED, 0);
        assert_eq!(r.drain(), [KBD_ECHO]);
    }

    #[test]
    fn keyboard_reset_and_identify() {
        let mut r = rig();
        r.data(KBD_RESET);
        assert_eq!(r.drain(), [0xfa, 0xaa]);
        // Identify through the translation (Linux's default): 0x83 reads 0x41.
        r.data(KBD_IDENTIFY);
        assert_eq!(r.drain(), [0xfa, 0xab, 0x41]);
        r.set_command_byte(CB_POWER_ON & !CB_TRANSLATE);
        r.data(KBD_IDENTIFY);
        assert_eq!(r.drain(), [0xfa, 0xab, 0x83]);
        // Resend: the last byte again.
        r.data(KBD_RESEND);
        assert_eq!(r.drain(), [0x83]);
        // Reset drops what the keyboard had not sent yet and restores its defaults.
        r.data(KBD_SCAN_SET);
        r.data(3);
        r.dev.send_ctrl_alt_del().unwrap();
        r.data(KBD_RESET);
        // The first ack of 0xf0 3 was in the output buffer; the second and the keys go.
        assert_eq!(r.drain(), [0xfa, 0xfa, 0xaa]);
        assert_eq!(r.dev.state().keyboard, KeyboardState::default());
    }

    #[test]
    fn scan_code_sets() {
        let mut r = rig();
        // Each byte sent is acknowledged; "get" then gives the set.
        r.data(KBD_SCAN_SET);
        r.data(0);
        assert_eq!(r.drain(), [0xfa, 0xfa, 0x41], "set 2, translated");
        r.set_command_byte(CB_POWER_ON & !CB_TRANSLATE);
        r.data(KBD_SCAN_SET);
        r.data(0);
        assert_eq!(r.drain(), [0xfa, 0xfa, 0x02]);
        for set in [1, 3, 2] {
            r.data(KBD_SCAN_SET);
            r.data(set);
            assert_eq!(r.drain(), [0xfa, 0xfa]);
            r.data(KBD_SCAN_SET);
            r.data(0);
            assert_eq!(r.drain(), [0xfa, 0xfa, set]);
        }
        // A set that does not exist: resend, and the set stays.
        r.data(KBD_SCAN_SET);
        r.data(7);
        assert_eq!(r.drain(), [0xfa, 0xfe]);
        assert_eq!(r.dev.state().keyboard.scan_set, 2);
        // Translated, set 1 and 3 read 0x43 and 0x3f.
        r.set_command_byte(CB_POWER_ON);
        for (set, reads) in [(1, 0x43), (3, 0x3f)] {
            r.data(KBD_SCAN_SET);
            r.data(set);
            r.data(KBD_SCAN_SET);
            r.data(0);
            assert_eq!(r.drain(), [0xfa, 0xfa, 0xfa, 0xfa, reads]);
        }
    }

    #[test]
    fn leds_typematic_enable_disable_and_other_acks() {
        let mut r = rig();
        r.data(KBD_SET_LEDS);
        r.data(0x07);
        assert_eq!(r.drain(), [0xfa, 0xfa]);
        assert_eq!(r.dev.state().keyboard.leds, 0x07);
        r.data(KBD_TYPEMATIC);
        r.data(0x20);
        assert_eq!(r.drain(), [0xfa, 0xfa]);
        assert_eq!(r.dev.state().keyboard.typematic, 0x20);
        r.data(KBD_TYPEMATIC);
        r.data(0x80);
        assert_eq!(r.drain(), [0xfa, 0xfe], "bit 7 must be clear");
        r.data(KBD_DISABLE);
        assert_eq!(r.drain(), [0xfa]);
        assert_eq!(
            r.dev.send_ctrl_alt_del(),
            Err(KeyboardError::ScanningDisabled)
        );
        assert_eq!(r.dev.state().keyboard.typematic, TYPEMATIC_DEFAULT);
        r.data(KBD_DEFAULTS);
        assert_eq!(r.drain(), [0xfa]);
        assert!(!r.dev.state().keyboard.scanning, "0xf6 leaves scanning off");
        r.data(KBD_ENABLE);
        assert_eq!(r.drain(), [0xfa]);
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.drain(), CAD_SET1);
        for cmd in KBD_SET3_FIRST..=KBD_SET3_LAST {
            r.data(cmd);
            assert_eq!(r.drain(), [0xfa], "{cmd:#x}");
        }
        r.data(KBD_ECHO);
        assert_eq!(r.drain(), [0xee]);
        // Unknown commands: resend.
        for cmd in [0x00, 0x5a, 0xe8, 0xf1] {
            r.data(cmd);
            assert_eq!(r.drain(), [0xfe], "{cmd:#x}");
        }
    }

    #[test]
    fn ctrl_alt_del_in_each_set() {
        assert_eq!(ctrl_alt_del(1), CAD_SET1);
        assert_eq!(
            ctrl_alt_del(2),
            [
                0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14
            ]
        );
        assert_eq!(
            ctrl_alt_del(3),
            [0x11, 0x19, 0x64, 0xf0, 0x64, 0xf0, 0x19, 0xf0, 0x11]
        );

        // What the guest reads: set 1 while translating, whatever the keyboard's set.
        let mut r = rig();
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.drain(), CAD_SET1);
        r.data(KBD_SCAN_SET);
        r.data(3);
        r.drain();
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.drain(), CAD_SET1);
        // Untranslated: the keyboard's own set.
        r.set_command_byte(CB_POWER_ON & !CB_TRANSLATE);
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.drain(), ctrl_alt_del(3));
        for set in [2, 1] {
            r.data(KBD_SCAN_SET);
            r.data(set);
            r.drain();
            r.dev.send_ctrl_alt_del().unwrap();
            assert_eq!(r.drain(), ctrl_alt_del(set));
        }
    }

    #[test]
    fn one_interrupt_per_byte_when_enabled() {
        let mut r = rig();
        r.quiet();
        // Interrupt off: bytes wait, no interrupt.
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.irqs(), 0);
        // Turning it on with a byte waiting raises it.
        r.set_command_byte(CB_POWER_ON);
        assert_eq!(r.irqs(), 1);
        let mut seen = Vec::new();
        for _ in 0..CAD_SET1.len() {
            seen.push(r.read());
            // The next byte is in place with its own interrupt, the last one has none.
            let expected = u64::from(seen.len() < CAD_SET1.len());
            assert_eq!(r.irqs(), expected, "after {seen:x?}");
        }
        assert_eq!(seen, CAD_SET1);
        assert_eq!(r.status() & STS_OBF, 0);
        // Replies interrupt too.
        r.data(KBD_RESET);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.read(), 0xfa);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.read(), 0xaa);
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.read(), 0x55);
        // Writing the command byte with the interrupt already on raises nothing.
        r.set_command_byte(CB_POWER_ON);
        assert_eq!(r.irqs(), 0);
        // No interrupt line given: still works, polled.
        let mut dev = I8042::new(EventFdTrigger::new(r.reset.try_clone().unwrap()));
        dev.send_ctrl_alt_del().unwrap();
        let mut v = [0];
        dev.read(DATA, &mut v);
        assert_eq!(v[0], 0x1d);
    }

    #[test]
    fn controller_reply_waits_behind_the_byte_in_the_buffer() {
        let mut r = rig();
        r.dev.send_ctrl_alt_del().unwrap();
        r.cmd(CMD_READ_CB);
        let out = r.drain();
        assert_eq!(out[0], CAD_SET1[0]);
        assert_eq!(
            out[1], CB_POWER_ON,
            "the reply comes next, keyboard bytes after it"
        );
        assert_eq!(out[2..], CAD_SET1[1..]);
    }

    #[test]
    fn output_port_and_keyboard_output_buffer_write() {
        let mut r = rig();
        r.cmd(CMD_READ_OUTP);
        assert_eq!(r.drain(), [OUTP_POWER_ON]);
        r.cmd(CMD_WRITE_OUTP);
        r.data(0x03);
        assert!(!r.was_reset());
        r.cmd(CMD_READ_OUTP);
        assert_eq!(r.drain(), [0x03]);
        r.irqs();
        r.cmd(CMD_WRITE_KBD_OUTPUT);
        r.data(0x42);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.drain(), [0x42]);
        r.cmd(CMD_WRITE_OUTP);
        r.data(0x02);
        assert!(r.was_reset(), "reset line low");
    }

    #[test]
    fn buffer_full_and_flooding() {
        let mut r = rig();
        r.quiet();
        // The first byte moves into the output buffer: 7 + 8 wait behind it.
        r.dev.send_ctrl_alt_del().unwrap();
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.dev.send_ctrl_alt_del(), Err(KeyboardError::BufferFull));
        let out = r.drain();
        assert_eq!(out, [CAD_SET1, CAD_SET1].concat(), "all or nothing");
        // A guest writing commands without reading cannot grow the buffer.
        for _ in 0..1000 {
            r.data(KBD_IDENTIFY);
        }
        assert_eq!(r.dev.state().queue.len(), QUEUE_LEN);
        assert_eq!(r.drain().len(), QUEUE_LEN + 1);
    }

    #[test]
    fn unknown_controller_commands_are_ignored() {
        let mut r = rig();
        for cmd in [0x00, 0x21, 0x61, 0x90, 0xa9, 0xc0, 0xd3, 0xd4, 0xe0] {
            r.cmd(cmd);
            r.cmd(cmd); // Logged once; no different the second time.
            assert_eq!(r.drain(), Vec::<u8>::new(), "{cmd:#x}");
            assert!(!r.was_reset());
        }
        assert_eq!(r.command_byte(), CB_POWER_ON);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut r = rig();
        r.set_command_byte(0x47);
        r.data(KBD_SET_LEDS);
        r.data(0x02);
        r.data(KBD_TYPEMATIC); // Its parameter comes after the snapshot.
        r.drain();
        r.dev.send_ctrl_alt_del().unwrap();
        r.cmd(CMD_SELF_TEST); // A reply behind the first scan code.
        r.cmd(CMD_WRITE_CB); // And a command waiting for its byte.
        let state = r.dev.state();
        assert_eq!(state.output, Some(0x1d));
        assert_eq!(state.reply, Some(0x55));
        assert_eq!(state.queue, CAD_SET1[1..]);
        assert_eq!(
            state.status,
            STS_OBF | STS_SYS | STS_CMD | STS_NOT_INHIBITED
        );
        let json = serde_json::to_string(&state).unwrap();
        let back: I8042State = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);

        let mut s = rig();
        s.dev.restore(&back).unwrap();
        assert_eq!(s.irqs(), 1, "the waiting byte interrupts again");
        assert_eq!(s.dev.state(), state);
        s.data(0x45);
        assert_eq!(s.dev.state().command_byte, 0x45);
        s.data(0x10); // The typematic parameter.
        let out = s.drain();
        assert_eq!(out[..2], [0x1d, 0x55]);
        assert_eq!(out[2..9], CAD_SET1[1..]);
        assert_eq!(out[9..], [0xfa]);
        assert_eq!(s.dev.state().keyboard.leds, 0x02);
        assert_eq!(s.dev.state().keyboard.typematic, 0x10);

        // States no controller could be in are refused, and change nothing.
        let before = s.dev.state();
        for bad in [
            I8042State {
                queue: vec![0; QUEUE_LEN + 1],
                ..I8042State::default()
            },
            I8042State {
                pending: Some(0x20),
                ..I8042State::default()
            },
            I8042State {
                keyboard: KeyboardState {
                    scan_set: 0,
                    ..KeyboardState::default()
                },
                ..I8042State::default()
            },
            I8042State {
                keyboard: KeyboardState {
                    awaiting: Some(0xff),
                    ..KeyboardState::default()
                },
                ..I8042State::default()
            },
        ] {
            assert!(s.dev.restore(&bad).is_err(), "{bad:?}");
            assert_eq!(s.dev.state(), before);
        }
    }

    #[test]
    fn any_guest_input_is_safe() {
        // xorshift: a fixed pseudo-random stream of port accesses.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut r = rig();
        for _ in 0..200_000 {
            let v = next();
            let offset = (v >> 8) % I8042_LEN;
            let byte = v as u8;
            match (v >> 16) % 4 {
                0 => r.dev.write(offset, &[byte]),
                1 => r.dev.write(offset, &[byte, byte, byte, byte]),
                2 => r.dev.read(offset, &mut [0; 2]),
                _ => {
                    let _ = r.dev.send_ctrl_alt_del();
                }
            }
            assert!(r.dev.state().queue.len() <= QUEUE_LEN);
        }
        // Whatever it did, the state it is in restores.
        let state = r.dev.state();
        let mut s = rig();
        s.dev.restore(&state).unwrap();
        assert_eq!(s.dev.state(), state);
    }
}
