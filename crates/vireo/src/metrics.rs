//! Metrics in Firecracker's shape: one JSON object per line, written to the
//! `metrics_path` of `PUT /metrics` at InstanceStart, on `FlushMetrics`, when the VM
//! stops and after [`FLUSH_INTERVAL`] without API requests. Every group Firecracker
//! writes is there, with its field names; counters are what happened since the
//! previous line, values (`latencies_us`, `api_server`) are as of the line. The VM's
//! own groups (vCPUs, UART, i8042, each disk, NIC and pmem device, vsock, entropy,
//! balloon) come from [`vmm::metrics::VmMetrics`].

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::action::VmmAction;
use serde::Serialize;
use virtio_devices::metrics::LatencyValues;
use vmm::metrics::clock_us;

/// How often metrics are written without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Where the lines go, and what they carry besides the numbers.
struct Sink {
    file: std::fs::File,
    emit_id: bool,
    properties: Option<BTreeMap<String, String>>,
}

/// Firecracker's `put_api_requests`, `patch_api_requests` and `get_api_requests`.
mod requests {
    virtio_devices::metrics_group!(
        /// `PUT` requests by resource.
        Put => PutValues {
            actions_count, actions_fails, boot_source_count, boot_source_fails,
            drive_count, drive_fails, logger_count, logger_fails, machine_cfg_count,
            machine_cfg_fails, cpu_cfg_count, cpu_cfg_fails, metrics_count, metrics_fails,
            network_count, network_fails, mmds_count, mmds_fails, vsock_count, vsock_fails,
            pmem_count, pmem_fails, serial_count, serial_fails, hotplug_memory_count,
            hotplug_memory_fails,
        }
    );
    virtio_devices::metrics_group!(
        /// `PATCH` requests by resource.
        Patch => PatchValues {
            drive_count, drive_fails, network_count, network_fails, machine_cfg_count,
            machine_cfg_fails, mmds_count, mmds_fails, hotplug_memory_count,
            hotplug_memory_fails, pmem_count, pmem_fails,
        }
    );
    virtio_devices::metrics_group!(
        /// `GET` requests by resource.
        Get => GetValues {
            instance_info_count, machine_cfg_count, mmds_count, vmm_version_count,
            hotplug_memory_count,
        }
    );
    virtio_devices::metrics_group!(
        /// Calls of deprecated API fields.
        Deprecated => DeprecatedValues { deprecated_http_api_calls }
    );
    virtio_devices::metrics_group!(
        /// The metrics and log writers' own failures.
        Logger => LoggerValues {
            missed_metrics_count, metrics_fails, missed_log_count, rate_limited_log_count,
        }
    );
}

/// How long the last pause, resume, snapshot or restore took, in microseconds (values,
/// not counts: each line repeats the last one). Vireo serves these on one thread, so
/// the API's figure and the VMM's (`vmm_*`) are the same measurement.
#[derive(Debug, Default, Clone, Serialize)]
#[allow(missing_docs)]
pub struct Latencies {
    pub full_create_snapshot: u64,
    pub diff_create_snapshot: u64,
    pub load_snapshot: u64,
    pub pause_vm: u64,
    pub resume_vm: u64,
    pub vmm_full_create_snapshot: u64,
    pub vmm_diff_create_snapshot: u64,
    pub vmm_load_snapshot: u64,
    pub vmm_pause_vm: u64,
    pub vmm_resume_vm: u64,
}

/// Which latency an operation sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A Full snapshot.
    FullSnapshot,
    /// A Diff snapshot.
    DiffSnapshot,
    /// Loading a snapshot.
    LoadSnapshot,
    /// Pausing.
    Pause,
    /// Resuming.
    Resume,
}

/// Count of panics, kept by the panic hook ([`install_panic_counter`]).
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Count every panic in the `vmm` group's `panic_count`, then report it as before.
pub fn install_panic_counter() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
}

/// CPU time this process has used, in microseconds.
fn cpu_time_us() -> u64 {
    clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// How long ago this process started (`/proc/self/stat`'s start time against the
/// boot-time clock), in microseconds.
fn process_age_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let started_us = start_ticks.checked_mul(1_000_000)? / hz.max(1);
    Some(clock_us(libc::CLOCK_BOOTTIME).saturating_sub(started_us))
}

