//! One VM's `vireo` process: spawned detached from vireod (its own session, its output
//! to a file, no pipe to vireod) so that vireod can die and come back without the VM
//! noticing; watched through a pidfd; found again after a vireod restart by its command
//! line, which names its API socket.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// What `spawn` needs.
pub struct SpawnSpec<'a> {
    /// The `vireo` binary.
    pub vireo: &'a Path,
    /// The VM's name (`--id`).
    pub name: &'a str,
    /// The API socket `vireo` serves.
    pub api_socket: &'a Path,
    /// The `--config-file` it boots; without one it waits for API calls (a snapshot load).
    pub config_file: Option<&'a Path>,
    /// Where its stdout and stderr go (appended).
    pub log_file: &'a Path,
    /// Its nice value.
    pub nice: Option<i32>,
    /// Run in the child between fork and exec: only async-signal-safe calls (the cgroup
    /// join writes).
    pub join: Option<Box<dyn Fn() -> std::io::Result<()> + Send + Sync>>,
}

/// A `vireo` process vireod watches.
pub struct VmmProcess {
    /// Its pid.
    pub pid: u32,
    /// A pidfd of it: readable once it ended.
    pub pidfd: OwnedFd,
    /// The `Child`, when vireod started it (so it can be reaped for its exit status);
    /// `None` for a process re-adopted after a vireod restart.
    pub child: Option<Child>,
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Send `signal` through a pidfd (never to a recycled pid).
pub fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no siginfo (null)
    // and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Wait until the pidfd is readable (the process ended), at most `timeout` (`None`:
/// for ever). Returns whether it ended.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Option<Duration>) -> std::io::Result<bool> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n > 0);
    }
}

/// How a process ended, as shown: `exit 0`, `exit 2`, `signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("signal {sig} ({})", signal_name(sig)),
        _ => "ended".into(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGSYS => "SIGSYS",
        _ => "?",
    }
}

/// Start `vireo` for a VM. It runs in its own session (a Ctrl+C meant for vireod's
/// terminal does not reach it), with stdin from /dev/null and stdout/stderr appended to
/// the log file.
pub fn spawn(spec: SpawnSpec<'_>) -> std::io::Result<VmmProcess> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(spec.log_file)?;
    let mut cmd = Command::new(spec.vireo);
    cmd.arg("--api-sock").arg(spec.api_socket);
    if let Some(config) = spec.config_file {
        cmd.arg("--config-file").arg(config);
    }
    cmd.arg("--id")
        .arg(spec.name)
        .arg("--log-level")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let nice = spec.nice;
    let join = spec.join;
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // system calls: setsid, setpriority and the cgroup join's write(2)s on fds opened
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(join) = &join {
                join()?;
            }
            if let Some(n) = nice
                && libc::setpriority(libc::PRIO_PROCESS, 0, n) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    let pidfd = pidfd_open(pid)?;
    Ok(VmmProcess {
        pid,
        pidfd,
        child: Some(child),
    })
}

/// The process serving (or about to serve) `api_socket`, found by `--api-sock PATH` on
/// its command line in /proc: a vireod that restarts finds its VMs so, whatever its
/// database says about pids. The path is the VM's own, under vireod's state dir, so the
/// flag and path alone identify it (whatever the program: a wrapper script that will
/// exec vireo counts too).
pub fn find_by_socket(api_socket: &Path) -> Option<u32> {
    let want = api_socket.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == std::process::id() {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut prev_is_flag = false;
            for arg in cmdline.split(|&b| b == 0) {
                if prev_is_flag && arg == want {
                    return Some(pid);
                }
                prev_is_flag = arg == b"--api-sock";
            }
            None
        })
}

/// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22), to
/// compute uptimes of re-adopted processes.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// CPU time (user + system) of the process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Seconds since boot.
pub fn uptime_seconds() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The last `lines` lines of a file (of its last 64 KiB), for error messages.
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    last_lines(&bytes, lines)
}

/// The last `n` non-empty lines of `bytes`, lossily decoded, without control characters
/// other than tab.
pub fn last_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    let skip = lines.len().saturating_sub(n);
    lines.drain(..skip);
    lines
}

/// Where a VM's files live under the state dir.
#[derive(Debug, Clone)]
pub struct VmPaths {
    /// `STATE/vms/NAME`.
    pub dir: PathBuf,
}

impl VmPaths {
    /// The files of VM `name`.
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Self {
            dir: state_dir.join("vms").join(name),
        }
    }
    /// `vireo`'s API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    /// `vireo`'s serial console socket.
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    /// The `--config-file`.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// Where `vireo` writes its metrics lines (Firecracker's format).
    pub fn metrics_file(&self) -> PathBuf {
        self.dir.join("metrics.json")
    }
    /// `vireo`'s stdout and stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vireo.log")
    }
    /// The bounded console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// Snapshots.
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_people_say_them() {
        assert_eq!(describe(ExitStatus::from_raw(0)), "exit 0");
        assert_eq!(describe(ExitStatus::from_raw(2 << 8)), "exit 2");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }

    #[test]
    fn last_lines_drops_blank_and_control_characters() {
        let lines = last_lines(b"a\r\n\x1b[0mb\n\n c \nd", 3);
        assert_eq!(lines, ["[0mb", " c ", "d"]);
        assert!(last_lines(b"", 5).is_empty());
    }

    #[test]
    fn a_child_is_watched_through_its_pidfd_and_found_by_its_socket() {
        let dir = std::env::temp_dir().join(format!("vireod-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in for vireo: a shell script named vireo that sleeps; its command line
        // carries --api-sock as vireo's does.
        let fake = dir.join("vireo");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let socket = dir.join("api.sock");
        let mut p = spawn(SpawnSpec {
            vireo: &fake,
            name: "t",
            api_socket: &socket,
            config_file: Some(&dir.join("config.json")),
            log_file: &dir.join("vireo.log"),
            nice: Some(3),
            join: None,
        })
        .unwrap();
        // exec replaced sh by sleep: its cmdline is sleep's now, so look for it before.
        assert!(!wait_exit(&p.pidfd, Some(Duration::from_millis(100))).unwrap());
        assert!(start_ticks(p.pid).is_some());
        pidfd_signal(&p.pidfd, libc::SIGKILL).unwrap();
        assert!(wait_exit(&p.pidfd, Some(Duration::from_secs(10))).unwrap());
        let status = p.child.take().unwrap().wait().unwrap();
        assert_eq!(describe(status), "signal 9 (SIGKILL)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn find_by_socket_matches_the_flag_and_its_path() {
        let dir = std::env::temp_dir().join(format!("vireod-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        // sh -c's operands become its $0 and $1: they stay on its command line (the
        // second command keeps sh from exec'ing sleep).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("sleep 30; true")
            .arg("--api-sock")
            .arg(&socket)
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is the test's.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let found = loop {
            match find_by_socket(&socket) {
                Some(pid) => break Some(pid),
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                None => break None,
            }
        };
        let other = find_by_socket(&dir.join("other.sock"));
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, Some(child.id()));
        assert_eq!(other, None);
    }
}
