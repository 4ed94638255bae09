#!/usr/bin/env bash
# Side-by-side benchmark (issue 12; benchmarks/README.md). As root: builds the same three
# namespaces once per mode, checks that each mode translates, then measures TCP throughput,
# 64-byte UDP packets/s and TCP connections/s with the repetitions interleaved across the modes,
# and prints the medians and their ratios to plain routing. Not part of CI.
#
#   pod 10.244.1.2 ── vpod0 10.244.1.1 [node] ext0 100.0.0.1 ── 100.0.0.2 outside
#
# Modes (one sandbox each, all alive at once; the NAT is configured in the node namespace only):
#   plain     routing, no NAT; the outside host has a route back to the pod CIDR
#   control   a second plain sandbox, only when asked for: its ratio to plain is what the
#             method cannot tell apart from noise on this machine
#   noop      plain routing plus a BPF program at masq's hook (tc egress on ext0) that returns
#             at once, only when asked for: what any datapath there pays before its first line
#   iptables  -t nat POSTROUTING -s 10.244.1.0/24 -o ext0 -j MASQUERADE ($IPTABLES, default
#             iptables-legacy: the x_tables path, not nft underneath)
#   nftables  a nat postrouting chain: ip saddr 10.244.1.0/24 oifname ext0 masquerade
#   masq      masqd from this tree (--pod-cidrs 10.244.1.0/24 --devices ext0)
# In the three NAT modes the outside host has no route to the pods: replies arrive only translated.
#
# With masq among the modes, one more UDP run measures masq's programs alone (the kernel's BPF
# run-time statistics, on only while that run lasts).
#
# Options: --quick (1 repetition of 2 s: a smoke check), --reps N (default 20), --seconds S (per
# measurement, default 2), --release (build masqd with -c release), --masqd PATH (use that binary,
# no build), --modes LIST (a comma-separated subset of plain,control,noop,iptables,nftables,
# masq, default all but control and noop; plain is the baseline and always runs), --metrics LIST (a subset of
# tcp,udp,crr, default all). Everything it creates (namespaces masqbench-<pid>-*,
# /run/masqbench-<pid>, processes) is removed on every exit path; it never touches the host's
# devices or netfilter rules.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."
. scripts/prereqs.sh

# Many short repetitions rather than a few long ones: on a VM the forwarding rate of one setup
# swings by 1.5x from one second to the next, and a pair of samples taken seconds apart cancels
# the slow part of that; the confidence interval then narrows with the number of pairs.
reps=20
seconds=2
build_flags=()
masqd=
modes=(plain iptables nftables masq)
metrics=(tcp udp crr)
IPTABLES=${IPTABLES:-iptables-legacy}
while [ $# -gt 0 ]; do
    case $1 in
        --quick) reps=1; seconds=2; shift ;;
        --reps) reps=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --release) build_flags=(-c release); shift ;;
        --masqd) masqd=$(cd "$caller_dir" && realpath -m -- "$2"); shift 2 ;;
        --modes) IFS=, read -ra modes <<<"plain,${2//plain/}"; shift 2 ;;
        --metrics) IFS=, read -ra metrics <<<"$2"; shift 2 ;;
        *) die "unknown option $1 (options: --quick, --reps N, --seconds S, --release, --masqd PATH, --modes LIST, --metrics LIST)" ;;
    esac
done
case "$reps$seconds" in *[!0-9]*) die "--reps and --seconds take whole numbers" ;; esac
[ "$reps" -ge 1 ] && [ "$seconds" -ge 1 ] || die "--reps and --seconds must be at least 1"
modes=($(printf '%s\n' "${modes[@]}" | awk 'NF && !seen[$0]++'))
for mode in "${modes[@]}"; do
    case $mode in plain|control|noop|iptables|nftables|masq) ;; *) die "unknown mode $mode" ;; esac
done
metrics=($(printf '%s\n' "${metrics[@]}" | awk 'NF && !seen[$0]++'))
[ ${#metrics[@]} -gt 0 ] || die "--metrics needs at least one of tcp, udp, crr"
for metric in "${metrics[@]}"; do
    case $metric in tcp|udp|crr) ;; *) die "unknown metric $metric (tcp, udp, crr)" ;; esac
