//! What vireoctl prints: tables and key-value blocks for people (`--json` prints the
//! API's bodies as they are).

use std::fmt::Write;

use manager_types::api::{Event, Progress, SnapshotInfo, VmInfo, VmStats, VmSummary};

/// `2d 3h`, `5m 2s`, `40s`.
pub fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `vireoctl list`.
pub fn table(vms: &[VmSummary]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.state.clone(),
                v.vcpus.to_string(),
                format!("{} MiB", v.memory_mib),
                v.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                v.uptime_s.map_or("-".into(), duration),
            ]
        })
        .collect();
    grid(
        &["NAME", "STATE", "VCPUS", "MEMORY", "CPU", "UPTIME"],
        &rows,
        2..=5,
    )
}

/// `vireoctl snapshot list`.
pub fn snapshots(snaps: &[SnapshotInfo]) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                utc(s.created_at),
                s.vm_state.clone(),
                s.disks.to_string(),
                format!("{:.1} MiB", s.size_bytes as f64 / (1 << 20) as f64),
            ]
        })
        .collect();
    grid(
        &["NAME", "CREATED (UTC)", "STATE", "DISKS", "SIZE"],
        &rows,
        3..=4,
    )
}

/// `writing the memory [#########.........] 30% 77/256 MiB`, `width` marks wide.
pub fn progress_bar(p: &Progress, width: usize) -> String {
    let fraction = if p.total_bytes == 0 {
        1.0
    } else {
        (p.done_bytes as f64 / p.total_bytes as f64).clamp(0.0, 1.0)
    };
    let marks = (fraction * width as f64).round() as usize;
    format!(
        "{} [{}{}] {:>3}% {}/{} MiB",
        p.what,
        "#".repeat(marks),
        ".".repeat(width - marks),
        (fraction * 100.0).round() as u32,
        p.done_bytes >> 20,
        p.total_bytes >> 20
    )
}

/// Columns padded to their widest cell; those in `right` right-aligned (numbers).
fn grid(header: &[&str], rows: &[Vec<String>], right: std::ops::RangeInclusive<usize>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, &w)) in cells.iter().zip(&widths).enumerate() {
            if right.contains(&i) {
                let _ = write!(l, "{cell:>w$}  ");
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// Seconds since the epoch as `2026-12-04 03:15:00` (UTC).
pub fn utc(seconds: i64) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days to a civil date (the proleptic Gregorian calendar, from 0000-03-01).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `vireoctl info`.
pub fn info(i: &VmInfo) -> String {
    let s = &i.summary;
    let mut out = String::new();
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<13}{v}");
    };
    kv("Name:", &s.name);
    kv("State:", &s.state);
    kv("vCPUs:", &s.vcpus.to_string());
    kv("Memory:", &format!("{} MiB", s.memory_mib));
    kv("Autostart:", if s.autostart { "yes" } else { "no" });
    kv("Restart:", &i.restart);
    if let Some(pid) = s.pid {
        kv("PID:", &pid.to_string());
    }
    if let Some(u) = s.uptime_s {
        kv("Uptime:", &duration(u));
    }
    if let Some(c) = s.cpu_percent {
        kv("CPU:", &format!("{c:.1}%"));
    }
    if let Some(sock) = &i.api_socket {
        kv("API socket:", sock);
    }
    if let Some(cg) = &i.cgroup {
        kv("Cgroup:", cg);
    }
    if let Some(e) = &i.exit_status {
        kv("Last exit:", e);
    }
    if i.restarts > 0 {
        kv("Restarts:", &i.restarts.to_string());
    }
    if !i.last_console.is_empty() {
        let _ = writeln!(out, "Last console lines:");
        for l in &i.last_console {
            let _ = writeln!(out, "  | {l}");
        }
    }
    let _ = writeln!(out, "Definition:");
    for l in i.definition.lines() {
        let _ = writeln!(out, "  {l}");
    }
    out
}

