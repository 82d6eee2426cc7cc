#!/usr/bin/env bash
# Build every Kubernetes tool the tests, the demo and the kind cluster need from their published
# Go modules (and one C file) into a per-user cache, and expose them in one bin dir.
#
# Usage: hack/install-k8s-tools.sh            # build what is missing, print the bin dir
#        hack/install-k8s-tools.sh --print-bin
#        hack/install-k8s-tools.sh --versions  # NAME=VERSION lines (cache keys of the images)
#
# Host tools: kind, kubectl, helm. Node tools (baked into the kind node image built by
# hack/kind/node-image.sh): kubeadm, kubelet; control-plane images: kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, etcd, CoreDNS, pause; the NetworkPolicy
# engine kube-router (its policy controller only, see hack/kind/README.md).
#
# Each tool lands in $REGTASK_TOOLS_DIR/<name>-<version>/<name>; a tool is rebuilt only when
# its pinned version below changes (a new directory), so a cached run takes well under 2 s.
# Only the Go toolchain, gcc and the Go module proxy are needed: no release downloads.
set -euo pipefail

KUBERNETES_VERSION="v1.37.2"
ETCD_VERSION="v3.7.3"
HELM_VERSION="v4.3.1"
KIND_VERSION="v0.33.0"
COREDNS_VERSION="v1.14.6"
# v2.1.0, the version other notes name, has reported security flaws; v2.10.0 is on the proxy.
KUBE_ROUTER_VERSION="v2.10.0"

TOOLS_DIR="${REGTASK_TOOLS_DIR:-$HOME/.cache/regtask/tools}"
BIN_DIR="$TOOLS_DIR/bin"
GO=""  # resolved only when something has to be built

WORK_DIRS=()
cleanup() { rm -rf "${WORK_DIRS[@]}"; }
trap cleanup EXIT

log() { echo "install-k8s-tools: $*" >&2; }

find_go() {
    if command -v go >/dev/null 2>&1; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        echo /usr/local/go/bin/go
    else
        log "Go toolchain not found (need go >= 1.26 on PATH or at /usr/local/go/bin/go)"
        exit 1
    fi
}

cached() {
    local name=$1 version=$2
    if [[ -x "$TOOLS_DIR/$name-$version/$name" ]]; then
        log "$name $version: cached"
        return 0
    fi
    return 1
}

# finish NAME VERSION START: move the finished build into place (a half-built tool never is).
finish() {
    local name=$1 version=$2 start=$3 dest="$TOOLS_DIR/$1-$2"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    log "$name $version: built in $(($(date +%s) - start)) s -> $dest/$name"
}