done
wants_masq() { case " ${modes[*]} " in *" masq "*) return 0 ;; esac; return 1; }

require_root
ensure_packages iperf3 nftables iptables
command -v "$IPTABLES" >/dev/null 2>&1 || IPTABLES=iptables
sweep_stale masqbench

if wants_masq && [ -z "$masqd" ]; then
    ensure_swift
    step "building masqd (swift build ${build_flags[*]})"
    swift build "${build_flags[@]}" --product masqd
    masqd=$(swift build "${build_flags[@]}" --show-bin-path)/masqd
fi
! wants_masq || [ -x "$masqd" ] || die "$masqd is not an executable"
case " ${modes[*]} " in *" noop "*) ensure_swift ;; esac

# Clients on one CPU and servers on another: left to the scheduler, the sender and the
# receiver sometimes share a CPU and sometimes not, which moved single samples by 1.5x. The
# sender's CPU also runs the whole forwarding path (veth hands packets to the backlog of the CPU
# that sends them), so the figure is that CPU's per-packet work.
client_cpu=() server_cpu=() iperf_affinity=()
if [ "$(nproc)" -ge 2 ]; then
    client_cpu=(taskset -c 0) server_cpu=(taskset -c 1) iperf_affinity=(-A 0,1)
fi

P=masqbench-$$-
RUN=/run/masqbench-$$
BPFFS_MOUNT=$RUN/bpffs
BPFFS=$BPFFS_MOUNT/masq
helper=$PWD/benchmarks/sidebyside.py
netprobe=$PWD/Tests/E2ETests/netprobe.py
pids=()

cleanup() {
    set +e
    trap - EXIT INT TERM
    echo "== cleaning up"
    stop_processes "${pids[@]}"
    if [ -e "/run/netns/${P}masq-node" ] && [ -d "$BPFFS" ]; then
        nx "${P}masq-node" "$masqd" uninstall --bpffs-root "$BPFFS" >"$RUN/uninstall.log" 2>&1
    fi
    for mode in "${modes[@]}"; do
        for ns in pod out node; do
            [ -e "/run/netns/$P$mode-$ns" ] && ip netns delete "$P$mode-$ns"
        done
    done
    mountpoint -q "$BPFFS_MOUNT" && umount "$BPFFS_MOUNT"
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$RUN"

# Starts a long-lived process in namespace NS (nsenter execs it, so $! is the process itself).
start_in() {
    local ns=$1 log=$2; shift 2
    nsenter --net="/run/netns/$ns" "$@" >"$log" 2>&1 &
    pids+=($!)
}

# wire NODE DEV ADDR PEER PEER_ADDR: a veth pair, DEV in namespace NODE and eth0 in PEER, up.
wire() {
    ip -n "$1" link add "$2" type veth peer name eth0 netns "$4"
    ip -n "$1" addr add "$3" dev "$2"
    ip -n "$1" link set "$2" up
    ip -n "$4" addr add "$5" dev eth0
    ip -n "$4" link set eth0 up
}

build_sandbox() {
    local mode=$1 pod=$P$1-pod node=$P$1-node out=$P$1-out ns
    for ns in "$pod" "$node" "$out"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    nx "$node" sysctl -qw net.ipv4.ip_forward=1
    for ns in "$node" "$out"; do
        nx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    done
    wire "$node" vpod0 10.244.1.1/24 "$pod" 10.244.1.2/24
    ip -n "$pod" route add default via 10.244.1.1
    wire "$node" ext0 100.0.0.1/24 "$out" 100.0.0.2/24

    case $mode in
        plain|control) ip -n "$out" route add 10.244.1.0/24 via 100.0.0.1 ;;
        noop)
            ip -n "$out" route add 10.244.1.0/24 via 100.0.0.1
            printf '%s\n' '#include <linux/bpf.h>' '#include <linux/pkt_cls.h>' \
                '__attribute__((section("tc"), used)) int noop_egress(struct __sk_buff *skb) { return TC_ACT_OK; }' \
                'char _license[] __attribute__((section("license"), used)) = "GPL";' >"$RUN/noop.c"
            "$(dirname "$(command -v swift)")/clang" -O2 -target bpf -I"/usr/include/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)" \
                -c "$RUN/noop.c" -o "$RUN/noop.o"
            nx "$node" tc qdisc add dev ext0 clsact
            nx "$node" tc filter add dev ext0 egress bpf direct-action obj "$RUN/noop.o" sec tc
            ;;
        iptables) nx "$node" "$IPTABLES" -t nat -A POSTROUTING -s 10.244.1.0/24 -o ext0 -j MASQUERADE ;;
        nftables)
            nx "$node" nft -f - <<'EOF'
