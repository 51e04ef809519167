//! `GET /metrics`: every VM in Prometheus' text format, for a scraper of the host.

use std::fmt::Write;
use std::sync::Arc;

use crate::manager::Manager;
use crate::process;

/// The metrics text.
pub fn render(m: &Arc<Manager>) -> String {
    let mut out = String::new();
    let vms = m.list().unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP vireo_vm_state The VM's state (1 for the state it is in).\n# TYPE vireo_vm_state gauge"
    );
    for vm in &vms {
        let _ = writeln!(
            out,
            "vireo_vm_state{{vm=\"{}\",state=\"{}\"}} 1",
            vm.name, vm.state
        );
    }
    let _ = writeln!(
        out,
        "# HELP vireo_vm_vcpus vCPUs defined.\n# TYPE vireo_vm_vcpus gauge"
    );
    for vm in &vms {
        let _ = writeln!(out, "vireo_vm_vcpus{{vm=\"{}\"}} {}", vm.name, vm.vcpus);
    }
    let _ = writeln!(
        out,
        "# HELP vireo_vm_memory_bytes Guest memory defined.\n# TYPE vireo_vm_memory_bytes gauge"
    );
    for vm in &vms {
        let _ = writeln!(
            out,
            "vireo_vm_memory_bytes{{vm=\"{}\"}} {}",
            vm.name,
            vm.memory_mib << 20
        );
    }
    let running = m.running_pids();
    let tps = process::ticks_per_second() as f64;
    let _ = writeln!(
        out,
        "# HELP vireo_vm_cpu_seconds_total CPU time of the VM's vireo process.\n# TYPE vireo_vm_cpu_seconds_total counter"
    );
    for (name, pid) in &running {
        if let Some(t) = process::cpu_ticks(*pid) {
            let _ = writeln!(
                out,
                "vireo_vm_cpu_seconds_total{{vm=\"{name}\"}} {:.2}",
                t as f64 / tps
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP vireo_vm_rss_bytes Resident memory of the VM's vireo process (guest memory it touched included).\n# TYPE vireo_vm_rss_bytes gauge"
    );
    for (name, pid) in &running {
        if let Some(rss) = rss_bytes(*pid) {
            let _ = writeln!(out, "vireo_vm_rss_bytes{{vm=\"{name}\"}} {rss}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP vireod_rss_bytes Resident memory of vireod.\n# TYPE vireod_rss_bytes gauge\nvireod_rss_bytes {}",
        rss_bytes(std::process::id()).unwrap_or(0)
    );
    out
}

/// Resident set size of `pid`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}
