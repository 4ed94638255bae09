# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run): checks that we are root,
# finds the Swift toolchain, installs the Debian packages that are missing, mounts bpffs and
# removes sandboxes that an interrupted run left behind.

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
step() { echo "== $*"; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it creates network namespaces and loads BPF programs)"
}

ensure_swift() {
    if ! command -v swift >/dev/null 2>&1; then
        for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
            [ -x "$dir/swift" ] && export PATH="$dir:$PATH" && break
        done
    fi
    command -v swift >/dev/null 2>&1 || die "the Swift toolchain is not on PATH"
}

# Installs the Debian packages that are missing (the common ones and any given as arguments);
# runs apt-get update at most once, and only when something has to be installed.
ensure_packages() {
    local missing=() pkg
    have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
    # systemd: systemd-socket-activate and systemd-analyze; python3-seccomp: scripts/unit-sandbox.py
    # (the systemd test); socat and curl: scripts/checks.sh.
    for pkg in libbpf-dev libsystemd-dev pkg-config iproute2 bpftool systemd python3-seccomp socat curl "$@"; do
        have_pkg "$pkg" || missing+=("$pkg")
    done
    # The BPF build includes the distribution's uapi headers (asm/types.h).
    [ -e "/usr/include/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/asm/types.h" ] \
        || have_pkg linux-libc-dev || missing+=(linux-libc-dev)
    command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
    # python3 may come from pyenv or elsewhere; the API tests also run a slow client as uid
    # 65534, which cannot use one under root's home (pyenv's): Debian's /usr/bin/python3.
    [ -x /usr/bin/python3 ] || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# promtool (the metrics test runs `promtool check metrics` on a live /metrics; checks.sh checks
# and tests deploy/prometheus/masq-rules.yaml): taken out of Debian's prometheus package rather
# than installing it, which would set up a Prometheus server.
ensure_promtool() {
    command -v promtool >/dev/null 2>&1 && return
    step "installing promtool from Debian's prometheus package"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; })
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
    install -m 0755 "$tmp/root/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
}

ensure_bpffs() {
    mkdir -p /sys/fs/bpf
    if ! mountpoint -q /sys/fs/bpf; then
        step "mounting bpffs at /sys/fs/bpf"
        mount -t bpf bpf /sys/fs/bpf
    fi
}

# Removes namespaces and bpffs mounts named PREFIX-<pid>-... whose process is gone
# (a run killed before its own clean-up). PREFIX: masqe2e (tests) or masqdemo (demo).
sweep_stale() {
    local prefix=$1 ns pid dir mnt p
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$prefix-" || true); do
        pid=$(echo "$ns" | cut -d- -f2)
        [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null || continue
        # Processes left inside (a daemon, a server) would keep the namespace alive.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns delete "$ns" 2>/dev/null || true
    done
    for dir in /run/"$prefix"-*; do
        [ -d "$dir" ] || continue
        pid=${dir##*/"$prefix"-}
        kill -0 "$pid" 2>/dev/null && continue
        for mnt in $(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
            umount -l "$mnt" 2>/dev/null || true
        done
        rm -rf "$dir"
    done
}

# Runs a command in network namespace NAME only (ip netns exec would remount /sys and hide bpffs).
nx() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

# Stops the given child processes: SIGTERM, up to 5 s to exit, then SIGKILL; reaps them.
stop_processes() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# Waits up to 30 s for the masqd PID, logging to LOG, to say it is ready; dies with the log's tail
# if it exits or does not.
wait_masqd_ready() {
    local pid=$1 log=$2
    for _ in $(seq 300); do
        grep -q "masqd ready" "$log" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "masqd ready" "$log" && return 0
    tail -n 20 "$log" >&2
    die "masqd did not become ready"
}

# A network namespace NAME for a masqd that scripts/checks.sh or build-image.sh --check runs: lo
# up and a veth pair ext0 (192.0.2.1/24, default route via 192.0.2.2) - ext1, so a device is in
# force. Everything stays inside the namespace.
make_device_namespace() {
    local ns=$1
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add ext0 type veth peer name ext1
    ip -n "$ns" addr add 192.0.2.1/24 dev ext0
    ip -n "$ns" link set ext0 up
    ip -n "$ns" link set ext1 up
    ip -n "$ns" route add default via 192.0.2.2
}