/// Where the API server's startup times count from: a launcher (Firecracker's jailer)
/// passes when it started the process (`--start-time-us`, CLOCK_MONOTONIC;
/// `--start-time-cpu-us`) and the CPU time it spent itself (`--parent-cpu-time-us`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StartReference {
    /// The launcher's start, µs of CLOCK_MONOTONIC; else the process's own start.
    pub wall_us: Option<u64>,
    /// The process CPU time at the launcher's start, µs; else zero.
    pub cpu_us: Option<u64>,
    /// CPU time the launcher spent, µs, added.
    pub parent_cpu_us: u64,
}

/// The counters and the destination.
#[derive(Default)]
pub struct Metrics {
    sink: Option<Sink>,
    put: requests::Put,
    patch: requests::Patch,
    get: requests::Get,
    deprecated: requests::Deprecated,
    logger: requests::Logger,
    /// The metadata service's counters (its `mmds` group).
    pub mmds: std::sync::Arc<mmds::MmdsMetrics>,
    latencies: Latencies,
    panics_flushed: u64,
    /// From `main` to the API server listening, wall clock and CPU.
    startup_us: (u64, u64),
}

#[derive(Serialize)]
struct Line<'a> {
    utc_timestamp_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a BTreeMap<String, String>>,
    api_server: ApiServer,
    deprecated_api: requests::DeprecatedValues,
    get_api_requests: requests::GetValues,
    put_api_requests: requests::PutValues,
    patch_api_requests: requests::PatchValues,
    latencies_us: &'a Latencies,
    logger: requests::LoggerValues,
    mmds: mmds::MmdsValues,
    seccomp: Zeros<1>,
    signals: Zeros<7>,
    vmm: VmmGroup,
    interrupts: Zeros<2>,
    memory_hotplug: Zeros<18>,
    #[serde(flatten)]
    devices: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct ApiServer {
    process_startup_time_us: u64,
    process_startup_time_cpu_us: u64,
}

#[derive(Serialize)]
struct VmmGroup {
    panic_count: u64,
}

/// A group Vireo has nothing to count in yet (no seccomp or memory hotplug; no
/// fatal-signal handlers; interrupts are not counted): Firecracker's field
/// names, all 0 (a `*_agg` name is a latency aggregate of zeros).
struct Zeros<const N: usize>(&'static [&'static str; N]);

impl<const N: usize> Serialize for Zeros<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(N))?;
        for name in self.0 {
            if name.ends_with("_agg") {
                map.serialize_entry(name, &LatencyValues::default())?;
            } else {
                map.serialize_entry(name, &0u64)?;
            }
        }
        map.end()
    }
}

const SECCOMP: [&str; 1] = ["num_faults"];
const SIGNALS: [&str; 7] = [
    "sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill",
];
const INTERRUPTS: [&str; 2] = ["triggers", "config_updates"];
const MEMORY_HOTPLUG: [&str; 18] = [
    "activate_fails",
    "queue_event_fails",
    "queue_event_count",
    "plug_count",
    "plug_bytes",
    "plug_fails",
    "plug_agg",
    "unplug_count",
    "unplug_bytes",
    "unplug_fails",
    "unplug_discard_fails",
    "unplug_agg",
    "state_count",
    "state_fails",
    "state_agg",
    "unplug_all_count",
    "unplug_all_fails",
    "unplug_all_agg",
];

impl Metrics {
    /// Whether a destination was configured.
    pub fn is_configured(&self) -> bool {
        self.sink.is_some()
    }

    /// Apply `PUT /metrics` (once only, as Firecracker).
    pub fn configure(&mut self, config: &api::firecracker::Metrics) -> Result<(), String> {
        if self.sink.is_some() {
            return Err("Reinitialization of metrics not allowed.".into());
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&config.metrics_path)
            .map_err(|e| format!("cannot open {}: {e}", config.metrics_path))?;
        self.sink = Some(Sink {
            file,
            emit_id: config.emit_id.unwrap_or(false),
            properties: config.properties.clone(),
        });
        Ok(())
    }

