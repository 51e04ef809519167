//! The layer-3 harness (see `vhost_user_linux.rs`): a vhost-user backend process, the
//! Debian test guest booted by QEMU in TCG mode with the backend's device, a test script
//! carried into the guest by an extra initramfs archive, and the results it reports.
//!
//! - [`Backend`]: a backend process (`vireo vhost-user ...` or a reference backend),
//!   started and waited for until its socket exists.
//! - [`GuestFiles`]: a newc cpio archive of the test's files, appended to the guest's
//!   `initrd.gz` ([`GuestFiles::initrd`]). `/vireo/test.sh` is the script the guest's
//!   `/init` runs.
//! - [`Qemu`]: one QEMU run, bounded by a deadline; its console (first serial port) is
//!   kept for failure messages, its results (second serial port) are what tests assert.
//! - [`GuestRun`]: what a run left: console, result lines, wall time.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use test_support::skip;

use crate::common::collect_output;

/// The QEMU binary the tests need.
pub const QEMU: &str = "qemu-system-x86_64";

/// Guest RAM (shared memfd: the backend maps it).
const GUEST_MIB: u32 = 256;

/// How long one QEMU run may take: a boot takes ~3 s here, a run with mkfs ~10 s.
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// Lines of console shown in a failure message.
const CONSOLE_TAIL: usize = 60;

/// The first line of every test script: stop at the first failing command, and send
/// results (`result KEY VALUE...`) to the second serial port, away from the kernel's
/// messages on the console.
const SCRIPT_PRELUDE: &str = r#"set -e
exec 3>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null || true
result() { echo "$*" >&3; }
"#;

/// `Ok` where QEMU is installed, else why not: every test checks this first, through
/// the skip policy (`test_support::require!`: a failure under `CI=true`).
pub fn qemu() -> Result<PathBuf, String> {
    skip::tool(QEMU, "qemu-system-x86").map_err(|e| format!("{e}; .ci/run installs it"))
}

/// `Ok` where the host tools that read a disk image back are installed (e2fsck and
/// debugfs), else why not.
pub fn image_tools() -> Result<(), String> {
    skip::tool("e2fsck", "e2fsprogs")?;
    skip::tool("debugfs", "e2fsprogs")?;
    Ok(())
}

/// One QEMU at a time in this test binary: TCG is CPU-bound and the machines have two
/// cores; runs in parallel would only make each slower and closer to its deadline.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Build (or find in its cache) the Debian guest; its directory. The script runs once
/// per test binary.
pub fn guest_dir() -> PathBuf {
    test_support::host::guest_image_dir()
}

