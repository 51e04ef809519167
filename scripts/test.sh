#!/usr/bin/env bash
# Vireo's test command (README.md): formatting, lints, then every test layer that can
# run on this host.
#
#  - unit tests (layer 1) and tiny-guest KVM tests (layer 2): always;
#  - Linux's virtio drivers in QEMU (TCG) against `vireo vhost-user` backends (layer 3):
#    always where qemu-system-x86_64 is installed (.ci/run installs it);
#  - Linux early boot (linux_boot.rs, both kernel formats): always, with the Debian guest
#    built (or taken from its cache) by scripts/guest-image.sh;
#  - full Linux boots, every device under Linux's own drivers (layer 4, linux_guest.rs):
#    always. Where `vireo probe-kvm` says kvm=complete they run directly; elsewhere in
#    the nested test host (scripts/nested-host.sh: an L1 Linux under QEMU TCG with a
#    complete KVM). A machine without QEMU counts them as skipped (a failure under CI).
#  - every cargo-fuzz target (scripts/fuzz.sh), ${FUZZ_SECONDS:-15} s each;
#  - schemathesis against the API's OpenAPI document (scripts/api-fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# A test whose prerequisite is missing goes through test-support's skip policy
# (crates/test-support/src/skip.rs): under CI=true it fails; here it prints
# `SKIP <test>: <why>` and appends `<test>: <why>` to $VIREO_SKIP_LOG. The skips are
# listed when the script ends, whichever stage it ends in.
VIREO_SKIP_LOG=$(mktemp "${TMPDIR:-/tmp}/vireo-skips.XXXXXX")
export VIREO_SKIP_LOG
skip_summary() {
    if [[ -s $VIREO_SKIP_LOG ]]; then
        echo "== skipped: $(sort -u "$VIREO_SKIP_LOG" | wc -l) tests"
        sort -u "$VIREO_SKIP_LOG" | sed 's/^/   /'
    else
        echo "== skipped: none"
    fi
    rm -f "$VIREO_SKIP_LOG"
}
trap skip_summary EXIT

# Each stage's wall time, printed as the next one starts and at the end.
STAGE= STAGE_START=$SECONDS
stage() {
    [[ -n $STAGE ]] && echo "   ($STAGE: $((SECONDS - STAGE_START)) s)"
    STAGE=$1 STAGE_START=$SECONDS
    [[ -n $STAGE ]] && echo "== $STAGE"
    return 0
}

stage "cargo fmt --check"
cargo fmt --all -- --check
stage "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

stage "guest image"
scripts/guest-image.sh >/dev/null

# vireod's integration tests run the workspace's vireo and vireoctl binaries.
cargo build --quiet -p vireo -p vireoctl -p vireod
probe=$(target/debug/vireo probe-kvm)
echo "   KVM: $probe"
stage "cargo test"
cargo test --workspace

# Every cargo-fuzz target of fuzz/ for a short while (scripts/fuzz.sh installs cargo-fuzz
# if needed); a crash fails the run and leaves its input in fuzz/artifacts/.
stage "fuzz (${FUZZ_SECONDS:-15} s per target)"
FUZZ_SECONDS=${FUZZ_SECONDS:-15} scripts/fuzz.sh

# Schema-driven requests against the API (schemathesis from PyPI, in a cached venv): no
# 5xx, every status and body as docs/api/vireo-api.json says. ~15 s. Both before layer 4, the
# longest stage, so that their failures come early.
stage "API schema check (schemathesis)"
scripts/api-fuzz.sh

# Published Firecracker clients (firecracker-rs-sdk, firepilot, hysn-firecracker-python),
# unchanged, with vireo as their "firecracker" and a tiny guest: their own tests and
# examples (docs/firecracker-clients.md). ~5 min the first time (their builds), ~3 min after.
stage "published Firecracker clients (scripts/fc-clients.sh)"
scripts/fc-clients.sh

# Layer 4: the full Linux boots are the ignored tests of linux_guest.rs, and vireod's
# with Linux guests those of linux_vms.rs (other ignored tests are ignored for a reason
# of their own, see their #[ignore]). Both run in one nested host, one after the other.
stage "layer 4: full Linux boots (vireo, then vireod)"
executable() { # <package> <test>
    cargo test -p "$1" --test "$2" --no-run 2>&1 |
        sed -n "s/.*Executable tests\/$2.rs (\(.*\))\$/\1/p"
}
l4=$(executable vireo linux_guest)
l4m=$(executable vireod linux_vms)
for b in "$l4" "$l4m"; do
    [[ -x $b ]] || { echo "cannot find a layer-4 test executable ($l4, $l4m)" >&2; exit 1; }
done
# Each executable through scripts/lib/each-test.sh (each test alone, under a time limit,
# a failed one run again); the run fails if either failed.
layer4=(bash -c 'rc=0; for b; do scripts/lib/each-test.sh "$b" --ignored || rc=1; done; exit $rc' layer4 "$l4" "$l4m")
if [[ $probe == *kvm=complete* ]]; then
    echo "   this host's KVM is complete: running them directly"
    "${layer4[@]}"
elif command -v qemu-system-x86_64 >/dev/null; then
    echo "   this host's KVM is incomplete: running them in the nested test host"
    scripts/nested-host.sh --prepare >/dev/null
    # One deadline for all the tries (a retry resumes where the L1 died): 40 min, so CI's
    # 90 min hold it after the ~20 min of the stages before.
    scripts/nested-host.sh --timeout "${VIREO_L4_TIMEOUT:-2400}" --retries 3 -- "${layer4[@]}"
else
    why="layer 4: this host's KVM is incomplete and qemu-system-x86_64 (the nested host) is not installed"
    [[ ${CI:-} == true ]] && { echo "$why" >&2; exit 1; }
    echo "linux_guest, linux_vms (all): $why" >>"$VIREO_SKIP_LOG"
fi

stage ""