    /// Record now as the moment the API is served: the time since `start` (by default
    /// the process's age and CPU time) becomes `api_server`'s `process_startup_time_us`
    /// and `_cpu_us`.
    pub fn mark_api_ready(&mut self, start: &StartReference) {
        let wall = match start.wall_us {
            Some(t) => clock_us(libc::CLOCK_MONOTONIC).saturating_sub(t),
            None => process_age_us().unwrap_or(0),
        };
        let cpu = cpu_time_us().saturating_sub(start.cpu_us.unwrap_or(0)) + start.parent_cpu_us;
        self.startup_us = (wall, cpu);
    }

    /// Count one API request in its resource's counter, and its failure.
    pub fn count_request(&mut self, action: &VmmAction, failed: bool) {
        use VmmAction as A;
        if action.deprecation().is_some() {
            self.deprecated.deprecated_http_api_calls.inc();
        }
        let (count, fails) = match action {
            A::GetMmds => (&self.get.mmds_count, None),
            A::PutMmds(_) | A::PutMmdsConfig(_) => {
                (&self.put.mmds_count, Some(&self.put.mmds_fails))
            }
            A::PatchMmds(_) => (&self.patch.mmds_count, Some(&self.patch.mmds_fails)),
            A::GetInstanceInfo | A::GetFullVmConfig => (&self.get.instance_info_count, None),
            A::GetVersion => (&self.get.vmm_version_count, None),
            A::GetMachineConfig => (&self.get.machine_cfg_count, None),
            A::PutMachineConfig(_) => (
                &self.put.machine_cfg_count,
                Some(&self.put.machine_cfg_fails),
            ),
            A::PatchMachineConfig(_) => (
                &self.patch.machine_cfg_count,
                Some(&self.patch.machine_cfg_fails),
            ),
            A::PutCpuConfig(_) => (&self.put.cpu_cfg_count, Some(&self.put.cpu_cfg_fails)),
            A::PutBootSource(_) => (
                &self.put.boot_source_count,
                Some(&self.put.boot_source_fails),
            ),
            A::PutDrive(_) => (&self.put.drive_count, Some(&self.put.drive_fails)),
            A::PatchDrive(_) => (&self.patch.drive_count, Some(&self.patch.drive_fails)),
            A::PutNetworkInterface(_) => (&self.put.network_count, Some(&self.put.network_fails)),
            A::PatchNetworkInterface(_) => {
                (&self.patch.network_count, Some(&self.patch.network_fails))
            }
            A::PutVsock(_) => (&self.put.vsock_count, Some(&self.put.vsock_fails)),
            A::PutLogger(_) => (&self.put.logger_count, Some(&self.put.logger_fails)),
            A::PutMetrics(_) => (&self.put.metrics_count, Some(&self.put.metrics_fails)),
            A::PutSerial(_) => (&self.put.serial_count, Some(&self.put.serial_fails)),
            A::PutPmem(_) => (&self.put.pmem_count, Some(&self.put.pmem_fails)),
            A::PatchPmem(_) => (&self.patch.pmem_count, Some(&self.patch.pmem_fails)),
            A::InstanceStart | A::SendCtrlAltDel | A::FlushMetrics => {
                (&self.put.actions_count, Some(&self.put.actions_fails))
            }
            // Firecracker counts no balloon, entropy, snapshot or vm-state requests.
            A::PutEntropy(_)
            | A::PutBalloon(_)
            | A::PatchBalloon(_)
            | A::GetBalloon
            | A::GetBalloonStats
            | A::PatchBalloonStats(_)
            | A::StartBalloonHinting(_)
            | A::GetBalloonHintingStatus
            | A::StopBalloonHinting
            | A::Pause
            | A::Resume
            | A::CreateSnapshot(_)
            | A::LoadSnapshot(_) => return,
        };
        count.inc();
        if failed && let Some(fails) = fails {
            fails.inc();
        }
    }

    /// Record how long `op` took.
    pub fn set_latency(&mut self, op: Operation, us: u64) {
        let l = &mut self.latencies;
        let (api, vmm) = match op {
            Operation::FullSnapshot => {
                (&mut l.full_create_snapshot, &mut l.vmm_full_create_snapshot)
            }
            Operation::DiffSnapshot => {
                (&mut l.diff_create_snapshot, &mut l.vmm_diff_create_snapshot)
            }
            Operation::LoadSnapshot => (&mut l.load_snapshot, &mut l.vmm_load_snapshot),
            Operation::Pause => (&mut l.pause_vm, &mut l.vmm_pause_vm),
            Operation::Resume => (&mut l.resume_vm, &mut l.vmm_resume_vm),
        };
        *api = us;
        *vmm = us;
    }

