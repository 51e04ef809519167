#!/usr/bin/env bash
# Published Firecracker clients, unchanged, against Vireo (docs/firecracker-clients.md).
#
# Each client is a pinned release from its registry (clients/ holds the pins). Its source
# is fetched by the registry's own client into $VIREO_CLIENTS_CACHE (never into this
# repository) and its own test suite and examples run there, with Vireo as the
# "firecracker" binary:
#
#  - firecracker-rs-sdk (crates.io): its tests take the binary, kernel and rootfs from the
#    FIRECRACKER, KERNEL and ROOTFS environment variables;
#  - firepilot (crates.io): its tests and examples run /usr/bin/firecracker; its examples
#    find their kernel and rootfs already downloaded;
#  - hysn-firecracker-python (PyPI): its pytest suite runs /usr/local/bin/firecracker with
#    the kernel and rootfs under /var/lib/firecracker, nftables and a Docker daemon, as its
#    own test image (Dockerfile.test) has them.
#
# The kernel is the tiny guest `idle` (crates/test-guests: it halts for ever, so pause,
# resume and Ctrl+Alt+Del meet a running VM that costs no CPU); the rootfs an empty file
# the guest never reads. Every case runs in new mount, network and PID namespaces
# (`sandbox` below): Vireo at the clients' paths through overlays only that run sees,
# /tmp and /var/lib/firecracker on tmpfs, loopback, a TAP `tap0`, an `eth0` (a veth whose
# peer is in the same namespace) as the default route and no name server, so that nothing
# leaves the namespace; no VM or dockerd outlives the run. Builds and downloads come
# before, outside.
#
# Usage: scripts/fc-clients.sh [--release] [CASE...]
#   CASE: a case name of the table printed at the end (default: all of them).
# Prints one line per case, a table, and "N passed, N failed"; exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PROFILE=debug
if [[ ${1:-} == --release ]]; then
    PROFILE=release
    shift
fi
CACHE="${VIREO_CLIENTS_CACHE:-$HOME/.cache/vireo/clients}"
VIREO_TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$CACHE/src" "$CACHE/logs"

