//! `vireo`: one process, one virtual machine.
//!
//! `main` parses the command line into an [`api::VmConfig`], hands it to
//! [`vmm::builder::build_and_boot`], then waits for the VM to stop (guest reset, a crash, or
//! SIGTERM/SIGINT), stops every thread, restores the terminal and exits with a code that says
//! how the VM ended (see [`exit_code`]).

mod cli;
mod logger;
mod signals;
mod terminal;

use std::process::ExitCode;

use clap::Parser;
use vmm::vcpu::StopReason;

use cli::{Cli, Command};

/// The guest reset or powered off the machine; or a signal asked Vireo to stop.
const EXIT_OK: u8 = 0;
/// The VM could not be built (bad config, no KVM, unreadable kernel...).
const EXIT_BUILD_FAILED: u8 = 1;
/// The guest crashed: triple fault, or KVM could not run a vCPU.
const EXIT_GUEST_CRASHED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger::init(cli.log_level);
    match cli.command {
        Command::Run(args) => run(*args),
        Command::ProbeKvm(args) => probe_kvm(args.iterations),
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
    signals::warn_if_kvm_is_emulated(console_on_stdio);

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

fn probe_kvm(iterations: u32) -> ExitCode {
    let result = vmm::kvm::KvmContext::new()
        .map_err(|e| e.to_string())
        .and_then(|kvm| {
            vmm::kvm::probe_guest_speed(kvm.kvm(), iterations).map_err(|e| e.to_string())
        });
    match result {
        Ok(speed) => {
            let kind = if speed.is_emulated() {
                "emulated"
            } else {
                "hardware"
            };
            println!(
                "kvm={kind} iterations={} elapsed_us={}",
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