table ip masqbench {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.1.0/24 oifname "ext0" masquerade
    }
}
EOF
            ;;
        masq)
            mkdir -p "$BPFFS_MOUNT"
            # A bpffs of our own in the root mount namespace (nsenter --net keeps it visible).
            mount -t bpf bpf "$BPFFS_MOUNT"
            start_in "$node" "$RUN/masqd.log" "$masqd" run --pod-cidrs 10.244.1.0/24 --devices ext0 \
                --bpffs-root "$BPFFS" --socket-path "$RUN/masqd.sock"
            wait_masqd_ready "${pids[-1]}" "$RUN/masqd.log"
            ;;
    esac

    start_in "$out" "$RUN/$mode-iperf3.log" "${server_cpu[@]}" iperf3 -s -B 100.0.0.2 -p 5201
    start_in "$out" "$RUN/$mode-crr.log" "${server_cpu[@]}" python3 "$helper" serve --port 7000
    start_in "$out" "$RUN/$mode-probe.log" python3 -u "$netprobe" serve --bind 100.0.0.2 --tcp 8080 --udp 8081 \
        --ready "$RUN/$mode-probe.ready" --lifetime 1800
}

# The outside host must see the node address in the NAT modes and the pod in plain routing.
check_translation() {
    local mode want seen kind port failures=0
    for mode in "${modes[@]}"; do
        want=100.0.0.1
        case $mode in plain|control|noop) want=10.244.1.2 ;; esac
        for kind in tcp udp; do
            port=8080
            [ $kind = udp ] && port=8081
            seen=$(nx "$P$mode-pod" python3 -u "$netprobe" $kind --dst 100.0.0.2:$port 2>&1 | tail -n 1)
            case $seen in "$want":*) mark=ok ;; *) mark=UNEXPECTED; failures=$((failures + 1)) ;; esac
            printf '   %-9s %s  outside saw %-22s (want %s) %s\n' "$mode" $kind "$seen" "$want" $mark
        done
    done
    [ $failures -eq 0 ] || { [ -e "$RUN/masqd.log" ] && tail -n 20 "$RUN/masqd.log" >&2; die "$failures translation check(s) failed"; }
}

rx_packets() { ip -n "$1" -s -j link show eth0 | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'; }

# measure MODE METRIC: prints one value (bits/s, packets/s or connections/s).
measure() {
    local mode=$1 pod=$P$1-pod limit=$((seconds + 20)) out before
    case $2 in
        tcp) nx "$pod" timeout $limit iperf3 "${iperf_affinity[@]}" -c 100.0.0.2 -p 5201 -t "$seconds" -J |
                 python3 "$helper" iperf tcp ;;
        udp)
            # Counted where the packets arrive (the outside device), not by the iperf3 server:
            # a single receiving thread reads fewer 64-byte datagrams per second than the
            # sender's forwarding path delivers, and would measure itself instead of the NAT.
            before=$(rx_packets "$P$1-out")
            out=$(nx "$pod" timeout $limit iperf3 "${iperf_affinity[@]}" -c 100.0.0.2 -p 5201 -u -l 64 -b 0 \
                -t "$seconds" -J)
            python3 "$helper" iperf udp --delivered $(($(rx_packets "$P$1-out") - before)) <<<"$out"
            ;;
        crr)
            out=$(nx "$pod" timeout $limit "${client_cpu[@]}" python3 "$helper" crr --dst 100.0.0.2:7000 \
                --seconds "$seconds")
            set -- $out
            [ $# -eq 3 ] || return 1
            [ "$3" -le $(($2 / 100)) ] || echo "   warning: $mode: $3 of $(($2 + $3)) connections failed" >&2
            echo "$1"
            ;;
    esac
}

