//! `vireo --api-sock PATH [--config-file FILE]` and `vireo --no-api --config-file FILE`:
//! the VM configured through Firecracker's API (or a config file), on the main thread.
//! With no arguments at all, as Firecracker, the API is served on
//! [`DEFAULT_API_SOCK`]; Firecracker's other flags are taken too (`cli::FirecrackerArgs`).
//!
//! The `api` thread (crate `api-server`) parses requests and sends each as a
//! [`api::action::VmmAction`]; this thread owns the [`Controller`] and waits in one epoll
//! for three things: an action (the API's eventfd), a stop of the running VM (its stop
//! eventfd, added at InstanceStart) and SIGTERM/SIGINT (an eventfd the handlers write). It
//! also writes metrics every minute once they are configured. When the guest stops, the
//! process exits as `vireo run` does.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use api::firecracker::FullVmConfig;
use vmm::vcpu::StopReason;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::controller::Controller;
use crate::metrics::StartReference;
use crate::{EXIT_BUILD_FAILED, EXIT_OK, exit_code, report, signals, terminal};

/// Where Firecracker serves its API when given no `--api-sock`.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

const API: u64 = 0;
const SIGNAL: u64 = 1;
const STOP: u64 = 2;

/// What the top-level flags asked for.
pub struct ApiOptions {
    /// Serve the API here.
    pub api_sock: Option<PathBuf>,
    /// Configure (and boot) from this file first.
    pub config_file: Option<PathBuf>,
    /// Instance id reported by `GET /`.
    pub id: String,
    /// Largest request body.
    pub payload_limit: usize,
    /// Write metrics here from the start (`--metrics-path`).
    pub metrics_path: Option<PathBuf>,
    /// Firecracker's boot timer device (`--boot-timer`).
    pub boot_timer: bool,
    /// What the startup metrics count from (the jailer's `--start-time-us`...).
    pub start: StartReference,
    /// The metadata service's document at start (`--metadata`).
    pub metadata: Option<PathBuf>,
    /// The largest metadata service document (`--mmds-size-limit`).
    pub mmds_size_limit: usize,
}

impl ApiOptions {
    /// The options of a command line without a subcommand: the API on
    /// [`DEFAULT_API_SOCK`] unless `--api-sock` or `--no-api` says otherwise.
    pub fn from_cli(cli: crate::cli::Cli) -> Self {
        let fc = cli.firecracker;
        let api_sock = match cli.api_sock {
            Some(path) => Some(path),
            None if cli.no_api => None,
            None => Some(PathBuf::from(DEFAULT_API_SOCK)),
        };
        Self {
            api_sock,
            config_file: cli.config_file,
            id: cli.id,
            payload_limit: cli.http_api_max_payload_size,
            mmds_size_limit: fc.mmds_size_limit.unwrap_or(cli.http_api_max_payload_size),
            metadata: fc.metadata,
            metrics_path: fc.metrics_path,
            boot_timer: fc.boot_timer,
            start: StartReference {
                wall_us: fc.start_time_us,
                cpu_us: fc.start_time_cpu_us,
                parent_cpu_us: fc.parent_cpu_time_us.unwrap_or(0),
            },
        }
    }
}

