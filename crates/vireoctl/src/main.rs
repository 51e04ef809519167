//! `vireoctl`: the command line of the Vireo host manager (the virsh of Vireo).

mod cli;
mod console;
mod output;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, SnapshotCommand};
use manager_types::api::{
    AutostartRequest, DefineRequest, Event, SetRequest, SetResult, ShutdownRequest, SnapshotInfo,
    SnapshotRequest, VmInfo, VmStats, VmSummary,
};
use manager_types::client::{Client, ClientError};

/// vireod refused.
const EXIT_REFUSED: u8 = 1;
/// vireod could not be reached.
const EXIT_UNREACHABLE: u8 = 3;

fn default_socket() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/vireo/vireod.sock");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("vireo/vireod.sock")
}

/// A failure, with the exit code it maps to.
struct Failure(u8, String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api { .. } => Failure(EXIT_REFUSED, e.to_string()),
            ClientError::Io { .. } => Failure(
                EXIT_UNREACHABLE,
                format!("cannot reach vireod: {e} (is vireod running? see --socket)"),
            ),
            ClientError::Protocol { .. } => Failure(EXIT_UNREACHABLE, e.to_string()),
        }
    }
}

fn read_definition(file: &Path, start: bool) -> Result<DefineRequest, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure(EXIT_REFUSED, format!("{}: {e}", file.display())))?;
    Ok(DefineRequest {
        definition: text,
        file: Some(file.display().to_string()),
        start,
    })
}

fn vm_path(name: &str, rest: &str) -> String {
    format!("/v1/vms/{name}{rest}")
}

fn action(
    c: &Client,
    name: &str,
    what: &str,
    body: Option<&ShutdownRequest>,
) -> Result<VmInfo, Failure> {
    Ok(c.json("POST", &vm_path(name, &format!("/{what}")), body)?)
}

/// Run `op` (a request on VM `name` that may take a while); meanwhile, on a terminal,
/// a progress bar of what vireod reports it doing, once it has taken over a second.
fn with_progress<T: Send>(c: &Client, name: &str, op: impl FnOnce() -> T + Send) -> T {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return op();
    }
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let job = scope.spawn(op);
        let mut drawn = false;
        while !job.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if started.elapsed() < std::time::Duration::from_secs(1) {
                continue;
            }
            if let Ok(info) = c.json::<VmInfo>("GET", &vm_path(name, ""), None::<&()>)
                && let Some(p) = info.progress
            {
                eprint!("\r{}", output::progress_bar(&p, 30));
                drawn = true;
            }
        }
        if drawn {
            eprint!("\r\x1b[K");
        }
        job.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn snapshot(c: &Client, cmd: SnapshotCommand) -> Result<(), Failure> {
    match cmd {
        SnapshotCommand::Create { name, snapshot } => {
            let snap = snapshot.unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                // "2026-12-04 03:15:00" -> "20261204-031500"
                output::utc(now)
                    .replace('-', "")
                    .replace(' ', "-")
                    .replace(':', "")
            });
            let started = std::time::Instant::now();
            let s: SnapshotInfo = with_progress(c, &name, || {
                c.json(
                    "POST",
                    &vm_path(&name, "/snapshots"),
                    Some(&SnapshotRequest { name: snap }),
                )
            })?;
            println!(
                "{name}: snapshot {} created ({:.1} MiB, {} disk(s), {:.1} s)",
                s.name,
                s.size_bytes as f64 / (1 << 20) as f64,
                s.disks,
                started.elapsed().as_secs_f64()
            );
        }
        SnapshotCommand::List { name, json } => {
            let list: Vec<SnapshotInfo> =
                c.json("GET", &vm_path(&name, "/snapshots"), None::<&()>)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                print!("{}", output::snapshots(&list));
            }
        }
        SnapshotCommand::Revert { name, snapshot } => {
            let info: VmInfo = with_progress(c, &name, || {
                c.json(
                    "POST",
                    &vm_path(&name, &format!("/snapshots/{snapshot}/revert")),
                    None::<&()>,
                )
            })?;
            println!("{name}: reverted to {snapshot}, {}", info.summary.state);
        }
        SnapshotCommand::Delete { name, snapshot } => {
            c.call(
                "DELETE",
                &vm_path(&name, &format!("/snapshots/{snapshot}")),
                None,
            )?
            .ok()?;
            println!("{name}: snapshot {snapshot} deleted");
        }
    }
    Ok(())
}

fn edit(c: &Client, name: &str) -> Result<(), Failure> {
    let info: VmInfo = c.json("GET", &vm_path(name, ""), None::<&()>)?;
    let dir = std::env::temp_dir().join(format!("vireoctl-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Failure(EXIT_REFUSED, e.to_string()))?;
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, &info.definition).map_err(|e| Failure(EXIT_REFUSED, e.to_string()))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .status()
        .map_err(|e| Failure(EXIT_REFUSED, format!("cannot run {editor}: {e}")))?;
    if !status.success() {
        return Err(Failure(
            EXIT_REFUSED,
            format!("{editor} failed; nothing changed"),
        ));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| Failure(EXIT_REFUSED, e.to_string()))?;
    if text == info.definition {
        println!("{name}: unchanged");
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let req = DefineRequest {
        definition: text,
        file: Some(file.display().to_string()),
        start: false,
    };
    match c.json::<VmInfo>("PUT", &vm_path(name, ""), Some(&req)) {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&dir);
            println!("{name}: definition changed (in force at its next start)");
            Ok(())
        }
        Err(e) => Err(Failure(
            EXIT_REFUSED,
            format!(
                "{e}\nnothing changed; your edit is kept in {}",
                file.display()
            ),
        )),
    }
}

