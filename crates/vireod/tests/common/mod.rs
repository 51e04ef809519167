//! The real daemon and CLI against real VMs: a `vireod` on a fresh state dir, the
//! workspace's `vireo` and `vireoctl` binaries, tiny guests on this machine's KVM.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use manager_types::api::{CONSOLE_PROTOCOL, DefineRequest, VmInfo};
use manager_types::client::Client;

/// `vireo`, `vireoctl` (built beside `vireod`; `scripts/test.sh` builds them), or why not.
pub fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let dir = Path::new(env!("CARGO_BIN_EXE_vireod"))
        .parent()
        .ok_or("no target dir")?
        .to_path_buf();
    let vireo = dir.join("vireo");
    let vireoctl = dir.join("vireoctl");
    for b in [&vireo, &vireoctl] {
        if !b.is_file() {
            return Err(format!(
                "{} is not built (cargo build -p vireo -p vireoctl)",
                b.display()
            ));
        }
    }
    Ok((vireo, vireoctl))
}

/// Whether /dev/kvm can be opened.
pub fn kvm() -> Result<(), String> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A vireod on its own state dir.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub vireo: PathBuf,
    pub vireoctl: PathBuf,
    pub cgroup_base: Option<String>,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Daemon {
    /// Start one on a new dir named after `tag`.
    pub fn start(tag: &str, vireo: &Path, vireoctl: &Path) -> Self {
        Self::start_with(tag, vireo, vireoctl, &[])
    }

    /// With extra vireod flags.
    pub fn start_with(tag: &str, vireo: &Path, vireoctl: &Path, extra: &[&str]) -> Self {
        Self::start_prepared(tag, vireo, vireoctl, extra, |_| {})
    }

    /// With `prepare(dir)` run before vireod starts (e.g. a mount on `dir/state`).
    pub fn start_prepared(
        tag: &str,
        vireo: &Path,
        vireoctl: &Path,
        extra: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("vireod-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        prepare(&dir);
        let cgroup_base = is_root().then(|| format!("vireo-test-{tag}-{}", std::process::id()));
        let mut d = Self {
            socket: dir.join("vireod.sock"),
            dir,
            vireo: vireo.to_path_buf(),
            vireoctl: vireoctl.to_path_buf(),
            cgroup_base,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vireod"));
        cmd.arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--vireo")
            .arg(&self.vireo)
            .args(&self.extra)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("vireod.log"))
                    .unwrap(),
            );
        match &self.cgroup_base {
            Some(base) => cmd.arg("--cgroup-base").arg(base),
            None => cmd.arg("--no-cgroups"),
        };
        let child = cmd.spawn().expect("vireod runs");
        self.child = Some(child);
        wait_for(&format!("vireod on {}", self.socket.display()), 30, || {
            self.client().call("GET", "/v1/version", None).is_ok()
        });
    }

    /// vireod's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `kill -9` vireod (its VMs keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill vireod and start a new one on the same state.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client of its API.
    pub fn client(&self) -> Client {
        Client::new(&self.socket).with_timeout(Some(Duration::from_secs(120)))
    }

    /// Run `vireoctl ARGS` against it.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.vireoctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `vireoctl ARGS`, which must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "vireoctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Write a definition file and return its path.
    pub fn definition(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Define `text` through the API.
    pub fn define(&self, text: &str, start: bool) -> VmInfo {
        self.client()
            .json(
                "POST",
                "/v1/vms",
                Some(&DefineRequest {
                    definition: text.into(),
                    file: Some("test.toml".into()),
                    start,
                }),
            )
            .unwrap()
    }

    /// VM `name`.
    pub fn info(&self, name: &str) -> VmInfo {
        self.client()
            .json("GET", &format!("/v1/vms/{name}"), None::<&()>)
            .unwrap()
    }

    /// Wait until VM `name` is in `state`.
    pub fn wait_state(&self, name: &str, state: &str, secs: u64) -> VmInfo {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let info = self.info(name);
            if info.summary.state == state {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never became {state}: {:?}",
                last.insert(info)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Attach a console viewer.
    pub fn console(&self, name: &str, history: usize) -> Viewer {
        let opened = self
            .client()
            .open(
                "GET",
                &format!("/v1/vms/{name}/console?history={history}"),
                None,
                &[("Upgrade", CONSOLE_PROTOCOL), ("Connection", "Upgrade")],
            )
            .unwrap();
        assert_eq!(opened.status, 101);
        let stream = opened.reader.get_ref().try_clone().unwrap();
        let pending = opened.reader.buffer().to_vec();
        Viewer {
            stream,
            seen: pending,
        }
    }

    /// The vireod log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vireod.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stop every VM this daemon's state holds, whatever state it is in.
        let state = self.dir.join("state");
        for pid in pids_mentioning(&state) {
            // SAFETY: kill(2) on a pid found in /proc; a stale one gets ESRCH.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        self.kill();
        std::thread::sleep(Duration::from_millis(100));
        if let Some(base) = &self.cgroup_base {
            remove_cgroups(base);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Processes whose command line names a path under `dir`.
pub fn pids_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .windows(needle.len())
                .any(|w| w == needle)
                .then_some(pid)
        })
        .filter(|&p| p != std::process::id())
        .collect()
}

/// rmdir `base` (children first) in every cgroup hierarchy.
fn remove_cgroups(base: &str) {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for root in roots {
        let dir = root.join(base);
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Wait up to `secs` for `done`.
pub fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A console viewer.
pub struct Viewer {
    pub stream: UnixStream,
    pub seen: Vec<u8>,
}

impl Viewer {
    /// Read until the output holds `want` (after what was consumed), at most `secs`.
    pub fn expect(&mut self, want: &str, secs: u64) -> String {
        self.wait(want, secs).unwrap_or_else(|text| {
            panic!("console never showed {want:?}; got {text:?}");
        })
    }

    /// As [`expect`](Self::expect), but a timeout is `Err` with what was seen.
    pub fn wait(&mut self, want: &str, secs: u64) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&self.seen).to_string();
            if let Some(at) = text.find(want) {
                let upto = at + want.len();
                self.seen.drain(..upto);
                return Ok(text[..upto].to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(text);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("console closed before {want:?}; got {text:?}"),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("console read: {e}"),
            }
        }
    }

    /// Type `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }
}

/// A definition of a tiny guest, with top-level keys `top` and tables `after`.
pub fn tiny(name: &str, guest: &str, top: &str, after: &str) -> String {
    format!(
        "name = \"{name}\"\n{top}\n[machine]\nkernel = \"{}\"\nmemory = \"32M\"\n{after}",
        test_guests::path(guest).display()
    )
}

/// The first of `files` in the cgroup dirs `describe` lists (comma-separated).
pub fn cgroup_value(cgroup: &str, files: &[&str]) -> String {
    for dir in cgroup.split(',') {
        for f in files {
            if let Ok(v) = std::fs::read_to_string(std::path::Path::new(dir.trim()).join(f)) {
                return v.trim().to_string();
            }
        }
    }
    String::new()
}
