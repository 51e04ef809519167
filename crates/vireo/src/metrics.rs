//! Metrics: one JSON object per line, written to the `metrics_path` of `PUT /metrics` on
//! `FlushMetrics` and every [`FLUSH_INTERVAL`]. Counters are what happened since the
//! previous line (as Firecracker's); state values are as of the line.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How often metrics are written without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Where the lines go, and what they carry besides the numbers.
struct Sink {
    file: std::fs::File,
    emit_id: bool,
    properties: Option<BTreeMap<String, String>>,
}

/// The counters and the destination.
#[derive(Default)]
pub struct Metrics {
    sink: Option<Sink>,
    requests: u64,
    failures: u64,
    pauses: u64,
    resumes: u64,
}

/// Per-VM values added to a line by the controller.
#[derive(Debug, Default, Serialize)]
pub struct VmValues {
    /// `Not started`, `Running` or `Paused`.
    pub state: &'static str,
    /// Milliseconds since InstanceStart.
    pub uptime_ms: u64,
    /// The balloon's counters since start, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonValues>,
}

/// The balloon's counters (cumulative).
#[derive(Debug, Default, Serialize)]
#[allow(missing_docs)]
pub struct BalloonValues {
    pub target_mib: u64,
    pub actual_mib: u64,
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub released_bytes: u64,
    pub stats_updates: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    utc_timestamp_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a BTreeMap<String, String>>,
    api_server: ApiValues,
    vmm: &'a VmValues,
}

#[derive(Serialize)]
struct ApiValues {
    requests: u64,
    failures: u64,
    pause_count: u64,
    resume_count: u64,
}

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

    /// Count one API request and whether it failed.
    pub fn count_request(&mut self, failed: bool) {
        self.requests += 1;
        self.failures += u64::from(failed);
    }

    /// Count a pause (`true`) or resume.
    pub fn count_pause(&mut self, pause: bool) {
        if pause {
            self.pauses += 1;
        } else {
            self.resumes += 1;
        }
    }

    /// Write one line (if configured) and start the counters again.
    pub fn flush(&mut self, id: &str, vm: &VmValues) -> Result<(), String> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(());
        };
        let line = Line {
            utc_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            id: sink.emit_id.then_some(id),
            properties: sink.properties.as_ref(),
            api_server: ApiValues {
                requests: self.requests,
                failures: self.failures,
                pause_count: self.pauses,
                resume_count: self.resumes,
            },
            vmm: vm,
        };
        let mut text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
        text.push('\n');
        sink.file
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write the metrics: {e}"))?;
        self.requests = 0;
        self.failures = 0;
        self.pauses = 0;
        self.resumes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_counters_since_the_last_one() {
        let path = std::env::temp_dir().join(format!("vireo-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut m = Metrics::default();
        assert!(
            m.flush("x", &VmValues::default()).is_ok(),
            "unconfigured: no-op"
        );
        let config = api::firecracker::Metrics {
            metrics_path: path.display().to_string(),
            emit_id: Some(true),
            properties: Some([("k".to_string(), "v".to_string())].into()),
        };
        m.configure(&config).unwrap();
        assert!(m.configure(&config).is_err(), "only once");
        m.count_request(false);
        m.count_request(true);
        m.flush("vm1", &VmValues::default()).unwrap();
        m.flush("vm1", &VmValues::default()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["api_server"]["requests"], 2);
        assert_eq!(lines[0]["api_server"]["failures"], 1);
        assert_eq!(lines[1]["api_server"]["requests"], 0);
        assert_eq!(lines[0]["id"], "vm1");
        assert_eq!(lines[0]["properties"]["k"], "v");
        std::fs::remove_file(&path).unwrap();
    }
}
