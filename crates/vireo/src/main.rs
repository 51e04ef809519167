//! `vireo`: one process, one virtual machine.
//!
//! `main` parses the command line into an [`api::VmConfig`], hands it to
//! [`vmm::builder::build_and_boot`], then waits for the VM to stop (guest reset, a crash, or
//! SIGTERM/SIGINT), stops every thread, restores the terminal and exits with a code that says
//! how the VM ended (see [`exit_code`]).
//!
//! `vireo vhost-user <device>` instead serves one device model to a vhost-user frontend
//! on a Unix socket until the frontend disconnects (see [`vhost_user`]), and
//! `vireo uffd-handler` serves the memory of a snapshot loaded with the Uffd backend (see
//! [`uffd_handler`]).

mod api_main;
mod cli;
mod controller;
mod logger;
mod metrics;
mod signals;
mod terminal;
mod uffd_handler;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use vmm::vcpu::StopReason;

use cli::{Cli, Command, VhostUserCommand};
use vhost_user_backends::{BlkServed, NetServed, RngServed, Served, Server, VsockServed};

/// The guest reset or powered off the machine; or a signal asked Vireo to stop.
pub(crate) const EXIT_OK: u8 = 0;
/// The VM could not be built (bad config, no KVM, unreadable kernel...).
pub(crate) const EXIT_BUILD_FAILED: u8 = 1;
/// The guest crashed: triple fault, or KVM could not run a vCPU.
const EXIT_GUEST_CRASHED: u8 = 2;

fn main() -> ExitCode {
    metrics::install_panic_counter();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; a bad option is exit 1,
            // as any other configuration error (clap's own code, 2, means a guest crash).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BUILD_FAILED)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    logger::init(cli.log_level.unwrap_or(log::LevelFilter::Warn));
    logger::set_instance_id(&cli.id);
    if let Err(e) = api_main::check_flags(&cli) {
        eprintln!("vireo: {e}");
        return ExitCode::from(EXIT_BUILD_FAILED);
    }
    if let Some(config) = cli::logger_config(&cli)
        && let Err(e) = logger::configure(&config)
    {
        eprintln!("vireo: --log-path: {e}");
        return ExitCode::from(EXIT_BUILD_FAILED);
    }
    match cli.command {
        Some(Command::Run(args)) => run(*args),
        Some(Command::ProbeKvm(args)) => probe_kvm(args.iterations),
        Some(Command::VhostUser(device)) => vhost_user(*device),
        Some(Command::UffdHandler(args)) => uffd_handler(&args),
        None => api_main::run(api_main::ApiOptions::from_cli(cli)),
    }
}

/// The exit code for how the VM stopped.
fn exit_code(reason: &StopReason) -> u8 {
    match reason {
        StopReason::GuestReset | StopReason::Signal(_) => EXIT_OK,
        StopReason::TripleFault { .. } | StopReason::VcpuError { .. } => EXIT_GUEST_CRASHED,
    }
}

fn run(args: cli::RunArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vireo: {e}");
            return ExitCode::from(EXIT_BUILD_FAILED);
        }
    };
    let console_on_stdio = config.serial == api::SerialConfig::Stdio;
    signals::warn_if_kvm_is_incomplete(console_on_stdio);

    let vmm = match vmm::builder::build_and_boot(&config) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("vireo: {e}");
            return ExitCode::from(EXIT_BUILD_FAILED);
        }
    };
    // Raw mode only once the VM runs, so errors above print on a sane terminal.
    let terminal = console_on_stdio.then(terminal::RawMode::enter).flatten();
    if let Err(e) = signals::install_stop_handlers(vmm.stop_signal().eventfd()) {
        log::warn!("SIGTERM/SIGINT will not stop the VM cleanly: {e}");
    }

    // A stop signal writes the stop eventfd without a reason: it reads as a reset here.
    let reason = vmm.wait();
    let reason = match signals::pending_signal() {
        Some(signal) if reason == StopReason::GuestReset => StopReason::Signal(signal),
        _ => reason,
    };
    vmm.shutdown();
    drop(terminal);
    report(&reason);
    ExitCode::from(exit_code(&reason))
}

/// Say how the VM ended, on stderr.
fn report(reason: &StopReason) {
    match reason {
        StopReason::GuestReset => log::info!("guest reset: VM stopped"),
        StopReason::Signal(signal) => log::info!("stopped on signal {signal}"),
        StopReason::TripleFault { vcpu, registers } => {
            eprintln!(
                "vireo: guest triple fault on vcpu{vcpu} (KVM shutdown exit); VM stopped\n{registers}"
            );
        }
        StopReason::VcpuError {
            vcpu,
            what,
            registers,
        } => eprintln!("vireo: vcpu{vcpu}: {what}; VM stopped\n{registers}"),
    }
}

