//! vireoctl's command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// vireoctl: manage Vireo VMs through vireod.
///
/// A VM is defined once from a TOML file (`define`), then started, stopped, watched and
/// resized by name. vireod runs one `vireo` process per running VM; vireoctl only talks
/// to vireod's REST API on its Unix socket.
///
/// EXAMPLES
///
///   vireoctl create web1.toml              define web1 and start it
///
///   vireoctl list                          every VM: state, vCPUs, memory, CPU, uptime
///
///   vireoctl console web1                  the serial console (detach: Ctrl+])
///
///   vireoctl set web1 --cpu-quota 50% --memory-max 1G
///
///   vireoctl shutdown web1 --timeout 30    Ctrl+Alt+Del, killed after 30 s
///
///   vireoctl snapshot create web1 before   then `snapshot revert web1 before`
///
/// EXIT STATUS
///
///   0 done; 1 vireod refused (the message says why: 404 unknown VM, 409 the VM's state
///   or another request in the way, 422 a bad definition); 2 usage; 3 vireod unreachable.
#[derive(Parser, Debug)]
#[command(
    name = "vireoctl",
    version,
    about,
    long_about,
    propagate_version = true
)]
pub struct Cli {
    /// vireod's API socket [default: /run/vireo/vireod.sock as root, else
    /// $XDG_RUNTIME_DIR/vireo/vireod.sock].
    #[arg(long, global = true, value_name = "PATH", env = "VIREOD_SOCKET")]
    pub socket: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A VM by name.
#[derive(Args, Debug)]
pub struct Name {
    /// The VM's name.
    pub name: String,
}

/// How long a guest gets to shut down.
#[derive(Args, Debug)]
pub struct Timeout {
    /// Seconds before the VM is killed [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Define a VM from a TOML file (it stays stopped).
    Define {
        /// The definition file.
        file: PathBuf,
    },
    /// Define a VM from a TOML file and start it.
    Create {
        /// The definition file.
        file: PathBuf,
    },
    /// Edit a VM's definition in $EDITOR (in force at its next start).
    Edit(Name),
    /// List the VMs: name, state, vCPUs, memory, CPU %, uptime.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a VM in full: state, process, last exit, definition.
    Info {
        /// The VM's name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start a defined VM.
    Start(Name),
    /// Shut a VM down gracefully (Ctrl+Alt+Del), killing it after a timeout.
    Shutdown {
        /// The VM's name.
        name: String,
        /// The grace period.
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Shut a VM down gracefully and start it again.
    Reboot {
        /// The VM's name.
        name: String,
        /// The grace period.
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Kill a VM's vireo at once (the guest gets no warning).
    Destroy(Name),
    /// Pause a VM's vCPUs.
    Pause(Name),
    /// Resume a paused VM.
    Resume(Name),
    /// Remove a stopped VM's definition and files.
    Undefine {
        /// The VM's name.
        name: String,
        /// Also delete the disk images its definition names.
        #[arg(long)]
        remove_storage: bool,
    },
    /// Start a VM when vireod starts (or not, with --disable).
    Autostart {
        /// The VM's name.
        name: String,
        /// Do not start it with vireod.
        #[arg(long)]
        disable: bool,
    },
    /// Attach to a VM's serial console; detach with Ctrl+]. Several may watch at once.
    Console {
        /// The VM's name.
        name: String,
        /// Show this many bytes of what the console printed before.
        #[arg(long, default_value_t = 4096, value_name = "BYTES")]
        history: usize,
    },
    /// Follow vireod's events (state changes, restarts, resource changes).
    Events {
        /// Start after this event id (0: from the first).
        #[arg(long, default_value_t = 0, value_name = "ID")]
        since: i64,
        /// Print what there is and stop.
        #[arg(long)]
        no_follow: bool,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a VM's resources: live, in its definition, or both (as virsh does:
    /// without --live or --config, the running VM if it runs, else the definition).
    Set(Box<SetArgs>),
    /// CPU, memory and balloon figures of a running VM.
    Stats {
        /// The VM's name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Snapshots of a running VM: its memory, devices and writable disks, as they were.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `vireoctl snapshot ...`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot of a running or paused VM (a running one is paused meanwhile).
    Create {
        /// The VM's name.
        name: String,
        /// The snapshot's name [default: the time, as 20261204-031500].
        snapshot: Option<String>,
    },
    /// A VM's snapshots, oldest first.
    List {
        /// The VM's name.
        name: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Give the VM back the guest of a snapshot: its vireo (if running) is killed, its
    /// disks are copied back and a new vireo resumes the snapshot.
    Revert {
        /// The VM's name.
        name: String,
        /// The snapshot's name.
        snapshot: String,
    },
    /// Delete a snapshot and its files.
    Delete {
        /// The VM's name.
        name: String,
        /// The snapshot's name.
        snapshot: String,
    },
}

/// `vireoctl set`.
#[derive(Args, Debug)]
pub struct SetArgs {
    /// The VM's name.
    pub name: String,
    /// Change the running VM.
    #[arg(long)]
    pub live: bool,
    /// Change the stored definition.
    #[arg(long)]
    pub config: bool,
    /// CPU weight, 1..=10000 (100 is the default share).
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<u32>,
    /// CPU time, in percent of one CPU ("50%", "200%"), or "none".
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<String>,
    /// Host CPUs for the VM and its vCPU threads ("0-1,4"), or "none".
    #[arg(long, value_name = "LIST")]
    pub cpuset: Option<String>,
    /// Hard memory limit of the VM's process ("1G"), or "none".
    #[arg(long, value_name = "SIZE")]
    pub memory_max: Option<String>,
    /// Memory above which the VM is reclaimed ("768M"), or "none".
    #[arg(long, value_name = "SIZE")]
    pub memory_high: Option<String>,
    /// I/O weight, 1..=10000.
    #[arg(long, value_name = "N")]
    pub io_weight: Option<u32>,
    /// Most processes and threads.
    #[arg(long, value_name = "N")]
    pub pids_max: Option<u32>,
    /// The process's nice value, -20..=19.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub nice: Option<i32>,
    /// Bytes per second the VM may read from each host device holding one of its disks
    /// ("100M"), or "none".
    #[arg(long, value_name = "SIZE")]
    pub io_read_bps: Option<String>,
    /// Bytes per second it may write ("50M"), or "none".
    #[arg(long, value_name = "SIZE")]
    pub io_write_bps: Option<String>,
    /// Read operations per second ("2000"), or "none".
    #[arg(long, value_name = "N")]
    pub io_read_iops: Option<String>,
    /// Write operations per second ("1000"), or "none".
    #[arg(long, value_name = "N")]
    pub io_write_iops: Option<String>,
    /// Memory to take from the guest through its balloon ("256M"; live only).
    #[arg(long, value_name = "SIZE")]
    pub balloon: Option<String>,
}
