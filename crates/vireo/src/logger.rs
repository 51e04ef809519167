//! The logger: `vireo[thread]: level: message` on stderr by default; `PUT /logger`, the
//! `logger` of a `--config-file` or the flags `--log-path`, `--show-level`, ... send it
//! to a file or named pipe instead, with Firecracker's options (level, show_level,
//! show_log_origin, module filter) and in its shape, which log scrapers parse:
//! `2026-12-04T12:00:00.123456789 [ID:THREAD:LEVEL:FILE:LINE] message` (the level and the
//! origin only when asked for; the time is local).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use api::firecracker::{LogLevel, Logger};
use log::{LevelFilter, Log, Metadata, Record};

/// Where and how lines go once configured through the API.
struct Destination {
    out: Option<std::fs::File>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

static DESTINATION: Mutex<Option<Destination>> = Mutex::new(None);
/// The instance id (`--id`) each configured line carries.
static INSTANCE_ID: Mutex<String> = Mutex::new(String::new());

/// Set the instance id the lines carry (Firecracker's `--id`).
pub fn set_instance_id(id: &str) {
    *INSTANCE_ID.lock().unwrap_or_else(|e| e.into_inner()) = id.to_string();
}

struct VireoLogger;

impl Log for VireoLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        let mut dest = DESTINATION.lock().unwrap_or_else(|e| e.into_inner());
        let Some(d) = dest.as_mut() else {
            // In raw terminal mode a bare \n does not return the carriage.
            eprint!(
                "vireo[{name}]: {}: {}\r\n",
                record.level().as_str().to_lowercase(),
                record.args()
            );
            return;
        };
        if let Some(module) = &d.module
            && !record
                .module_path()
                .unwrap_or("")
                .starts_with(module.as_str())
        {
            return;
        }
        let id = INSTANCE_ID.lock().map(|id| id.clone()).unwrap_or_default();
        let mut line = format!("{} [{id}:{name}", local_timestamp());
        if d.show_level {
            line.push_str(&format!(":{}", record.level()));
        }
        if d.show_origin {
            line.push_str(&format!(
                ":{}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!("] {}\n", record.args()));
        match d.out.as_mut() {
            // A full pipe drops the line rather than blocking the thread that logs.
            Some(file) => {
                let _ = file.write_all(line.as_bytes());
            }
            None => eprint!("{}", line.replace('\n', "\r\n")),
        }
    }

    fn flush(&self) {}
}

/// Now as local time, `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn`.
fn local_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `secs` and writes only into `tm`; both live across the
    // call (the reentrant variant shares no static buffer between threads).
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_nanos()
    )
}

/// Install the logger at `level`.
pub fn init(level: LevelFilter) {
    static LOGGER: VireoLogger = VireoLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Off => LevelFilter::Off,
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warning => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    }
}

/// Apply `PUT /logger`: open the destination (created if missing, appended to; a named
/// pipe is opened non-blocking) and set the level (default Info).
pub fn configure(config: &Logger) -> Result<(), String> {
    let out = match &config.log_path {
        None => None,
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("cannot open the log file {path}: {e}"))?,
        ),
    };
    *DESTINATION.lock().unwrap_or_else(|e| e.into_inner()) = Some(Destination {
        out,
        show_level: config.show_level.unwrap_or(false),
        show_origin: config.show_log_origin.unwrap_or(false),
        module: config.module.clone(),
    });
    log::set_max_level(level_filter(config.level.unwrap_or(LogLevel::Info)));
    Ok(())
}
