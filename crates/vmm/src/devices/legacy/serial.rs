//! The 16550A UART at 0x3f8 (COM1, IRQ 4): vm-superio's model on the PIO bus.
//!
//! Output goes to any writer (stdout, a file, nowhere, a socket console's
//! [`super::serial_socket::SocketOutput`]). Input is pushed in by the event loop
//! with [`SerialDevice::enqueue_input`]; when the guest drains the receive FIFO the
//! `input_ready` eventfd tells the event loop it may read more from the host.
//! [`RateLimitedOutput`] puts Firecracker's serial `rate_limiter` between the UART and its
//! output: bytes past the bucket are dropped and counted, the guest never waits.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::Serial;
use vm_superio::serial::{SerialEvents, SerialState};
use vmm_sys_util::eventfd::EventFd;

use super::trigger::EventFdTrigger;
use crate::bus::BusDevice;
use crate::metrics::UartMetrics;
use std::sync::Arc;

/// I/O port base of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of ports of a 16550A.
pub const COM1_LEN: u64 = 8;
/// ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// Events from the UART model that the VMM acts on (and counts).
pub struct SerialHostEvents {
    input_ready: EventFd,
    metrics: Arc<UartMetrics>,
}

impl SerialHostEvents {
    fn new(input_ready: EventFd, metrics: Arc<UartMetrics>) -> Self {
        Self {
            input_ready,
            metrics,
        }
    }
}

/// Console output through a token bucket of bytes (Firecracker's serial
/// `rate_limiter`): bytes the bucket has no token for are dropped and counted in
/// `rate_limiter_dropped_bytes`; the UART (and so the guest) never waits.
pub struct RateLimitedOutput {
    out: SerialOutput,
    bucket: rate_limiter::TokenBucket,
    origin: std::time::Instant,
    metrics: Arc<UartMetrics>,
}

impl RateLimitedOutput {
    /// `out` limited to `limit`'s bytes per second and burst, counting drops in
    /// `metrics`; `out` itself when `limit` has no byte rate.
    pub fn wrap(
        out: SerialOutput,
        limit: &api::RateLimit,
        metrics: Arc<UartMetrics>,
    ) -> SerialOutput {
        match limit.bytes_per_sec {
            None => out,
            Some(rate) => Box::new(Self {
                out,
                bucket: rate_limiter::TokenBucket::shaped(rate, limit.bytes_burst, 0),
                origin: std::time::Instant::now(),
                metrics,
            }),
        }
    }
}

impl Write for RateLimitedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now_ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut allowed = 0usize;
        while allowed < buf.len() && self.bucket.check(1, now_ns).is_ok() {
            self.bucket.take(1);
            allowed += 1;
        }
        if allowed > 0 {
            self.out.write_all(&buf[..allowed])?;
        }
        let dropped = buf.len() - allowed;
        if dropped > 0 {
            self.metrics.rate_limiter_dropped_bytes.add(dropped as u64);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl SerialEvents for SerialHostEvents {
    fn buffer_read(&self) {
        self.metrics.read_count.inc();
    }
    fn out_byte(&self) {
        self.metrics.write_count.inc();
    }
    fn tx_lost_byte(&self) {
        self.metrics.missed_write_count.inc();
        log::warn!("serial: the console output failed; a byte was lost");
    }
    fn in_buffer_empty(&self) {
        // The event loop may be waiting for room; a failed write only delays input.
        let _ = self.input_ready.write(1);
    }
}

/// Where console bytes go.
pub type SerialOutput = Box<dyn Write + Send>;

/// The UART, as a bus device.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, SerialHostEvents, SerialOutput>,
}

impl SerialDevice {
    /// A UART raising `interrupt` (an irqfd) and writing to `out`; `input_ready` is signalled
    /// when the guest has emptied its receive FIFO.
    pub fn new(interrupt: EventFd, input_ready: EventFd, out: SerialOutput) -> Self {
        Self::with_metrics(interrupt, input_ready, out, Arc::default())
    }

    /// [`SerialDevice::new`] counting into `metrics` (shared with a
    /// [`RateLimitedOutput`] in `out`).
    pub fn with_metrics(
        interrupt: EventFd,
        input_ready: EventFd,
        out: SerialOutput,
        metrics: Arc<UartMetrics>,
    ) -> Self {
        Self {
            serial: Serial::with_events(
                EventFdTrigger::new(interrupt),
                SerialHostEvents::new(input_ready, metrics),
                out,
            ),
        }
    }

    /// Its counters.
    pub fn metrics(&self) -> Arc<UartMetrics> {
        self.serial.events().metrics.clone()
    }

    /// A UART as [`SerialDevice::new`], with the registers and receive FIFO of a snapshot.
    /// A pending interrupt is raised again.
    pub fn from_state(
        state: &SerialSnapshot,
        interrupt: EventFd,
        input_ready: EventFd,
        out: SerialOutput,
        metrics: Arc<UartMetrics>,
    ) -> io::Result<Self> {
        let serial = Serial::from_state(
            &state.to_superio(),
            EventFdTrigger::new(interrupt),
            SerialHostEvents::new(input_ready, metrics),
            out,
        )
        .map_err(|e| io::Error::other(format!("serial state: {e:?}")))?;
        Ok(Self { serial })
    }

