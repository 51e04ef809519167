//! The VMs' lives: define, start, watch, stop, restart by policy, re-adopt after a
//! vireod restart. Everything the API does to a VM goes through here.
//!
//! - **One change at a time per VM.** Each VM has an operation lock; a request that
//!   finds it held is refused with a 409 at once (never queued behind a 60 s shutdown),
//!   and the store's state transitions check the state they start from, so even two
//!   vireods on one database cannot half-start a VM.
//! - **One `vireo` per running VM**, spawned detached ([`crate::process`]), with its
//!   API socket, console socket, config and log under `STATE/vms/NAME/`, in its own
//!   cgroup ([`crate::cgroups`]). A watcher thread per VM waits on its pidfd; when it
//!   ends without being asked, the VM is `crashed` (or `stopped` if it exited 0: the guest
//!   shut down) with its exit status and last console lines, and restarted per its
//!   policy with a backoff of 1 s doubling to 60 s (reset once a run lasted 60 s).
//! - **vireod can die at any point**: VMs keep running (nothing ties them to vireod),
//!   and [`Manager::adopt`] at start-up finds each VM's `vireo` by its API socket on its
//!   command line, checks it answers, and takes it back; a VM whose `vireo` ended
//!   meanwhile is marked so (and restarted per policy); one left half-started is killed
//!   and marked stopped.

mod snapshots;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manager_types::api::{
    ApiError, DefineRequest, ErrorCode, SetRequest, SetResult, VmInfo, VmStats, VmSummary,
};
use manager_types::client::Client;
use manager_types::{Definition, Resources, RestartPolicy};

use crate::cgroups::{self, Cgroups, VmCgroup};
use crate::console::Console;
use crate::device_counters;
use crate::process::{self, VmPaths, VmmProcess};
use crate::store::{Store, StoreError, VmRecord, VmState};

/// How long a new `vireo` may take to answer its API.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default grace period of a shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Console lines kept with a VM that ended.
const LAST_LINES: usize = 20;
/// Longest wait between two restarts by policy.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

const ACTIVE: &[VmState] = &[
    VmState::Starting,
    VmState::Running,
    VmState::Paused,
    VmState::Stopping,
];
const INACTIVE: &[VmState] = &[VmState::Stopped, VmState::Crashed];

/// vireod's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database and the VMs' files live.
    pub state_dir: PathBuf,
    /// The `vireo` binary to run.
    pub vireo: PathBuf,
    /// The cgroup (relative to each hierarchy's root) the VMs' cgroups go under; `None`:
    /// no cgroups (resources other than nice are refused).
    pub cgroup_base: Option<String>,
}

/// A running `vireo`, as its watcher and the operations see it.
struct Run {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    api: Client,
    started: Instant,
    /// Set by shutdown, destroy and reboot: the end is no crash.
    stop_requested: bool,
    cgroup: Option<VmCgroup>,
    /// The resources in force (the definition's, changed by `set --live`).
    resources: Resources,
    /// The disk images it runs with (where its I/O limits apply).
    disks: Vec<PathBuf>,
}

/// A `vireo` whose guest runs, not yet recorded.
struct Launched {
    run: Run,
    /// `Some`: reap it for its exit status.
    child: Option<Child>,
}

/// What a new `vireo` process runs.
enum Boot<'a> {
    /// The definition's kernel, from its start.
    Fresh,
    /// A snapshot's state and memory, resumed or left paused.
    Snapshot {
        state: &'a Path,
        memory: &'a Path,
        resume: bool,
    },
}

/// The API calls that load a snapshot into a `vireo` started without a configuration,
/// its console on `console` (vireod's, not the one saved with it).
fn snapshot_load(
    paths: &process::VmPaths,
    state: &Path,
    memory: &Path,
    resume: bool,
) -> Vec<(&'static str, &'static str, String)> {
    let metrics = serde_json::json!({ "metrics_path": paths.metrics_file() });
    let serial = serde_json::json!({ "socket": paths.console_socket() });
    let load = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": { "backend_type": "File", "backend_path": memory },
        "resume_vm": resume,
    });
    vec![
        ("PUT", "/metrics", metrics.to_string()),
        ("PUT", "/serial", serial.to_string()),
        ("PUT", "/snapshot/load", load.to_string()),
    ]
}

/// One VM's runtime side.
struct Slot {
    name: String,
    op: Mutex<()>,
    run: Mutex<Option<Run>>,
    ended: Condvar,
    console: Arc<Console>,
    restarts: AtomicU32,
    /// Bumped by every operation: a pending restart by policy checks it did not change.
    generation: AtomicU64,
    /// CPU use in hundredths of a percent, sampled every 2 s; u32::MAX: not known.
    cpu_centi: AtomicU32,
    /// The file a long operation is writing, and what it will weigh (`GET` shows it).
    progress: Mutex<Option<snapshots::Tracked>>,
}

/// The manager.
pub struct Manager {
    config: Config,
    store: Mutex<Store>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    newest_event: Mutex<i64>,
    event_added: Condvar,
    cgroups: Option<Cgroups>,
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Duplicate(_) | StoreError::SnapshotExists(..) | StoreError::Conflict { .. } => {
            ApiError::new(ErrorCode::Conflict, e.to_string())
        }
        StoreError::NotFound(_) | StoreError::NoSnapshot(..) => {
            ApiError::new(ErrorCode::NotFound, e.to_string())
        }
        _ => ApiError::new(ErrorCode::Internal, e.to_string()),
    }
}

fn internal(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, what.to_string())
}

