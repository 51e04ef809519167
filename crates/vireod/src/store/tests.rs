use super::*;

fn temp_db(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vireod-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("vireod.db")
}

const DEF: &str = "name = \"a\"\n[machine]\nkernel = \"/k\"\n";

#[test]
fn a_new_database_is_migrated_and_in_wal_mode() {
    let path = temp_db("new");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(store);
    // Reopening migrates nothing again.
    assert_eq!(
        Store::open(&path).unwrap().schema_version().unwrap(),
        MIGRATIONS.len() as u32
    );
}

#[test]
fn a_version_1_database_is_migrated_keeping_its_vms() {
    let path = temp_db("v1");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO vms (name, definition, state, autostart, created_at, updated_at)
             VALUES ('old', ?1, 'crashed', 0, 1, 1)",
            [DEF],
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
    let old = store.get("old").unwrap().unwrap();
    assert_eq!((old.state, old.last_console), (VmState::Crashed, None));
    store
        .transition("old", &[VmState::Crashed], VmState::Starting, None, None)
        .unwrap();
    store
        .ended(
            "old",
            &[VmState::Starting],
            VmState::Crashed,
            "exit 2",
            "oops\nbye",
        )
        .unwrap();
    let old = store.get("old").unwrap().unwrap();
    assert_eq!(old.exit_status.as_deref(), Some("exit 2"));
    assert_eq!(old.last_console.as_deref(), Some("oops\nbye"));
}

#[test]
fn a_database_from_a_newer_vireod_is_refused_untouched() {
    let path = temp_db("future");
    drop(Store::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&path).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::FromTheFuture {
                found: 99,
                known
            } if known == MIGRATIONS.len() as u32
        ),
        "{err}"
    );
    let conn = Connection::open(&path).unwrap();
    let v: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn define_list_redefine_undefine_and_their_events() {
    let path = temp_db("crud");
    let mut store = Store::open(&path).unwrap();
    store.define("b", DEF, false).unwrap();
    store.define("a", DEF, true).unwrap();
    let names: Vec<_> = store.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b"]);
    let a = store.get("a").unwrap().unwrap();
    assert_eq!(
        (a.state, a.autostart, a.pid),
        (VmState::Stopped, true, None)
    );
    assert_eq!(a.definition, DEF);

    // A duplicate changes nothing.
    assert!(matches!(store.define("a", "other", false), Err(StoreError::Duplicate(n)) if n == "a"));
    assert_eq!(store.get("a").unwrap().unwrap().definition, DEF);

    store.redefine("a", "name = \"a\" # edited", false).unwrap();
    assert!(!store.get("a").unwrap().unwrap().autostart);
    assert!(matches!(
        store.redefine("zz", DEF, false),
        Err(StoreError::NotFound(_))
    ));

    store.undefine("b").unwrap();
    assert_eq!(store.get("b").unwrap(), None);
    assert!(matches!(store.undefine("b"), Err(StoreError::NotFound(_))));

    let kinds: Vec<_> = store
        .events_since(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.vm, e.kind))
        .collect();
    assert_eq!(
        kinds,
        ["b defined", "a defined", "a redefined", "b undefined"]
    );
    let last = store.events_since(0, 100).unwrap()[2].id;
    assert_eq!(store.events_since(last, 100).unwrap().len(), 1);

    // All of it is on disk.
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.events_since(0, 100).unwrap().len(), 4);
}

#[test]
fn transitions_are_checked_against_the_state_they_start_from() {
    let mut store = Store::open(&temp_db("states")).unwrap();
    store.define("a", DEF, false).unwrap();
    store
        .transition(
            "a",
            &[VmState::Stopped, VmState::Crashed],
            VmState::Starting,
            Some((4242, "/run/a.sock")),
            None,
        )
        .unwrap();
    // A second start racing the first: a conflict, nothing changed.
    let err = store
        .transition(
            "a",
            &[VmState::Stopped, VmState::Crashed],
            VmState::Starting,
            Some((1, "/x")),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                state: VmState::Starting,
                ..
            }
        ),
        "{err}"
    );
    let a = store.get("a").unwrap().unwrap();
    assert_eq!(
        (a.pid, a.api_socket.as_deref()),
        (Some(4242), Some("/run/a.sock"))
    );

    // Running keeps the process; undefine is refused while active.
    store
        .transition("a", &[VmState::Starting], VmState::Running, None, None)
        .unwrap();
    assert_eq!(store.get("a").unwrap().unwrap().pid, Some(4242));
    assert!(matches!(
        store.undefine("a"),
        Err(StoreError::Conflict { .. })
    ));

    // The process dies: crashed, its status kept, no process any more.
    store
        .transition(
            "a",
            &[VmState::Running],
            VmState::Crashed,
            None,
            Some("signal 9"),
        )
        .unwrap();
    let a = store.get("a").unwrap().unwrap();
    assert_eq!(
        (a.state, a.pid, a.exit_status.as_deref()),
        (VmState::Crashed, None, Some("signal 9"))
    );
    let last = store.events_since(0, 100).unwrap().pop().unwrap();
    assert_eq!(last.detail, "running -> crashed (signal 9)");
    store.undefine("a").unwrap();
}

