#!/usr/bin/env bash
# Figures for issue 10 (the host manager), with the `count` tiny guest on this host's KVM:
#   1. `vireoctl start` of a defined VM to the guest's first output, against plain
#      `vireo run` to its first output (the manager's overhead), median of ROUNDS;
#   2. N VMs started at once through vireod: VMs per second, vireod's RSS, the API's
#      p50/p99 latency of GET /v1/vms/NAME while they run, and each vireo's RSS (the
#      per-VM overhead above its 32 MiB guest).
#   bench/manager.sh [ROUNDS] [N]
# Needs root for cgroups (else vireod runs with --no-cgroups) and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
n=${2:-50}
cargo build --release -q -p vireo -p vireod -p vireoctl
bin=$PWD/target/release
cargo build -q -p test-guests
guest=$(ls -t $(find target -path '*/build/test-guests-*/out/count' -type f) | head -1)
[[ -f $guest ]] || { echo "no count guest built" >&2; exit 1; }
guest=$PWD/$guest
dir=$(mktemp -d /tmp/vireo-bench-manager.XXXXXX)
sock=$dir/vireod.sock
cg=(--cgroup-base "vireo-bench-$$")
[[ $(id -u) == 0 ]] || cg=(--no-cgroups)
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
def() {
    printf 'name = "%s"\n[machine]\nkernel = "%s"\nmemory = "32M"\n' "$1" "$guest" >"$dir/$1.toml"
    ctl define "$dir/$1.toml" >/dev/null
}
now_us() { echo "${EPOCHREALTIME/./}"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# 1. start to first output.
def first
manager=() plain=()
for _ in $(seq "$rounds"); do
    # vireod keeps console.log open: wait for it to grow (the guest prints only dots).
    log=$dir/state/vms/first/console.log
    size0=$(stat -c %s "$log" 2>/dev/null || echo 0)
    t0=$(now_us)
    ctl start first >/dev/null
    until (($(stat -c %s "$log" 2>/dev/null || echo 0) > size0)); do sleep 0.001; done
    t1=$(now_us)
    manager+=($(((t1 - t0) / 1000)))
    ctl destroy first >/dev/null
    t0=$(now_us)
    coproc PLAIN { exec "$bin/vireo" run --kernel "$guest" --memory 32M 2>/dev/null; }
    IFS= read -r -n 1 -u "${PLAIN[0]}" _
    t1=$(now_us)
    kill "$PLAIN_PID"; wait "$PLAIN_PID" 2>/dev/null || true
    plain+=($(((t1 - t0) / 1000)))
done
m=$(printf '%s\n' "${manager[@]}" | median)
p=$(printf '%s\n' "${plain[@]}" | median)
echo "start to first output, median of $rounds: vireoctl start $m ms, vireo run $p ms (overhead $((m - p)) ms)"

# 2. N at once.
for i in $(seq "$n"); do def "vm$i"; done
t0=$(now_us)
seq "$n" | xargs -P "$n" -I{} "$bin/vireoctl" --socket "$sock" start vm{} >/dev/null
t1=$(now_us)
ms=$(((t1 - t0) / 1000))
running=$(ctl list --json | grep -c '"state": "running"')
echo "$n VMs started at once: $running running after $ms ms ($(awk "BEGIN {printf \"%.1f\", $running * 1000 / $ms}") VMs/s)"
python3 - "$sock" "$n" <<'PY'
import socket, sys, time
sock, n = sys.argv[1], int(sys.argv[2])
lat = []
for i in range(400):
    s = socket.socket(socket.AF_UNIX)
    t = time.perf_counter()
    s.connect(sock)
    s.sendall(f"GET /v1/vms/vm{i % n + 1} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    lat.append((time.perf_counter() - t) * 1000)
    s.close()
lat.sort()
print(f"API GET /v1/vms/NAME with {n} VMs running: p50 {lat[len(lat)//2]:.2f} ms, p99 {lat[int(len(lat)*0.99)]:.2f} ms")
PY
metrics=$(curl -s --unix-socket "$sock" http://x/metrics)
rss=$(awk '/^vireod_rss_bytes/ {print int($2 / 1048576)}' <<<"$metrics")
vm_rss=$(awk '/^vireo_vm_rss_bytes/ {s += $2; c++} END {if (c) printf "%.1f", s / c / 1048576}' <<<"$metrics")
echo "vireod RSS with $n VMs: $rss MiB; each vireo's RSS (32 MiB guest, touched pages only): $vm_rss MiB on average"
