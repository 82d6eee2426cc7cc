#!/usr/bin/env bash
# The kind node image, built on this machine without pulling anything, once per recipe.
#
# Usage: hack/kind/node-image.sh              build it unless cached; print its reference
#        hack/kind/node-image.sh --print-ref  only print the reference it would have
#
# What kindest/node is, assembled from what this machine can reach: a Debian bookworm root
# filesystem (debootstrap) with systemd and Debian's containerd 1.6, runc and CNI plugins; the
# files and systemd setup of kind's own base image (images/base/files in the sigs.k8s.io/kind
# module); kubelet, kubeadm and kubectl v1.37.2 and the control-plane images (kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, etcd, CoreDNS, pause) built from their Go
# modules by hack/install-k8s-tools.sh, preloaded into the node's containerd; a static bridge CNI
# config and kube-router's NetworkPolicy controller in place of kindnetd. The differences from
# kindest/node are listed in hack/kind/README.md.
#
# The reference is localhost/regtask/kind-node:<kubernetes version>-<hash of this recipe and the
# tool versions>; it lives in the project's own podman storage (hack/kind/lib.sh). Needs root.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "$0")/lib.sh"

versions=$("$REPO_ROOT/hack/install-k8s-tools.sh" --versions)
version_of() { sed -n "s/^$1=//p" <<<"$versions"; }
K8S_VERSION=$(version_of kubernetes)
KIND_VERSION=$(version_of kind)
KUBE_ROUTER_VERSION=$(version_of kube-router)
key=$({
    inputs_hash "$0" "$KIND_LIB_DIR"/node/*
    echo "$versions $DEBIAN_SUITE"
} | sha256sum | cut -c1-12)
NODE_REF="localhost/regtask/kind-node:$K8S_VERSION-$key"

if [[ "${1:-}" == "--print-ref" ]]; then
    echo "$NODE_REF"
    exit 0
fi

need_root
need_cmd podman buildah debootstrap unshare go
kind_podman_env
if podman image exists "$NODE_REF"; then
    kind_log "cached: $NODE_REF"
    echo "$NODE_REF"
    exit 0
fi

"$REPO_ROOT/hack/install-k8s-tools.sh" >/dev/null
TOOLS_DIR="$(dirname "$TOOLS_BIN")"
tool() { echo "$TOOLS_DIR/$1-$2/$1"; }
KIND_FILES="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')/images/base/files"
[[ -d "$KIND_FILES" ]] || kind_die "kind's base image files not found in the Go module cache"

mkdir -p "$REGTASK_KIND_DIR/debs"
WORK=$(mktemp -d "$REGTASK_KIND_DIR/node-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R="$WORK/rootfs"
IMAGES="$WORK/images"
mkdir -p "$IMAGES"
started=$SECONDS
step() { kind_log "$* (+$((SECONDS - started)) s)"; }

# ------------------------------------------------------------------ root filesystem
step "debootstrap $DEBIAN_SUITE"
debootstrap --variant=minbase --cache-dir="$REGTASK_KIND_DIR/debs" \
    --include=systemd,dbus,containerd,runc,containernetworking-plugins,conntrack,iptables,nftables,ipset,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,jq,procps,curl,socat \
    "$DEBIAN_SUITE" "$R" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    {
        tail -n 20 "$WORK/debootstrap.log" >&2
        kind_die "debootstrap failed"
    }

step "kind's base image files and systemd setup"
F="$KIND_FILES"
install -m0755 "$F"/usr/local/bin/* "$R/usr/local/bin/"
mkdir -p "$R/kind/bin" "$R/kind/manifests" "$R/LICENSES" "$R/etc/systemd/system/kubelet.service.d"
install -m0644 "$F/kind/README.txt" "$R/kind/"
install -m0755 "$F"/kind/bin/* "$R/kind/bin/"
install -m0644 "$F"/LICENSES/* "$R/LICENSES/"
install -m0644 "$F/etc/crictl.yaml" "$R/etc/"
install -m0644 "$F/etc/default/kubelet" "$R/etc/default/"
install -m0644 "$F"/etc/sysctl.d/* "$R/etc/sysctl.d/"
install -m0644 "$F/etc/containerd/config.toml" "$R/etc/containerd/config.toml"
for unit in containerd.service kubelet.service undo-mount-hacks.service kubelet.slice; do
    install -m0644 "$F/etc/systemd/system/$unit" "$R/etc/systemd/system/"
done
install -m0644 "$F"/etc/systemd/system/kubelet.service.d/* "$R/etc/systemd/system/kubelet.service.d/"
# kind's units start /usr/local/bin/containerd; Debian installs it in /usr/bin.
ln -sf /usr/bin/containerd "$R/usr/local/bin/containerd"
# No fuse-overlayfs snapshotter (rootless only), and the pause tag kubeadm of this version uses.
python3 - "$R/etc/containerd/config.toml" "$(version_of pause)" <<'PY'
import sys
path, pause = sys.argv[1], sys.argv[2]
text = open(path).read()
start = text.index("[proxy_plugins]")
end = text.index("[plugins.", start)
text = text[:start] + text[end:]
text = text.replace('sandbox_image = "registry.k8s.io/pause:3.10"',
                    f'sandbox_image = "registry.k8s.io/pause:{pause}"')
assert f"pause:{pause}" in text, "sandbox_image line not found"
open(path, "w").write(text)
PY
find "$R/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$R"/lib/systemd/system/multi-user.target.wants/* "$R"/etc/systemd/system/*.wants/* \
    "$R"/lib/systemd/system/local-fs.target.wants/* \
    "$R"/lib/systemd/system/sockets.target.wants/*udev* \
    "$R"/lib/systemd/system/sockets.target.wants/*initctl* \
    "$R"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$R/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$R/sbin/init"
install -m0755 "$KIND_LIB_DIR/node/regtask-sysctl-shield" "$R/usr/local/bin/"
install -m0644 "$KIND_LIB_DIR/node/regtask-sysctl-shield.service" "$R/etc/systemd/system/"
chroot "$R" systemctl enable kubelet.service containerd.service undo-mount-hacks.service \
    regtask-sysctl-shield.service >/dev/null 2>&1
chroot "$R" systemctl mask systemd-binfmt.service >/dev/null 2>&1
mkdir -p "$R/etc/kubernetes/manifests" "$R/opt/cni/bin" "$R/etc/cni/net.d"
cp -a "$R"/usr/lib/cni/* "$R/opt/cni/bin/"
chroot "$R" ctr oci spec |
    jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"$R/etc/containerd/cri-base.json"
for name in kubelet kubeadm kubectl; do
    install -m0755 "$(tool "$name" "$K8S_VERSION")" "$R/usr/bin/$name"
done
echo -n "$K8S_VERSION" >"$R/kind/version"
install -m0644 "$KIND_LIB_DIR/node/10-regtask-bridge.conflist" "$R/etc/cni/net.d/"
install -m0644 "$KIND_LIB_DIR/node/default-storage.yaml" "$R/kind/manifests/"
sed "s/KUBE_ROUTER_VERSION/$KUBE_ROUTER_VERSION/" "$KIND_LIB_DIR/node/default-cni.yaml" \
    >"$R/kind/manifests/default-cni.yaml"
chmod 0644 "$R"/kind/manifests/*

# ------------------------------------------------------------------ images
# Each image: a static binary on an empty base (+ /etc/passwd, /tmp), as upstream's distroless
# images. kube-proxy and kube-router also need the netfilter tools, taken with their libraries
# from the node's own root filesystem, and iptables set to the legacy backend, the one kind's
# entrypoint picks in a fresh node.
step "images"
ETC_MIN="$WORK/etc-min"
mkdir -p "$ETC_MIN/etc" "$ETC_MIN/tmp"
chmod 1777 "$ETC_MIN/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' \
    >"$ETC_MIN/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ETC_MIN/etc/group"

NETFILTER="$WORK/netfilter"
mkdir -p "$NETFILTER"
cp -a "$ETC_MIN/." "$NETFILTER/"
for bin in /usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi /usr/sbin/nft \
    /usr/sbin/conntrack /usr/sbin/ipset /usr/bin/ip; do
    # shellcheck disable=SC2046  # one word per library path
    for file in "$bin" /lib64/ld-linux-x86-64.so.2 \
        $(chroot "$R" ldd "$bin" | awk '/=>/ { print $3 }'); do
        mkdir -p "$NETFILTER$(dirname "$file")"
        cp -L "$R$file" "$NETFILTER$file"
    done
done
mkdir -p "$NETFILTER/usr/lib/x86_64-linux-gnu/xtables"
cp -a "$R/usr/lib/x86_64-linux-gnu/xtables/." "$NETFILTER/usr/lib/x86_64-linux-gnu/xtables/"
cp "$R/etc/ethertypes" "$NETFILTER/etc/" 2>/dev/null || true
for family in iptables ip6tables; do
    for suffix in "" -save -restore; do
        ln -sf xtables-legacy-multi "$NETFILTER/usr/sbin/$family$suffix"
        ln -sf xtables-legacy-multi "$NETFILTER/usr/sbin/$family-legacy$suffix"
        ln -sf xtables-nft-multi "$NETFILTER/usr/sbin/$family-nft$suffix"
    done
done

PATH_IN_IMAGE=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# scratch_image REF BINARY DEST BASE_DIR: an image with BINARY at DEST as its entrypoint.
scratch_image() {
    local ref=$1 binary=$2 dest=$3 base=$4 container archive
    container=$(buildah from scratch)
    buildah copy "$container" "$base" / >/dev/null
    buildah copy --chmod 0755 "$container" "$binary" "$dest" >/dev/null
    buildah config --env "PATH=$PATH_IN_IMAGE" --entrypoint "[\"$dest\"]" --cmd '' "$container"
    buildah commit -q --rm "$container" "$ref" >/dev/null
    archive="$IMAGES/$(basename "${ref%%:*}").tar"
    podman save -q --format docker-archive -o "$archive" "$ref"
    podman rmi -f "$ref" >/dev/null
}
for name in kube-apiserver kube-controller-manager kube-scheduler; do
    scratch_image "registry.k8s.io/$name:$K8S_VERSION" "$(tool "$name" "$K8S_VERSION")" \
        "/usr/local/bin/$name" "$ETC_MIN"
done
scratch_image "registry.k8s.io/kube-proxy:$K8S_VERSION" "$(tool kube-proxy "$K8S_VERSION")" \
    /usr/local/bin/kube-proxy "$NETFILTER"
etcd_tag=$("$(tool kubeadm "$K8S_VERSION")" config images list --kubernetes-version "$K8S_VERSION" |
    sed -n 's#^registry.k8s.io/etcd:##p')
scratch_image "registry.k8s.io/etcd:$etcd_tag" "$(tool etcd "$(version_of etcd)")" \
    /usr/local/bin/etcd "$ETC_MIN"
scratch_image "registry.k8s.io/pause:$(version_of pause)" "$(tool pause "$(version_of pause)")" \
    /pause "$ETC_MIN"
scratch_image "registry.k8s.io/coredns/coredns:$(version_of coredns)" \
    "$(tool coredns "$(version_of coredns)")" /coredns "$ETC_MIN"
scratch_image "localhost/regtask/kube-router:$KUBE_ROUTER_VERSION" \
    "$(tool kube-router "$KUBE_ROUTER_VERSION")" /usr/local/bin/kube-router "$NETFILTER"
# Every image kubeadm will ask for must be among them (it would try to pull the others).
"$(tool kubeadm "$K8S_VERSION")" config images list --kubernetes-version "$K8S_VERSION" |
    while read -r wanted; do
        name=${wanted##*/}
        [[ -f "$IMAGES/${name%%:*}.tar" ]] || kind_die "kubeadm wants $wanted: not built"
    done

# ------------------------------------------------------------------ preload
# The node's own containerd imports the images into its root filesystem, run in a private mount
# and PID namespace (its mounts and processes vanish with it; nothing on the host changes).
step "preload images into the node's containerd"
mkdir -p "$R/tmp/preload"
cp "$IMAGES"/*.tar "$R/tmp/preload/"
cat >"$R/tmp/preload/config.toml" <<'EOF'
version = 2
root = "/var/lib/containerd"
state = "/run/containerd-preload"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "/run/containerd-preload/containerd.sock"
EOF
cat >"$R/tmp/preload/run.sh" <<'EOF'
#!/bin/sh
set -e
containerd --config /tmp/preload/config.toml >/tmp/preload/containerd.log 2>&1 &
pid=$!
i=0
until ctr --address /run/containerd-preload/containerd.sock version >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 50 ] || { cat /tmp/preload/containerd.log; exit 1; }; sleep 0.2
done
for f in /tmp/preload/*.tar; do
    ctr --address /run/containerd-preload/containerd.sock -n k8s.io images import \
        --all-platforms --no-unpack --digests "$f" >/dev/null
done
ctr --address /run/containerd-preload/containerd.sock -n k8s.io images ls -q | grep -v '@sha256'
kill $pid; wait $pid || true
EOF
chmod 0755 "$R/tmp/preload/run.sh"
unshare --mount --pid --fork --propagation private /bin/sh -c "
    set -e
    mount -t proc proc '$R/proc'
    mount --rbind /dev '$R/dev'
    mount -t tmpfs tmpfs '$R/run'
    chroot '$R' /tmp/preload/run.sh
" >&2
rm -rf "$R/tmp/preload"

# ------------------------------------------------------------------ import
step "import the node image"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
: >"$R/etc/machine-id"
tar -C "$R" --numeric-owner --xattrs -cf - . |
    podman import --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
        --change 'ENV container=docker' --change 'STOPSIGNAL SIGRTMIN+3' - "$NODE_REF" >/dev/null
step "built $NODE_REF"
echo "$NODE_REF"