fn conflict(what: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Conflict, what)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The files a definition names must be there before anything starts.
fn check_files(file: &str, def: &Definition) -> Result<(), ApiError> {
    let mut paths: Vec<(String, &Path)> = vec![("machine.kernel".into(), def.vm.kernel.as_path())];
    if let Some(initrd) = &def.vm.initrd {
        paths.push(("machine.initrd".into(), initrd));
    }
    for (i, d) in def.vm.disks.iter().enumerate() {
        paths.push((format!("machine.disks[{i}]"), &d.path));
    }
    for (field, path) in paths {
        if let Err(e) = std::fs::metadata(path) {
            return Err(ApiError::new(
                ErrorCode::InvalidDefinition,
                format!("{file}: {field}: {}: {e}", path.display()),
            ));
        }
    }
    Ok(())
}

fn parse_stored(rec: &VmRecord) -> Result<Definition, ApiError> {
    Definition::parse(Path::new(&rec.name), &rec.definition)
        .map_err(|e| ApiError::new(ErrorCode::InvalidDefinition, e.to_string()))
}

impl Manager {
    /// Open the state dir (created if needed) and its database.
    pub fn open(config: Config) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(config.state_dir.join("vms"))
            .map_err(|e| format!("cannot create {}: {e}", config.state_dir.display()))?;
        let store = Store::open(&config.state_dir.join("vireod.db")).map_err(|e| e.to_string())?;
        let newest = store.last_event_id().map_err(|e| e.to_string())?;
        let cgroups = match &config.cgroup_base {
            None => None,
            Some(base) => match cgroups::Layout::detect() {
                Ok(layout) => Some(Cgroups::new(layout, base)),
                Err(e) => {
                    log::warn!("no cgroups ({e}): CPU, memory, I/O and pids limits are off");
                    None
                }
            },
        };
        let manager = Arc::new(Self {
            config,
            store: Mutex::new(store),
            slots: Mutex::new(HashMap::new()),
            newest_event: Mutex::new(newest),
            event_added: Condvar::new(),
            cgroups,
        });
        let sampler = Arc::downgrade(&manager);
        let _ = std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || sample_cpu(sampler));
        Ok(manager)
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Run `f` on the store and wake event followers.
    fn store<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, ApiError> {
        let mut store = lock(&self.store);
        let result = f(&mut store).map_err(store_error);
        if let Ok(id) = store.last_event_id() {
            let mut newest = lock(&self.newest_event);
            if id > *newest {
                *newest = id;
                self.event_added.notify_all();
            }
        }
        result
    }

    fn record(&self, name: &str) -> Result<VmRecord, ApiError> {
        self.store(|s| s.get(name))?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no VM named '{name}'")))
    }

    fn paths(&self, name: &str) -> VmPaths {
        VmPaths::new(&self.config.state_dir, name)
    }

    /// The VM's slot (made on first use).
    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        Arc::clone(slots.entry(name.to_string()).or_insert_with(|| {
            Arc::new(Slot {
                name: name.to_string(),
                op: Mutex::new(()),
                run: Mutex::new(None),
                ended: Condvar::new(),
                console: Console::new(&self.paths(name).console_log()),
                restarts: AtomicU32::new(0),
                generation: AtomicU64::new(0),
                cpu_centi: AtomicU32::new(u32::MAX),
                progress: Mutex::new(None),
            })
        }))
    }

    /// The slot of a defined VM, its operation lock taken (409 if busy).
    fn begin<'a>(slot: &'a Slot) -> Result<MutexGuard<'a, ()>, ApiError> {
        let guard = slot.op.try_lock().map_err(|_| {
            conflict(format!(
                "VM '{}' is busy: another request is changing it; try again",
                slot.name
            ))
        })?;
        slot.generation.fetch_add(1, Ordering::SeqCst);
        Ok(guard)
    }

    /// The VM's console.
    pub fn console(&self, name: &str) -> Result<Arc<Console>, ApiError> {
        self.record(name)?;
        Ok(Arc::clone(&self.slot(name).console))
    }

    // ---- definitions ---------------------------------------------------------------

    /// Define a VM (and start it if asked).
    pub fn define(self: &Arc<Self>, req: &DefineRequest) -> Result<VmInfo, ApiError> {
        let file = req.file.as_deref().unwrap_or("definition.toml");
        let def = Definition::parse(Path::new(file), &req.definition)
            .map_err(|e| ApiError::new(ErrorCode::InvalidDefinition, e.to_string()))?;
        check_files(file, &def)?;
        self.store(|s| s.define(&def.name, &req.definition, def.autostart))?;
        if req.start {
            self.start(&def.name)?;
        }
        self.info(&def.name)
    }

    /// Replace a VM's definition (in force at its next start).
    pub fn redefine(&self, name: &str, req: &DefineRequest) -> Result<VmInfo, ApiError> {
        let file = req.file.as_deref().unwrap_or("definition.toml");
        let def = Definition::parse(Path::new(file), &req.definition)
            .map_err(|e| ApiError::new(ErrorCode::InvalidDefinition, e.to_string()))?;
        if def.name != name {
            return Err(ApiError::new(
                ErrorCode::InvalidDefinition,
                format!(
                    "{file}: name: '{}' is not '{name}': a VM cannot be renamed",
                    def.name
                ),
            ));
        }
        check_files(file, &def)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        self.store(|s| s.redefine(name, &req.definition, def.autostart))?;
        self.info(name)
    }

    /// Remove a stopped VM, its files and, with `remove_storage`, its disk images.
    pub fn undefine(&self, name: &str, remove_storage: bool) -> Result<(), ApiError> {
        let rec = self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        let def = parse_stored(&rec).ok();
        self.store(|s| s.undefine(name))?;
        if remove_storage && let Some(def) = def {
            for disk in &def.vm.disks {
                if let Err(e) = std::fs::remove_file(&disk.path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    log::warn!("{name}: cannot remove {}: {e}", disk.path.display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.paths(name).dir);
        lock(&self.slots).remove(name);
        Ok(())
    }

    /// Start VM `name` at vireod's start, or not.
    pub fn set_autostart(&self, name: &str, enabled: bool) -> Result<VmInfo, ApiError> {
        let rec = self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        let text = crate::edit::set_key(&rec.definition, None, "autostart", Some(enabled.into()))
            .map_err(internal)?;
        self.store(|s| s.redefine(name, &text, enabled))?;
        self.info(name)
    }

    // ---- what is shown -------------------------------------------------------------

    fn summary(&self, rec: &VmRecord) -> VmSummary {
        let def = parse_stored(rec).ok();
        let slot = lock(&self.slots).get(&rec.name).cloned();
        let running = slot.as_ref().and_then(|s| {
            lock(&s.run)
                .as_ref()
                .map(|r| (r.started.elapsed().as_secs(), r.pid))
        });
        let cpu = slot
            .as_ref()
            .map(|s| s.cpu_centi.load(Ordering::Relaxed))
            .filter(|&c| c != u32::MAX && running.is_some())
            .map(|c| f64::from(c) / 100.0);
        VmSummary {
            name: rec.name.clone(),
            state: rec.state.to_string(),
            vcpus: def.as_ref().map_or(0, |d| d.vm.vcpus),
            memory_mib: def.as_ref().map_or(0, |d| d.vm.memory_bytes >> 20),
            cpu_percent: cpu,
            uptime_s: running.map(|r| r.0),
            pid: rec.pid,
            autostart: rec.autostart,
        }
    }

    /// Every VM.
    pub fn list(&self) -> Result<Vec<VmSummary>, ApiError> {
        let records = self.store(|s| s.list())?;
        Ok(records.iter().map(|r| self.summary(r)).collect())
    }

    /// One VM in full.
    pub fn info(&self, name: &str) -> Result<VmInfo, ApiError> {
        let rec = self.record(name)?;
        let def = parse_stored(&rec).ok();
        let slot = self.slot(name);
        let cgroup = lock(&slot.run)
            .as_ref()
            .and_then(|r| r.cgroup.as_ref().map(|c| c.describe()));
        Ok(VmInfo {
            summary: self.summary(&rec),
            restart: def
                .as_ref()
                .map_or(RestartPolicy::No, |d| d.restart)
                .to_string(),
            exit_status: rec.exit_status.clone(),
            last_console: rec
                .last_console
                .as_deref()
                .map(|t| t.lines().map(str::to_string).collect())
                .unwrap_or_default(),
            restarts: slot.restarts.load(Ordering::Relaxed),
            api_socket: rec.api_socket.clone(),
            cgroup,
            progress: lock(&slot.progress).as_ref().map(snapshots::Tracked::now),
            definition: rec.definition,
        })
    }

    /// Events after `since`, at most `limit`.
    pub fn events(
        &self,
        since: i64,
        limit: u32,
    ) -> Result<Vec<manager_types::api::Event>, ApiError> {
        self.store(|s| s.events_since(since, limit))
    }

    /// Wait until an event newer than `since` exists, at most `timeout`.
    pub fn wait_event(&self, since: i64, timeout: Duration) {
        let newest = lock(&self.newest_event);
        let _ = self
            .event_added
            .wait_timeout_while(newest, timeout, |n| *n <= since);
    }

    // ---- start ---------------------------------------------------------------------

    /// Start a stopped or crashed VM; returns once its guest runs.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<VmInfo, ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        slot.restarts.store(0, Ordering::Relaxed);
        self.start_locked(&slot)?;
        self.info(name)
    }

    fn start_locked(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<(), ApiError> {
        self.boot_locked(slot, &Boot::Fresh)
    }

    /// Start a new `vireo` for an inactive VM, from its definition or a snapshot.
    fn boot_locked(self: &Arc<Self>, slot: &Arc<Slot>, boot: &Boot<'_>) -> Result<(), ApiError> {
        let name = &slot.name;
        let rec = self.record(name)?;
        if rec.state.is_active() {
            return Err(conflict(format!("VM '{name}' is {}", rec.state)));
        }
        let def = parse_stored(&rec)?;
        check_files(name, &def)?;
        self.store(|s| s.transition(name, INACTIVE, VmState::Starting, None, None))?;
        let target = match boot {
            Boot::Snapshot { resume: false, .. } => VmState::Paused,
            _ => VmState::Running,
        };
        match self.launch(slot, &def, boot) {
            Ok(Launched { run, mut child }) => {
                let socket = run.api.path().display().to_string();
                let pid = run.pid;
                if let Err(e) = self.store(|s| {
                    s.transition(
                        name,
                        &[VmState::Starting],
                        target,
                        Some((pid, &socket)),
                        None,
                    )
                }) {
                    // The database refused (full disk...): do not leave a VM it cannot
                    // account for.
                    let _ = process::pidfd_signal(&run.pidfd, libc::SIGKILL);
                    if let Some(c) = child.as_mut() {
                        let _ = c.wait();
                    }
                    slot.console.disconnect();
                    self.drop_cgroup(name);
                    return Err(e);
                }
                let pidfd = Arc::clone(&run.pidfd);
                *lock(&slot.run) = Some(run);
                // Watched only once it is recorded running: its end, however soon,
                // finds it so.
                self.watch(slot, pidfd, child);
                Ok(())
            }
            Err((e, status)) => {
                let last = slot.console.last_lines(LAST_LINES).join("\n");
                let status = status.unwrap_or_else(|| "not started".into());
                self.store(|s| {
                    s.ended(name, &[VmState::Starting], VmState::Stopped, &status, &last)
                })?;
                Err(e)
            }
        }
    }

    /// Spawn `vireo` for the VM and wait until its guest runs. On failure the process
    /// is gone and the error says why (with how the process ended, if it did).
    fn launch(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        def: &Definition,
        boot: &Boot<'_>,
    ) -> Result<Launched, (ApiError, Option<String>)> {
        let name = &slot.name;
        let paths = self.paths(name);
        let fail = |what: String| (internal(what), None);
        std::fs::create_dir_all(&paths.dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", paths.dir.display())))?;
        for stale in [
            paths.api_socket(),
            paths.console_socket(),
            paths.metrics_file(),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        let mut vm = def.vm.clone();
        vm.serial = api::SerialConfig::Socket(paths.console_socket());
        let json = api::firecracker::FullVmConfig::from_vm_config(&vm)
            .map(|mut c| {
                c.metrics = Some(api::firecracker::Metrics {
                    metrics_path: paths.metrics_file().display().to_string(),
                    emit_id: None,
                    properties: None,
                });
                c
            })
            .and_then(|c| serde_json::to_string_pretty(&c).map_err(|e| e.to_string()))
            .map_err(|e| {
                (
                    ApiError::new(ErrorCode::InvalidDefinition, format!("{name}: {e}")),
                    None,
                )
            })?;
        write_file(&paths.config_file(), json.as_bytes()).map_err(fail)?;

        let cgroup = self
            .make_cgroup(name, &def.resources, &disk_paths(def))
            .map_err(|e| (e, None))?;
        let join = match &cgroup {
            Some(cg) => Some(
                cg.join_fds()
                    .map_err(|e| fail(format!("cgroup of '{name}': {e}")))?,
            ),
            None => None,
        };
        let spawned = process::spawn(process::SpawnSpec {
            vireo: &self.config.vireo,
            name,
            api_socket: &paths.api_socket(),
            config_file: matches!(boot, Boot::Fresh)
                .then_some(paths.config_file())
                .as_deref(),
            log_file: &paths.vmm_log(),
            nice: def.resources.nice,
            join: join.map(|j| {
                Box::new(move || j.join_self())
                    as Box<dyn Fn() -> std::io::Result<()> + Send + Sync>
            }),
        });
        let VmmProcess {
            pid,
            pidfd,
            mut child,
        } = match spawned {
            Ok(p) => p,
            Err(e) => {
                self.drop_cgroup(name);
                return Err(fail(format!(
                    "cannot run {}: {e}",
                    self.config.vireo.display()
                )));
            }
        };
        let pidfd = Arc::new(pidfd);
        let alive = {
            let pidfd = Arc::clone(&pidfd);
            move || !process::wait_exit(&pidfd, Some(Duration::ZERO)).unwrap_or(true)
        };
        slot.console
            .connect(paths.console_socket(), START_TIMEOUT, alive);

        let api = Client::new(paths.api_socket()).with_timeout(Some(Duration::from_secs(10)));
        let deadline = Instant::now() + START_TIMEOUT;
        let (want, mut load) = match boot {
            Boot::Fresh => ("Running", None),
            Boot::Snapshot {
                state,
                memory,
                resume,
            } => (
                if *resume { "Running" } else { "Paused" },
                Some(snapshot_load(&paths, state, memory, *resume)),
            ),
        };
        loop {
            if process::wait_exit(&pidfd, Some(Duration::from_millis(10))).unwrap_or(false) {
                let status = child
                    .take()
                    .and_then(|mut c| c.wait().ok())
                    .map_or_else(|| "ended".into(), process::describe);
                self.drop_cgroup(name);
                slot.console.disconnect();
                let why = process::tail(&paths.vmm_log(), 5).join("\n");
                return Err((
                    ApiError::new(
                        ErrorCode::InvalidDefinition,
                        format!("vireo could not start '{name}' ({status}):\n{why}"),
                    ),
                    Some(status),
                ));
            }
            if let Ok(reply) = api.call("GET", "/", None)
                && reply.status == 200
            {
                // A snapshot is loaded once the API answers: its console first.
                if let Some(calls) = load.take() {
                    for (method, path, body) in &calls {
                        if let Err(e) = vmm_call(&api, method, path, body) {
                            let status = self.abandon(slot, &pidfd, child.take());
                            return Err((e, status));
                        }
                    }
                    continue;
                }
                if instance_state(&reply.body).as_deref() == Some(want) {
                    break;
                }
            }
            if Instant::now() > deadline {
                let status = self.abandon(slot, &pidfd, child.take());
                return Err((
                    internal(format!(
                        "vireo for '{name}' did not answer within {} s: killed",
                        START_TIMEOUT.as_secs()
                    )),
                    status,
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(cpus) = &def.resources.cpuset
            && let Err(e) = cgroups::pin_vcpu_threads(pid, cpus)
        {
            log::warn!("{name}: vCPU threads not pinned: {e}");
        }
        Ok(Launched {
            run: Run {
                pid,
                pidfd,
                api,
                started: Instant::now(),
                stop_requested: false,
                cgroup,
                resources: def.resources.clone(),
                disks: disk_paths(def),
            },
            child,
        })
    }

    /// Kill a `vireo` that `launch` gives up on and undo what was set up for it; how it
    /// ended, when it was this vireod's child.
    fn abandon(&self, slot: &Slot, pidfd: &OwnedFd, child: Option<Child>) -> Option<String> {
        let _ = process::pidfd_signal(pidfd, libc::SIGKILL);
        let status = child.and_then(|mut c| c.wait().ok()).map(process::describe);
        self.drop_cgroup(&slot.name);
        slot.console.disconnect();
        status
    }

    fn make_cgroup(
        &self,
        name: &str,
        r: &Resources,
        disks: &[PathBuf],
    ) -> Result<Option<VmCgroup>, ApiError> {
        let invalid =
            |e: String| ApiError::new(ErrorCode::InvalidDefinition, format!("{name}: {e}"));
        let io = crate::resources::io_limits(r, &refs(disks)).map_err(invalid)?;
        let Some(cgroups) = &self.cgroups else {
            if resources_need_cgroup(r) {
                return Err(ApiError::new(
                    ErrorCode::InvalidDefinition,
                    format!("{name}: resources: this vireod has no cgroups to set them"),
                ));
            }
            return Ok(None);
        };
        let cg = cgroups
            .create(name)
            .map_err(|e| internal(format!("cgroup of '{name}': {e}")))?;
        if let Err(e) = cg.apply(r, &io) {
            let _ = cgroups.remove(name);
            return Err(ApiError::new(
                ErrorCode::InvalidDefinition,
                format!("{name}: resources: {e}"),
            ));
        }
        Ok(Some(cg))
    }

    fn drop_cgroup(&self, name: &str) {
        if let Some(cgroups) = &self.cgroups
            && let Err(e) = cgroups.remove(name)
        {
            log::warn!("{name}: cgroup not removed: {e}");
        }
    }

    // ---- the watcher ---------------------------------------------------------------

    /// Wait for the VM's `vireo` to end on a new thread, then record it.
    fn watch(self: &Arc<Self>, slot: &Arc<Slot>, pidfd: Arc<OwnedFd>, child: Option<Child>) {
        let manager = Arc::clone(self);
        let name = slot.name.clone();
        let slot = Arc::clone(slot);
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{name}"))
            .spawn(move || {
                let _ = process::wait_exit(&pidfd, None);
                let status = match child {
                    Some(mut c) => c.wait().map_or_else(|_| "ended".into(), process::describe),
                    None => manager.adopted_exit_status(&slot.name),
                };
                manager.ended(&slot, &status);
            });
        if let Err(e) = spawned {
            log::error!("{name}: cannot watch its VMM: {e}");
        }
    }

    /// A re-adopted process is not vireod's child: its status cannot be reaped. vireo
    /// logs how the VM stopped; a process that logged nothing was killed.
    fn adopted_exit_status(&self, name: &str) -> String {
        let tail = process::tail(&self.paths(name).vmm_log(), 3).join("\n");
        if tail.contains("guest reset: VM stopped") || tail.contains("stopped on signal") {
            "exit 0".into()
        } else {
            "ended (not vireod's child: exit status unknown)".into()
        }
    }

    fn ended(self: &Arc<Self>, slot: &Arc<Slot>, status: &str) {
        let name = &slot.name;
        let run = lock(&slot.run).take();
        slot.console.disconnect();
        let Some(run) = run else { return };
        self.drop_cgroup(name);
        let _ = std::fs::remove_file(self.paths(name).api_socket());
        let _ = std::fs::remove_file(self.paths(name).console_socket());
        let clean = status == "exit 0";
        let to = if run.stop_requested || clean {
            VmState::Stopped
        } else {
            VmState::Crashed
        };
        let last = slot.console.last_lines(LAST_LINES).join("\n");
        if let Err(e) = self.store(|s| s.ended(name, ACTIVE, to, status, &last)) {
            log::error!("{name}: its end ({status}) is not recorded: {}", e.message);
        }
        log::info!("{name}: vireo ended ({status}): {to}");
        slot.ended.notify_all();
        if !run.stop_requested {
            self.consider_restart(slot, clean, run.started.elapsed());
        }
    }

    fn consider_restart(self: &Arc<Self>, slot: &Arc<Slot>, clean: bool, ran: Duration) {
        let Ok(rec) = self.record(&slot.name) else {
            return;
        };
        let Ok(def) = parse_stored(&rec) else { return };
        let wanted = match def.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Always => true,
        };
        if !wanted {
            return;
        }
        if ran >= HEALTHY_RUN {
            slot.restarts.store(0, Ordering::Relaxed);
        }
        let n = slot.restarts.fetch_add(1, Ordering::Relaxed);
        let backoff = Duration::from_secs(1u64 << n.min(6)).min(MAX_BACKOFF);
        let generation = slot.generation.load(Ordering::SeqCst);
        let _ = self.store(|s| {
            s.note(
                &slot.name,
                "restart",
                &format!(
                    "policy {}: restart {} in {} s",
                    def.restart,
                    n + 1,
                    backoff.as_secs()
                ),
            )
        });
        let manager = Arc::clone(self);
        let slot = Arc::clone(slot);
        let _ = std::thread::Builder::new()
            .name(format!("restart-{}", slot.name))
            .spawn(move || {
                std::thread::sleep(backoff);
                let _op = lock(&slot.op);
                // Someone acted on the VM meanwhile: their word wins.
                if slot.generation.load(Ordering::SeqCst) != generation {
                    return;
                }
                if let Err(e) = manager.start_locked(&slot) {
                    log::warn!("{}: restart by policy failed: {}", slot.name, e.message);
                    let _ = manager.store(|s| s.note(&slot.name, "restart", &e.message));
                }
            });
    }

    // ---- stop, pause -----------------------------------------------------------------

    /// The running VM's API client and pidfd.
    fn running(slot: &Slot) -> Result<(Client, Arc<OwnedFd>), ApiError> {
        lock(&slot.run)
            .as_ref()
            .map(|r| (r.api.clone(), Arc::clone(&r.pidfd)))
            .ok_or_else(|| conflict(format!("VM '{}' is not running", slot.name)))
    }

    /// Mark the run's end as asked for and wait for it, at most `timeout`.
    fn wait_stopped(slot: &Slot, timeout: Duration) -> bool {
        let run = lock(&slot.run);
        let (run, _) = slot
            .ended
            .wait_timeout_while(run, timeout, |r| r.is_some())
            .unwrap_or_else(|e| e.into_inner());
        run.is_none()
    }

    fn request_stop(slot: &Slot) {
        if let Some(r) = lock(&slot.run).as_mut() {
            r.stop_requested = true;
        }
    }

    /// Ask the guest to shut down (Ctrl+Alt+Del), kill it after `timeout`.
    pub fn shutdown(self: &Arc<Self>, name: &str, timeout: Duration) -> Result<VmInfo, ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        self.shutdown_locked(&slot, timeout)?;
        self.info(name)
    }

    fn shutdown_locked(&self, slot: &Slot, timeout: Duration) -> Result<(), ApiError> {
        let name = &slot.name;
        let (api, pidfd) = Self::running(slot)?;
        let state = self.record(name)?.state;
        if state == VmState::Paused {
            vmm_call(&api, "PATCH", "/vm", r#"{"state":"Resumed"}"#)?;
        }
        self.store(|s| {
            s.transition(
                name,
                &[VmState::Running, VmState::Paused],
                VmState::Stopping,
                None,
                None,
            )
        })?;
        Self::request_stop(slot);
        if let Err(e) = vmm_call(
            &api,
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#,
        ) {
            log::warn!("{name}: Ctrl+Alt+Del not sent ({}): killing it", e.message);
        } else if Self::wait_stopped(slot, timeout) {
            return Ok(());
        } else {
            log::info!("{name}: not down after {} s: killing it", timeout.as_secs());
        }
        let _ = process::pidfd_signal(&pidfd, libc::SIGKILL);
        if Self::wait_stopped(slot, Duration::from_secs(30)) {
            Ok(())
        } else {
            Err(internal(format!("VM '{name}' did not end after SIGKILL")))
        }
    }

    /// Kill the VM's `vireo` at once.
    pub fn destroy(&self, name: &str) -> Result<VmInfo, ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        let (_, pidfd) = Self::running(&slot)?;
        Self::request_stop(&slot);
        process::pidfd_signal(&pidfd, libc::SIGKILL).map_err(internal)?;
        if !Self::wait_stopped(&slot, Duration::from_secs(30)) {
            return Err(internal(format!("VM '{name}' did not end after SIGKILL")));
        }
        self.info(name)
    }

    /// Shut down (as `shutdown`) and start again.
    pub fn reboot(self: &Arc<Self>, name: &str, timeout: Duration) -> Result<VmInfo, ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        self.shutdown_locked(&slot, timeout)?;
        self.start_locked(&slot)?;
        self.info(name)
    }

    /// Pause (`true`) or resume the vCPUs.
    pub fn pause(&self, name: &str, pause: bool) -> Result<VmInfo, ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        let (api, _) = Self::running(&slot)?;
        let (from, to, body) = if pause {
            (VmState::Running, VmState::Paused, r#"{"state":"Paused"}"#)
        } else {
            (VmState::Paused, VmState::Running, r#"{"state":"Resumed"}"#)
        };
        let state = self.record(name)?.state;
        if state != from {
            return Err(conflict(format!("VM '{name}' is {state}")));
        }
        vmm_call(&api, "PATCH", "/vm", body)?;
        self.store(|s| s.transition(name, &[from], to, None, None))?;
        self.info(name)
    }

    // ---- resources -----------------------------------------------------------------

    /// `vireoctl set`: change resources live, in the definition, or both.
    pub fn set(&self, name: &str, req: &SetRequest) -> Result<SetResult, ApiError> {
        let rec = self.record(name)?;
        let slot = self.slot(name);
        let _op = Self::begin(&slot)?;
        let running = lock(&slot.run).is_some();
        let live = req.live.unwrap_or(running && req.config != Some(true));
        let config = req.config.unwrap_or(!live);
        if live && !running {
            return Err(conflict(format!(
                "VM '{name}' is not running: use --config"
            )));
        }
        if !live && !config {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "neither live nor config",
            ));
        }
        if config && req.balloon.is_some() && !live {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "the balloon target is a live setting only",
            ));
        }
        let edits = crate::resources::edits(req)?;
        let mut changes = Vec::new();
        let mut new_text = None;
        if config {
            let mut text = rec.definition.clone();
            for (key, value) in &edits {
                text = crate::edit::set_key(&text, Some("resources"), key, value.clone())
                    .map_err(internal)?;
            }
            Definition::parse(Path::new(name), &text)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
            new_text = Some(text);
        }
        if live {
            let mut run = lock(&slot.run);
            let run = run
                .as_mut()
                .ok_or_else(|| conflict(format!("VM '{name}' is not running")))?;
            let mut resources = run.resources.clone();
            crate::resources::apply_edits(&mut resources, &edits)?;
            if resources != run.resources {
                match &run.cgroup {
                    Some(cg) => {
                        let bad = |e: String| ApiError::new(ErrorCode::BadRequest, e);
                        let io = crate::resources::io_limits(&resources, &refs(&run.disks))
                            .map_err(bad)?;
                        cg.apply(&resources, &io).map_err(|e| bad(e.to_string()))?;
                    }
                    None if resources_need_cgroup(&resources) => {
                        return Err(ApiError::new(
                            ErrorCode::BadRequest,
                            "this vireod has no cgroups: only nice can change",
                        ));
                    }
                    None => {}
                }
                if resources.nice != run.resources.nice {
                    cgroups::set_nice(run.pid, resources.nice.unwrap_or(0))
                        .map_err(|e| internal(format!("nice: {e}")))?;
                }
                if resources.cpuset != run.resources.cpuset {
                    let cpus = resources.cpuset.clone().unwrap_or_else(all_cpus);
                    cgroups::pin_vcpu_threads(run.pid, &cpus)
                        .map_err(|e| internal(format!("vCPU pinning: {e}")))?;
                }
                run.resources = resources;
            }
            if let Some(balloon) = &req.balloon {
                let bytes = api::parse_size(balloon)
                    .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("balloon: {e}")))?;
                let body = format!(r#"{{"amount_mib":{}}}"#, bytes >> 20);
                vmm_call(&run.api, "PATCH", "/balloon", &body)?;
                changes.push(format!("balloon={balloon}"));
            }
        }
        for (key, value) in &edits {
            changes.push(format!(
                "{key}={}",
                value
                    .as_ref()
                    .map_or("none".into(), |v| v.to_string().trim().to_string())
            ));
        }
        if let Some(text) = new_text {
            self.store(|s| s.redefine(name, &text, rec.autostart))?;
        }
        let detail = format!(
            "{}{}{}",
            changes.join(" "),
            if live { " (live)" } else { "" },
            if config { " (config)" } else { "" }
        );
        self.store(|s| s.note(name, "resources", &detail))?;
        Ok(SetResult { live, config })
    }

    /// CPU, memory and balloon figures of a running VM.
    pub fn stats(&self, name: &str) -> Result<VmStats, ApiError> {
        self.record(name)?;
        let slot = self.slot(name);
        let guard = lock(&slot.run);
        let run = guard
            .as_ref()
            .ok_or_else(|| conflict(format!("VM '{name}' is not running")))?;
        let mut stats = VmStats::default();
        match run.cgroup.as_ref().map(VmCgroup::stats) {
            Some(Ok(cg)) => {
                stats.cpu_time_us = cg.cpu_usage_usec;
                stats.memory_current = cg.memory_current;
            }
            _ => {
                let ticks = process::cpu_ticks(run.pid).unwrap_or(0);
                stats.cpu_time_us = ticks * 1_000_000 / process::ticks_per_second();
            }
        }
        let centi = slot.cpu_centi.load(Ordering::Relaxed);
        stats.cpu_percent = (centi != u32::MAX).then(|| f64::from(centi) / 100.0);
        let api = run.api.clone();
        drop(guard);
        if let Ok(reply) = api.call("GET", "/balloon/statistics", None)
            && reply.status == 200
        {
            stats.balloon = serde_json::from_str(&reply.body).ok();
        }
        // A VM whose vireo cannot flush (an older one) still has what it wrote before.
        let flush = r#"{"action_type": "FlushMetrics"}"#;
        match api.call("PUT", "/actions", Some(flush)) {
            Ok(reply) if reply.status == 204 => {}
            Ok(reply) => log::debug!("{name}: FlushMetrics: {} {}", reply.status, reply.body),
            Err(e) => log::debug!("{name}: FlushMetrics: {e}"),
        }
        let metrics = self.paths(name).metrics_file();
        match device_counters::read(&metrics, device_counters::COMPACT_AT) {
            Ok(totals) => {
                stats.disks = totals.disks();
                stats.nics = totals.nics();
            }
            Err(e) => log::warn!("{name}: {e}"),
        }
        Ok(stats)
    }

    /// The running VMs' pids and names (for metrics).
    pub fn running_pids(&self) -> Vec<(String, u32)> {
        lock(&self.slots)
            .values()
            .filter_map(|s| lock(&s.run).as_ref().map(|r| (s.name.clone(), r.pid)))
            .collect()
    }

    // ---- vireod's own start --------------------------------------------------------

    /// Take back the VMs whose `vireo` still runs, record those that ended while vireod
    /// was away, then start the autostart VMs that are stopped.
    pub fn adopt(self: &Arc<Self>) -> Result<(), ApiError> {
        let records = self.store(|s| s.list())?;
        for rec in &records {
            let slot = self.slot(&rec.name);
            let paths = self.paths(&rec.name);
            let socket = paths.api_socket();
            let found = process::find_by_socket(&socket);
            match found {
                Some(pid) => self.adopt_one(&slot, rec, pid),
                None if rec.state.is_active() => {
                    let (to, status) = match rec.state {
                        VmState::Starting => (
                            VmState::Stopped,
                            "never started (vireod stopped during its start)".to_string(),
                        ),
                        // As the watcher decides (`ended`): a stop asked for or a clean
                        // exit (the guest shut down) is stopped, anything else crashed.
                        asked => {
                            let status = self.adopted_exit_status(&rec.name);
                            let stopped = asked == VmState::Stopping || status == "exit 0";
                            let to = if stopped {
                                VmState::Stopped
                            } else {
                                VmState::Crashed
                            };
                            (to, status)
                        }
                    };
                    let last = slot.console.last_lines(LAST_LINES).join("\n");
                    self.store(|s| s.ended(&rec.name, ACTIVE, to, &status, &last))?;
                    self.drop_cgroup(&rec.name);
                    // Not asked to stop: the restart policy decides (`always` restarts a
                    // clean exit too).
                    if !matches!(rec.state, VmState::Starting | VmState::Stopping) {
                        let clean = status == "exit 0";
                        self.consider_restart(&slot, clean, Duration::ZERO);
                    }
                }
                None => {}
            }
        }
        for rec in self.store(|s| s.list())? {
            if rec.autostart
                && rec.state == VmState::Stopped
                && let Err(e) = self.start(&rec.name)
            {
                log::warn!("{}: autostart failed: {}", rec.name, e.message);
            }
        }
        Ok(())
    }

    fn adopt_one(self: &Arc<Self>, slot: &Arc<Slot>, rec: &VmRecord, pid: u32) {
        let name = &rec.name;
        let paths = self.paths(name);
        let api = Client::new(paths.api_socket()).with_timeout(Some(Duration::from_secs(10)));
        let pidfd = match process::pidfd_open(pid) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                log::warn!("{name}: its vireo {pid} vanished while adopting it: {e}");
                return;
            }
        };
        // One still booting (vireod died during its start) gets the start's patience.
        let deadline = Instant::now() + START_TIMEOUT;
        let state = loop {
            let state = api
                .call("GET", "/", None)
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| instance_state(&r.body));
            let ended = process::wait_exit(&pidfd, Some(Duration::ZERO)).unwrap_or(true);
            if state.as_deref().is_some_and(|s| s != "Not started")
                || ended
                || Instant::now() > deadline
            {
                break state;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let to = match state.as_deref() {
            Some("Running") => VmState::Running,
            Some("Paused") => VmState::Paused,
            other => {
                // Half-started (or hung): what a start that was cut short leaves.
                log::warn!("{name}: its vireo {pid} is not running a VM ({other:?}): killed");
                let _ = process::pidfd_signal(&pidfd, libc::SIGKILL);
                let _ = process::wait_exit(&pidfd, Some(Duration::from_secs(10)));
                let _ = self.store(|s| {
                    s.ended(
                        name,
                        ACTIVE,
                        VmState::Stopped,
                        "killed: found half-started",
                        "",
                    )
                });
                self.drop_cgroup(name);
                return;
            }
        };
        let socket = paths.api_socket().display().to_string();
        let from: Vec<VmState> = ACTIVE.iter().chain(INACTIVE).copied().collect();
        if let Err(e) = self.store(|s| s.transition(name, &from, to, Some((pid, &socket)), None)) {
            log::error!("{name}: cannot record its re-adoption: {}", e.message);
            return;
        }
        let def = parse_stored(rec).ok();
        let cgroup = self.cgroups.as_ref().and_then(|c| c.open(name).ok());
        let started = process::start_ticks(pid)
            .zip(process::uptime_seconds())
            .map(|(ticks, up)| {
                let age = up - ticks as f64 / process::ticks_per_second() as f64;
                Instant::now()
                    .checked_sub(Duration::from_secs_f64(age.max(0.0)))
                    .unwrap_or_else(Instant::now)
            })
            .unwrap_or_else(Instant::now);
        *lock(&slot.run) = Some(Run {
            pid,
            pidfd: Arc::clone(&pidfd),
            api,
            started,
            stop_requested: rec.state == VmState::Stopping,
            cgroup,
            disks: def.as_ref().map(disk_paths).unwrap_or_default(),
            resources: def.map(|d| d.resources).unwrap_or_default(),
        });
        let alive = {
            let pidfd = Arc::clone(&pidfd);
            move || !process::wait_exit(&pidfd, Some(Duration::ZERO)).unwrap_or(true)
        };
        slot.console
            .connect(paths.console_socket(), Duration::from_secs(5), alive);
        let _ = self.store(|s| s.note(name, "adopted", &format!("vireo pid {pid}")));
        log::info!("{name}: re-adopted its vireo (pid {pid}, {to})");
        self.watch(slot, pidfd, None);
    }
}

