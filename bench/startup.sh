#!/usr/bin/env bash
# bench/startup.sh — how fast and how small a tiny Vireo VM starts.
#
# Measures, over N runs (median and spread), for the tiny test guests:
#   1. wall ms from exec of `vireo` to its exit (hello64, 1 vCPU, 128 MiB, --serial none)
#   2. CPU ms (user + sys, every thread) of that same run (getrusage of the child: wait4)
#   3. ms from exec to the first byte the guest prints (hello64, --serial stdio into a pipe)
#   4. memory: peak RSS of hello64's own address space (VmHWM at its exit), and, for the never-ending `count` guest sampled
#      after a settle time, total RSS, the guest RAM mapping's RSS, and their difference
#      (the VMM's own overhead); also how long vireo takes to exit after SIGTERM.
# plus the machine context (KVM hardware/emulated, nproc, kernel, commit, date).
#
# It is a benchmark, not a test: targets are printed next to the figures, never enforced.
# See bench/README.md for what each figure means and how it is measured.
#
# Usage: bench/startup.sh [-n RUNS] [--json] [--no-build] [--settle SECONDS]
#   VIREO=/path/to/vireo bench/startup.sh   benchmarks that binary (no build); the test
#                                           guests still come from this repo's target/.

set -euo pipefail

usage() {
    sed -n '/^# Usage:/,/^$/p' "$0" | sed 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------
runs=20
json=0
build=1
settle=0.5        # seconds the `count` guest runs before its memory is sampled

while (($#)); do
    case "$1" in
        -n) runs="${2:?-n needs a number}"; shift 2 ;;
        -n*) runs="${1#-n}"; shift ;;
        --json) json=1; shift ;;
        --no-build) build=0; shift ;;
        --settle) settle="${2:?--settle needs seconds}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "startup.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$runs" =~ ^[0-9]+$ ]] || ((runs < 10)); then
    echo "startup.sh: -n must be a whole number >= 10 (got '$runs')" >&2
    exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Progress goes to stderr, so stdout is only the table (or the JSON).
log() { echo "startup.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------
# Tools: python3 does the measuring (os.wait4 gives the child's rusage).
# ---------------------------------------------------------------------------------------
if ! command -v python3 >/dev/null; then
    echo "startup.sh: python3 is needed" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------
# Build: the release binary and the test guests (built by test-guests' build script,
# which `--tests` pulls in as a dev-dependency of vireo).
# ---------------------------------------------------------------------------------------
if [[ -n "${VIREO:-}" ]]; then
    vireo="$VIREO"
    build=0
else
    vireo="$repo/target/release/vireo"
fi
if ((build)); then
    log "building: cargo build --release -p vireo --tests"
    if ! (cd "$repo" && cargo build --release -p vireo --tests --quiet); then
        echo "startup.sh: the build failed; rerun with --no-build to use the binary already in target/release" >&2
        exit 1
    fi
fi
[[ -x "$vireo" ]] || { echo "startup.sh: no binary at $vireo (build it, or drop --no-build)" >&2; exit 1; }

# The newest test-guests output directory of the release profile (ls -t: newest first).
# shellcheck disable=SC2012
guests="$(ls -td "$repo"/target/release/build/test-guests-*/out 2>/dev/null | head -1 || true)"
for guest in hello64 count; do
    if [[ -z "$guests" || ! -f "$guests/$guest" ]]; then
        echo "startup.sh: guest '$guest' not found; run: cargo build --release -p vireo --tests" >&2
        exit 1
    fi
done

# ---------------------------------------------------------------------------------------
# Context: what machine and which code the figures are for.
# ---------------------------------------------------------------------------------------
commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# --no-optional-locks: do not let `git status` refresh (write) the index of a shared tree.
if [[ -n "$(git -C "$repo" --no-optional-locks status --porcelain 2>/dev/null || true)" ]]; then
    commit="$commit-dirty"
fi
log "probing KVM: vireo probe-kvm"
probe="$("$vireo" probe-kvm 2>&1 || true)"
probe="${probe//$'\n'/ }"
case "$probe" in
    *speed=emulated*) kvm_kind=emulated ;;
    *speed=hardware*) kvm_kind=hardware ;;
    *) kvm_kind=unknown ;;
