#!/usr/bin/env bash
# The demonstration (README). As root on Debian bookworm with the Swift toolchain: installs what
# is missing, builds, creates a sandbox of network namespaces, runs masqd in the node namespace,
# sends TCP, UDP and ICMP echo from two pods and shows what the outside host saw. Everything it
# creates is removed on every exit path. It never touches the host's own devices.
#
#   pod1 10.244.1.2 ─┐                                          ┌─ outside 100.0.0.2
#                    ├─ br0 10.244.1.1 [node] ext0 100.0.0.1 ───┤  (+ 100.0.9.2, listed in the
#   pod2 10.244.1.3 ─┘   masqd masquerades on ext0              └   ip-masq-agent file)
#
# Options: --attach-mode auto|tcx|tc (default auto), --release (build with -c release).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh

attach_mode=auto
build_flags=()
while [ $# -gt 0 ]; do
    case $1 in
        --attach-mode) attach_mode=$2; shift 2 ;;
        --release) build_flags=(-c release); shift ;;
        *) die "unknown option $1 (options: --attach-mode auto|tcx|tc, --release)" ;;
    esac
done

require_root
ensure_swift
ensure_packages
sweep_stale masqdemo

step "building (swift build ${build_flags[*]})"
swift build "${build_flags[@]}"
bin=$(swift build "${build_flags[@]}" --show-bin-path)
masqd=$bin/masqd
client=$bin/masq-client
[ -x "$masqd" ] || die "$masqd was not built"
netprobe=$PWD/Tests/E2ETests/netprobe.py

P=masqdemo-$$-
NODE=${P}node OUT=${P}out POD1=${P}pod1 POD2=${P}pod2
RUN=/run/masqdemo-$$
BPFFS_MOUNT=$RUN/bpffs
BPFFS=$BPFFS_MOUNT/masq   # masqd's --bpffs-root, as /sys/fs/bpf/masq is in production
SOCK=$RUN/masqd.sock
pids=()

cleanup() {
    set +e
    trap - EXIT INT TERM
    echo "== cleaning up"
    stop_processes "${pids[@]}"
    if [ -e "/run/netns/$NODE" ] && [ -d "$BPFFS" ]; then
        nx "$NODE" "$masqd" uninstall --bpffs-root "$BPFFS" >"$RUN/uninstall.log" 2>&1 \
            && echo "   masqd uninstall: programs detached, pinned state removed"
    fi
    for ns in "$POD1" "$POD2" "$OUT" "$NODE"; do
        [ -e "/run/netns/$ns" ] && ip netns delete "$ns"
    done
    mountpoint -q "$BPFFS_MOUNT" && umount "$BPFFS_MOUNT"
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "creating the sandbox (namespaces ${P}{node,pod1,pod2,out})"
mkdir -p "$BPFFS_MOUNT"
# A bpffs of our own in the root mount namespace: it outlives masqd (pinned state survives a
# restart) and nsenter --net keeps it visible (ip netns exec would remount /sys).
mount -t bpf bpf "$BPFFS_MOUNT"
for ns in "$NODE" "$POD1" "$POD2" "$OUT"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
nx "$NODE" sysctl -qw net.ipv4.ip_forward=1
for ns in "$NODE" "$OUT"; do
    nx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done
ip -n "$NODE" link add br0 type bridge
ip -n "$NODE" addr add 10.244.1.1/24 dev br0
ip -n "$NODE" link set br0 up
i=1
for ip in 10.244.1.2 10.244.1.3; do
    pod=${P}pod$i
    ip -n "$NODE" link add "vpod$i" type veth peer name eth0 netns "$pod"
    ip -n "$NODE" link set "vpod$i" master br0 up
    ip -n "$pod" addr add "$ip/24" dev eth0
    ip -n "$pod" link set eth0 up
    ip -n "$pod" route add default via 10.244.1.1
    i=$((i + 1))
done
ip -n "$NODE" link add ext0 type veth peer name eth0 netns "$OUT"
ip -n "$NODE" addr add 100.0.0.1/24 dev ext0
ip -n "$NODE" link set ext0 up
ip -n "$OUT" addr add 100.0.0.2/24 dev eth0
ip -n "$OUT" link set eth0 up
ip -n "$OUT" addr add 100.0.9.2/32 dev lo
ip -n "$NODE" route add 100.0.9.0/24 via 100.0.0.2
# The outside host routes back to the pods only for the excluded address: replies from
# 100.0.0.2 reach a pod only through masqd's reverse translation.
ip -n "$OUT" rule add from 100.0.9.2 lookup 100
ip -n "$OUT" route add 10.244.1.0/24 via 100.0.0.1 table 100

step "starting the outside servers (TCP 8080, UDP 8081, ICMP observer)"
# Background processes are started with nsenter directly (not through a shell function), so that
# $! is the process itself (nsenter execs it) and the clean-up's kill reaches it.
nsenter --net="/run/netns/$OUT" python3 -u "$netprobe" serve --bind 100.0.0.2,100.0.9.2 --tcp 8080 --udp 8081 --icmp \
    --ready "$RUN/server.ready" --lifetime 300 >"$RUN/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -e "$RUN/server.ready" ] && break; sleep 0.1; done
[ -e "$RUN/server.ready" ] || die "the outside server did not start: $(cat "$RUN/server.log")"

echo "nonMasqueradeCIDRs: [100.0.9.0/24]" >"$RUN/ip-masq-agent"
masqd_args=(run --pod-cidrs 10.244.1.0/24 --devices ext0
            --enable-ip-masq-agent true --ip-masq-agent-config-path "$RUN/ip-masq-agent"
            --bpffs-root "$BPFFS" --socket-path "$SOCK" --attach-mode "$attach_mode")
step "starting masqd in the node namespace: masqd ${masqd_args[*]}"
nsenter --net="/run/netns/$NODE" "$masqd" "${masqd_args[@]}" >"$RUN/masqd.log" 2>&1 &
pids+=($!)
wait_masqd_ready "${pids[-1]}" "$RUN/masqd.log"
{ grep -v "debug" "$RUN/masqd.log" || true; } | sed 's/^/   | /'

probe() { local ns=$1; shift; nx "$ns" python3 -u "$netprobe" "$@" 2>&1 | tail -n 1; }

failures=0
# check WHAT EXPECTED-SOURCE OBSERVED
check() {
    local what=$1 want=$2 seen=$3 mark=ok
    case $seen in "$want"|"$want":*) ;; *) mark=UNEXPECTED; failures=$((failures + 1)) ;; esac
    printf '   %-44s outside saw %-22s %s\n' "$what" "$seen" "$mark"
}

