//! [`VmCgroup::stats`]: CPU time, memory, pids and CPU throttling, read from the
//! cgroup's files.

use std::collections::BTreeMap;

use super::{CgroupError, Kind, VmCgroup, parse_u64, read, read_optional};

/// Figures of a VM's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time used, µs (v2 `cpu.stat` usage_usec, v1 `cpuacct.usage`).
    pub cpu_usage_usec: u64,
    /// Memory charged, bytes (`memory.current`, v1 `memory.usage_in_bytes`).
    pub memory_current: Option<u64>,
    /// Processes and threads (`pids.current`).
    pub pids_current: Option<u64>,
    /// CPU bandwidth throttling, where the cpu controller reports it.
    pub throttling: Option<Throttling>,
}

/// CPU bandwidth throttling counts (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttling {
    /// Periods with runnable threads.
    pub periods: u64,
    /// Periods the group was throttled in.
    pub throttled_periods: u64,
    /// Time throttled, µs.
    pub throttled_usec: u64,
}

impl VmCgroup {
    /// CPU time, memory, pids and throttling. Fails when the CPU time cannot be read (a
    /// v1 host without `cpuacct`); the other figures are `None` where their controller is
    /// missing.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let number = |controller: &str, file: &str| -> Result<Option<u64>, CgroupError> {
            let Some(dir) = self.dir_of(controller) else {
                return Ok(None);
            };
            let path = dir.join(file);
            read_optional(&path)?
                .map(|text| parse_u64(&path, &text))
                .transpose()
        };
        let (cpu_usage_usec, throttling) = match &self.kind {
            Kind::V2 { dir, .. } => {
                let path = dir.join("cpu.stat");
                let stat = keyed(&read(&path)?);
                let usage = stat
                    .get("usage_usec")
                    .copied()
                    .ok_or_else(|| CgroupError::Parse {
                        path: path.clone(),
                        text: "no usage_usec".into(),
                    })?;
                (usage, throttling(&stat, "throttled_usec", 1))
            }
            Kind::V1 { dirs } => {
                let usage_ns =
                    number("cpuacct", "cpuacct.usage")?.ok_or(CgroupError::MissingController {
                        field: "stats",
                        controller: "cpuacct",
                    })?;
                let stat = match dirs.get("cpu") {
                    Some(dir) => read_optional(&dir.join("cpu.stat"))?.map(|t| keyed(&t)),
                    None => None,
                };
                let throttling = stat.and_then(|s| throttling(&s, "throttled_time", 1000));
                (usage_ns / 1000, throttling)
            }
        };
        let memory_file = match self.kind {
            Kind::V2 { .. } => "memory.current",
            Kind::V1 { .. } => "memory.usage_in_bytes",
        };
        Ok(CgroupStats {
            cpu_usage_usec,
            memory_current: number("memory", memory_file)?,
            pids_current: number("pids", "pids.current")?,
            throttling,
        })
    }
}

/// `cpu.stat`'s throttling lines, the time divided by `divisor` to µs.
fn throttling(stat: &BTreeMap<String, u64>, time_key: &str, divisor: u64) -> Option<Throttling> {
    Some(Throttling {
        periods: *stat.get("nr_periods")?,
        throttled_periods: *stat.get("nr_throttled")?,
        throttled_usec: stat.get(time_key)? / divisor,
    })
}

/// `key value` lines (`cpu.stat`).
fn keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}
