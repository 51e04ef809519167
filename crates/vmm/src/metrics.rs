//! What the VM's own parts count (vCPU exits, the UART, the i8042), and the handles to
//! every device's counters, for the VMM's metrics writer.

use std::sync::Arc;

use virtio_devices::metrics::EntropyMetrics;

virtio_devices::metrics_group!(
    /// vCPU exits, all vCPUs together (Firecracker's `vcpu` group).
    VcpuMetrics => VcpuValues {
        /// Port reads.
        exit_io_in,
        /// Port writes.
        exit_io_out,
        /// MMIO reads.
        exit_mmio_read,
        /// MMIO writes.
        exit_mmio_write,
        /// Exits that stopped the VM with an error (KVM_RUN failed, internal errors,
        /// failed entries).
        failures,
        /// `KVM_KVMCLOCK_CTRL` calls that failed (Vireo makes none: stays 0).
        kvmclock_ctrl_fails,
    }
    latency {
        /// Time to serve a port read.
        exit_io_in_agg,
        /// Time to serve a port write.
        exit_io_out_agg,
        /// Time to serve an MMIO read.
        exit_mmio_read_agg,
        /// Time to serve an MMIO write.
        exit_mmio_write_agg,
    }
);

virtio_devices::metrics_group!(
    /// The serial console (Firecracker's `uart` group).
    UartMetrics => UartValues {
        /// Register writes the UART refused.
        error_count,
        /// Flushes of the console output.
        flush_count,
        /// Reads of registers that do not exist.
        missed_read_count,
        /// Bytes of output lost (the console's writer failed).
        missed_write_count,
        /// Bytes the guest read.
        read_count,
        /// Bytes the guest wrote.
        write_count,
        /// Output bytes dropped by a rate limiter (the console has none yet: stays 0).
        rate_limiter_dropped_bytes,
    }
);

virtio_devices::metrics_group!(
    /// The i8042 controller (Firecracker's `i8042` group).
    I8042Metrics => I8042Values {
        /// Reset pulses that could not be delivered.
        error_count,
        /// Reads of a port the controller does not have.
        missed_read_count,
        /// Writes to a port the controller does not have.
        missed_write_count,
        /// Reads of its ports.
        read_count,
        /// Resets the guest asked for.
        reset_count,
        /// Writes to its ports.
        write_count,
    }
);

/// The counters of every part of a VM.
#[derive(Default, Clone)]
pub struct VmMetrics {
    /// The vCPUs'.
    pub vcpu: Arc<VcpuMetrics>,
    /// The UART's.
    pub uart: Arc<UartMetrics>,
    /// The i8042's.
    pub i8042: Arc<I8042Metrics>,
    /// Each disk's, by drive id, in slot order.
    pub block: Vec<(String, Arc<block::BlockMetrics>)>,
    /// Each NIC's, by interface id.
    pub net: Vec<(String, Arc<net::NetMetrics>)>,
    /// The vsock device's.
    pub vsock: Option<Arc<vsock::VsockMetrics>>,
    /// The entropy device's.
    pub entropy: Option<Arc<EntropyMetrics>>,
    /// The balloon's.
    pub balloon: Option<Arc<balloon::BalloonMetrics>>,
    /// Each pmem device's, by id, in slot order.
    pub pmem: Vec<(String, Arc<pmem::PmemMetrics>)>,
}

impl VmMetrics {
    /// Take every group's counts since the previous take, as the groups of a
    /// Firecracker metrics line: `vcpu`, `uart`, `i8042`, `block`, `net` and `pmem` (all
    /// disks, NICs or pmem devices together) with `block_ID`, `net_ID` and `pmem_ID` for
    /// each, `vsock`, `entropy` and `balloon` (zeros when the VM has no such device, as
    /// Firecracker writes them).
    pub fn take(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut groups = serde_json::Map::new();
        let mut put = |name: String, value: serde_json::Value| {
            groups.insert(name, value);
        };
        put("vcpu".into(), json(&self.vcpu.take()));
        put("uart".into(), json(&self.uart.take()));
        put("i8042".into(), json(&self.i8042.take()));
        let mut all = block::BlockValues::default();
        for (id, m) in &self.block {
            let v = m.take();
            all.merge(&v);
            put(format!("block_{id}"), json(&v));
        }
        put("block".into(), json(&all));
        let mut all = net::NetValues::default();
        for (id, m) in &self.net {
            let v = m.take();
            all.merge(&v);
            put(format!("net_{id}"), json(&v));
        }
        put("net".into(), json(&all));
        let vsock = self.vsock.as_ref().map(|m| m.take()).unwrap_or_default();
        put("vsock".into(), json(&vsock));
        let entropy = self.entropy.as_ref().map(|m| m.take()).unwrap_or_default();
        put("entropy".into(), json(&entropy));
        let balloon = self.balloon.as_ref().map(|m| m.take()).unwrap_or_default();
        put("balloon".into(), json(&balloon));
        let mut all = pmem::PmemValues::default();
        for (id, m) in &self.pmem {
            let v = m.take();
            all.merge(&v);
            put(format!("pmem_{id}"), json(&v));
        }
        put("pmem".into(), json(&all));
        groups
    }
}

/// Now on `clock` (`CLOCK_MONOTONIC`, `CLOCK_PROCESS_CPUTIME_ID`...), in microseconds;
/// 0 if the clock cannot be read.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_is_written_and_the_aggregates_add_up_the_devices() {
        let mut m = VmMetrics::default();
        let (a, b) = (
            Arc::new(block::BlockMetrics::default()),
            Arc::new(block::BlockMetrics::default()),
        );
        m.block = vec![("root".into(), a.clone()), ("data".into(), b.clone())];
        let p = Arc::new(pmem::PmemMetrics::default());
        m.pmem = vec![("p0".into(), p.clone())];
        p.queue_event_count.add(2);
        a.read_bytes.add(4096);
        a.read_agg.record(30);
        b.read_bytes.add(512);
        b.read_agg.record(10);
        m.vcpu.exit_mmio_write.add(3);
        let groups = m.take();
        for g in [
            "vcpu",
            "uart",
            "i8042",
            "block",
            "block_root",
            "block_data",
            "net",
            "vsock",
            "entropy",
            "balloon",
            "pmem",
            "pmem_p0",
        ] {
            assert!(groups.contains_key(g), "{g} missing: {groups:?}");
        }
        assert_eq!(groups["block"]["read_bytes"], 4608);
        assert_eq!(groups["block_root"]["read_bytes"], 4096);
        assert_eq!(groups["block"]["read_agg"]["min_us"], 10);
        assert_eq!(groups["block"]["read_agg"]["max_us"], 30);
        assert_eq!(groups["vcpu"]["exit_mmio_write"], 3);
        assert_eq!(groups["pmem"]["queue_event_count"], 2);
        assert_eq!(groups["pmem_p0"]["queue_event_count"], 2);
        assert_eq!(groups["vsock"]["conns_added"], 0, "no device: zeros");
        let again = m.take();
        assert_eq!(
            again["block"]["read_bytes"], 0,
            "counts since the previous take"
        );
    }
}
