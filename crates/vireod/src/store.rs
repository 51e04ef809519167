//! vireod's database: VM definitions, their state and an event log, in SQLite.
//!
//! - One file (`vireod.db` in the state dir), WAL journal, `synchronous = FULL`: a change
//!   that returned is on disk; a `kill -9` in the middle of one leaves the previous state.
//! - One transaction per change, the event that tells of it included: a VM and its
//!   history never disagree.
//! - Schema migrations: `PRAGMA user_version` counts those applied; each runs in its own
//!   transaction; a database written by a newer vireod is refused, not touched.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// The schema, one migration per entry; never edit one that has shipped, add another.
const MIGRATIONS: &[&str] = &[
    // 1: VMs and events.
    "CREATE TABLE vms (
         name        TEXT PRIMARY KEY,
         definition  TEXT NOT NULL,
         state       TEXT NOT NULL,
         autostart   INTEGER NOT NULL,
         pid         INTEGER,
         api_socket  TEXT,
         exit_status TEXT,
         created_at  INTEGER NOT NULL,
         updated_at  INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE events (
         id     INTEGER PRIMARY KEY AUTOINCREMENT,
         at     INTEGER NOT NULL,
         vm     TEXT NOT NULL,
         kind   TEXT NOT NULL,
         detail TEXT NOT NULL
     ) STRICT;
     CREATE INDEX events_by_vm ON events (vm, id);",
    // 2: what the console showed last when a VMM ended.
    "ALTER TABLE vms ADD COLUMN last_console TEXT;",
    // 3: snapshots of running VMs (their files are in the VM's snapshots/ dir).
    "CREATE TABLE snapshots (
         vm         TEXT NOT NULL,
         name       TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         vm_state   TEXT NOT NULL,
         disks      TEXT NOT NULL,
         size_bytes INTEGER NOT NULL,
         PRIMARY KEY (vm, name)
     ) STRICT;",
];

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, a full disk, a corrupt file...).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer vireod.
    #[error("the database is at schema version {found}, newer than this vireod's {known}")]
    FromTheFuture {
        /// The file's version.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
    /// A VM of that name exists already.
    #[error("a VM named '{0}' is already defined")]
    Duplicate(String),
    /// No VM of that name.
    #[error("no VM named '{0}'")]
    NotFound(String),
    /// The VM has a snapshot of that name already.
    #[error("VM '{0}' has a snapshot named '{1}' already")]
    SnapshotExists(String, String),
    /// The VM has no snapshot of that name.
    #[error("VM '{0}' has no snapshot named '{1}'")]
    NoSnapshot(String, String),
    /// The VM's state does not allow the change.
    #[error("VM '{name}' is {state}: {what}")]
    Conflict {
        /// The VM.
        name: String,
        /// Its state.
        state: VmState,
        /// What was refused.
        what: &'static str,
    },
    /// A stored row the store does not understand.
    #[error("database holds an unknown VM state '{0}'")]
    BadState(String),
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Defined, never started or cleanly stopped.
    Stopped,
    /// Its `vireo` process is being started.
    Starting,
    /// Its `vireo` runs the guest.
    Running,
    /// Running, vCPUs paused.
    Paused,
    /// Being shut down.
    Stopping,
    /// Its `vireo` ended without being asked to.
    Crashed,
}

impl VmState {
    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
        }
    }

    /// Whether a `vireo` process may be alive for the VM.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        [
            VmState::Stopped,
            VmState::Starting,
            VmState::Running,
            VmState::Paused,
            VmState::Stopping,
            VmState::Crashed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| StoreError::BadState(s.to_string()))
    }
}

/// A stored VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    /// Its name.
    pub name: String,
    /// The definition's TOML, as the user gave it.
    pub definition: String,
    /// Its state.
    pub state: VmState,
    /// Started with vireod.
    pub autostart: bool,
    /// The `vireo` process, while active.
    pub pid: Option<u32>,
    /// That process's API socket.
    pub api_socket: Option<String>,
    /// How its last process ended (`exit 2`, `signal 9`), if it did.
    pub exit_status: Option<String>,
    /// The console's last lines when it ended (newline-separated).
    pub last_console: Option<String>,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Seconds since the epoch.
    pub updated_at: i64,
}

