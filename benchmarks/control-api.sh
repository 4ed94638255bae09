#!/usr/bin/env bash
# Control API benchmark (issue 12; benchmarks/README.md). As root: starts a release masqd in a
# namespace of its own with a private bpffs (the API tests' DaemonSandbox), fills its NAT table
# with N established TCP flows (2N entries, BPF_MAP_UPDATE_BATCH as GCScaleTests does), waits for
# a conntrack GC pass over the filled table, then measures /v1/status and /metrics latency alone
# and with C concurrent clients (p50/p99), and the time of an NDJSON dump of every flow with
# masqd's peak RSS (VmHWM). Prints the figures (also left in /tmp/masq-control-api-benchmark.txt).
# Not part of CI: the measuring test (Tests/APITests/ControlAPIBenchmark.swift) runs only when
# MASQ_BENCH_FLOWS is set.
#
# Options: --flows N (default 1000000), --clients C (default 50), --rounds R (requests per
# concurrent client, default 4), --family ipv4|ipv6 (the table filled, default ipv4; ipv6 writes
# the flows one entry at a time), --masqd PATH (measure that binary, e.g. an older build;
# default: this tree's, built with -c release).
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."
. scripts/prereqs.sh

flows=1000000
clients=50
rounds=4
family=ipv4
masqd=
while [ $# -gt 0 ]; do
    case $1 in
        --flows) flows=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --family) family=$2; shift 2 ;;
        --masqd) masqd=$(cd "$caller_dir" && realpath -m -- "$2"); shift 2 ;;
        *) die "unknown option $1 (options: --flows N, --clients C, --rounds R, --family ipv4|ipv6, --masqd PATH)" ;;
    esac
done
case "$flows$clients$rounds" in *[!0-9]*) die "--flows, --clients and --rounds take whole numbers" ;; esac
case "$family" in ipv4|ipv6) ;; *) die "--family takes ipv4 or ipv6" ;; esac

require_root
ensure_packages curl
ensure_swift
sweep_stale masqapi
if [ -z "$masqd" ]; then
    step "building masqd (swift build -c release)"
    swift build -c release --product masqd
    masqd=$PWD/.build/release/masqd
fi
[ -x "$masqd" ] || die "no masqd at $masqd"
step "building masq-client (swift build -c release)"
swift build -c release --product masq-client
client=$PWD/.build/release/masq-client
step "building the tests (swift build --build-tests)"
swift build --build-tests
step "measuring $flows flows with $masqd"
MASQ_BENCH_FLOWS=$flows MASQ_BENCH_CLIENTS=$clients MASQ_BENCH_ROUNDS=$rounds MASQ_BENCH_FAMILY=$family MASQD_BIN=$masqd \
    MASQ_CLIENT_BIN=$client \
    swift test --skip-build --filter ControlAPIBenchmark 2>&1 | grep -v '^\[' | grep -vE '^(Test Suite|Test Case|◇|↳ ///)'
cat /tmp/masq-control-api-benchmark.txt