/// The API mode's flags go without a subcommand; those asking for what Vireo lacks
/// (seccomp filters, PCI) are refused rather than ignored.
pub fn check_flags(cli: &crate::cli::Cli) -> Result<(), String> {
    let api_flags =
        cli.api_sock.is_some() || cli.config_file.is_some() || cli.no_api || cli.firecracker.any();
    if cli.command.is_some() && api_flags {
        return Err(
            "--api-sock, --config-file, --no-api and Firecracker's flags go without a subcommand"
                .into(),
        );
    }
    match cli.firecracker.refusal() {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vireo: {message}");
    ExitCode::from(EXIT_BUILD_FAILED)
}

/// Removes the API socket when the process is done with it.
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Run until the guest stops (or, before it starts, until SIGTERM/SIGINT).
pub fn run(opts: ApiOptions) -> ExitCode {
    let mut controller = Controller::new(opts.id, opts.mmds_size_limit);
    controller.set_boot_timer(opts.boot_timer);
    if let Some(path) = &opts.metadata {
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
            .and_then(|value| controller.put_mmds(value).map_err(|e| e.to_string()));
        if let Err(e) = loaded {
            return fail(format!("--metadata {}: {e}", path.display()));
        }
    }
    if let Some(path) = &opts.metrics_path {
        let config = api::firecracker::Metrics {
            metrics_path: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        if let Err(e) = controller.metrics.configure(&config) {
            return fail(format!("--metrics-path: {e}"));
        }
    }
    if let Some(path) = &opts.config_file {
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                config_from_file_text(&text).map_err(|e| format!("{}: {e}", path.display()))
            })
            .and_then(|config| controller.load(config).map_err(|e| e.to_string()));
        if let Err(e) = loaded {
            return fail(e);
        }
    }
    let api = match &opts.api_sock {
        Some(path) => match api_server::start(path, opts.payload_limit) {
            Ok(api) => Some(api),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let _socket = SocketFile(opts.api_sock.clone());
    controller.metrics.mark_api_ready(&opts.start);
    if opts.config_file.is_some()
        && let Err(e) = controller.handle(api::action::VmmAction::InstanceStart)
    {
        return fail(e);
    }

    let setup = || -> std::io::Result<(Epoll, EventFd)> {
        let epoll = Epoll::new()?;
        let signal = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            signal.as_raw_fd(),
            EpollEvent::new(EventSet::IN, SIGNAL),
        )?;
        if let Some(api) = &api {
            epoll.ctl(
                ControlOperation::Add,
                api.event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, API),
            )?;
        }
        Ok((epoll, signal))
    };
    let (epoll, signal) = match setup() {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot set up the main loop: {e}")),
    };
    if let Err(e) = signals::install_stop_handlers(&signal) {
        log::warn!("SIGTERM/SIGINT will not stop the VM cleanly: {e}");
    }

    let mut watching_stop = false;
    let mut terminal = None;
    let mut events = [EpollEvent::default(); 4];
    let interval_ms = crate::metrics::FLUSH_INTERVAL.as_millis() as i32;
    loop {
        if !watching_stop && let Some(vmm) = controller.vmm() {
            let fd = vmm.stop_signal().eventfd().as_raw_fd();
            if let Err(e) = epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, STOP),
            ) {
                return fail(format!("cannot watch the VM: {e}"));
            }
            watching_stop = true;
            // Raw mode only once the VM runs, so errors before print on a sane terminal.
            if controller.console_on_stdio() {
                terminal = terminal::RawMode::enter();
            }
        }
        let timeout = if controller.metrics.is_configured() {
            interval_ms
        } else {
            -1
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(format!("main loop: {e}")),
        };
        if n == 0 {
            if let Err(e) = controller.flush_metrics() {
                log::warn!("metrics: {e}");
            }
            continue;
        }
        for ev in &events[..n] {
            match ev.data() {
                API => {
                    let Some(api) = &api else { continue };
                    let _ = api.event.read();
                    while let Ok(action) = api.requests.try_recv() {
                        let result = controller.handle(action);
                        if api.responses.send(result).is_err() {
                            log::warn!("the API thread is gone");
                        }
                    }
                }
                SIGNAL => {
                    let _ = signal.read();
                    let sig = signals::pending_signal().unwrap_or(libc::SIGTERM);
                    match controller.vmm() {
                        Some(vmm) => vmm.stop_signal().stop(StopReason::Signal(sig)),
                        None => {
                            log::info!("stopped on signal {sig} before the VM started");
                            return ExitCode::from(EXIT_OK);
                        }
                    }
                }
                _ => {
                    let Some(vmm) = controller.take_vmm() else {
                        continue;
                    };
                    let reason = vmm.wait();
                    // The last line counts what the devices did since the previous one.
                    let counters = vmm.metrics().clone();
                    // A guest that resets while paused is not possible; a stop while
                    // paused (a signal) must still end the paused vCPUs: shutdown does.
                    vmm.shutdown();
                    drop(terminal.take());
                    if let Err(e) = controller.flush_metrics_of(&counters) {
                        log::warn!("metrics: {e}");
                    }
                    report(&reason);
                    return ExitCode::from(exit_code(&reason));
                }
            }
        }
    }
}

/// A `--config-file`'s configuration; its `cpu-config` may be, as in Firecracker, the
/// path of a JSON file holding the template (read here, relative to the working
/// directory).
fn config_from_file_text(text: &str) -> Result<FullVmConfig, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut value) if value.get("cpu-config").is_some_and(|v| v.is_string()) => {
            api::cpu_template::inline_template_file(&mut value, |p| std::fs::read_to_string(p))?;
            FullVmConfig::from_json(&value.to_string())
        }
        // Errors are reported against the file's own text (its lines and columns).
        _ => FullVmConfig::from_json(text),
    }
}