/// A scratch directory, removed when dropped (kept if `VIREO_L3_KEEP` is set).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vireo-l3-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test's scratch directory");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("VIREO_L3_KEEP").is_some() {
            eprintln!("keeping {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// `len` reproducible, incompressible bytes (xorshift64*), different for each `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The host's `sha256sum` of `data`, in hex.
pub fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum output");
    writer.join().unwrap().expect("feed sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Run `cmd`, fail with its output unless it succeeds; its stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The extra initramfs archive.
// ---------------------------------------------------------------------------------------

/// Files for the guest, as a newc cpio archive (the kernel's initramfs format). The
/// kernel unpacks archives appended to the initrd one after the other, each over the
/// previous; an uncompressed one must start on a 4-byte boundary (zeros in between are
/// skipped), so [`GuestFiles::initrd`] pads the gzip'd base archive before appending.
#[derive(Default)]
pub struct GuestFiles {
    archive: Vec<u8>,
    dirs: BTreeSet<String>,
    inode: u32,
}

impl GuestFiles {
    /// An archive whose `/vireo/test.sh` runs `script` (after [`SCRIPT_PRELUDE`]).
    pub fn with_script(script: &str) -> Self {
        let mut files = Self::default();
        files.file(
            "vireo/test.sh",
            format!("{SCRIPT_PRELUDE}{script}\nresult done\n").as_bytes(),
            0o755,
        );
        files
    }

    /// Add a regular file at `path` (relative to the guest's root), and its parent
    /// directories.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if self.dirs.insert(parent.clone()) {
                self.entry(&parent.clone(), 0o040_755, &[]);
            }
        }
        self.entry(path, 0o100_000 | mode, data);
        self
    }

    /// Add the host file `host` at `path`, following symlinks.
    pub fn host_file(&mut self, path: &str, host: &Path) -> &mut Self {
        let data = fs::read(host).unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
        self.file(path, &data, 0o755)
    }

    /// Add a dynamically linked host program at `/vireo/bin/NAME`, with its libraries
    /// (as `ldd` lists them) and its loader in `/vireo/lib`. Run it in the guest as
    /// `LD_LIBRARY_PATH=/vireo/lib /vireo/lib/LOADER /vireo/bin/NAME`; see
    /// [`GuestFiles::host_program_command`].
    pub fn host_program(&mut self, name: &str, host: &Path) -> &mut Self {
        let ldd = run_ok(Command::new("ldd").arg(host));
        let ldd = String::from_utf8(ldd).unwrap();
        for lib in ldd
            .split_whitespace()
            .filter(|word| word.starts_with('/'))
            .map(PathBuf::from)
            .collect::<BTreeSet<_>>()
        {
            let file = lib.file_name().and_then(OsStr::to_str).unwrap().to_string();
            self.host_file(&format!("vireo/lib/{file}"), &lib);
        }
        self.host_file(&format!("vireo/bin/{name}"), host)
    }

    /// The guest command line that runs a program added by [`GuestFiles::host_program`].
    pub fn host_program_command(name: &str) -> String {
        format!("LD_LIBRARY_PATH=/vireo/lib /vireo/lib/ld-linux-x86-64.so.2 /vireo/bin/{name}")
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let name_size = name.len() + 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040_000 != 0 { 2 } else { 1 },
            0, // mtime
            u32::try_from(data.len()).expect("file under 4 GiB"),
            0, // dev major, minor
            0,
            0, // rdev major, minor
            0,
            u32::try_from(name_size).unwrap(),
            0, // check
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.archive.extend_from_slice(header.as_bytes());
        self.archive.extend_from_slice(name.as_bytes());
        self.archive.push(0);
        self.pad();
        self.archive.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.archive.len().is_multiple_of(4) {
            self.archive.push(0);
        }
    }

    /// Write the guest's `initrd.gz` followed by this archive to `out`.
    pub fn initrd(mut self, guest: &Path, out: &Path) {
        self.entry("TRAILER!!!", 0, &[]);
        let mut initrd = fs::read(guest.join("initrd.gz")).expect("read the guest's initrd.gz");
        while !initrd.len().is_multiple_of(4) {
            initrd.push(0);
        }
        initrd.extend_from_slice(&self.archive);
        fs::write(out, initrd).expect("write the test's initrd");
    }
}

// ---------------------------------------------------------------------------------------
// The backend process.
// ---------------------------------------------------------------------------------------

