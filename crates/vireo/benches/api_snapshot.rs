//! Figures for the control API and snapshots, against the real `vireo` binary:
//!
//! - API round trip: `GET /machine-config` on one kept-alive connection, p50/p99/max;
//! - metrics flush: `PUT /actions` `FlushMetrics` for a running `count` guest with a
//!   disk (the whole round trip, a line of every group written), p50/p99, and the
//!   line's size;
//! - snapshot create: time of `PUT /snapshot/create` (Full) for a paused `count` guest of
//!   128 MiB and 1 GiB, and the files' sizes (apparent and allocated: the memory file is
//!   sparse, zero pages are holes);
//! - snapshot load: time of `PUT /snapshot/load` with `resume_vm` in a new process, and
//!   from the request to the guest's next console byte (the guest running again), with
//!   the File memory backend and with the Uffd backend served by `vireo uffd-handler`
//!   (started before the request, not counted), from the same snapshot.
//!
//! `cargo bench -p vireo --bench api_snapshot [-- ROUNDS]` (default 5 rounds per size;
//! 5000 API requests). Files go to `$VIREO_BENCH_DIR` or the temp directory. Prints a
//! table; asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::{Client, Vireo, ok};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn api_latency(requests: usize) {
    let vm = Vireo::start("bench-api", &[]);
    let mut c = vm.client();
    for _ in 0..100 {
        assert_eq!(c.get("/machine-config").status, 200);
    }
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let r = c.get("/machine-config");
        times.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    times.sort();
    println!(
        "GET /machine-config round trip ({requests} requests): p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.last().unwrap().as_secs_f64() * 1e6
    );
}

fn metrics_flush(dir: &Path, requests: usize) {
    let vm = Vireo::start("bench-metrics", &[]);
    let mut c = vm.client();
    let metrics = dir.join("metrics.json");
    let disk = dir.join("metrics-disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    ok(c.put(
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    ));
    ok(c.put(
        "/drives/rootfs",
        &format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": false}}"#,
            disk.display()
        ),
    ));
    let serial = dir.join("metrics-serial");
    boot_count(&mut c, 128, serial.to_str().unwrap());
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    for _ in 0..50 {
        ok(c.put("/actions", flush));
    }
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        ok(c.put("/actions", flush));
        times.push(t.elapsed());
    }
    times.sort();
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    let line = text.lines().last().map_or(0, str::len);
    println!(
        "FlushMetrics round trip ({requests} requests): p50 {:.1} us, p99 {:.1} us; a line is {line} bytes",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
    );
    drop(c);
    drop(vm);
    for f in [&metrics, &disk, &serial] {
        let _ = std::fs::remove_file(f);
    }
}

struct Round {
    create: Duration,
    state_bytes: u64,
    mem_apparent: u64,
    mem_allocated: u64,
    load: Duration,
    running_again: Duration,
    uffd_load: Duration,
    uffd_running_again: Duration,
}

fn boot_count(c: &mut Client, mib: u64, serial: &str) {
    let kernel = test_guests::path(test_guests::COUNT);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put(
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mib}}}"#),
    ));
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
}

