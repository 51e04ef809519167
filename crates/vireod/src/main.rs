//! `vireod`: the Vireo host manager daemon.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use vireod::manager::{Config, Manager};

/// The Vireo host manager: keeps VM definitions, runs one supervised `vireo` process per
/// running VM, and serves the REST API that `vireoctl` uses.
///
/// VMs outlive vireod: stopping or killing it leaves them running, and the next vireod
/// takes them back. One vireod runs per state directory.
///
/// As root the state lives in /var/lib/vireo and the API socket is
/// /run/vireo/vireod.sock; for another user, in $XDG_STATE_HOME/vireo (~/.local/state/vireo)
/// and $XDG_RUNTIME_DIR/vireo/vireod.sock.
#[derive(Parser, Debug)]
#[command(name = "vireod", version, about, long_about)]
struct Args {
    /// Where the database and each VM's files live.
    #[arg(long, value_name = "DIR", env = "VIREOD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The API's Unix socket.
    #[arg(long, value_name = "PATH", env = "VIREOD_SOCKET")]
    socket: Option<PathBuf>,
    /// The `vireo` binary to run [default: beside vireod, else from PATH].
    #[arg(long, value_name = "PATH", env = "VIREOD_VIREO")]
    vireo: Option<PathBuf>,
    /// The cgroup the VMs' cgroups go under, in each hierarchy.
    #[arg(long, value_name = "NAME", default_value = "vireo")]
    cgroup_base: String,
    /// Put VMs in no cgroup (resources other than nice are refused).
    #[arg(long)]
    no_cgroups: bool,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, default_value = "info", env = "VIREOD_LOG", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    text.parse().map_err(|_| {
        format!("invalid log level '{text}': expected off, error, warn, info, debug or trace")
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/vireo");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("vireo")
}

/// The socket vireoctl looks for first, as vireod's default.
fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/vireo/vireod.sock");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("vireo/vireod.sock")
}

fn default_vireo() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("vireo")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vireo"))
}

/// stderr logging; with systemd's journal on stderr (`JOURNAL_STREAM`), lines carry its
/// `<N>` priority prefix instead of a level word.
struct Logger {
    journal: bool,
}

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            format!("<{priority}>{}\n", record.args())
        } else {
            format!("vireod: {} {}\n", record.level(), record.args())
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Hold `STATE/vireod.lock` for the process's life: one vireod per state dir.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join("vireod.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on an fd this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "another vireod is running on {} (it holds {})",
            dir.display(),
            path.display()
        ));
    }
    Ok(file)
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!("{} is in use by a live server", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if log::set_logger(Box::leak(Box::new(Logger { journal }))).is_ok() {
        log::set_max_level(args.log_level);
    }
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let socket = args.socket.unwrap_or_else(default_socket);
    let run = || -> Result<(), String> {
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        let _lock = lock_state_dir(&state_dir)?;
        let manager = Manager::open(Config {
            state_dir: state_dir.clone(),
            vireo: args.vireo.unwrap_or_else(default_vireo),
            cgroup_base: (!args.no_cgroups).then_some(args.cgroup_base),
        })?;
        let listener = bind(&socket)?;
        manager.adopt().map_err(|e| e.message)?;
        log::info!(
            "serving {} (state in {})",
            socket.display(),
            state_dir.display()
        );
        vireod::server::serve(manager, listener);
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