fn events(c: &Client, since: i64, follow: bool, json: bool) -> Result<(), Failure> {
    let path = format!("/v1/events?since={since}&follow={follow}");
    let opened = c.clone().with_timeout(None).open("GET", &path, None, &[])?;
    if opened.status != 200 {
        return Err(Failure(
            EXIT_REFUSED,
            format!("vireod answered {}", opened.status),
        ));
    }
    for line in opened.reader.lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        if json {
            println!("{line}");
        } else if let Ok(e) = serde_json::from_str::<Event>(&line) {
            println!("{}", output::event_line(&e));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), Failure> {
    let c = Client::new(cli.socket.unwrap_or_else(default_socket))
        .with_timeout(Some(std::time::Duration::from_secs(300)));
    match cli.command {
        Command::Define { file } => {
            let info: VmInfo = c.json("POST", "/v1/vms", Some(&read_definition(&file, false)?))?;
            println!("{}: defined", info.summary.name);
        }
        Command::Create { file } => {
            let info: VmInfo = c.json("POST", "/v1/vms", Some(&read_definition(&file, true)?))?;
            println!("{}: defined and {}", info.summary.name, info.summary.state);
        }
        Command::Edit(n) => edit(&c, &n.name)?,
        Command::List { json } => {
            let vms: Vec<VmSummary> = c.json("GET", "/v1/vms", None::<&()>)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vms).unwrap_or_default());
            } else {
                print!("{}", output::table(&vms));
            }
        }
        Command::Info { name, json } => {
            let info: VmInfo = c.json("GET", &vm_path(&name, ""), None::<&()>)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).unwrap_or_default()
                );
            } else {
                print!("{}", output::info(&info));
            }
        }
        Command::Start(n) => {
            let info = action(&c, &n.name, "start", None)?;
            println!("{}: {}", n.name, info.summary.state);
        }
        Command::Shutdown { name, timeout } => {
            let body = ShutdownRequest {
                timeout_s: timeout.timeout,
            };
            let info = action(&c, &name, "shutdown", Some(&body))?;
            println!("{name}: {}", info.summary.state);
        }
        Command::Reboot { name, timeout } => {
            let body = ShutdownRequest {
                timeout_s: timeout.timeout,
            };
            let info = action(&c, &name, "reboot", Some(&body))?;
            println!("{name}: {}", info.summary.state);
        }
        Command::Destroy(n) => {
            let info = action(&c, &n.name, "destroy", None)?;
            println!("{}: {}", n.name, info.summary.state);
        }
        Command::Pause(n) => {
            let info = action(&c, &n.name, "pause", None)?;
            println!("{}: {}", n.name, info.summary.state);
        }
        Command::Resume(n) => {
            let info = action(&c, &n.name, "resume", None)?;
            println!("{}: {}", n.name, info.summary.state);
        }
        Command::Undefine {
            name,
            remove_storage,
        } => {
            let query = if remove_storage {
                "?remove_storage=true"
            } else {
                ""
            };
            c.json::<()>("DELETE", &vm_path(&name, query), None::<&()>)?;
            println!("{name}: undefined");
        }
        Command::Autostart { name, disable } => {
            let body = AutostartRequest { enabled: !disable };
            c.json::<VmInfo>("PUT", &vm_path(&name, "/autostart"), Some(&body))?;
            println!(
                "{name}: {}",
                if disable {
                    "not started with vireod"
                } else {
                    "started with vireod"
                }
            );
        }
        Command::Console { name, history } => console::attach(&c, &name, history)?,
        Command::Events {
            since,
            no_follow,
            json,
        } => events(&c, since, !no_follow, json)?,
        Command::Set(a) => {
            let body = SetRequest {
                live: a.live.then_some(true).or(a.config.then_some(false)),
                config: a.config.then_some(true).or(a.live.then_some(false)),
                cpu_weight: a.cpu_weight,
                cpu_quota: a.cpu_quota,
                cpuset: a.cpuset,
                memory_max: a.memory_max,
                memory_high: a.memory_high,
                io_weight: a.io_weight,
                pids_max: a.pids_max,
                nice: a.nice,
                io_read_bps: a.io_read_bps,
                io_write_bps: a.io_write_bps,
                io_read_iops: a.io_read_iops,
                io_write_iops: a.io_write_iops,
                balloon: a.balloon,
            };
            let r: SetResult = c.json("PATCH", &vm_path(&a.name, "/resources"), Some(&body))?;
            let place = match (r.live, r.config) {
                (true, true) => "live and in its definition",
                (true, false) => "live",
                _ => "in its definition",
            };
            println!("{}: changed {place}", a.name);
        }
        Command::Stats { name, json } => {
            let s: VmStats = c.json("GET", &vm_path(&name, "/stats"), None::<&()>)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", output::stats(&s));
            }
        }
        Command::Snapshot(cmd) => snapshot(&c, cmd)?,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "vireoctl",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("vireoctl: {message}");
            ExitCode::from(code)
        }
    }
}
