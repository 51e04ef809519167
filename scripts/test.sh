#!/usr/bin/env bash
# Vireo's test command (README.md): formatting, lints, then every test layer that can
# run on this host.
#
#  - unit tests (layer 1) and tiny-guest KVM tests (layer 2): always;
#  - Linux's virtio drivers in QEMU (TCG) against `vireo vhost-user` backends (layer 3):
#    always where qemu-system-x86_64 is installed (.ci/run installs it);
#  - Linux early boot (layer 4, both kernel formats): always, with the Debian guest built
#    (or taken from its cache) by scripts/guest-image.sh;
#  - full Linux boots (layer 4): only where `vireo probe-kvm` reports hardware KVM.
#    Elsewhere they stay `ignored` in cargo's report: skipped, never counted as passed.
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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== guest image"
scripts/guest-image.sh >/dev/null

cargo build --quiet -p vireo
probe=$(target/debug/vireo probe-kvm)
echo "== KVM: $probe"
echo "== cargo test"
cargo test --workspace
# The full Linux boots (layer 4) are the only tests ignored for want of hardware KVM;
# other ignored tests are ignored for a reason of their own (see their #[ignore]).
if [[ $probe == *kvm=hardware* ]]; then
    echo "== full Linux boots (hardware KVM)"
    cargo test -p vireo --test linux_boot -- --ignored
else
    echo "   (emulated KVM: the full Linux boots are skipped and reported as ignored)"
fi

# Every cargo-fuzz target of fuzz/ for a short while (scripts/fuzz.sh installs cargo-fuzz
# if needed); a crash fails the run and leaves its input in fuzz/artifacts/.
echo "== fuzz (${FUZZ_SECONDS:-15} s per target)"
FUZZ_SECONDS=${FUZZ_SECONDS:-15} scripts/fuzz.sh

# Schema-driven requests against the API (schemathesis from PyPI, in a cached venv): no
# 5xx, every status and body as docs/api/vireo-api.json says. ~15 s.
echo "== API schema check (schemathesis)"
scripts/api-fuzz.sh
