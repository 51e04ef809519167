#!/usr/bin/env bash
# Run a libtest executable; if some tests fail, run each failed one again, alone, up to
# $RETRIES (default 2) more times, and say so. Used for the layer-4 suite, whose nested
# host is not flawless (TESTING.md: an L2 guest can stall or triple-fault on QEMU's
# software CPU). A test that fails every time fails the run; one that passes on a later
# run is reported as a RETRY line, never hidden.
#   scripts/lib/retry-failed-tests.sh TEST_EXECUTABLE [LIBTEST ARGS...]
# In the nested host (scripts/nested-host.sh), each test that passes is appended to
# $NESTED_PASSED_LOG as it passes, and the tests named in $NESTED_SKIP (those that passed
# in a try whose L1 died) are skipped: a new L1 resumes where the last one died.
set -uo pipefail
bin=$1
shift
log=$(mktemp "${TMPDIR:-/tmp}/vireo-tests.XXXXXX")
skips=()
for t in ${NESTED_SKIP:-}; do skips+=(--skip "$t"); done
if ((${#skips[@]})); then
    echo "RESUME: $(basename "$bin"): skipping what passed in the previous L1: ${NESTED_SKIP}"
    skips+=(--exact)
fi
# Each line as it comes; a test's "ok" ends its "test NAME ... " line or comes on a line of
# its own (after output its child processes wrote to stderr).
record() {
    awk -v passed="${NESTED_PASSED_LOG:-}" '
        { print; fflush() }
        /^test [^ ]+ \.\.\. / { current = $2 }
        current != "" && (/ \.\.\. ok$/ || /^ok$/) {
            if (passed != "") { print current >> passed; fflush(passed) }
            current = ""
        }'
}
"$bin" "$@" "${skips[@]}" 2>&1 | record | tee "$log"
status=${PIPESTATUS[0]}
if ((status == 0)); then
    rm -f "$log"
    exit 0
fi
# libtest ends with "failures:" and one indented test name per line.
mapfile -t failed < <(awk '/^failures:$/ { list = 1; names = 0; next }
    list && /^    [A-Za-z0-9_:]+$/ { print $1; names = 1; next }
    list && names && !/^    / { list = 0 }' "$log" | sort -u)
rm -f "$log"
((${#failed[@]})) || exit "$status"
args=()
for a in "$@"; do [[ $a == --test-threads=* ]] || args+=("$a"); done
rc=0
for t in "${failed[@]}"; do
    passed=0
    for run in $(seq 2 $((1 + ${RETRIES:-2}))); do
        echo "RETRY $t: failed; run $run, alone"
        if "$bin" "${args[@]}" --exact "$t" --test-threads=1 2>&1 | record; then
            echo "RETRY $t: passed on run $run (counted as a flake)"
            passed=1
            break
        fi
        echo "RETRY $t: failed again (run $run)"
    done
    ((passed)) || rc=1
done
exit $rc
