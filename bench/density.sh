#!/usr/bin/env bash
# Density for issue 10: how many VMs one host holds within a memory budget, through
# vireod, and what each costs. VMs run the `idle` tiny guest (it halts for ever: no CPU),
# 32 MiB each; they are started in batches of BATCH until the host memory they take
# (MemAvailable's drop since the start, which counts vireo's pages, the guests' touched
# pages, KVM's and the kernel's per-VM structures) reaches BUDGET_MIB, or MAX_VMS run.
# Prints, per batch and at the end: VMs running, host memory used, per VM, vireod's RSS,
# the API's p50/p99 for GET /v1/vms/NAME, and the start rate of the last batch.
#   bench/density.sh [BUDGET_MIB] [MAX_VMS] [BATCH]      (defaults 2048 1000 50)
# Needs root for cgroups (else vireod runs with --no-cgroups) and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-2048}
max=${2:-1000}
batch=${3:-50}
cargo build --release -q -p vireo -p vireod -p vireoctl
bin=$PWD/target/release
cargo build -q -p test-guests
guest=$(ls -t $(find target -path '*/build/test-guests-*/out/idle' -type f) | head -1)
[[ -f $guest ]] || { echo "no idle guest built" >&2; exit 1; }
guest=$PWD/$guest
dir=$(mktemp -d /tmp/vireo-bench-density.XXXXXX)
sock=$dir/vireod.sock
cg=(--cgroup-base "vireo-density-$$")
[[ $(id -u) == 0 ]] || cg=(--no-cgroups)
avail_mib() { awk '/^MemAvailable/ {print int($2 / 1024)}' /proc/meminfo; }
base=$(avail_mib)
"$bin/vireod" --state-dir "$dir/state" --socket "$sock" --vireo "$bin/vireo" "${cg[@]}" \
    --log-level warn 2>"$dir/vireod.log" &
daemon=$!
cleanup() {
    for f in "$dir"/state/vms/*/; do
        [[ -d $f ]] && "$bin/vireoctl" --socket "$sock" destroy "$(basename "$f")" >/dev/null 2>&1 || true
    done
    kill "$daemon" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
ctl() { "$bin/vireoctl" --socket "$sock" "$@"; }
now_us() { echo "${EPOCHREALTIME/./}"; }
api_latency() {
    python3 - "$sock" "$1" <<'PY'
import socket, sys, time
sock, n = sys.argv[1], int(sys.argv[2])
lat = []
for i in range(200):
    s = socket.socket(socket.AF_UNIX)
    t = time.perf_counter()
    s.connect(sock)
    s.sendall(f"GET /v1/vms/vm{i % n + 1} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    lat.append((time.perf_counter() - t) * 1000)
    s.close()
lat.sort()
print(f"{lat[len(lat)//2]:.2f} {lat[int(len(lat)*0.99)]:.2f}")
PY
}
echo "budget ${budget} MiB, at most ${max} VMs, batches of ${batch}; MemAvailable at start ${base} MiB"
printf '%6s %10s %10s %10s %12s %12s\n' VMs used_MiB per_VM_MiB vireod_MiB 'API p50/p99' 'VMs/s'
n=0
while ((n < max)); do
    used=$((base - $(avail_mib)))
    ((used < budget)) || break
    from=$((n + 1)) to=$((n + batch))
    ((to <= max)) || to=$max
    for i in $(seq "$from" "$to"); do
        printf 'name = "vm%s"\n[machine]\nkernel = "%s"\nmemory = "32M"\n' "$i" "$guest" >"$dir/vm$i.toml"
        ctl define "$dir/vm$i.toml" >/dev/null
    done
    t0=$(now_us)
    seq "$from" "$to" | xargs -P 16 -I{} "$bin/vireoctl" --socket "$sock" start vm{} >/dev/null
    t1=$(now_us)
    n=$to
    sleep 1
    running=$(ctl list --json | grep -c '"state": "running"')
    used=$((base - $(avail_mib)))
    rss=$(curl -s --unix-socket "$sock" http://x/metrics | awk '/^vireod_rss_bytes/ {print int($2 / 1048576)}')
    lat=$(api_latency "$n")
    printf '%6d %10d %10.2f %10d %12s %12.1f\n' "$running" "$used" \
        "$(awk "BEGIN {print $used / $running}")" "$rss" "${lat/ //}" \
        "$(awk "BEGIN {print ($to - $from + 1) * 1e6 / ($t1 - $t0)}")"
    ((running == n)) || { echo "only $running of $n running; vireod's log:"; tail -5 "$dir/vireod.log"; break; }
done
echo "density: $n VMs running in $((base - $(avail_mib))) MiB of host memory"