step "traffic from the pods to the outside host 100.0.0.2 (masqueraded: expect 100.0.0.1)"
i=1
for podip in 10.244.1.2 10.244.1.3; do
    pod=${P}pod$i
    check "TCP  pod$i $podip -> 100.0.0.2:8080" 100.0.0.1 "$(probe "$pod" tcp --dst 100.0.0.2:8080)"
    check "UDP  pod$i $podip -> 100.0.0.2:8081" 100.0.0.1 "$(probe "$pod" udp --dst 100.0.0.2:8081)"
    reply=$(probe "$pod" ping --dst 100.0.0.2 --token "demo-pod$i" --count 2 || true)
    seen=$(awk -v t="demo-pod$i" '$1 == "icmp" && $3 == t {print $2; exit}' "$RUN/server.log")
    case $reply in reply*) ;; *) seen="$seen (no reply)" ;; esac
    check "ICMP pod$i $podip -> 100.0.0.2 echo" 100.0.0.1 "${seen:-nothing}"
    i=$((i + 1))
done

step "traffic to 100.0.9.2, listed in the ip-masq-agent file (not masqueraded: expect the pod)"
check "TCP  pod1 10.244.1.2 -> 100.0.9.2:8080" 10.244.1.2 "$(probe "$POD1" tcp --dst 100.0.9.2:8080)"
check "UDP  pod1 10.244.1.2 -> 100.0.9.2:8081" 10.244.1.2 "$(probe "$POD1" udp --dst 100.0.9.2:8081)"

step "what the outside server logged (source address of each connection, datagram, echo)"
sed 's/^/   | /' "$RUN/server.log"

# The control API socket may come up just after "masqd ready".
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
if [ -S "$SOCK" ]; then
    step "masq-client status"
    MASQ_SOCKET="$SOCK" "$client" status 2>&1 | sed 's/^/   | /' || true
fi
step "the datapath's NAT table"
if [ -S "$SOCK" ] && MASQ_SOCKET="$SOCK" "$client" conntrack list >"$RUN/conntrack.txt" 2>&1; then
    echo "   (masq-client conntrack list)"
    sed 's/^/   | /' "$RUN/conntrack.txt"
elif [ -e "$BPFFS/masq_nat_v4" ]; then
    [ -S "$SOCK" ] && echo "   masq-client: $(tail -n 1 "$RUN/conntrack.txt")"
    echo "   (bpftool -j map dump pinned $BPFFS/masq_nat_v4, decoded)"
    bpftool -j map dump pinned "$BPFFS/masq_nat_v4" | python3 "$netprobe" nattable | sed 's/^/   | /'
else
    echo "   (no control socket and no pinned masq_nat_v4 under $BPFFS)"
fi

echo
if [ "$failures" -eq 0 ]; then
    echo "RESULT: the outside host saw the node address 100.0.0.1 for pod traffic, and the pod"
    echo "        address only for the excluded destination; every reply reached its pod."
else
    echo "RESULT: $failures observation(s) were not as expected (masqd log: see above)."
    tail -n 20 "$RUN/masqd.log" | sed 's/^/   | /'
    exit 1
fi