# What the runs need besides Rust and Python (.ci/run installs them): the hysn client's
# test environment is nftables with its Python binding and a Docker daemon.
missing=()
for tool in unshare ip jq pkg-config nft dockerd; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
/usr/bin/python3 -c 'import nftables' 2>/dev/null || missing+=("python3-nftables")
if ((${#missing[@]})); then
    echo "fc-clients: missing ${missing[*]} (.ci/run installs them)" >&2
    exit 1
fi

# Vireo and the tiny guests.
build=(-p vireo -p test-guests)
[[ $PROFILE == release ]] && build+=(--release)
nice -n 10 cargo build --quiet "${build[@]}"
VIREO="$VIREO_TARGET/$PROFILE/vireo"
# shellcheck disable=SC2012 # the newest build of the guests, by modification time
KERNEL=$(ls -t "$VIREO_TARGET"/"$PROFILE"/build/test-guests-*/out/idle 2>/dev/null | head -1)
[[ -x $VIREO && -f ${KERNEL:-} ]] || {
    echo "fc-clients: no vireo ($VIREO) or idle guest" >&2
    exit 1
}
ROOTFS="$CACHE/rootfs.ext4"
truncate -s 1M "$ROOTFS"

# --- The crates: a throw-away cargo project depending on each pinned release, so that cargo
# downloads (and checks) the published crates; `cargo metadata` says where they are.
FETCH="$CACHE/fetch"
mkdir -p "$FETCH/src"
{
    printf '[package]\nname = "vireo-client-fetch"\nversion = "0.0.0"\nedition = "2021"\n'
    printf 'publish = false\n[workspace]\n[dependencies]\n'
    sed -n 's/^\([a-z0-9_-]*\) *= *"\(.*\)".*$/\1 = "=\2"/p' clients/crates.toml
} >"$FETCH/Cargo.toml"
touch "$FETCH/src/lib.rs"
crate_source() { # <crate> -> a fresh copy of the published crate in $CACHE/src
    local dir copy
    dir=$(cargo metadata --quiet --format-version 1 --manifest-path "$FETCH/Cargo.toml" |
        jq -r --arg n "$1" '.packages[] | select(.name == $n) | .manifest_path' | xargs dirname)
    copy="$CACHE/src/$(basename "$dir")"
    if [[ ! -f $copy/.vireo-copied ]]; then
        rm -rf "$copy"
        cp -r "$dir" "$copy"
        # Our lock file where the crate ships none, so a run builds what was tested.
        if [[ -f clients/$1.Cargo.lock ]]; then cp "clients/$1.Cargo.lock" "$copy/Cargo.lock"; fi
        touch "$copy/.vireo-copied"
    fi
    echo "$copy"
}
RS_SDK=$(crate_source firecracker-rs-sdk)
FIREPILOT=$(crate_source firepilot)

# --- The Python client: its pinned requirements in a venv, and its sdist (which has the
# tests) unpacked.
PY_REQ=clients/hysn-firecracker-python.requirements.txt
PY_VERSION=$(sed -n 's/^hysn-firecracker-python==//p' "$PY_REQ")
VENV="$CACHE/venv-hysn-firecracker-python-$PY_VERSION"
if [[ ! -f $VENV/.vireo-installed ]] || ! cmp -s "$PY_REQ" "$VENV/.vireo-installed"; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$PY_REQ"
    cp "$PY_REQ" "$VENV/.vireo-installed"
fi
PY_SRC="$CACHE/src/hysn_firecracker_python-$PY_VERSION"
if [[ ! -d $PY_SRC/tests ]]; then
    sdist=$(mktemp -d)
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$sdist" "hysn-firecracker-python==$PY_VERSION"
    tar -xzf "$sdist"/*.tar.gz -C "$CACHE/src"
    rm -rf "$sdist"
fi

# --- Builds, before the runs (which have no network).
export CARGO_TARGET_DIR="$CACHE/target"
# firepilot's .cargo/config runs its tests through `sudo -E`; the runs are root already.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=env
RS_RUNTIMES=(std tokio async_std)
echo "== building the clients' tests and examples"
# quiet_build <dir> <command...>: its output in the build log, shown if it fails.
BUILD_LOG="$CACHE/logs/build.log"
: >"$BUILD_LOG"
quiet_build() {
    local dir=$1
    shift
    if ! (cd "$dir" && nice -n 10 "$@") >>"$BUILD_LOG" 2>&1; then
        echo "fc-clients: building in $dir failed: $*" >&2
        tail -n 40 "$BUILD_LOG" >&2
        exit 1
    fi
}
for rt in "${RS_RUNTIMES[@]}"; do
    quiet_build "$RS_SDK" cargo test --quiet --locked --features "_rt-${rt//_/-}" \
        --lib --test "test_${rt}_firecracker" --no-run
done
quiet_build "$FIREPILOT" cargo test --quiet --locked --no-run
quiet_build "$FIREPILOT" cargo build --quiet --locked --examples
# firepilot's examples download Firecracker's quickstart kernel and rootfs unless the files
# are there: they are, with the tiny guest.
mkdir -p "$FIREPILOT/examples/resources"
cp "$KERNEL" "$FIREPILOT/examples/resources/kernel.bin"
cp "$ROOTFS" "$FIREPILOT/examples/resources/rootfs.ext4"

# sandbox <log> <dir> <command...>: the command in new mount, network and PID namespaces
# (see the top); with DOCKERD=1 a Docker daemon of its own runs there too (storage in the
# run's tmpfs; its bridge and its iptables rules, a Docker host's `ip nat` and `ip filter`
# tables that the hysn client's port forwarding expects, only in that network namespace),
# DOCKER_HOST naming it. The namespace's init is killed with unshare, so whatever the
# client left behind ends with the run.
sandbox() {
    local log=$1 dir=$2
    shift 2
    local scratch
    scratch=$(mktemp -d "$CACHE/run.XXXXXX")
    local rc=0
    # shellcheck disable=SC2016 # expanded by the inner shell
    timeout -k 10 "${VIREO_CLIENT_TIMEOUT:-900}" \
        unshare --mount --net --pid --fork --kill-child --mount-proc \
        bash -c '
        set -e
        s=$1 vireo=$2 kernel=$3 rootfs=$4 dir=$5
        shift 5
        mount --make-rprivate /
        mount -t tmpfs tmpfs "$s"
        # A /tmp of its own: what the clients leave there (sockets, firepilot'"'"'s
        # /tmp/firepilot) goes with the run.
        mount -t tmpfs tmpfs /tmp
        for bin in /usr/bin /usr/local/bin; do
            mkdir -p "$s$bin/up" "$s$bin/work"
            ln -s "$vireo" "$s$bin/up/firecracker"
            mount -t overlay overlay -o "lowerdir=$bin,upperdir=$s$bin/up,workdir=$s$bin/work" "$bin"
        done
        # No name server: a lookup fails at once on loopback instead of waiting on eth0.
        : >"$s/resolv.conf"
        mount --bind "$s/resolv.conf" /etc/resolv.conf
        mkdir -p "$s/varlib" /var/lib/firecracker
        mount --bind "$s/varlib" /var/lib/firecracker
        cp "$kernel" /var/lib/firecracker/vmlinux-6.1.159
        cp "$rootfs" /var/lib/firecracker/devsecops-box.img
        ip link set lo up
        ip tuntap add tap0 mode tap
        ip link add eth0 type veth peer name eth0peer
        ip link set eth0peer up
        ip addr add 192.0.2.2/24 dev eth0
        ip link set eth0 up
        ip route add default via 192.0.2.1
        if [ "${DOCKERD:-}" = 1 ]; then
            mkdir -p "$s/docker" "$s/docker-run"
            dockerd --host "unix://$s/docker.sock" --data-root "$s/docker" \
                --exec-root "$s/docker-run" --pidfile "$s/docker.pid" \
                --storage-driver=vfs >"$s/dockerd.log" 2>&1 &
            export DOCKER_HOST="unix://$s/docker.sock"
            for _ in $(seq 200); do [ -S "$s/docker.sock" ] && break; sleep 0.1; done
            docker version --format "dockerd {{.Server.Version}}" ||
                { tail -20 "$s/dockerd.log"; exit 1; }
        fi
        cd "$dir"
        "$@"
        ' sandbox "$scratch" "$VIREO" "$KERNEL" "$ROOTFS" "$dir" "$@" >"$log" 2>&1 || rc=$?
    rmdir "$scratch" 2>/dev/null || true
    return $rc
}

# The cases: name, directory, command, whether a Docker daemon runs beside. Each runs in
# its own sandbox.
declare -a NAMES DIRS CMDS DOCKERDS
add() {
    NAMES+=("$1")
    DIRS+=("$2")
    CMDS+=("$3")
    DOCKERDS+=("${4:-0}")
}
for rt in "${RS_RUNTIMES[@]}"; do
    feat="_rt-${rt//_/-}"
    add "firecracker-rs-sdk/$rt/lib" "$RS_SDK" \
        "cargo test --offline --locked --features $feat --lib"
    add "firecracker-rs-sdk/$rt/test_${rt}_firecracker" "$RS_SDK" \
        "cargo test --offline --locked --features $feat --test test_${rt}_firecracker"
done
add "firepilot/tests" "$FIREPILOT" "cargo test --offline --locked"
add "firepilot/examples/simple_vm" "$FIREPILOT" "cargo run --offline --locked --example simple_vm"
add "firepilot/examples/vm_network" "$FIREPILOT" "cargo run --offline --locked --example vm_network"
# Its whole suite but the tests clients/hysn-firecracker-python.deselect lists, each with
# the reason it cannot pass here (none of them is Vireo's doing, MMDS aside).
deselect=()
while read -r id _; do
    [[ -z $id || $id == \#* ]] || deselect+=(--deselect "$id")
done <clients/hysn-firecracker-python.deselect
add "hysn-firecracker-python/pytest" "$PY_SRC" \
    "$VENV/bin/python -m pytest -p no:cacheprovider -q -rfEs --tb=short --durations=10 ${deselect[*]}" 1

export FIRECRACKER="$VIREO" KERNEL ROOTFS
passed=0 failed=0
declare -a ROWS
echo "== running (logs in $CACHE/logs)"
for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]}
    if (($# > 0)); then
        want=0
        for w in "$@"; do [[ $w == "$name" ]] && want=1; done
        ((want)) || continue
    fi
    log="$CACHE/logs/${name//\//_}.log"
    start=$SECONDS
    # shellcheck disable=SC2086 # CMDS hold words
    if DOCKERD=${DOCKERDS[$i]} sandbox "$log" "${DIRS[$i]}" ${CMDS[$i]}; then
        verdict=pass passed=$((passed + 1))
    else
        verdict=FAIL failed=$((failed + 1))
    fi
    # The client's own counts: cargo's "test result:" lines, pytest's last line.
    counts=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log" |
        awk '{p += $1; f += $2} END {if (NR) printf "%d passed, %d failed", p, f}')
    [[ -n $counts ]] || counts=$(grep -E '^=+ .*(passed|failed).* in [0-9.]+s' "$log" | tail -1 |
        sed 's/^=* //; s/ =*$//; s/ in [0-9.]*s.*//' || true)
    printf '%-50s %s  %3d s  %s\n' "$name" "$verdict" $((SECONDS - start)) "$counts"
    ROWS+=("| $name | $verdict | ${counts:--} |")
    if [[ $verdict == FAIL ]]; then
        echo "---- last lines of $log"
        tail -n 40 "$log" | sed 's/^/    /'
    fi
done
echo
echo "| case | result | the client's own tests |"
echo "| --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
echo "fc-clients: $passed passed, $failed failed"
((failed == 0))