/// A stored snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The VM.
    pub vm: String,
    /// The snapshot's name.
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// The VM's state when taken (running or paused): what a revert gives back.
    pub vm_state: VmState,
    /// The disks copied with it: (the VM's image, its copy's file name in the snapshot's
    /// directory), one per line as `copy\tpath`.
    pub disks: Vec<(String, String)>,
    /// Bytes of its files.
    pub size_bytes: u64,
}

fn snapshot_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    let disks: String = row.get("disks")?;
    Ok(SnapshotRecord {
        vm: row.get("vm")?,
        name: row.get("name")?,
        created_at: row.get("created_at")?,
        vm_state: row.get("vm_state")?,
        disks: disks
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(copy, path)| (copy.to_string(), path.to_string()))
            .collect(),
        size_bytes: row.get::<_, i64>("size_bytes")?.max(0) as u64,
    })
}

/// An entry of the event log, as the API shows it.
pub use manager_types::api::Event;

/// The open database.
pub struct Store {
    conn: Connection,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A stored state reads as a [`VmState`]; an unknown one is a conversion error carrying
/// [`StoreError::BadState`].
impl rusqlite::types::FromSql for VmState {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: StoreError| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<VmRecord> {
    Ok(VmRecord {
        name: row.get("name")?,
        definition: row.get("definition")?,
        state: row.get("state")?,
        autostart: row.get::<_, i64>("autostart")? != 0,
        pid: row.get("pid")?,
        api_socket: row.get("api_socket")?,
        exit_status: row.get("exit_status")?,
        last_console: row.get("last_console")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

fn log_event(tx: &Transaction<'_>, vm: &str, kind: &str, detail: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO events (at, vm, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now(), vm, kind, detail],
    )?;
    Ok(())
}

impl Store {
    /// Open (or create) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as u32;
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::FromTheFuture { found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as u32 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Add VM `name` with its definition text; refused if the name is taken.
    pub fn define(
        &mut self,
        name: &str,
        definition: &str,
        autostart: bool,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let exists: Option<String> = tx
            .query_row("SELECT name FROM vms WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::Duplicate(name.to_string()));
        }
        let t = now();
        tx.execute(
            "INSERT INTO vms (name, definition, state, autostart, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![
                name,
                definition,
                VmState::Stopped.as_str(),
                autostart as i64,
                t
            ],
        )?;
        log_event(&tx, name, "defined", "")?;
        tx.commit()?;
        Ok(())
    }

    /// Replace VM `name`'s definition (takes effect at its next start).
    pub fn redefine(
        &mut self,
        name: &str,
        definition: &str,
        autostart: bool,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let changed = tx.execute(
            "UPDATE vms SET definition = ?2, autostart = ?3, updated_at = ?4 WHERE name = ?1",
            params![name, definition, autostart as i64, now()],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        log_event(&tx, name, "redefined", "")?;
        tx.commit()?;
        Ok(())
    }

    /// Remove VM `name`; refused while it may have a running process.
    pub fn undefine(&mut self, name: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let state = Self::state_in(&tx, name)?;
        if state.is_active() {
            return Err(StoreError::Conflict {
                name: name.to_string(),
                state,
                what: "stop it before undefining it",
            });
        }
        tx.execute("DELETE FROM vms WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM snapshots WHERE vm = ?1", [name])?;
        log_event(&tx, name, "undefined", "")?;
        tx.commit()?;
        Ok(())
    }

    fn state_in(tx: &Transaction<'_>, name: &str) -> Result<VmState, StoreError> {
        let state: Option<String> = tx
            .query_row("SELECT state FROM vms WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        state
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?
            .parse()
    }

    /// Move VM `name` from a state in `from` to `to`, recording its process (`pid`,
    /// `api_socket`, both cleared when `to` is not active) and how the last one ended.
    /// Refused, changing nothing, when the VM is in none of `from`: the caller lost a race.
    pub fn transition(
        &mut self,
        name: &str,
        from: &[VmState],
        to: VmState,
        process: Option<(u32, &str)>,
        exit_status: Option<&str>,
    ) -> Result<(), StoreError> {
        self.change_state(name, from, to, process, exit_status, None)
    }

    /// As [`transition`](Self::transition) to a state without a process, for a VMM that
    /// ended: how it ended and the console's last lines are kept with the state.
    pub fn ended(
        &mut self,
        name: &str,
        from: &[VmState],
        to: VmState,
        exit_status: &str,
        last_console: &str,
    ) -> Result<(), StoreError> {
        self.change_state(name, from, to, None, Some(exit_status), Some(last_console))
    }

    fn change_state(
        &mut self,
        name: &str,
        from: &[VmState],
        to: VmState,
        process: Option<(u32, &str)>,
        exit_status: Option<&str>,
        last_console: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let state = Self::state_in(&tx, name)?;
        if !from.contains(&state) {
            return Err(StoreError::Conflict {
                name: name.to_string(),
                state,
                what: "another change got there first",
            });
        }
        // An active VM keeps its process unless a new one is given; others have none.
        let (pid, socket): (Option<u32>, Option<String>) = match (to.is_active(), process) {
            (true, Some((pid, socket))) => (Some(pid), Some(socket.to_string())),
            (true, None) => tx.query_row(
                "SELECT pid, api_socket FROM vms WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
            (false, _) => (None, None),
        };
        tx.execute(
            "UPDATE vms SET state = ?2, pid = ?3, api_socket = ?4,
                 exit_status = COALESCE(?5, exit_status),
                 last_console = COALESCE(?7, last_console), updated_at = ?6
             WHERE name = ?1",
            params![
                name,
                to.as_str(),
                pid,
                socket,
                exit_status,
                now(),
                last_console
            ],
        )?;
        let detail = match exit_status {
            Some(e) => format!("{state} -> {to} ({e})"),
            None => format!("{state} -> {to}"),
        };
        log_event(&tx, name, "state", &detail)?;
        tx.commit()?;
        Ok(())
    }

    /// VM `name`, if defined.
    pub fn get(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT * FROM vms WHERE name = ?1", [name], record)
            .optional()?)
    }

    /// Every VM, by name.
    pub fn list(&self) -> Result<Vec<VmRecord>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT * FROM vms ORDER BY name")?;
        let rows = stmt.query_map([], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record an event that changes no VM row (a restart by policy, a resource change).
    pub fn note(&mut self, name: &str, kind: &str, detail: &str) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        log_event(&tx, name, kind, detail)?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// Record a snapshot whose files are written; refused if the VM has one of that name.
    pub fn add_snapshot(&mut self, snap: &SnapshotRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        Self::state_in(&tx, &snap.vm)?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT name FROM snapshots WHERE vm = ?1 AND name = ?2",
                [&snap.vm, &snap.name],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::SnapshotExists(
                snap.vm.clone(),
                snap.name.clone(),
            ));
        }
        let disks: String = snap
            .disks
            .iter()
            .map(|(copy, path)| format!("{copy}\t{path}\n"))
            .collect();
        tx.execute(
            "INSERT INTO snapshots (vm, name, created_at, vm_state, disks, size_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                snap.vm,
                snap.name,
                snap.created_at,
                snap.vm_state.as_str(),
                disks,
                snap.size_bytes as i64
            ],
        )?;
        log_event(&tx, &snap.vm, "snapshot", &format!("{} created", snap.name))?;
        tx.commit()?;
        Ok(())
    }

    /// VM `vm`'s snapshots, oldest first.
    pub fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM snapshots WHERE vm = ?1 ORDER BY created_at, name")?;
        let rows = stmt.query_map([vm], snapshot_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Snapshot `name` of VM `vm`, if there is one.
    pub fn snapshot(&self, vm: &str, name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM snapshots WHERE vm = ?1 AND name = ?2",
                [vm, name],
                snapshot_row,
            )
            .optional()?)
    }

    /// Forget snapshot `name` of VM `vm` (its files are the caller's to remove).
    pub fn remove_snapshot(&mut self, vm: &str, name: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM snapshots WHERE vm = ?1 AND name = ?2",
            [vm, name],
        )?;
        if n == 0 {
            return Err(StoreError::NoSnapshot(vm.into(), name.into()));
        }
        log_event(&tx, vm, "snapshot", &format!("{name} deleted"))?;
        tx.commit()?;
        Ok(())
    }

    /// The newest event's id (0 when none).
    pub fn last_event_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }

    /// Events after `id` (0: all), oldest first, at most `limit`.
    pub fn events_since(&self, id: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, vm, kind, detail FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![id, limit], |r| {
            Ok(Event {
                id: r.get(0)?,
                at: r.get(1)?,
                vm: r.get(2)?,
                kind: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests;
