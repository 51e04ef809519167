//! Per-thread settings of a VM's process: the kernel's CPU list syntax, pinning the vCPU
//! threads (`fc_vcpu N`, as `vmm::vcpu` names them) and nice, which Linux keeps per thread.

use std::collections::BTreeSet;
use std::fs;
use std::io;

use super::CgroupError;

/// The highest CPU number a list may name (the kernel's largest `NR_CPUS`).
pub const MAX_CPU: usize = 8191;

/// Parse the kernel's CPU list syntax (`0-3,6`; spaces and a trailing newline allowed,
/// empty: no CPU) into sorted CPU numbers, each once.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, CgroupError> {
    let error = |why: String| CgroupError::CpuList {
        text: text.to_string(),
        why,
    };
    let number = |part: &str| -> Result<usize, CgroupError> {
        let part = part.trim();
        let n: usize = part
            .parse()
            .map_err(|_| error(format!("'{part}' is not a CPU number")))?;
        if n > MAX_CPU {
            return Err(error(format!("CPU {n} is above {MAX_CPU}")));
        }
        Ok(n)
    };
    let mut cpus = BTreeSet::new();
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    for part in text.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if first > last {
            return Err(error(format!("{first}-{last} runs backwards")));
        }
        cpus.extend(first..=last);
    }
    Ok(cpus.into_iter().collect())
}

/// The kernel's CPU list syntax for sorted CPU numbers: runs as `a-b` (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// N for a thread named `fc_vcpu N` (as vireo names its vCPU threads, after
/// Firecracker).
pub(super) fn vcpu_index(comm: &str) -> Option<usize> {
    let digits = comm.strip_prefix(VCPU_THREAD_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What vireo's vCPU threads' names start with.
const VCPU_THREAD_PREFIX: &str = "fc_vcpu ";

/// The thread ids of process `pid` (`/proc/PID/task`).
pub(super) fn task_ids(pid: u32) -> Result<Vec<u32>, CgroupError> {
    let dir = format!("/proc/{pid}/task");
    let entries = fs::read_dir(&dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CgroupError::NoProcess(pid),
        _ => CgroupError::Read {
            path: dir.clone().into(),
            source: e,
        },
    })?;
    let mut tids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// A thread's name; `None` if it has ended.
fn comm(pid: u32, tid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

fn is_gone(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ESRCH)
}

/// Bind thread `tid` to `cpu` alone.
fn set_affinity(tid: u32, cpu: usize) -> io::Result<()> {
    const BITS: usize = libc::c_ulong::BITS as usize;
    let tid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let mut mask: Vec<libc::c_ulong> = vec![0; cpu / BITS + 1];
    mask[cpu / BITS] |= 1 << (cpu % BITS);
    // SAFETY: the kernel reads `len` bytes of the mask, which is exactly the Vec's
    // length in bytes; the Vec outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid,
            mask.len() * std::mem::size_of::<libc::c_ulong>(),
            mask.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pin each vCPU thread (`fc_vcpu N`) of process `pid` to one CPU of `cpus` (CPU list
/// syntax): vCPU N to the Nth CPU of the list, round-robin. Other threads are left
/// alone. Returns how many threads were pinned (threads that end meanwhile are skipped).
pub fn pin_vcpu_threads(pid: u32, cpus: &str) -> Result<usize, CgroupError> {
    let list = parse_cpu_list(cpus)?;
    if list.is_empty() {
        return Err(CgroupError::CpuList {
            text: cpus.to_string(),
            why: "no CPU".into(),
        });
    }
    let mut pinned = 0;
    for tid in task_ids(pid)? {
        let Some(n) = comm(pid, tid).as_deref().and_then(vcpu_index) else {
            continue;
        };
        let cpu = list[n % list.len()];
        match set_affinity(tid, cpu) {
            Ok(()) => pinned += 1,
            Err(e) if is_gone(&e) => {}
            Err(source) => {
                return Err(CgroupError::Thread {
                    pid,
                    tid,
                    what: format!("pinning vcpu{n} to CPU {cpu}"),
                    source,
                });
            }
        }
    }
    Ok(pinned)
}

/// Set the nice value (-20..=19) of every thread of process `pid` (Linux keeps it per
/// thread). Threads started while this runs are caught by a second look. Returns how
/// many threads were set.
pub fn set_nice(pid: u32, nice: i32) -> Result<usize, CgroupError> {
    if !(-20..=19).contains(&nice) {
        return Err(CgroupError::InvalidValue {
            field: "nice",
            why: format!("{nice} is not -20 to 19"),
        });
    }
    let mut done = BTreeSet::new();
    for _ in 0..3 {
        let mut new = false;
        for tid in task_ids(pid)? {
            if !done.insert(tid) {
                continue;
            }
            new = true;
            // SAFETY: setpriority takes plain integers and touches no memory.
            let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if is_gone(&e) {
                    done.remove(&tid);
                    continue;
                }
                return Err(CgroupError::Thread {
                    pid,
                    tid,
                    what: format!("nice {nice}"),
                    source: e,
                });
            }
        }
        if !new {
            break;
        }
    }
    Ok(done.len())
}
