//! Per-disk and per-NIC totals of a running VM, from the metrics file its `vireo`
//! writes (Firecracker's format: one JSON line per flush, with `block_ID` and `net_ID`
//! groups counting what happened since the previous line).
//!
//! vireod asks for a flush (`FlushMetrics`) and adds up every line. The file is made
//! small again once it passes [`COMPACT_AT`]: rewritten as one line of the totals.
//! That is safe against vireo's own writes because vireo writes a line only when asked,
//! when the VM stops, or after a minute without API requests, and the flush that just
//! came before is such a request; [`LOCK`] keeps two readers from compacting at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use manager_types::api::{DiskStats, NicStats};

/// Size from which the file is rewritten as one line of totals.
pub const COMPACT_AT: u64 = 1 << 20;

static LOCK: Mutex<()> = Mutex::new(());

/// Each device's fields summed over the lines, devices in the order first seen.
#[derive(Debug, Default, PartialEq)]
pub struct Totals {
    groups: Vec<(String, BTreeMap<String, u64>)>,
}

impl Totals {
    fn add_line(&mut self, line: &serde_json::Value) {
        let Some(object) = line.as_object() else {
            return;
        };
        for (key, group) in object {
            if !(key.starts_with("block_") || key.starts_with("net_")) {
                continue;
            }
            let Some(fields) = group.as_object() else {
                continue;
            };
            let index = match self.groups.iter().position(|(k, _)| k == key) {
                Some(i) => i,
                None => {
                    self.groups.push((key.clone(), BTreeMap::new()));
                    self.groups.len() - 1
                }
            };
            let sums = &mut self.groups[index].1;
            for (field, value) in fields {
                if let Some(n) = value.as_u64() {
                    let sum = sums.entry(field.clone()).or_default();
                    *sum = sum.saturating_add(n);
                }
            }
        }
    }

    /// Add up the lines of `text` (a line that is not JSON, such as one cut short, is
    /// skipped).
    pub fn from_lines(text: &str) -> Self {
        let mut totals = Self::default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                totals.add_line(&v);
            }
        }
        totals
    }

    fn line(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = self
            .groups
            .iter()
            .map(|(k, fields)| (k.clone(), serde_json::json!(fields)))
            .collect();
        serde_json::Value::Object(object).to_string()
    }

    fn group(&self, prefix: &str) -> impl Iterator<Item = (&str, &BTreeMap<String, u64>)> {
        self.groups
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|id| (id, v)))
    }

    /// The disks' figures.
    pub fn disks(&self) -> Vec<DiskStats> {
        self.group("block_")
            .map(|(id, f)| {
                let n = |k: &str| f.get(k).copied().unwrap_or(0);
                DiskStats {
                    id: id.to_string(),
                    read_bytes: n("read_bytes"),
                    write_bytes: n("write_bytes"),
                    reads: n("read_count"),
                    writes: n("write_count"),
                    flushes: n("flush_count"),
                    errors: n("execute_fails") + n("invalid_reqs_count"),
                    throttled: n("rate_limiter_throttled_events"),
                }
            })
            .collect()
    }

    /// The NICs' figures.
    pub fn nics(&self) -> Vec<NicStats> {
        self.group("net_")
            .map(|(id, f)| {
                let n = |k: &str| f.get(k).copied().unwrap_or(0);
                NicStats {
                    id: id.to_string(),
                    rx_bytes: n("rx_bytes_count"),
                    tx_bytes: n("tx_bytes_count"),
                    rx_packets: n("rx_packets_count"),
                    tx_packets: n("tx_packets_count"),
                    rx_dropped: n("rx_fails"),
                    tx_dropped: n("tx_fails") + n("tx_malformed_frames"),
                    throttled: n("rx_rate_limiter_throttled") + n("tx_rate_limiter_throttled"),
                }
            })
            .collect()
    }
}

/// The totals of the metrics file at `path` (empty if it does not exist yet), which
/// is rewritten as one line of them once it passes `compact_at` bytes.
pub fn read(path: &Path, compact_at: u64) -> Result<Totals, String> {
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Totals::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let totals = Totals::from_lines(&text);
    if text.len() as u64 >= compact_at {
        let rewrite = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.set_len(0)?;
            let mut line = totals.line();
            line.push('\n');
            f.write_all(line.as_bytes())
        };
        if let Err(e) = rewrite() {
            log::warn!("cannot compact {}: {e}", path.display());
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(read: u64, rx: u64) -> String {
        serde_json::json!({
            "utc_timestamp_ms": 1,
            "block": {"read_bytes": read},
            "block_root": {"read_bytes": read, "read_count": 1, "execute_fails": 0,
                           "invalid_reqs_count": 1, "read_agg": {"min_us": 3}},
            "net_eth0": {"rx_bytes_count": rx, "tx_fails": 1, "tx_malformed_frames": 2},
            "vcpu": {"exit_io_in": 5},
        })
        .to_string()
    }

    #[test]
    fn lines_add_up_per_device() {
        let text = format!("{}\n{}\n{{cut short", line(100, 7), line(50, 3));
        let t = Totals::from_lines(&text);
        let disks = t.disks();
        assert_eq!(disks.len(), 1, "the aggregate `block` is not a disk");
        assert_eq!(disks[0].id, "root");
        assert_eq!(
            (disks[0].read_bytes, disks[0].reads, disks[0].errors),
            (150, 2, 2)
        );
        let nics = t.nics();
        assert_eq!((nics[0].id.as_str(), nics[0].rx_bytes), ("eth0", 10));
        assert_eq!(nics[0].tx_dropped, 6);
    }

    #[test]
    fn a_large_file_becomes_one_line_with_the_same_totals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let text: String = (0..20).map(|i| line(i, 1) + "\n").collect();
        std::fs::write(&path, &text).unwrap();
        let before = read(&path, u64::MAX).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "small: left alone"
        );
        let compacted = read(&path, 100).unwrap();
        assert_eq!(compacted, before);
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(after.lines().count(), 1);
        // vireo appends after it; the totals go on from there.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all((line(1000, 0) + "\n").as_bytes())
            .unwrap();
        let t = read(&path, u64::MAX).unwrap();
        assert_eq!(t.disks()[0].read_bytes, (0..20).sum::<u64>() + 1000);
        assert!(
            read(&dir.path().join("none"), 1)
                .unwrap()
                .disks()
                .is_empty()
        );
    }
}