/// `vireoctl stats`.
pub fn stats(s: &VmStats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cpu.time       {:.3} s", s.cpu_time_us as f64 / 1e6);
    if let Some(c) = s.cpu_percent {
        let _ = writeln!(out, "cpu.percent    {c:.1}%");
    }
    if let Some(m) = s.memory_current {
        let _ = writeln!(out, "memory.current {} MiB", m >> 20);
    }
    if let Some(serde_json::Value::Object(b)) = &s.balloon {
        for (k, v) in b {
            let _ = writeln!(out, "balloon.{k:<16} {v}");
        }
    }
    for d in &s.disks {
        let _ = writeln!(
            out,
            "disk.{}  read {} in {} requests, written {} in {}, {} flushes, {} errors, {} throttled",
            d.id,
            bytes(d.read_bytes),
            d.reads,
            bytes(d.write_bytes),
            d.writes,
            d.flushes,
            d.errors,
            d.throttled
        );
    }
    for n in &s.nics {
        let _ = writeln!(
            out,
            "nic.{}  rx {} in {} frames ({} dropped), tx {} in {} frames ({} dropped), {} throttled",
            n.id,
            bytes(n.rx_bytes),
            n.rx_packets,
            n.rx_dropped,
            bytes(n.tx_bytes),
            n.tx_packets,
            n.tx_dropped,
            n.throttled
        );
    }
    out
}

/// A byte count in the largest binary unit that keeps it at least 1.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One event for `vireoctl events`.
pub fn event_line(e: &Event) -> String {
    format!("#{} {} {} {} {}", e.id, e.at, e.vm, e.kind, e.detail)
        .trim_end()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_show_each_disk_and_nic() {
        let s = VmStats {
            disks: vec![manager_types::api::DiskStats {
                id: "root".into(),
                read_bytes: 3 << 20,
                reads: 12,
                ..Default::default()
            }],
            nics: vec![manager_types::api::NicStats {
                id: "eth0".into(),
                tx_bytes: 900,
                tx_packets: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = stats(&s);
        assert!(
            text.contains("disk.root  read 3.0 MiB in 12 requests"),
            "{text}"
        );
        assert!(
            text.contains("nic.eth0  rx 0 B in 0 frames (0 dropped), tx 900 B in 3 frames"),
            "{text}"
        );
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(duration(40), "40s");
        assert_eq!(duration(302), "5m 2s");
        assert_eq!(duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(duration(2 * 86_400 + 3 * 3600), "2d 3h");
    }

    #[test]
    fn progress_bars_show_the_fraction_done() {
        let p = |done: u64, total: u64| Progress {
            what: "writing the memory".into(),
            done_bytes: done << 20,
            total_bytes: total << 20,
        };
        assert_eq!(
            progress_bar(&p(77, 256), 10),
            "writing the memory [###.......]  30% 77/256 MiB"
        );
        assert_eq!(
            progress_bar(&p(300, 256), 4),
            "writing the memory [####] 100% 300/256 MiB"
        );
        assert_eq!(
            progress_bar(&p(0, 0), 2),
            "writing the memory [##] 100% 0/0 MiB"
        );
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_354_100), "2026-12-04 03:15:00");
    }

    #[test]
    fn the_list_is_an_aligned_table() {
        let vm = |name: &str, state: &str, cpu: Option<f64>, up: Option<u64>| VmSummary {
            name: name.into(),
            state: state.into(),
            vcpus: 2,
            memory_mib: 512,
            cpu_percent: cpu,
            uptime_s: up,
            pid: None,
            autostart: false,
        };
        let t = table(&[
            vm("web1", "running", Some(12.5), Some(65)),
            vm("database", "stopped", None, None),
        ]);
        assert_eq!(
            t,
            "NAME      STATE    VCPUS   MEMORY    CPU  UPTIME\n\
             web1      running      2  512 MiB  12.5%   1m 5s\n\
             database  stopped      2  512 MiB      -       -\n"
        );
    }
}
