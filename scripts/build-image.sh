#!/usr/bin/env bash
# Builds masqd's OCI image without any container registry: a Debian bookworm root file system
# from Debian's own packages (debootstrap --variant=minbase, plus libbpf1 and libsystemd0), the
# release binaries with the Swift runtime libraries they link, packed by umoci into an OCI
# layout and an oci-archive that podman, containerd (kind load image-archive) and skopeo load.
# Takes a few minutes (a release build, debootstrap); not part of CI. As root.
#
#   scripts/build-image.sh [--out DIR] [--tag TAG] [--mirror URL] [--check]
#
#   --out DIR     where to write (default .build/image): DIR/masq-TAG.tar is the oci-archive
#   --tag TAG     the image tag (default: masq's version); the image is named masq:TAG
#   --mirror URL  the Debian mirror (default http://deb.debian.org/debian)
#   --check       afterwards, run masqd from the image with podman under the DaemonSet's
#                 capabilities in a network namespace of its own, and wait for healthz
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prereqs.sh

out=.build/image
tag=$(sed -n 's/^public let masqVersion = "\(.*\)"$/\1/p' Sources/API/Version.swift)
mirror=http://deb.debian.org/debian
check=
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --mirror) mirror=$2; shift 2 ;;
        --check) check=1; shift ;;
        *) die "unknown option $1 (options: --out DIR, --tag TAG, --mirror URL, --check)" ;;
    esac
done
[ -n "$tag" ] || die "no version in Sources/API/Version.swift"

require_root
ensure_swift
ensure_packages
for tool in debootstrap umoci; do
    command -v "$tool" >/dev/null 2>&1 || {
        step "installing $tool"
        apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
    }
done

step "building release (swift build -c release)"
swift build -c release
bin=$(swift build -c release --show-bin-path)

