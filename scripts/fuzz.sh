#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for a while (stable Rust, no sanitizer).
#
#   scripts/fuzz.sh            each target for ${FUZZ_SECONDS:-20} s (CI runs this)
#   FUZZ_SECONDS=600 scripts/fuzz.sh mmio_transport     one target, longer, by hand
#
# A crash stops the script with cargo-fuzz's report; the input is kept in
# fuzz/artifacts/<target>/ to replay with `cargo fuzz run <target> <file> -s none`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seconds=${FUZZ_SECONDS:-20}
targets=("$@")
if ((${#targets[@]} == 0)); then
    # A manifest cargo-fuzz cannot read must fail the run, not leave it with no targets.
    list=$(cargo fuzz list) || { echo "fuzz: cargo fuzz list failed"; exit 1; }
    mapfile -t targets <<<"$list"
    ((${#targets[@]} > 0)) && [[ -n ${targets[0]} ]] || { echo "fuzz: no targets"; exit 1; }
fi
# Build them all first, unfiltered: a target that no longer compiles fails here with the
# compiler's message (the run's filter below would hide it).
for t in "${targets[@]}"; do
    cargo fuzz build "$t" -s none || { echo "fuzz target $t does not build"; exit 1; }
done
for t in "${targets[@]}"; do
    echo "== fuzz $t (${seconds}s)"
    # With pipefail the pipeline fails exactly when cargo fuzz does (the filter never
    # fails); `grep ... || true` would instead reset PIPESTATUS and hide a crash.
    if ! cargo fuzz run "$t" -s none -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 |
        { grep -E "^(#[0-9]+ +DONE|Done|==[0-9]+==|.*panicked|.*SUMMARY)" || true; }; then
        echo "fuzz $t failed"
        exit 1
    fi
done