# build_from_module NAME MODULE VERSION PACKAGE REPLACE_VERSION LDFLAGS [PATH=PATH@VERSION...]
#
# Builds PACKAGE (a main package inside MODULE@VERSION) in a throwaway module. Upstream go.mod
# files of kubernetes and etcd point their sibling modules at local directories with `replace`,
# which makes `go install pkg@version` refuse them; the throwaway module re-points every such
# local replace at the published REPLACE_VERSION of that sibling module instead. Further
# arguments are replaces of its own (a dependency version the module proxy does not serve).
build_from_module() {
    local name=$1 module=$2 version=$3 package=$4 replace_version=$5 ldflags=$6
    local extra_replaces=("${@:7}")
    cached "$name" "$version" && return 0
    local work start gomod go_directive dest="$TOOLS_DIR/$name-$version"
    GO=${GO:-$(find_go)}
    work=$(mktemp -d)
    WORK_DIRS+=("$work")
    start=$(date +%s)
    log "$name $version: building $package (this takes minutes on a cold cache)"

    gomod=$("$GO" mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    go_directive=$(awk '$1 == "go" { print $2; exit }' "$gomod")

    (
        cd "$work"
        export GOFLAGS=-mod=mod
        "$GO" mod init regtask.local/build-"$name" >/dev/null 2>&1
        "$GO" mod edit -go="$go_directive"
        awk '
            $1 == "replace" && $3 == "=>" && $4 ~ /^\.\.?\// { print $2 }
            $2 == "=>" && $3 ~ /^\.\.?\// { print $1 }
        ' "$gomod" | while read -r replaced; do
            "$GO" mod edit -replace="$replaced=$replaced@$replace_version"
        done
        for replaced in "${extra_replaces[@]}"; do
            "$GO" mod edit -replace="$replaced"
        done
        "$GO" mod edit -require="$module@$version"
        "$GO" get "$package@$version" >/dev/null
        rm -rf "$dest.tmp"
        mkdir -p "$dest.tmp"
        CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$dest.tmp/$name" "$package"
    )
    finish "$name" "$version" "$start"
}

# go_install NAME PACKAGE VERSION LDFLAGS: a module whose go.mod has no local replaces.
go_install() {
    local name=$1 package=$2 version=$3 ldflags=$4
    cached "$name" "$version" && return 0
    local start dest="$TOOLS_DIR/$name-$version"
    GO=${GO:-$(find_go)}
    start=$(date +%s)
    log "$name $version: go install $package@$version"
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    GOBIN="$dest.tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 "$GO" install -trimpath -ldflags "$ldflags" \
        "$package@$version"
    [[ -x "$dest.tmp/$name" ]] || mv "$dest.tmp/$(basename "$package")" "$dest.tmp/$name"
    finish "$name" "$version" "$start"
}

# pause: the sandbox process of every pod, Kubernetes' own pause.c (shipped in the
# k8s.io/kubernetes module) compiled statically, as the upstream image does.
build_pause() {
    local version=$1
    cached pause "$version" && return 0
    local start src dest="$TOOLS_DIR/pause-$version"
    GO=${GO:-$(find_go)}
    start=$(date +%s)
    src=$("$GO" mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')/build/pause/linux/pause.c
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    gcc -Os -Wall -Werror -static -DVERSION="$version" -o "$dest.tmp/pause" "$src"
    strip "$dest.tmp/pause"
    finish pause "$version" "$start"
}

link_bin() {
    local name=$1 version=$2
    mkdir -p "$BIN_DIR"
    ln -sfn "../$name-$version/$name" "$BIN_DIR/$name"
}

# The pause tag kubeadm of this Kubernetes version pulls (kubeadm's own constant).
PAUSE_VERSION="3.10.2"

versions() {
    cat <<EOF
kubernetes=$KUBERNETES_VERSION
etcd=$ETCD_VERSION
helm=$HELM_VERSION
kind=$KIND_VERSION
coredns=$COREDNS_VERSION
kube-router=$KUBE_ROUTER_VERSION
pause=$PAUSE_VERSION
EOF
}

main() {
    case "${1:-}" in
        --print-bin)
            echo "$BIN_DIR"
            return 0
            ;;
        --versions)
            versions
            return 0
            ;;
    esac
    mkdir -p "$TOOLS_DIR"

    local k8s_minor_version k8s_ldflags build_date
    # Staging modules (k8s.io/api, k8s.io/apiserver, ...) are published as v0.Y.Z for v1.Y.Z.
    k8s_minor_version="v0.${KUBERNETES_VERSION#v1.}"
    build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local vpkg=k8s.io/component-base/version
    local major minor name
    major=$(cut -d. -f1 <<<"${KUBERNETES_VERSION#v}")
    minor=$(cut -d. -f2 <<<"$KUBERNETES_VERSION")
    # Without the version stamps the binaries report v0.0.0-master (kubeadm then refuses).
    k8s_ldflags="-s -w -X $vpkg.gitVersion=$KUBERNETES_VERSION -X $vpkg.gitMajor=$major"
    k8s_ldflags+=" -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
    k8s_ldflags+=" -X $vpkg.buildDate=$build_date"

    # kube-apiserver first: the others reuse most of what its build compiles.
    for name in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl \
        kubeadm; do
        build_from_module "$name" k8s.io/kubernetes "$KUBERNETES_VERSION" \
            "k8s.io/kubernetes/cmd/$name" "$k8s_minor_version" "$k8s_ldflags"
        link_bin "$name" "$KUBERNETES_VERSION"
    done

    build_from_module etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
        go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "-s -w"
    link_bin etcd "$ETCD_VERSION"

    go_install helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION" \
        "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
    link_bin helm "$HELM_VERSION"

    go_install kind sigs.k8s.io/kind "$KIND_VERSION" "-s -w"
    link_bin kind "$KIND_VERSION"

    go_install coredns github.com/coredns/coredns "$COREDNS_VERSION" "-s -w"
    link_bin coredns "$COREDNS_VERSION"

    # kube-router v2.10.0 requires a netlink pseudo-version the module proxy does not serve;
    # it builds against netlink's newest release, v1.3.1 (checked: go build succeeds).
    build_from_module kube-router github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" \
        github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "$KUBE_ROUTER_VERSION" \
        "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
        github.com/vishvananda/netlink=github.com/vishvananda/netlink@v1.3.1
    link_bin kube-router "$KUBE_ROUTER_VERSION"

    build_pause "$PAUSE_VERSION"
    link_bin pause "$PAUSE_VERSION"

    echo "$BIN_DIR"
}

main "$@"