work=$(mktemp -d /var/tmp/masq-image.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
rootfs=$work/rootfs

step "debootstrap --variant=minbase bookworm (libbpf1, libsystemd0) from $mirror"
debootstrap --variant=minbase --include=libbpf1,libsystemd0 bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || die "debootstrap failed: $(tail -5 "$work/debootstrap.log")"

step "adding masqd and masq-client"
install -m 0755 "$bin/masqd" "$bin/masq-client" "$rootfs/usr/local/bin/"
# The Swift runtime (libswiftCore, Foundation, ...) comes from the toolchain, not from Debian:
# copy every library the binaries link that the root file system does not have.
mkdir -p "$rootfs/usr/local/lib/masq"
for lib in $(ldd "$bin/masqd" "$bin/masq-client" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
    name=$(basename "$lib")
    if ! chroot "$rootfs" /sbin/ldconfig -p | grep -q " $name "; then
        install -m 0644 "$lib" "$rootfs/usr/local/lib/masq/"
    fi
done
echo /usr/local/lib/masq >"$rootfs/etc/ld.so.conf.d/masq.conf"
chroot "$rootfs" /sbin/ldconfig
missing=$(chroot "$rootfs" ldd /usr/local/bin/masqd /usr/local/bin/masq-client | grep "not found" || true)
[ -z "$missing" ] || die "the image lacks libraries: $missing"
mkdir -p "$rootfs/etc/masq" "$rootfs/run/masq"
# Nothing an image needs: apt's lists and caches, docs, logs.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*

step "packing masq:$tag with umoci"
layout=$work/oci
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
rm -rf "$work/bundle/rootfs"
mv "$rootfs" "$work/bundle/rootfs"
umoci repack --image "$layout:$tag" "$work/bundle"
# A command, no entrypoint: `podman run IMAGE masq-client ...` and Kubernetes' command: replace it.
umoci config --image "$layout:$tag" \
    --config.cmd /usr/local/bin/masqd --config.cmd run --config.cmd --config --config.cmd /etc/masq/masqd.yaml \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.label org.opencontainers.image.title=masq \
    --config.label "org.opencontainers.image.version=$tag" \
    --architecture "$(dpkg --print-architecture)" --os linux
umoci gc --layout "$layout"
# The name podman (ref.name) and containerd (io.containerd.image.name) give the image on loading;
# the DaemonSet's `image: masq:TAG` means the same.
image=docker.io/library/masq:$tag
python3 - "$layout/index.json" "$image" <<'PY'
import json, sys
path, name = sys.argv[1:]
with open(path) as f:
    index = json.load(f)
for manifest in index["manifests"]:
    manifest.setdefault("annotations", {}).update({"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name})
with open(path, "w") as f:
    json.dump(index, f)
PY
mkdir -p "$out"
archive=$out/masq-$tag.tar
# An oci-archive is the layout in a tar.
tar -C "$layout" -cf "$archive" .
step "wrote $archive ($(du -h "$archive" | cut -f1)): podman load -i $archive; kind load image-archive $archive"

if [ -n "$check" ]; then
    for tool in podman runc; do
        command -v "$tool" >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
    done
    # runc: Debian's crun refuses a hybrid cgroup hierarchy (as on this kind of machine). Fixed
    # rlimits: podman's defaults raise them, which a container without CAP_SYS_RESOURCE cannot.
    podman_run=(podman --runtime runc run -d --pull=never --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
    ns=masqe2e-$$-image
    run=/run/masqe2e-$$
    name=masqcheck-$$
    check_cleanup() {
        set +e
        podman rm -f "$name-reloader" "$name" >/dev/null 2>&1
        podman rmi -f "$image" >/dev/null 2>&1
        [ -e "/run/netns/$ns" ] && ip netns delete "$ns"
        mountpoint -q "$run/bpffs" && umount "$run/bpffs"
        rm -rf "$run"
        cleanup
    }
    trap check_cleanup EXIT
    step "checking: podman runs masqd from $image as the DaemonSet does (namespace $ns)"
    podman load -q -i "$archive" >/dev/null
    mkdir -p "$run/bpffs" "$run/sock" "$run/config"
    mount -t bpf bpf "$run/bpffs"
    make_device_namespace "$ns"
    printf 'pod-cidrs: [10.244.1.0/24]\ndevices: [ext0]\nbpffs-root: /sys/fs/bpf/masq\nsocket-path: /run/masq/masqd.sock\n' \
        >"$run/config/masqd.yaml"
    # The DaemonSet's capabilities only, no new privileges, a read-only root, the node's bpffs.
    "${podman_run[@]}" --name "$name" --network "ns:/run/netns/$ns" \
        --cap-drop all --cap-add bpf,perfmon,net_admin --security-opt no-new-privileges \
        --security-opt seccomp=unconfined --read-only \
        -v "$run/bpffs:/sys/fs/bpf" -v "$run/sock:/run/masq" -v "$run/config:/etc/masq:ro" \
        "$image" >/dev/null
    ok=
    for _ in $(seq 150); do
        if curl -sf --max-time 2 --unix-socket "$run/sock/masqd.sock" http://masqd/v1/healthz >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ -n "$ok" ] || die "masqd from the image did not become healthy: $(podman logs "$name" 2>&1 | tail -5)"
    podman exec "$name" masq-client --socket /run/masq/masqd.sock status --brief
    step "masqd from $image is healthy"

    # The DaemonSet's config-reloader, as its manifest spells it, in masqd's process namespace.
    reloader=$(python3 -c 'import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc["kind"] == "DaemonSet":
        print(next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "config-reloader")["command"][2])' \
        deploy/kubernetes/masqd.yaml)
    "${podman_run[@]}" --name "$name-reloader" --pid "container:$name" --network none --cap-drop all \
        --security-opt no-new-privileges --read-only -v "$run/config:/etc/masq:ro" \
        "$image" /bin/sh -c "$reloader" >/dev/null
    sleep 1
    # An edit as the kubelet makes it: a new file renamed over the old one.
    printf 'pod-cidrs: [10.244.1.0/24]\ndevices: [ext0]\nbpffs-root: /sys/fs/bpf/masq\nsocket-path: /run/masq/masqd.sock\ncluster-node-ips: [192.0.2.9]\n' \
        >"$run/config/masqd.yaml.new"
    mv "$run/config/masqd.yaml.new" "$run/config/masqd.yaml"
    reloaded=
    for _ in $(seq 60); do
        podman logs "$name" 2>&1 | grep -q "Config reloaded" && { reloaded=1; break; }
        sleep 0.5
    done
    [ -n "$reloaded" ] || die "the config-reloader did not make masqd reload: $(podman logs "$name-reloader" 2>&1 | tail -3)"
    step "config-reloader: $(podman logs "$name-reloader" 2>&1 | tail -1); masqd reloaded its config"
fi