    /// Write one line (if configured) with the VM's counters (`None` before the VM
    /// exists: its groups are zeros) and start every counter again.
    pub fn flush(&mut self, id: &str, vm: Option<&vmm::metrics::VmMetrics>) -> Result<(), String> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(());
        };
        let devices = vm.map_or_else(|| vmm::metrics::VmMetrics::default().take(), |m| m.take());
        let panics = PANICS.load(Ordering::Relaxed);
        let line = Line {
            utc_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            id: sink.emit_id.then_some(id),
            properties: sink.properties.as_ref(),
            api_server: ApiServer {
                process_startup_time_us: self.startup_us.0,
                process_startup_time_cpu_us: self.startup_us.1,
            },
            deprecated_api: self.deprecated.take(),
            get_api_requests: self.get.take(),
            put_api_requests: self.put.take(),
            patch_api_requests: self.patch.take(),
            latencies_us: &self.latencies,
            logger: self.logger.take(),
            mmds: self.mmds.take(),
            seccomp: Zeros(&SECCOMP),
            signals: Zeros(&SIGNALS),
            vmm: VmmGroup {
                panic_count: panics - self.panics_flushed,
            },
            interrupts: Zeros(&INTERRUPTS),
            memory_hotplug: Zeros(&MEMORY_HOTPLUG),
            devices,
        };
        self.panics_flushed = panics;
        let mut text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
        text.push('\n');
        if let Err(e) = sink.file.write_all(text.as_bytes()) {
            self.logger.metrics_fails.inc();
            self.logger.missed_metrics_count.inc();
            return Err(format!("cannot write the metrics: {e}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_times_count_from_the_launchers_reference() {
        let mut m = Metrics::default();
        m.mark_api_ready(&StartReference::default());
        let (own_wall, _) = m.startup_us;
        assert!(
            own_wall < 600_000_000,
            "the test process's age: {own_wall} µs"
        );

        let now = clock_us(libc::CLOCK_MONOTONIC);
        m.mark_api_ready(&StartReference {
            wall_us: Some(now - 5_000_000),
            cpu_us: Some(0),
            parent_cpu_us: 1_000_000_000,
        });
        let (wall, cpu) = m.startup_us;
        assert!((5_000_000..6_000_000).contains(&wall), "{wall}");
        assert!(
            cpu >= 1_000_000_000,
            "the parent's CPU time is added: {cpu}"
        );
        // A reference in the future (a confused launcher) gives zero, not a wrap.
        m.mark_api_ready(&StartReference {
            wall_us: Some(now + 60_000_000),
            ..StartReference::default()
        });
        assert_eq!(m.startup_us.0, 0);
    }

    /// Firecracker's metrics line: each group and its fields (`name{}` a latency
    /// aggregate), as its documentation and its own schema test list them.
    const FIRECRACKER: &[(&str, &str)] = &[
        (
            "api_server",
            "process_startup_time_us process_startup_time_cpu_us",
        ),
        (
            "balloon",
            "activate_fails inflate_count stats_updates_count stats_update_fails deflate_count event_fails free_page_report_count free_page_report_freed free_page_report_fails free_page_hint_count free_page_hint_freed free_page_hint_fails",
        ),
        ("block", BLOCK),
        ("deprecated_api", "deprecated_http_api_calls"),
        (
            "get_api_requests",
            "instance_info_count machine_cfg_count mmds_count vmm_version_count hotplug_memory_count",
        ),
        (
            "i8042",
            "error_count missed_read_count missed_write_count read_count reset_count write_count",
        ),
        (
            "latencies_us",
            "full_create_snapshot diff_create_snapshot load_snapshot pause_vm resume_vm vmm_full_create_snapshot vmm_diff_create_snapshot vmm_load_snapshot vmm_pause_vm vmm_resume_vm",
        ),
        (
            "logger",
            "missed_metrics_count metrics_fails missed_log_count rate_limited_log_count",
        ),
        (
            "mmds",
            "rx_accepted rx_accepted_err rx_accepted_unusual rx_bad_eth rx_invalid_token rx_no_token rx_count tx_bytes tx_count tx_errors tx_frames connections_created connections_destroyed",
        ),
        ("net", NET),
        (
            "patch_api_requests",
            "drive_count drive_fails network_count network_fails machine_cfg_count machine_cfg_fails mmds_count mmds_fails hotplug_memory_count hotplug_memory_fails pmem_count pmem_fails",
        ),
        (
            "put_api_requests",
            "actions_count actions_fails boot_source_count boot_source_fails drive_count drive_fails logger_count logger_fails machine_cfg_count machine_cfg_fails cpu_cfg_count cpu_cfg_fails metrics_count metrics_fails network_count network_fails mmds_count mmds_fails vsock_count vsock_fails pmem_count pmem_fails serial_count serial_fails hotplug_memory_count hotplug_memory_fails",
        ),
        ("seccomp", "num_faults"),
        (
            "vcpu",
            "exit_io_in exit_io_out exit_mmio_read exit_mmio_write failures kvmclock_ctrl_fails exit_io_in_agg{} exit_io_out_agg{} exit_mmio_read_agg{} exit_mmio_write_agg{}",
        ),
        ("vmm", "panic_count"),
        (
            "uart",
            "error_count flush_count missed_read_count missed_write_count read_count write_count rate_limiter_dropped_bytes",
        ),
        (
            "signals",
            "sigbus sigsegv sigxfsz sigxcpu sigpipe sighup sigill",
        ),
        (
            "vsock",
            "activate_fails cfg_fails rx_queue_event_fails tx_queue_event_fails ev_queue_event_fails muxer_event_fails conn_event_fails rx_queue_event_count tx_queue_event_count rx_bytes_count tx_bytes_count rx_packets_count tx_packets_count conns_added conns_killed conns_removed killq_resync tx_flush_fails tx_write_fails rx_read_fails",
        ),
        (
            "entropy",
            "activate_fails entropy_event_fails entropy_event_count entropy_bytes host_rng_fails entropy_rate_limiter_throttled rate_limiter_event_count",
        ),
        ("interrupts", "triggers config_updates"),
        (
            "pmem",
            "activate_fails cfg_fails event_fails queue_event_count rate_limiter_throttled_events rate_limiter_event_count",
        ),
        (
            "memory_hotplug",
            "activate_fails queue_event_fails queue_event_count plug_count plug_bytes plug_fails plug_agg{} unplug_count unplug_bytes unplug_fails unplug_discard_fails unplug_agg{} state_count state_fails state_agg{} unplug_all_count unplug_all_fails unplug_all_agg{}",
        ),
    ];
    const BLOCK: &str = "activate_fails cfg_fails no_avail_buffer event_fails execute_fails invalid_reqs_count flush_count queue_event_count rate_limiter_event_count update_count update_fails read_bytes write_bytes read_count write_count rate_limiter_throttled_events io_engine_throttled_events remaining_reqs_count read_agg{} write_agg{}";
    const NET: &str = "activate_fails cfg_fails no_rx_avail_buffer no_tx_avail_buffer event_fails rx_queue_event_count rx_event_rate_limiter_count rx_rate_limiter_throttled rx_tap_event_count rx_bytes_count rx_packets_count rx_fails rx_count tap_read_fails tap_write_fails tx_bytes_count tx_malformed_frames tx_fails tx_count tx_packets_count tx_queue_event_count tx_rate_limiter_event_count tx_rate_limiter_throttled tx_spoofed_mac_count tx_remaining_reqs_count tap_write_agg{}";

    /// `group` has exactly `fields`, numbers and aggregates.
    fn check_group(name: &str, group: &serde_json::Value, fields: &str) {
        let object = group
            .as_object()
            .unwrap_or_else(|| panic!("{name} is not an object"));
        let mut want: Vec<&str> = fields.split_whitespace().collect();
        for field in &want {
            let (key, agg) = match field.strip_suffix("{}") {
                Some(k) => (k, true),
                None => (*field, false),
            };
            let v = object
                .get(key)
                .unwrap_or_else(|| panic!("{name}.{key} missing"));
            if agg {
                for part in ["min_us", "max_us", "sum_us"] {
                    assert!(v[part].is_u64(), "{name}.{key}.{part}: {v}");
                }
            } else {
                assert!(v.is_u64(), "{name}.{key} is {v}");
            }
        }
        want.iter_mut().for_each(|f| *f = f.trim_end_matches("{}"));
        for key in object.keys() {
            assert!(
                want.contains(&key.as_str()),
                "{name}.{key} is not Firecracker's"
            );
        }
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_line_has_every_firecracker_group_and_field_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut m = Metrics::default();
        m.configure(&api::firecracker::Metrics {
            metrics_path: path.display().to_string(),
            emit_id: None,
            properties: None,
        })
        .unwrap();
        let vm = vmm::metrics::VmMetrics {
            block: vec![("rootfs".into(), Default::default())],
            net: vec![("eth0".into(), Default::default())],
            pmem: vec![("rootfs".into(), Default::default())],
            ..Default::default()
        };
        vm.pmem[0].1.queue_event_count.add(3);
        m.flush("x", Some(&vm)).unwrap();
        let line = &lines(&path)[0];
        let object = line.as_object().unwrap();
        assert!(line["utc_timestamp_ms"].is_u64());
        for (name, fields) in FIRECRACKER {
            check_group(name, &line[name], fields);
        }
        check_group("block_rootfs", &line["block_rootfs"], BLOCK);
        check_group("net_eth0", &line["net_eth0"], NET);
        let pmem = FIRECRACKER.iter().find(|(n, _)| *n == "pmem").unwrap().1;
        check_group("pmem_rootfs", &line["pmem_rootfs"], pmem);
        assert_eq!(line["pmem_rootfs"]["queue_event_count"], 3);
        assert_eq!(line["pmem"]["queue_event_count"], 3, "the aggregate");
        for key in object.keys() {
            let known = key == "utc_timestamp_ms"
                || key == "block_rootfs"
                || key == "net_eth0"
                || key == "pmem_rootfs"
                || FIRECRACKER.iter().any(|(n, _)| n == key);
            assert!(known, "{key} is not a group of Firecracker's");
        }
    }

    #[test]
    fn lines_carry_counters_since_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut m = Metrics::default();
        assert!(m.flush("x", None).is_ok(), "unconfigured: no-op");
        let config = api::firecracker::Metrics {
            metrics_path: path.display().to_string(),
            emit_id: Some(true),
            properties: Some([("k".to_string(), "v".to_string())].into()),
        };
        m.configure(&config).unwrap();
        assert!(m.configure(&config).is_err(), "only once");
        let drive: api::firecracker::Drive = serde_json::from_value(serde_json::json!({
            "drive_id": "d", "is_root_device": false, "path_on_host": "/x"
        }))
        .unwrap();
        m.count_request(&VmmAction::PutDrive(drive.clone()), false);
        m.count_request(&VmmAction::PutDrive(drive), true);
        m.count_request(&VmmAction::GetInstanceInfo, false);
        m.count_request(&VmmAction::FlushMetrics, false);
        let pmem: api::firecracker::Pmem =
            serde_json::from_value(serde_json::json!({"id": "p", "path_on_host": "/p"})).unwrap();
        m.count_request(&VmmAction::PutPmem(pmem), true);
        let patch = api::firecracker::PartialPmem {
            id: "p".into(),
            rate_limiter: None,
        };
        m.count_request(&VmmAction::PatchPmem(patch.clone()), false);
        m.count_request(&VmmAction::PatchPmem(patch), true);
        m.set_latency(Operation::Pause, 1234);
        m.flush("vm1", None).unwrap();
        m.flush("vm1", None).unwrap();
        let lines = lines(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["put_api_requests"]["drive_count"], 2);
        assert_eq!(lines[0]["put_api_requests"]["drive_fails"], 1);
        assert_eq!(lines[0]["put_api_requests"]["actions_count"], 1);
        assert_eq!(lines[0]["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(lines[0]["put_api_requests"]["pmem_count"], 1);
        assert_eq!(lines[0]["put_api_requests"]["pmem_fails"], 1);
        assert_eq!(lines[0]["patch_api_requests"]["pmem_count"], 2);
        assert_eq!(lines[0]["patch_api_requests"]["pmem_fails"], 1);
        assert_eq!(lines[1]["put_api_requests"]["drive_count"], 0);
        assert_eq!(lines[1]["latencies_us"]["pause_vm"], 1234, "values repeat");
        assert_eq!(lines[0]["id"], "vm1");
        assert_eq!(lines[0]["properties"]["k"], "v");
    }
}
