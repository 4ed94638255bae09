#!/usr/bin/env bash
# The one test command (README; .ci/run calls exactly this). As root on Debian bookworm with
# the Swift toolchain: installs what is missing, builds once, runs every suite (unit, BPF
# program tests, end-to-end tests in network namespaces) and exits non-zero on any failure.
# Extra arguments go to `swift test`, e.g. `scripts/test.sh --filter E2ETests`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh

require_root
ensure_swift
ensure_packages
ensure_promtool
ensure_bpffs
sweep_stale masqe2e

start=$(date +%s)
step "building (swift build --build-tests)"
swift build --build-tests

# Release must compile too (the systemd recipe and the image install .build/release/masqd);
# the tests run on the debug build.
step "building release (swift build -c release)"
swift build -c release

step "running the tests"
status=0
# Bounded: CI allows 90 minutes; a hung test must not eat them all.
run_tests() { timeout --signal=TERM --kill-after=30 1500 swift test --skip-build --ignore-lock "$@"; }
if [ $# -eq 0 ]; then
    # Two processes at once. The BPF program tests load programs synchronously, and in one
    # process with the rest they held both cooperative threads for the first minute and a half,
    # starving the daemon and end-to-end tests' servers and clients of time. In a process of
    # their own, at a lower priority (they measure no time), they take the cores the others
    # leave. Their lines say [bpf].
    ( renice -n 10 -p "$BASHPID" >/dev/null
      run_tests --filter '^DatapathTests\.' 2>&1 | sed -u 's/^/[bpf] /' ) &
    bpf=$!
    run_tests --skip '^DatapathTests\.' || status=$?
    wait "$bpf" || status=$?
else
    run_tests "$@" || status=$?
fi
sweep_stale masqe2e

# The outside checkers (OpenAPI, schemathesis, Kubernetes, systemd); only on a full run.
if [ $# -eq 0 ]; then
    step "running the outside checkers (scripts/checks.sh)"
    timeout --signal=TERM --kill-after=30 900 scripts/checks.sh "$(swift build --show-bin-path)/masqd" || status=1
    sweep_stale masqe2e
fi

if [ "$status" -eq 0 ]; then
    step "all tests passed in $(( $(date +%s) - start )) s"
else
    step "tests FAILED (exit $status) after $(( $(date +%s) - start )) s"
fi
exit "$status"