#[test]
fn states_round_trip_and_unknown_ones_are_refused() {
    for s in [
        "stopped", "starting", "running", "paused", "stopping", "crashed",
    ] {
        assert_eq!(s.parse::<VmState>().unwrap().as_str(), s);
    }
    assert!(matches!(
        "melted".parse::<VmState>(),
        Err(StoreError::BadState(_))
    ));
    // A row holding one is refused when read, saying which.
    let mut store = Store::open(&temp_db("badstate")).unwrap();
    store.define("m", DEF, false).unwrap();
    store
        .conn
        .execute("UPDATE vms SET state = 'melted' WHERE name = 'm'", [])
        .unwrap();
    let e = store.get("m").unwrap_err().to_string();
    assert!(e.contains("unknown VM state 'melted'"), "{e}");
    assert!(store.list().is_err());
}

/// A change that fails half-way leaves nothing behind: the transaction is rolled back.
#[test]
fn a_failed_change_leaves_nothing() {
    let mut store = Store::open(&temp_db("rollback")).unwrap();
    {
        let tx = store.conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO vms (name, definition, state, autostart, created_at, updated_at)
             VALUES ('half', '', 'stopped', 0, 0, 0)",
            [],
        )
        .unwrap();
        // Dropped without commit, as when the process dies between the two writes.
    }
    assert_eq!(store.get("half").unwrap(), None);
    assert!(store.events_since(0, 10).unwrap().is_empty());
}

/// The writer half of `kill_9_in_the_middle_of_defines_leaves_a_consistent_database`: run
/// by that test as a child process, defining VMs until it is killed.
#[test]
#[ignore = "run as a child process by kill_9_in_the_middle_of_defines_leaves_a_consistent_database"]
fn writer_until_killed() {
    let Some(path) = std::env::var_os("VIREOD_TEST_DB") else {
        return;
    };
    let mut store = Store::open(Path::new(&path)).unwrap();
    for i in 0.. {
        store.define(&format!("vm{i}"), DEF, i % 2 == 0).unwrap();
    }
}

#[test]
fn kill_9_in_the_middle_of_defines_leaves_a_consistent_database() {
    let path = temp_db("kill9");
    drop(Store::open(&path).unwrap());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::writer_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("VIREOD_TEST_DB", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it commit a good number of defines, then kill it mid-stream.
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let n = Store::open(&path).unwrap().list().unwrap().len();
        if n >= 50 || start.elapsed() > std::time::Duration::from_secs(20) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&path).unwrap();
    let ok: String = store
        .conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let vms = store.list().unwrap();
    assert!(vms.len() >= 50, "the writer defined only {} VMs", vms.len());
    // Every VM has its event and every event its VM: no change was half-applied.
    let events = store.events_since(0, u32::MAX).unwrap();
    assert_eq!(events.len(), vms.len());
    for (i, _) in vms.iter().enumerate() {
        assert!(
            vms.iter().any(|v| v.name == format!("vm{i}")),
            "vm{i} missing: a gap"
        );
        assert_eq!(events[i].vm, format!("vm{i}"));
    }
}

#[test]
fn snapshots_are_recorded_unique_per_vm_and_go_with_it() {
    let path = temp_db("snaps");
    let mut store = Store::open(&path).unwrap();
    store.define("vm1", DEF, false).unwrap();
    let snap = |name: &str, at: i64| SnapshotRecord {
        vm: "vm1".into(),
        name: name.into(),
        created_at: at,
        vm_state: VmState::Running,
        disks: vec![("disk-0".into(), "/images/a b.img".into())],
        size_bytes: 1 << 20,
    };
    store.add_snapshot(&snap("b", 2)).unwrap();
    store.add_snapshot(&snap("a", 3)).unwrap();
    assert!(matches!(
        store.add_snapshot(&snap("a", 4)),
        Err(StoreError::SnapshotExists(..))
    ));
    let mut orphan = snap("x", 1);
    orphan.vm = "nosuch".into();
    assert!(matches!(
        store.add_snapshot(&orphan),
        Err(StoreError::NotFound(_))
    ));
    let names: Vec<String> = store
        .snapshots("vm1")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["b", "a"], "oldest first");
    assert_eq!(store.snapshot("vm1", "a").unwrap(), Some(snap("a", 3)));
    store.remove_snapshot("vm1", "b").unwrap();
    assert!(matches!(
        store.remove_snapshot("vm1", "b"),
        Err(StoreError::NoSnapshot(..))
    ));
    store.undefine("vm1").unwrap();
    store.define("vm1", DEF, false).unwrap();
    assert!(
        store.snapshots("vm1").unwrap().is_empty(),
        "undefine took them"
    );
}