fn round(dir: &Path, mib: u64, n: usize) -> Round {
    let state = dir.join(format!("state-{mib}-{n}"));
    let mem = dir.join(format!("mem-{mib}-{n}"));
    let serial_a = dir.join(format!("serial-a-{mib}-{n}"));
    let serial_b = dir.join(format!("serial-b-{mib}-{n}"));
    let (create, state_bytes, mem_apparent, mem_allocated) = {
        let vm = Vireo::start(&format!("bench-snap-a-{mib}-{n}"), &[]);
        let mut c = vm.client();
        boot_count(&mut c, mib, serial_a.to_str().unwrap());
        wait_until("a dot", || file_len(&serial_a) >= 1);
        ok(c.patch("/vm", r#"{"state": "Paused"}"#));
        let t = Instant::now();
        ok(c.put(
            "/snapshot/create",
            &format!(
                r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                state.display(),
                mem.display()
            ),
        ));
        let create = t.elapsed();
        (create, file_len(&state), file_len(&mem), allocated(&mem))
    };
    // Both loads from the same snapshot, in turns first (the first one reads the memory
    // file into the page cache for the second).
    let socket = dir.join(format!("uffd-{mib}-{n}.sock"));
    let file = |_: ()| load(&state, &mem, &serial_b, None, &format!("{mib}-{n}"));
    let uffd = |_: ()| {
        load(
            &state,
            &mem,
            &serial_b,
            Some(&socket),
            &format!("{mib}-{n}-uffd"),
        )
    };
    let ((load, running_again), (uffd_load, uffd_running_again)) = if n.is_multiple_of(2) {
        let f = file(());
        (f, uffd(()))
    } else {
        let u = uffd(());
        (file(()), u)
    };
    for f in [&state, &mem, &serial_a, &serial_b] {
        let _ = std::fs::remove_file(f);
    }
    Round {
        create,
        state_bytes,
        mem_apparent,
        mem_allocated,
        load,
        running_again,
        uffd_load,
        uffd_running_again,
    }
}

/// Load the snapshot in a new process (from the file, or through a handler on `socket`),
/// resumed: the request's time, and the time to the guest's next console byte.
fn load(
    state: &Path,
    mem: &Path,
    serial: &Path,
    socket: Option<&Path>,
    name: &str,
) -> (Duration, Duration) {
    let _ = std::fs::remove_file(serial);
    let mut handler = socket.map(|socket| {
        let child = common::vireo(&[
            "uffd-handler",
            "--socket",
            socket.to_str().unwrap(),
            "--mem-file",
            mem.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
        wait_until("the handler's socket", || socket.exists());
        child
    });
    let backend = match socket {
        Some(s) => format!(
            r#"{{"backend_type": "Uffd", "backend_path": "{}"}}"#,
            s.display()
        ),
        None => format!(
            r#"{{"backend_type": "File", "backend_path": "{}"}}"#,
            mem.display()
        ),
    };
    let vm = Vireo::start(&format!("bench-snap-b-{name}"), &[]);
    let mut c = vm.client();
    ok(c.put(
        "/serial",
        &format!(r#"{{"serial_out_path": "{}"}}"#, serial.display()),
    ));
    let t = Instant::now();
    ok(c.put(
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {backend}, "resume_vm": true}}"#,
            state.display()
        ),
    ));
    let load = t.elapsed();
    wait_until("the restored guest's first dot", || file_len(serial) >= 1);
    let running_again = t.elapsed();
    drop(c);
    drop(vm);
    if let Some(h) = handler.as_mut() {
        // It ends with its VMM.
        let _ = h.wait();
    }
    (load, running_again)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = std::env::var_os("VIREO_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("vireo-bench-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "vireo API and snapshot figures ({rounds} rounds per size, files in {})",
        dir.display()
    );
    api_latency(5000);
    metrics_flush(&dir, 2000);
    println!(
        "{:>8} | {:>12} | {:>11} | {:>22} | {:>10} | {:>16} | {:>15} | {:>21}",
        "guest",
        "create (ms)",
        "state (KiB)",
        "memory file (MiB / on disk KiB)",
        "load (ms)",
        "to running (ms)",
        "Uffd load (ms)",
        "Uffd to running (ms)"
    );
    for mib in [128u64, 1024] {
        let all: Vec<Round> = (0..rounds).map(|n| round(&dir, mib, n)).collect();
        let last = all.last().unwrap();
        println!(
            "{:>5} MiB | {:>12.1} | {:>11.1} | {:>14} / {:>13} | {:>10.1} | {:>16.1} | {:>15.1} | {:>21.1}",
            mib,
            ms(median(all.iter().map(|r| r.create).collect())),
            last.state_bytes as f64 / 1024.0,
            last.mem_apparent >> 20,
            last.mem_allocated >> 10,
            ms(median(all.iter().map(|r| r.load).collect())),
            ms(median(all.iter().map(|r| r.running_again).collect())),
            ms(median(all.iter().map(|r| r.uffd_load).collect())),
            ms(median(all.iter().map(|r| r.uffd_running_again).collect())),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