esac

nproc="$(nproc)"
kernel="$(uname -r)"
date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

# How busy the machine is right now (all CPUs, over 1 s, before any run): the load average
# lags by minutes (e.g. after the build above), this does not. From the "cpu" line of
# /proc/stat: busy = 1 - (idle + iowait) / total.
cpu_busy_pct() {
    local a b
    read -r -a a < <(grep '^cpu ' /proc/stat)
    sleep 1
    read -r -a b < <(grep '^cpu ' /proc/stat)
    awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 2; i <= n; i++) total += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f", total ? 100 * (1 - idle / total) : 0
    }'
}
busy_start="$(cpu_busy_pct)"
cpu_model="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"

# Everything the python part needs, through its environment.
export BENCH_RUNS="$runs" BENCH_JSON="$json" BENCH_SETTLE="$settle"
export BENCH_VIREO="$vireo" BENCH_GUESTS="$guests"
export BENCH_COMMIT="$commit" BENCH_PROBE="$probe" BENCH_KVM="$kvm_kind"
export BENCH_NPROC="$nproc" BENCH_KERNEL="$kernel" BENCH_DATE="$date"
export BENCH_LOAD_START="$load_start" BENCH_BUSY_START="$busy_start" BENCH_CPU_MODEL="$cpu_model"

log "measuring: $runs rounds of hello64 x3 + reference runs, then count x$runs (${settle}s each)"

# ---------------------------------------------------------------------------------------
# Measurement and report (python3, read from this heredoc).
# ---------------------------------------------------------------------------------------
python3 - <<'PY'
import ctypes
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

env = os.environ
RUNS = int(env["BENCH_RUNS"])
SETTLE = float(env["BENCH_SETTLE"])
VIREO = env["BENCH_VIREO"]
HELLO64 = os.path.join(env["BENCH_GUESTS"], "hello64")
COUNT = os.path.join(env["BENCH_GUESTS"], "count")
GUEST_BYTES = 128 << 20           # --memory 128M
GUEST_KB = GUEST_BYTES >> 10      # the size smaps shows for the guest RAM mapping
HELLO64_OUTPUT = b"vireo-guest: hello from 64-bit entry\nzero page ok\n"
WARMUP = 2                        # unrecorded runs first: page cache, binary, KVM module warm

# Targets (PERFORMANCE.md and the benchmark's brief); printed, never enforced.
TARGETS = {
    "cpu_ms": ("<", 5.0),
    "first_output_ms": ("<=", 3.0),
    "overhead_rss_mib": ("<", 4.0),
}

def run_cmd(kernel, serial):
    return [VIREO, "run", "--kernel", kernel, "--cpus", "1", "--memory", "128M",
            "--serial", serial]

now = time.perf_counter_ns
ms = lambda ns: ns / 1e6
errlog = tempfile.TemporaryFile()  # vireo's stderr (the emulated-KVM warning, errors)

def fail(what, status):
    errlog.seek(0)
    sys.stderr.write(f"startup.sh: {what} (wait status {status:#x})\n")
    sys.stderr.write(errlog.read().decode(errors="replace")[-2000:])
    sys.exit(1)