git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || git_rev="$git_rev+changes"
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "tree:    $git_rev${masqd:+; masqd $masqd}"
echo "machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)"
echo "tools:   $(iperf3 --version | head -n 1); $("$IPTABLES" --version); $(nft --version)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) before the run"

mode_list=$(IFS=,; echo "${modes[*]}")
step "creating the sandboxes (namespaces ${P}{$mode_list}-{pod,node,out})"
for mode in "${modes[@]}"; do build_sandbox "$mode"; done
for mode in "${modes[@]}"; do
    for _ in $(seq 100); do [ -e "$RUN/$mode-probe.ready" ] && break; sleep 0.1; done
done

step "checking that each mode translates"
check_translation

step "measuring: $reps repetition(s), ${seconds} s per measurement, modes interleaved"
results=$RUN/results
for rep in $(seq "$reps"); do
    for metric in "${metrics[@]}"; do
        # Rotate the order from one repetition to the next, so no mode always runs first.
        for i in "${!modes[@]}"; do
            mode=${modes[$(((i + rep - 1) % ${#modes[@]}))]}
            value=$(measure "$mode" "$metric") || die "$mode $metric failed (logs: $RUN)"
            echo "$mode $metric $rep $value" >>"$results"
            printf '   rep %d %-4s %-9s %s\n' "$rep" "$metric" "$mode" "$value"
        done
    done
done

if wants_masq; then
    # What masq's programs themselves cost under each load: per run, and as a share of one
    # CPU's time. Against the CPU the load is bound by, the share bounds what any datapath
    # could win back: a free one would leave only plain routing's work. Not a figure the ratios
    # use: with statistics on, every BPF program run also reads the clock twice, so both
    # figures are a little high.
    step "masq's programs under one more run of each metric (kernel BPF run-time statistics)"
    # masqd pins a tcx link per device and direction under its bpffs root (none in tc mode).
    # A figure that cannot be taken is reported, not fatal: the summary still follows.
    ids=$(for link in "$BPFFS"/links/*; do
              [ -e "$link" ] && bpftool -j link show pinned "$link" && echo
          done | python3 -c '
import json, sys
print(",".join(str(json.loads(line)["prog_id"]) for line in sys.stdin if line.strip()))') || ids=
    [ -n "$ids" ] || echo "   not measured: no tcx link pinned under $BPFFS/links"
    for metric in "${metrics[@]}"; do
        [ -n "$ids" ] || break
        coproc STATS { python3 "$helper" progstats --ids "$ids" --timeout $((seconds + 60)); }
        # Copies: bash drops the coproc's own descriptors once it has ended.
        stats_pid=$STATS_PID
        exec {from_stats}<&"${STATS[0]}" {to_stats}>&"${STATS[1]}"
        if ! read -r -t 10 ready <&"$from_stats" || [ "$ready" != ready ]; then
            echo "   not measured: progstats did not start"
            exec {from_stats}<&- {to_stats}>&-
            wait "$stats_pid" 2>/dev/null || true
            break
        fi
        value=$(measure masq "$metric") || value="failed"
        echo >&"$to_stats"
        printf '   %-4s masq %s with statistics on\n' "$metric" "$value"
        while read -r -t 10 name ns runs <&"$from_stats"; do
            if [ "$name" = share ]; then
                printf '        %s%% of one CPU'"'"'s time in masq'"'"'s programs (the machine has %d)\n' "$ns" "$(nproc)"
            else
                printf '        %-12s %5s ns a run over %s runs\n' "$name" "$ns" "$runs"
            fi
        done
        exec {from_stats}<&- {to_stats}>&-
        wait "$stats_pid" 2>/dev/null || echo "   progstats failed"
    done
fi

step "checking again that each mode translates"
check_translation

echo
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) after the run"
echo "Medians of $reps interleaved repetition(s) of ${seconds} s; ratio to plain routing (median):"
echo
python3 "$helper" summary --baseline plain --modes "$mode_list" <"$results"