/// A vhost-user backend process, serving on `socket`.
pub struct Backend {
    name: String,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Backend {
    /// `vireo vhost-user DEVICE --socket SOCKET ARGS...`, logging at info level.
    pub fn vireo_command(device: &str, socket: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vireo"));
        cmd.arg("vhost-user")
            .arg(device)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("VIREO_LOG", "info");
        cmd
    }

    /// Start `cmd` and wait until `socket` exists (fail if the process ends first or the
    /// socket is not there within 10 s).
    pub fn start(name: &str, mut cmd: Command, socket: &Path) -> Self {
        let _ = fs::remove_file(socket);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = collect_output(child.stdout.take().unwrap());
        let stderr = collect_output(child.stderr.take().unwrap());
        let mut backend = Self {
            name: name.to_string(),
            child: Some(child),
            stderr,
            stdout,
        };
        let start = Instant::now();
        loop {
            if fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
                return backend;
            }
            let child = backend.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // Let the readers drain.
                panic!(
                    "{name} ended ({status}) before creating {}:\n{}",
                    socket.display(),
                    backend.output()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} did not create {} within 10 s:\n{}",
                socket.display(),
                backend.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the process wrote so far.
    pub fn output(&self) -> String {
        format!(
            "--- {} stdout:\n{}--- {} stderr:\n{}",
            self.name,
            self.stdout.lock().unwrap(),
            self.name,
            self.stderr.lock().unwrap()
        )
    }

    /// Wait for the process to end by itself (its frontend is gone); its status and
    /// output. Fails after `deadline`.
    pub fn wait(mut self, deadline: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // Let the readers drain.
                return (status, self.output());
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} still running {deadline:?} after its frontend exited:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `vireo vhost-user` must exit 0 by itself once QEMU, its one frontend, is gone,
    /// having logged no error (a device worker that fails logs one and goes quiet).
    pub fn expect_clean_exit(self) {
        let name = self.name.clone();
        let (status, output) = self.wait(Duration::from_secs(10));
        assert!(
            status.success(),
            "{name} exited with {status} after the frontend disconnected:\n{output}"
        );
        assert!(
            !output.contains(": error: "),
            "{name} logged an error:\n{output}"
        );
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// QEMU.
// ---------------------------------------------------------------------------------------

/// The QEMU options that put one vhost-user device on `socket`: `blk`, `rng`, `net` (with
/// `mac`), `vsock`.
pub fn vhost_user_device(kind: &str, socket: &Path, mac: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "-chardev".to_string(),
        format!("socket,id=vu0,path={}", socket.display()),
    ];
    let device = match kind {
        "blk" => "vhost-user-blk-pci,chardev=vu0,num-queues=1".to_string(),
        "rng" => "vhost-user-rng-pci,chardev=vu0".to_string(),
        "vsock" => "vhost-user-vsock-pci,chardev=vu0".to_string(),
        "net" => {
            args.extend(["-netdev".to_string(), "vhost-user,id=n0,chardev=vu0".into()]);
            // vectors=0 (INTx, no MSI-X): QEMU 7.2 in TCG mode segfaults in
            // vhost_net_start -> msix_set_vector_notifiers when the driver starts a
            // vhost-user NIC with MSI-X; the same happens whatever the backend
            // negotiated, and not with INTx.
            format!(
                "virtio-net-pci,netdev=n0,mac={},vectors=0",
                mac.expect("a MAC for the NIC")
            )
        }
        _ => panic!("no vhost-user device {kind}"),
    };
    args.extend(["-device".to_string(), device]);
    args
}

/// A running QEMU: the guest booting with `initrd`, the devices of `device_args`.
pub struct Qemu {
    name: String,
    child: Child,
    console: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    results: PathBuf,
    start: Instant,
    /// The backend's output, for failure messages.
    backend: (String, Arc<Mutex<String>>, Arc<Mutex<String>>),
}

impl Qemu {
    /// Start QEMU (TCG, q35, guest RAM in a shared memfd, no default devices; console on
    /// the first serial port, results on the second, written to `dir/NAME.results`),
    /// with the devices of `device_args` served by `backend`.
    pub fn start(
        name: &str,
        dir: &Path,
        initrd: &Path,
        device_args: &[String],
        backend: &Backend,
    ) -> Self {
        let guest = guest_dir();
        let results = dir.join(format!("{name}.results"));
        let _ = fs::remove_file(&results);
        let mem = format!("memory-backend-memfd,id=mem,size={GUEST_MIB}M,share=on");
        let mut cmd = Command::new(QEMU);
        cmd.args(["-M", "q35", "-accel", "tcg", "-smp", "1"])
            .args(["-m", &GUEST_MIB.to_string()])
            .args(["-object", &mem, "-numa", "node,memdev=mem"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot", "-serial", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", results.display()))
            .arg("-kernel")
            .arg(guest.join("bzImage"))
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 panic=-1"])
            .args(device_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
        let console = collect_output(child.stdout.take().unwrap());
        let stderr = collect_output(child.stderr.take().unwrap());
        Self {
            name: name.to_string(),
            child,
            console,
            stderr,
            results,
            start,
            backend: (
                backend.name.clone(),
                backend.stdout.clone(),
                backend.stderr.clone(),
            ),
        }
    }

    /// The result lines the guest wrote so far.
    pub fn results(&self) -> Vec<String> {
        read_results(&self.results)
    }

    /// Wait until the guest's results hold a line starting with `prefix` (that line), or
    /// fail after `deadline` or if QEMU exits first.
    pub fn wait_for_result(&mut self, prefix: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.results().into_iter().find(|l| l.starts_with(prefix)) {
                return line;
            }
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{}: no result '{prefix}' ({}); {}",
                    self.name,
                    if exited.is_some() {
                        "QEMU exited".to_string()
                    } else {
                        format!("waited {deadline:?}")
                    },
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for QEMU to exit (the guest reboots at the end of its script; `-no-reboot`
    /// makes that an exit), at most [`RUN_DEADLINE`] from the start. The run must have
    /// reached the end of the script, with every command succeeding.
    pub fn finish(mut self) -> GuestRun {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if self.start.elapsed() > RUN_DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{}: QEMU still running after {RUN_DEADLINE:?}, killed; {}",
                    self.name,
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.start.elapsed();
        std::thread::sleep(Duration::from_millis(100)); // Let the readers drain.
        let console = self.console.lock().unwrap().clone();
        let results = self.results();
        let ok = status.success()
            && console.contains("VIREO-GUEST: test exit=0")
            && console.contains("VIREO-GUEST-OK")
            && results.iter().any(|l| l == "done");
        assert!(
            ok,
            "{}: the guest's test did not complete (QEMU {status}); {}",
            self.name,
            self.report()
        );
        eprintln!(
            "{}: QEMU run took {:.1} s",
            self.name,
            elapsed.as_secs_f64()
        );
        GuestRun {
            console,
            results,
            elapsed,
        }
    }

    /// Console tail, results, QEMU's stderr and the backend's output, for a failure
    /// message.
    fn report(&self) -> String {
        std::thread::sleep(Duration::from_millis(100));
        let (backend, out, err) = &self.backend;
        format!(
            "after {:.1} s\n--- console (last {CONSOLE_TAIL} lines):\n{}\n--- results:\n{}\n--- QEMU stderr:\n{}\n--- {backend} stdout:\n{}--- {backend} stderr:\n{}",
            self.start.elapsed().as_secs_f64(),
            tail(&self.console.lock().unwrap(), CONSOLE_TAIL),
            self.results().join("\n"),
            self.stderr.lock().unwrap(),
            out.lock().unwrap(),
            err.lock().unwrap()
        )
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_results(path: &Path) -> Vec<String> {
    fs::read(path)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// What a finished run left.
pub struct GuestRun {
    pub console: String,
    pub results: Vec<String>,
    pub elapsed: Duration,
}

impl GuestRun {
    /// The value of the result `key` (the rest of the first line `KEY VALUE`); fails if
    /// the guest did not report it.
    pub fn get(&self, key: &str) -> &str {
        self.all(key).into_iter().next().unwrap_or_else(|| {
            panic!(
                "the guest reported no '{key}'; results:\n{}\nconsole (tail):\n{}",
                self.results.join("\n"),
                tail(&self.console, CONSOLE_TAIL)
            )
        })
    }

    /// The values of every result `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.results
            .iter()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// vsock helpers (the guest tool, the host ends of a stream).
// ---------------------------------------------------------------------------------------

/// The guest's vsock tool, built static from `layer3/vsock_cat.c` into `dir`.
pub fn build_vsock_cat(dir: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/layer3/vsock_cat.c");
    let out = dir.join("vsock_cat");
    run_ok(
        Command::new("gcc")
            .args(["-static", "-Os", "-s", "-Wall", "-o"])
            .arg(&out)
            .arg(&src),
    );
    out
}

/// Accept one connection on `listener` (the guest's, relayed to `<socket>_PORT`), read
/// it to the end, answer `received N`; the bytes.
pub fn accept_guest_stream(
    listener: UnixListener,
) -> std::thread::JoinHandle<Result<Vec<u8>, String>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > RUN_DEADLINE {
                        return Err("the guest never connected to the host port".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        stream
            .read_to_end(&mut data)
            .map_err(|e| format!("read the guest's stream: {e}"))?;
        stream
            .write_all(format!("received {}\n", data.len()).as_bytes())
            .map_err(|e| format!("answer the guest: {e}"))?;
        Ok(data)
    })
}

/// Connect to the guest's echo `port` through the device's socket, send `data`, shut down
/// the sending side and read everything back.
pub fn echo_through_guest(socket: &Path, port: u32, data: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).expect("connect to the vsock socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).expect("read the CONNECT answer");
    assert!(
        ok.starts_with("OK ") && ok.ends_with('\n'),
        "CONNECT {port} answered {ok:?}"
    );
    // Write from another thread: the guest echoes as it reads, so both directions flow
    // at once.
    let mut writer = stream.try_clone().unwrap();
    let data_owned = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data_owned)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut echoed = Vec::new();
    reader.read_to_end(&mut echoed).expect("read the echo back");
    sender.join().unwrap().expect("send to the guest");
    echoed
}

// ---------------------------------------------------------------------------------------
// An HTTP server for the net tests, inside the test's network namespace.
// ---------------------------------------------------------------------------------------

/// Addresses inside the test's network namespace only.
pub const HOST_IP: &str = "10.77.0.1";
pub const GUEST_IP: &str = "10.77.0.2";
pub const HTTP_PORT: u16 = 8080;

/// Serve HTTP on `HOST_IP:HTTP_PORT` inside the namespace `ns` until one `GET /data`
/// (answered with `download`) and one `POST /upload` were served, or the deadline. The
/// thread's result is the uploaded body.
pub fn http_server(
    ns: &str,
    download: Vec<u8>,
) -> std::thread::JoinHandle<Result<Vec<u8>, String>> {
    let ns_name = ns.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // This thread from here on only serves the test's HTTP requests.
        test_support::netns::enter(&ns_name).map_err(|e| format!("enter {ns_name}: {e}"))?;
        let listener = TcpListener::bind((HOST_IP, HTTP_PORT)).map_err(|e| e.to_string());
        let ok = listener.is_ok();
        let _ = ready_tx.send(listener.as_ref().err().cloned());
        if !ok {
            return Err("bind failed".into());
        }
        let listener = listener.unwrap();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let (mut got_get, mut upload) = (false, None);
        while !(got_get && upload.is_some()) {
            if start.elapsed() > RUN_DEADLINE {
                return Err(format!(
                    "HTTP server: deadline passed (GET served: {got_get}, POST served: {})",
                    upload.is_some()
                ));
            }
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(format!("accept: {e}")),
            };
            match serve_one(stream, &download)? {
                Request::Get => got_get = true,
                Request::Post(body) => upload = Some(body),
            }
        }
        Ok(upload.unwrap())
    });
    if let Ok(Some(e)) = ready_rx.recv() {
        panic!("HTTP server in {ns}: cannot listen on {HOST_IP}:{HTTP_PORT}: {e}");
    }
    handle
}

enum Request {
    Get,
    Post(Vec<u8>),
}

/// One HTTP/1.x request: `GET /data` or `POST /upload` (with `Content-Length`).
fn serve_one(stream: TcpStream, download: &[u8]) -> Result<Request, String> {
    let err = |e: std::io::Error| e.to_string();
    stream.set_nonblocking(false).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(err)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(err)?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(err)?;
    let request_line = line.trim_end().to_string();
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(err)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(|_| format!("bad {header}"))?;
        }
    }
    let mut stream = stream;
    let respond = |stream: &mut TcpStream, body: &[u8]| -> Result<(), String> {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(err)?;
        stream.write_all(body).map_err(err)?;
        let _ = stream.shutdown(Shutdown::Write);
        Ok(())
    };
    if request_line.starts_with("GET /data ") {
        respond(&mut stream, download)?;
        Ok(Request::Get)
    } else if request_line.starts_with("POST /upload ") {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).map_err(err)?;
        respond(&mut stream, format!("received {}", body.len()).as_bytes())?;
        Ok(Request::Post(body))
    } else {
        Err(format!("unexpected request: {request_line}"))
    }
}
