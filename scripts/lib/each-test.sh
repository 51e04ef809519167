#!/usr/bin/env bash
# Run the tests of a libtest executable one by one, each in a process of its own, under a
# time limit, and run a failed one again up to $VIREO_TEST_RETRIES (default 2) more
# times. Used for the layer-4 suite, whose nested host is not flawless (TESTING.md: an
# L2 guest can stall or triple-fault on QEMU's software CPU).
#   scripts/lib/each-test.sh TEST_EXECUTABLE [LIBTEST ARGS...]
# LIBTEST ARGS select the tests as they would for the executable (e.g. --ignored, a name
# filter). Each test gets $VIREO_TEST_TIMEOUT seconds (default 300); one that runs longer
# has its processes listed with where they wait (wchan, kernel stacks where readable),
# then its process group is killed, and it counts as failed. A test that fails every
# time fails the run; one that passes on a later run is reported as a RETRY line, never
# hidden. A summary line per test (status, seconds) ends the output.
# In the nested host (scripts/nested-host.sh), each test that passes is appended to
# $NESTED_PASSED_LOG, and the tests named in $NESTED_SKIP (those that passed in a try
# whose L1 died) are skipped: a new L1 resumes where the last one died.
set -uo pipefail
bin=$1
shift
limit=${VIREO_TEST_TIMEOUT:-300}
retries=${VIREO_TEST_RETRIES:-2}
name=$(basename "$bin")

args=()
for a in "$@"; do [[ $a == --test-threads=* ]] || args+=("$a"); done
mapfile -t tests < <("$bin" --list "${args[@]}" 2>/dev/null | sed -n 's/: test$//p')
if ((${#tests[@]} == 0)); then
    echo "each-test: $name lists no tests for: ${args[*]}" >&2
    exit 1
fi
skip=" ${NESTED_SKIP:-} "
run=()
for t in "${tests[@]}"; do
    if [[ $skip == *" $t "* ]]; then
        echo "RESUME: $name: $t passed in the previous L1"
    else
        run+=("$t")
    fi
done
echo "each-test: $name: ${#run[@]} tests, ${limit} s each at most"

# The processes of session $1 (and, in the nested host, every vireo and vireod: vireod
# starts its VMMs in sessions of their own), where each waits, and the kernel stacks
# that can be read.
suspects() {
    ps -o pid= -s "$1" 2>/dev/null
    [[ -n ${NESTED_HOST:-} ]] && pgrep -x 'vireo|vireod'
}
diagnose() {
    echo "TIMEOUT: the test's processes:"
    ps -o pid,ppid,sid,stat,etimes,time,wchan:30,args -p "$(suspects "$1" | sort -u | paste -sd,)" 2>/dev/null |
        sed 's/^/  /'
    local p task
    for p in $(suspects "$1" | sort -u); do
        for task in /proc/"$p"/task/*; do
            [[ -r $task/stack ]] || continue
            echo "  task ${task##*/} of $p ($(cat "$task/comm" 2>/dev/null)):"
            sed 's/^/    /' "$task/stack" 2>/dev/null | head -n 12
        done
    done
}

# One run of test $1 in a new session (so its children can be killed with it); its
# status, or 124 past the limit.
run_one() {
    local t=$1 pid start=$SECONDS status
    setsid "$bin" "${args[@]}" --exact "$t" --test-threads=1 --nocapture 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS - start >= limit)); then
            echo "TIMEOUT: $t still running after $limit s"
            diagnose "$pid"
            kill -KILL $(suspects "$pid") 2>/dev/null
            wait "$pid" 2>/dev/null
            return 124
        fi
        sleep 1
    done
    wait "$pid"
    status=$?
    # Whatever the test started in its session and left behind goes with it.
    pkill -KILL -s "$pid" 2>/dev/null
    return "$status"
}

summary=()
rc=0
for t in "${run[@]}"; do
    passed=0
    for n in $(seq 1 $((1 + retries))); do
        ((n > 1)) && echo "RETRY $t: run $n"
        start=$SECONDS
        run_one "$t"
        status=$?
        took=$((SECONDS - start))
        if ((status == 0)); then
            passed=1
            ((n > 1)) && echo "RETRY $t: passed on run $n (counted as a flake)"
            [[ -n ${NESTED_PASSED_LOG:-} ]] && echo "$t" >>"$NESTED_PASSED_LOG"
            summary+=("$(printf '%-6s %4d s  %s%s' ok "$took" "$t" "$( ((n > 1)) && echo " (run $n)")")")
            break
        fi
        echo "FAILED $t: status $status after $took s (run $n)"
    done
    if ((!passed)); then
        rc=1
        summary+=("$(printf '%-6s %4d s  %s' FAILED "$took" "$t")")
    fi
done
echo "each-test: $name:"
printf '  %s\n' "${summary[@]}"
exit $rc