    /// The registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        SerialSnapshot::from_superio(&self.serial.state())
    }

    /// Feed host input to the guest: takes as many bytes as the receive FIFO has room for
    /// and returns how many that was (0 when full).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = self.serial.fifo_capacity().min(bytes.len());
        if room == 0 {
            return Ok(0);
        }
        self.serial
            .enqueue_raw_bytes(&bytes[..room])
            .map_err(|e| io::Error::other(format!("serial input: {e:?}")))
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }
}

/// The UART's state in a snapshot (vm-superio's `SerialState`, which has no serde form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high bytes.
    pub divisor: [u8; 2],
    /// Interrupt enable, interrupt identification, line control, line status, modem
    /// control, modem status, scratch.
    pub registers: [u8; 7],
    /// Bytes received and not yet read by the guest.
    pub rx_fifo: Vec<u8>,
}

impl SerialSnapshot {
    fn from_superio(s: &SerialState) -> Self {
        Self {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            registers: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            rx_fifo: s.in_buffer.clone(),
        }
    }

    fn to_superio(&self) -> SerialState {
        let r = self.registers;
        SerialState {
            baud_divisor_low: self.divisor[0],
            baud_divisor_high: self.divisor[1],
            interrupt_enable: r[0],
            interrupt_identification: r[1],
            line_control: r[2],
            line_status: r[3],
            modem_control: r[4],
            modem_status: r[5],
            scratch: r[6],
            in_buffer: self.rx_fifo.clone(),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.first_mut(), u8::try_from(offset)) {
            (Some(first), Ok(offset)) if u64::from(offset) < COM1_LEN => {
                *first = self.serial.read(offset);
            }
            _ => self.serial.events().metrics.missed_read_count.inc(),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.serial.write(offset, value) {
                self.serial.events().metrics.error_count.inc();
                log::warn!("serial: write at offset {offset} failed: {e:?}");
            }
            if offset == 0 {
                // Console output should reach the terminal as the guest writes it.
                self.serial.events().metrics.flush_count.inc();
                let _ = self.serial.writer_mut().flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can look into.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_rate_limited_console_drops_and_counts_what_exceeds_its_bucket() {
        let sink = Sink::default();
        let metrics = Arc::new(UartMetrics::default());
        let limit = api::RateLimit {
            bytes_per_sec: Some(10),
            bytes_burst: api::Burst {
                size: Some(5),
                one_time: Some(3),
            },
            ..Default::default()
        };
        let mut out = RateLimitedOutput::wrap(Box::new(sink.clone()), &limit, metrics.clone());
        for b in 0..20u8 {
            assert_eq!(out.write(&[b]).unwrap(), 1, "the UART never waits");
        }
        assert_eq!(
            *sink.0.lock().unwrap(),
            (0..8).collect::<Vec<u8>>(),
            "the one-time burst of 3, then the bucket's 5"
        );
        assert_eq!(metrics.rate_limiter_dropped_bytes.get(), 12);
        std::thread::sleep(std::time::Duration::from_millis(300));
        out.write_all(&[100; 10]).unwrap();
        let after = sink.0.lock().unwrap().len();
        assert!(
            (9..=11).contains(&after),
            "about 3 tokens in 300 ms: {after}"
        );
    }

    fn device() -> (SerialDevice, Sink, EventFd, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            ready.try_clone().unwrap(),
            Box::new(sink.clone()),
        );
        (dev, sink, irq, ready)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut dev, sink, _, _) = device();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        let counted = dev.metrics().take();
        assert_eq!((counted.write_count, counted.flush_count), (3, 3));
        assert_eq!(counted.missed_write_count, 0);
    }

    #[test]
    fn input_is_bounded_by_the_fifo_and_raises_the_interrupt() {
        let (mut dev, _, irq, ready) = device();
        dev.write(1, &[0x01]); // IER: receive-data interrupt on.
        let big = vec![b'x'; 200];
        let taken = dev.enqueue_input(&big).unwrap();
        assert!(taken > 0 && taken < big.len(), "took {taken}");
        assert_eq!(dev.enqueue_input(&big).unwrap(), 0, "FIFO full");
        assert_eq!(irq.read().unwrap(), 1);
        // The guest drains the FIFO: the event loop is told there is room again.
        let mut byte = [0u8];
        for _ in 0..taken {
            dev.read(0, &mut byte);
            assert_eq!(byte[0], b'x');
        }
        assert!(ready.read().unwrap() >= 1);
        assert_eq!(dev.input_capacity(), taken);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut dev, _, _, _) = device();
        dev.write(0, &[]);
        dev.read(0, &mut []);
        dev.write(u64::MAX, &[1]);
        let mut data = [0u8; 4];
        dev.read(300, &mut data);
        dev.read(5, &mut data); // LSR with a wide access.
    }
}