/// The definition's disk images.
fn disk_paths(def: &Definition) -> Vec<PathBuf> {
    def.vm.disks.iter().map(|d| d.path.clone()).collect()
}

fn refs(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).collect()
}

/// Whether resources other than nice are set (they need a cgroup).
fn resources_need_cgroup(r: &Resources) -> bool {
    let Resources { nice: _, .. } = r;
    r.cpu_weight.is_some()
        || r.cpu_quota_percent.is_some()
        || r.cpuset.is_some()
        || r.memory_max.is_some()
        || r.memory_high.is_some()
        || r.io_weight.is_some()
        || r.pids_max.is_some()
        || r.io_limits.any()
}

fn all_cpus() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("0-{}", n - 1)
}

/// `state` of Firecracker's `GET /` body.
fn instance_state(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("state")?
        .as_str()
        .map(str::to_string)
}

/// A request to a VM's `vireo` that must succeed.
fn vmm_call(api: &Client, method: &str, path: &str, body: &str) -> Result<(), ApiError> {
    api.call(method, path, Some(body))
        .map_err(|e| internal(format!("the VMM's API: {e}")))?
        .ok()
        .map(|_| ())
        .map_err(|e| match e {
            manager_types::client::ClientError::Api { error, .. } => ApiError::new(
                ErrorCode::Conflict,
                format!("the VMM refused {method} {path}: {}", error.message),
            ),
            e => internal(e),
        })
}

/// Write a file whole (a temporary beside it, then renamed).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Every 2 s, each running VM's CPU use over the last interval.
fn sample_cpu(manager: std::sync::Weak<Manager>) {
    let mut last: HashMap<String, (Instant, u64)> = HashMap::new();
    let tps = process::ticks_per_second() as f64;
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let Some(m) = manager.upgrade() else { return };
        let slots: Vec<Arc<Slot>> = lock(&m.slots).values().cloned().collect();
        drop(m);
        for slot in slots {
            let pid = lock(&slot.run).as_ref().map(|r| r.pid);
            let Some(ticks) = pid.and_then(process::cpu_ticks) else {
                last.remove(&slot.name);
                slot.cpu_centi.store(u32::MAX, Ordering::Relaxed);
                continue;
            };
            let now = Instant::now();
            if let Some((then, before)) = last.insert(slot.name.clone(), (now, ticks)) {
                let secs = now.duration_since(then).as_secs_f64();
                let used = ticks.saturating_sub(before) as f64 / tps;
                let centi = (used / secs * 10_000.0)
                    .round()
                    .min(f64::from(u32::MAX - 1));
                slot.cpu_centi.store(centi as u32, Ordering::Relaxed);
            }
        }
    }
}