def reap(p):
    """wait4 the child: (exit status, rusage). Tell Popen it is gone."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return status, ru

def spawn_floor():
    """exec -> exit of /bin/true the same way: what the harness itself costs."""
    t0 = now()
    p = subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    reap(p)
    return ms(now() - t0)

# ptrace(2), to stop vireo at its exit while its memory is still there (see hello_peak).
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_CONT, PTRACE_SEIZE = 7, 0x4206
PTRACE_O_TRACEEXIT, PTRACE_EVENT_EXIT = 0x40, 6

def proc_status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

def hello_peak():
    """Peak RSS (VmHWM) of hello64's own address space.

    Not ru_maxrss: at exec, Linux folds the *old* address space's peak (here python's,
    ~14 MiB, the same with fork, vfork or posix_spawn) into the maxrss that wait4 reports,
    so that is max(spawner, vireo). Instead attach with PTRACE_SEIZE right after exec (the
    high-water mark only grows, so attaching late loses nothing) and ask for a stop at exit
    (PTRACE_O_TRACEEXIT): there the address space is still intact; read VmHWM, continue.
    A separate, untimed run: the tracing would disturb the timings.
    """
    errlog.seek(0); errlog.truncate()
    p = subprocess.Popen(run_cmd(HELLO64, "none"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=errlog)
    if libc.ptrace(PTRACE_SEIZE, p.pid, None, PTRACE_O_TRACEEXIT) != 0:
        err = ctypes.get_errno()
        p.kill(); reap(p)
        sys.exit(f"startup.sh: ptrace(PTRACE_SEIZE) failed: {os.strerror(err)}")
    hwm_kb = None
    while True:
        _, status, _ = os.wait4(p.pid, 0)
        if os.WIFSTOPPED(status):
            sig = os.WSTOPSIG(status)
            if sig == signal.SIGTRAP and status >> 16 == PTRACE_EVENT_EXIT:
                hwm_kb = proc_status_kb(p.pid, "VmHWM")
                sig = 0
            elif status >> 16:          # another ptrace event stop: nothing to deliver
                sig = 0
            libc.ptrace(PTRACE_CONT, p.pid, None, sig)   # pass real signals on
            continue
        p.returncode = os.waitstatus_to_exitcode(status)
        break
    if p.returncode != 0 or hwm_kb is None:
        fail("hello64 (peak RSS run) did not exit 0 at its exit stop", status)
    return {"peak_rss_mib": hwm_kb / 1024}

def cpu_of(args):
    """CPU ms (user + sys) of one `vireo ARGS` run: reference points for the CPU figure."""
    p = subprocess.Popen([VIREO, *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, ru = reap(p)
    if p.returncode != 0:
        fail(f"vireo {' '.join(args)} did not exit 0", status)
    return (ru.ru_utime + ru.ru_stime) * 1e3

def hello_quiet():
    """hello64 with --serial none: wall and CPU of exec -> exit (getrusage via wait4)."""
    errlog.seek(0); errlog.truncate()
    t0 = now()
    p = subprocess.Popen(run_cmd(HELLO64, "none"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=errlog)
    status, ru = reap(p)
    t1 = now()
    if p.returncode != 0:
        fail("hello64 (--serial none) did not exit 0", status)
    return {
        "wall_ms": ms(t1 - t0),
        "user_ms": ru.ru_utime * 1e3,
        "sys_ms": ru.ru_stime * 1e3,
        "cpu_ms": (ru.ru_utime + ru.ru_stime) * 1e3,
        "ru_maxrss_mib": ru.ru_maxrss / 1024,  # max(python's RSS, vireo's): see hello_peak
        "minflt": ru.ru_minflt,
        "vcsw": ru.ru_nvcsw,
        "ivcsw": ru.ru_nivcsw,
    }

def hello_stdout():
    """hello64 with --serial stdio into a pipe: exec -> first byte of guest output."""
    errlog.seek(0); errlog.truncate()
    t0 = now()
    p = subprocess.Popen(run_cmd(HELLO64, "stdio"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=errlog)
    fd = p.stdout.fileno()
    first = os.read(fd, 1)            # blocks until vireo writes the guest's first byte
    t_first = now()
    out = bytearray(first)
    while chunk := os.read(fd, 4096):
        out += chunk
    status, ru = reap(p)
    t_exit = now()
    p.stdin.close(); p.stdout.close()
    if p.returncode != 0 or bytes(out) != HELLO64_OUTPUT:
        fail(f"hello64 (--serial stdio) exit {p.returncode}, output {bytes(out)!r}", status)
    return {"first_output_ms": ms(t_first - t0), "wall_stdio_ms": ms(t_exit - t0),
            "cpu_stdio_ms": (ru.ru_utime + ru.ru_stime) * 1e3}

def read_smaps(pid):
    """(total Rss kB from smaps_rollup, [(Rss kB, AnonHugePages kB) of each anonymous
    mapping of exactly the guest's size])."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        total = next(int(l.split()[1]) for l in f if l.startswith("Rss:"))
    guest, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                # A mapping's first line: "start-end perms offset dev inode [path]".
                cur = {"anon": len(head) < 6 or head[5].startswith("[anon"), }
            elif head[0] == "Size:":
                cur["size"] = int(head[1])
            elif head[0] == "Rss:":
                cur["rss"] = int(head[1])
            elif head[0] == "AnonHugePages:":
                cur["thp"] = int(head[1])
            elif head[0] == "VmFlags:":   # the last line of a mapping
                if cur["anon"] and cur.get("size") == GUEST_KB:
                    guest.append((cur["rss"], cur.get("thp", 0)))
    return total, guest

def count_memory():
    """count guest (never exits): sample memory after SETTLE s, then SIGTERM it."""
    errlog.seek(0); errlog.truncate()
    p = subprocess.Popen(run_cmd(COUNT, "none"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=errlog)
    time.sleep(SETTLE)
    if os.wait4(p.pid, os.WNOHANG)[0] != 0:
        fail("count exited before its memory was sampled", 0)
    total_kb, guest = read_smaps(p.pid)
    hwm_kb = proc_status_kb(p.pid, "VmHWM")     # peak so far of vireo's own address space
    t_term = now()
    p.send_signal(signal.SIGTERM)
    status, ru = reap(p)
    t_exit = now()
    if p.returncode != 0:
        fail("count did not exit 0 on SIGTERM", status)
    if len(guest) != 1:
        fail(f"expected one anonymous {GUEST_KB} kB mapping (guest RAM), found {len(guest)}", 0)
    guest_kb, guest_thp_kb = guest[0]
    return {
        "total_rss_mib": total_kb / 1024,
        "guest_rss_mib": guest_kb / 1024,
        "guest_thp_mib": guest_thp_kb / 1024,
        "overhead_rss_mib": (total_kb - guest_kb) / 1024,
        "count_peak_rss_mib": hwm_kb / 1024,
        "sigterm_exit_ms": ms(t_exit - t_term),
    }

# --- the runs -----------------------------------------------------------------------
for _ in range(WARMUP):
    spawn_floor(); hello_quiet(); hello_stdout()

samples = {}
def record(d):
    for k, v in d.items():
        samples.setdefault(k, []).append(v)

# Interleave the kinds of run so drift on the machine hits them alike.
for _ in range(RUNS):
    record({"spawn_floor_ms": spawn_floor()})
    record(hello_quiet())
    record(hello_stdout())
    record(hello_peak())
    record({"cpu_version_ms": cpu_of(["--version"]),
            "cpu_probe2000_ms": cpu_of(["probe-kvm", "--iterations", "2000"])})
for _ in range(RUNS):
    record(count_memory())

# --- statistics -----------------------------------------------------------------------
def stats(xs):
    s = sorted(xs)
    med = statistics.median(s)
    p90 = s[max(0, math.ceil(0.9 * len(s)) - 1)]      # nearest-rank
    return {
        "median": med, "min": s[0], "p90": p90, "max": s[-1],
        "mad": statistics.median(abs(x - med) for x in s),
        "mean": statistics.fmean(s), "stdev": statistics.stdev(s) if len(s) > 1 else 0.0,
        "n": len(s),
    }

summary = {k: stats(v) for k, v in samples.items()}
with open("/proc/loadavg") as f:
    load_end = " ".join(f.read().split()[:3])

# Rows of the table: (key, label, decimals). Targets come from TARGETS.
ROWS = [
    ("wall_ms", "exec→exit wall (ms)", 2),
    ("cpu_ms", "exec→exit CPU user+sys (ms)", 2),
    ("first_output_ms", "exec→first output (ms)", 2),
    ("wall_stdio_ms", "exec→exit wall, stdio (ms)", 2),
    ("spawn_floor_ms", "ref: /bin/true exec→exit (ms)", 2),
    ("cpu_version_ms", "ref: CPU vireo --version (ms)", 2),
    ("cpu_probe2000_ms", "ref: CPU probe-kvm 2000 (ms)", 2),
    ("peak_rss_mib", "peak RSS, hello64 (MiB)", 2),
    ("total_rss_mib", "RSS, count @settle (MiB)", 2),
    ("guest_rss_mib", "  guest RAM mapping (MiB)", 2),
    ("overhead_rss_mib", "VMM overhead RSS (MiB)", 2),
    ("count_peak_rss_mib", "peak RSS, count (MiB)", 2),
    ("sigterm_exit_ms", "SIGTERM→exit, count (ms)", 2),
]

def target_text(key, med):
    if key not in TARGETS:
        return ""
    op, value = TARGETS[key]
    met = med < value if op == "<" else med <= value
    return f"{op} {value:g}  {'met' if met else 'MISSED'}"

context = {
    "runs": RUNS,
    "commit": env["BENCH_COMMIT"],
    "kvm": env["BENCH_KVM"],
    "probe_kvm": env["BENCH_PROBE"],
    "nproc": int(env["BENCH_NPROC"]),
    "cpu_model": env["BENCH_CPU_MODEL"],
    "kernel": env["BENCH_KERNEL"],
    "date": env["BENCH_DATE"],
    "vireo": VIREO,
    "settle_s": SETTLE,
    "warmup_runs": WARMUP,
    "loadavg_start": env["BENCH_LOAD_START"],
    "loadavg_end": load_end,
    "cpu_busy_pct_before": int(env["BENCH_BUSY_START"]),
}

if env["BENCH_JSON"] == "1":
    json.dump({
        "context": context,
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
        "summary": summary,
        "samples": samples,
    }, sys.stdout, indent=2)
    print()
    sys.exit(0)

print(f"vireo startup benchmark — {RUNS} runs, commit {context['commit']}, "
      f"KVM: {context['kvm']} ({context['probe_kvm']})")
print(f"host: {context['nproc']} CPUs ({context['cpu_model'] or 'unknown CPU'}), "
      f"kernel {context['kernel']}, {context['date']}")
print(f"host busy just before: {context['cpu_busy_pct_before']}% of all CPUs (1 s sample); "
      f"load average {context['loadavg_start']} at start, {load_end} at end")
print(f"guests: hello64 / count, 1 vCPU, 128 MiB; {WARMUP} warm-up runs not counted; "
      f"count sampled after {SETTLE:g} s")
head = f"{'metric':<31}{'median':>8}{'min':>8}{'p90':>8}{'max':>8}{'MAD':>7}{'stdev':>7}   target"
print(head)
print("-" * len(head))
for key, label, d in ROWS:
    s = summary[key]
    print(f"{label:<31}{s['median']:>8.{d}f}{s['min']:>8.{d}f}{s['p90']:>8.{d}f}"
          f"{s['max']:>8.{d}f}{s['mad']:>7.{d}f}{s['stdev']:>7.{d}f}   "
          f"{target_text(key, s['median'])}".rstrip())
walls = samples["wall_ms"]
slow = sum(w > 1.8 * min(walls) for w in walls)
if slow:
    print(f"note: {slow} of {len(walls)} exec→exit walls are > 1.8x the fastest: the kernel's VM "
          f"teardown sometimes waits on SRCU grace periods (bench/README.md)")
if context["cpu_busy_pct_before"] > 10:
    print(f"note: the machine was {context['cpu_busy_pct_before']}% busy just before the runs "
          f"(something else is running): figures may be inflated")
thp = summary["guest_thp_mib"]["max"]
if thp:
    print(f"note: up to {thp:g} MiB of the guest mapping was transparent huge pages")
PY
