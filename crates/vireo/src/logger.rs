//! A small stderr logger: `vireo: <level>: <message>`, with the thread name for vCPU threads.

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        // In raw terminal mode a bare \n does not return the carriage.
        eprint!(
            "vireo[{name}]: {}: {}\r\n",
            record.level().as_str().to_lowercase(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Install the logger at `level`.
pub fn init(level: LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
