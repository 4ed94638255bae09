#!/usr/bin/env bash
# The outside checkers (README, "CI checks"); scripts/test.sh runs them after the build:
#   openapi-spec-validator  docs/api/openapi.yaml is a valid OpenAPI 3.0 document
#   schemathesis            the document is faithful: requests generated from it against a live
#                           masqd (in a network namespace of its own, its socket bridged to
#                           127.0.0.1 by socat) get the answers it documents, valid ones are
#                           accepted and invalid ones refused
#   kubernetes-validate     deploy/kubernetes/*.yaml against the Kubernetes schemas, --strict
#   promtool                deploy/prometheus/masq-rules.yaml: check rules, and test rules with
#                           its test cases (masq-rules.test.yaml)
#   systemd-analyze         contrib/systemd/masqd.service's exposure is under 5.0, and
#   systemd-sysusers        contrib/systemd/masq.sysusers creates the socket's group
# Installs its tools itself (pinned, PyPI ones in .build/checks-venv), each step bounded in time.
# As root. Usage: scripts/checks.sh [MASQD]   (default: the debug build's masqd)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh

require_root
ensure_swift
ensure_packages
ensure_promtool

# Pinned: a new release of a checker must not turn CI red on its own.
PIP_PINS=(openapi-spec-validator==0.9.0 schemathesis==4.32.5 kubernetes-validate==1.37.0)
# systemd-analyze rates 0-10 (100 in --threshold's units); the unit must stay under 5.0.
SYSTEMD_THRESHOLD=49
VENV=$PWD/.build/checks-venv

masqd=${1:-$(swift build --show-bin-path)/masqd}
[ -x "$masqd" ] || die "$masqd was not built (swift build)"

status=0
failed() { echo "FAILED: $*" >&2; status=1; }

ensure_tools() {
    local pins="${PIP_PINS[*]}"
    if [ "$(cat "$VENV/pins" 2>/dev/null)" != "$pins" ]; then
        step "installing ${PIP_PINS[*]} into $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV" 2>/dev/null || {
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
            python3 -m venv "$VENV"
        }
        timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PINS[@]}"
        echo "$pins" >"$VENV/pins"
    fi
}

check_openapi() {
    step "openapi-spec-validator docs/api/openapi.yaml"
    timeout 120 "$VENV/bin/openapi-spec-validator" docs/api/openapi.yaml || failed "openapi-spec-validator"
}

check_kubernetes() {
    step "kubernetes-validate --strict deploy/kubernetes"
    timeout 120 "$VENV/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml || failed "kubernetes-validate"
}

check_prometheus() {
    step "promtool check rules and test rules deploy/prometheus"
    timeout 60 promtool check rules deploy/prometheus/masq-rules.yaml || failed "promtool check rules"
    (cd deploy/prometheus && timeout 60 promtool test rules masq-rules.test.yaml) || failed "promtool test rules"
}

check_systemd() {
    step "systemd-analyze security --offline=yes contrib/systemd/masqd.service (threshold $SYSTEMD_THRESHOLD)"
    local out
    out=$(timeout 60 systemd-analyze security --offline=yes --threshold="$SYSTEMD_THRESHOLD" \
        contrib/systemd/masqd.service 2>&1) || failed "systemd-analyze security: $(echo "$out" | tail -1)"
    echo "$out" | tail -1
    step "systemd-analyze verify and systemd-sysusers on contrib/systemd"
    local dir
    dir=$(mktemp -d)
    cp contrib/systemd/masqd.socket contrib/systemd/masqd.service "$dir/"
    # verify wants ExecStart's binary: the one under test.
    sed -i "s|/usr/local/bin/masqd|$masqd|" "$dir/masqd.service"
    out=$(SYSTEMD_LOG_LEVEL=warning timeout 60 systemd-analyze verify --man=no "$dir/masqd.socket" "$dir/masqd.service" 2>&1) \
        || failed "systemd-analyze verify: $out"
    mkdir -p "$dir/root/etc"
    : >"$dir/root/etc/group"; : >"$dir/root/etc/passwd"
    timeout 60 systemd-sysusers --root="$dir/root" - <contrib/systemd/masq.sysusers >/dev/null \
        && grep -q '^masq:x:[0-9]*:$' "$dir/root/etc/group" \
        || failed "systemd-sysusers contrib/systemd/masq.sysusers made no masq group: $(cat "$dir/root/etc/group")"
    rm -rf "$dir"
}

# masqd in a namespace of its own (a veth pair, so a device is in force), as the tests run it.
NS=masqe2e-$$-checks
RUN=/run/masqe2e-$$
pids=()
cleanup_daemon() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    done
    pids=()
    [ -e "/run/netns/$NS" ] && ip netns delete "$NS"
    mountpoint -q "$RUN/bpffs" && umount "$RUN/bpffs"
    rm -rf "$RUN"
}
trap cleanup_daemon EXIT
trap 'exit 130' INT TERM

check_schemathesis() {
    step "schemathesis against a live masqd (namespace $NS)"
    mkdir -p "$RUN/bpffs"
    mount -t bpf bpf "$RUN/bpffs"
    make_device_namespace "$NS"
    nsenter --net="/run/netns/$NS" "$masqd" run --pod-cidrs 10.244.1.0/24 --devices ext0 \
        --bpffs-root "$RUN/bpffs/masq" --socket-path "$RUN/masqd.sock" >"$RUN/masqd.log" 2>&1 &
    pids+=($!)
    local port=$((20000 + $$ % 20000))
    socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$RUN/masqd.sock" &
    pids+=($!)
    local ready=
    for _ in $(seq 300); do
        if curl -sf --max-time 2 --unix-socket "$RUN/masqd.sock" http://masqd/v1/healthz >/dev/null 2>&1; then
            ready=1; break
        fi
        sleep 0.2
    done
    if [ -z "$ready" ]; then
        failed "masqd did not become healthy: $(tail -5 "$RUN/masqd.log")"
        return
    fi
    # Every check; a fixed seed and bounded examples keep it reproducible and within about a minute.
    # One worker: CPython 3.11's ast module is not thread-safe, and hypothesis parses lambdas.
    # Run from $RUN: schemathesis keeps a .schemathesis cache in its working directory.
    (cd "$RUN" && PYTHONPATH=$OLDPWD/scripts SCHEMATHESIS_HOOKS=schemathesis_hooks MASQ_CHECK_DEVICES=lo,ext0,ext1 \
        timeout 600 "$VENV/bin/schemathesis" run "$OLDPWD/docs/api/openapi.yaml" --url "http://127.0.0.1:$port" \
        --checks all --seed 1 --max-examples 100 --generation-database none --workers 1 --no-color \
        --request-timeout 20 --max-response-time 10 --suppress-health-check too_slow) \
        || failed "schemathesis (the end of masqd's log: $(tail -3 "$RUN/masqd.log"))"
    cleanup_daemon
}

ensure_tools
check_openapi
check_kubernetes
check_prometheus
check_systemd
check_schemathesis

if [ "$status" -eq 0 ]; then step "all checks passed"; else step "checks FAILED"; fi
exit "$status"