/// `vireo probe-kvm`: one line, `kvm=complete|incomplete [missing=INSTRUCTION]
/// speed=hardware|emulated ns_per_iteration=N iterations=N elapsed_us=N`, and for an
/// incomplete KVM the explanation on stderr.
fn probe_kvm(iterations: u32) -> ExitCode {
    use vmm::kvm_probe::{self, Capability};
    let result = vmm::kvm::KvmContext::new()
        .map_err(|e| e.to_string())
        .and_then(|kvm| {
            let capability = kvm_probe::probe_capabilities(kvm.kvm()).map_err(|e| e.to_string())?;
            let speed =
                kvm_probe::probe_guest_speed(kvm.kvm(), iterations).map_err(|e| e.to_string())?;
            Ok((capability, speed))
        });
    match result {
        Ok((capability, speed)) => {
            let verdict = match &capability {
                Capability::Complete => "kvm=complete".to_string(),
                Capability::Incomplete(_) => {
                    eprintln!("vireo: {}", capability.message().unwrap_or_default());
                    format!("kvm=incomplete missing={}", capability.missing_ids())
                }
            };
            let kind = if speed.is_emulated() {
                "emulated"
            } else {
                "hardware"
            };
            println!(
                "{verdict} speed={kind} ns_per_iteration={} iterations={} elapsed_us={}",
                speed.ns_per_iteration(),
                speed.iterations,
                speed.elapsed.as_micros()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vireo: {e}");
            ExitCode::from(EXIT_BUILD_FAILED)
        }
    }
}

/// `vireo uffd-handler`: serve one VMM's guest memory, then print the figures.
fn uffd_handler(args: &cli::UffdHandlerArgs) -> ExitCode {
    match uffd_handler::run(&args.socket, &args.mem_file) {
        Ok(stats) => {
            println!("{}", serde_json::to_string(&stats).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vireo uffd-handler: {e}");
            ExitCode::from(EXIT_BUILD_FAILED)
        }
    }
}

/// `vireo vhost-user <device>`: open the device's backing (disk, TAP, socket), listen on
/// the socket, serve one frontend until it disconnects, remove the socket. Exit 0 then,
/// or on SIGTERM/SIGINT; exit 1 if the device or the socket cannot be set up, or the
/// frontend broke the protocol.
fn vhost_user(command: VhostUserCommand) -> ExitCode {
    let result = match command {
        VhostUserCommand::Blk { socket, disk } => BlkServed::new(&disk)
            .map_err(|e| format!("--disk {}: {e}", disk.path.display()))
            .and_then(|served| serve(&socket.socket, served, &[])),
        VhostUserCommand::Net { socket, net } => NetServed::new(&net)
            .map_err(|e| format!("--net tap={}: {e}", net.tap))
            .and_then(|served| serve(&socket.socket, served, &[])),
        VhostUserCommand::Vsock { socket, vsock } => {
            // The host socket is bound first: a signal must remove it too.
            let host = vsock.socket.clone();
            VsockServed::new(&vsock)
                .map_err(|e| format!("--vsock socket={}: {e}", vsock.socket.display()))
                .and_then(|served| serve(&socket.socket, served, &[host]))
        }
        VhostUserCommand::Rng { socket } => serve(&socket.socket, RngServed, &[]),
    };
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("vireo: {e}");
            ExitCode::from(EXIT_BUILD_FAILED)
        }
    }
}

/// Serve `served` on `socket` until the frontend leaves (or a stop signal arrives, which
/// removes `socket` and the device's own sockets, `also`).
fn serve<S: Served>(socket: &Path, served: S, also: &[PathBuf]) -> Result<(), String> {
    let mut sockets = vec![socket.to_path_buf()];
    sockets.extend_from_slice(also);
    exit_on_stop_signal(sockets)?;
    let server = Server::bind(socket, served).map_err(|e| e.to_string())?;
    server.serve_one().map_err(|e| e.to_string())
}

/// Block SIGTERM and SIGINT in every thread (call before any other thread starts) and
/// wait for them on a thread of their own: on either, remove `sockets` (those still
/// sockets) and exit 0. Nothing else sees the signals, so no blocking call fails with
/// EINTR.
fn exit_on_stop_signal(sockets: Vec<PathBuf>) -> Result<(), String> {
    // SAFETY: sigset_t is plain data; all-zeroes is a valid value, and sigemptyset
    // initialises it below anyway.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own; these calls only write to it and to this
    // thread's signal mask (the old mask is not wanted: a null pointer).
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(format!(
            "cannot block SIGTERM/SIGINT: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut signal = 0;
                // SAFETY: `set` is an initialised sigset_t and `signal` a valid int to
                // write; the signals in `set` are blocked in every thread.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                for socket in &sockets {
                    if std::fs::symlink_metadata(socket)
                        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                    {
                        let _ = std::fs::remove_file(socket);
                    }
                }
                log::info!("stopped on signal {signal}");
                std::process::exit(i32::from(EXIT_OK));
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}
