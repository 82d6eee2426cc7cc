#!/usr/bin/env bash
# Build the control-plane binaries the tests and local runs need (kube-apiserver, etcd, helm)
# from their published Go modules into a per-user cache, and expose them in one bin dir.
#
# Usage: hack/install-k8s-tools.sh            # build what is missing, print the bin dir
#        export PATH="$(hack/install-k8s-tools.sh --print-bin):$PATH"
#
# Each tool lands in $REGTASK_TOOLS_DIR/<name>-<version>/<name>; a tool is rebuilt only when
# its pinned version below changes (a new directory), so a cached run takes well under 2 s.
# Only the Go toolchain and the Go module proxy are needed: no release downloads.
set -euo pipefail

KUBERNETES_VERSION="v1.37.2"
ETCD_VERSION="v3.7.3"
HELM_VERSION="v4.3.1"

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

# build_from_module NAME MODULE VERSION PACKAGE REPLACE_VERSION LDFLAGS
#
# Builds PACKAGE (a main package inside MODULE@VERSION) in a throwaway module. Upstream go.mod
# files of kubernetes and etcd point their sibling modules at local directories with `replace`,
# which makes `go install pkg@version` refuse them; the throwaway module re-points every such
# local replace at the published REPLACE_VERSION of that sibling module instead.
build_from_module() {
    local name=$1 module=$2 version=$3 package=$4 replace_version=$5 ldflags=$6
    local dest="$TOOLS_DIR/$name-$version"
    if [[ -x "$dest/$name" ]]; then
        log "$name $version: cached at $dest/$name"
        return 0
    fi
    local work start gomod go_directive
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
        "$GO" mod edit -require="$module@$version"
        "$GO" get "$package@$version" >/dev/null
        mkdir -p "$dest.tmp"
        CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$dest.tmp/$name" "$package"
    )
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    log "$name $version: built in $(($(date +%s) - start)) s -> $dest/$name"
}

install_helm() {
    local dest="$TOOLS_DIR/helm-$HELM_VERSION" start
    if [[ -x "$dest/helm" ]]; then
        log "helm $HELM_VERSION: cached at $dest/helm"
        return 0
    fi
    GO=${GO:-$(find_go)}
    start=$(date +%s)
    log "helm $HELM_VERSION: go install helm.sh/helm/v4/cmd/helm"
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    GOBIN="$dest.tmp" CGO_ENABLED=0 "$GO" install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    log "helm $HELM_VERSION: built in $(($(date +%s) - start)) s -> $dest/helm"
}

link_bin() {
    local name=$1 version=$2
    mkdir -p "$BIN_DIR"
    ln -sfn "../$name-$version/$name" "$BIN_DIR/$name"
}

main() {
    if [[ "${1:-}" == "--print-bin" ]]; then
        echo "$BIN_DIR"
        return 0
    fi
    mkdir -p "$TOOLS_DIR"

    local k8s_minor_version k8s_ldflags build_date
    # Staging modules (k8s.io/api, k8s.io/apiserver, ...) are published as v0.Y.Z for v1.Y.Z.
    k8s_minor_version="v0.${KUBERNETES_VERSION#v1.}"
    build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local vpkg=k8s.io/component-base/version
    local major minor
    major=$(cut -d. -f1 <<<"${KUBERNETES_VERSION#v}")
    minor=$(cut -d. -f2 <<<"$KUBERNETES_VERSION")
    k8s_ldflags="-s -w -X $vpkg.gitVersion=$KUBERNETES_VERSION -X $vpkg.gitMajor=$major"
    k8s_ldflags+=" -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
    k8s_ldflags+=" -X $vpkg.buildDate=$build_date"

    build_from_module kube-apiserver k8s.io/kubernetes "$KUBERNETES_VERSION" \
        k8s.io/kubernetes/cmd/kube-apiserver "$k8s_minor_version" "$k8s_ldflags"
    link_bin kube-apiserver "$KUBERNETES_VERSION"

    build_from_module etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
        go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "-s -w"
    link_bin etcd "$ETCD_VERSION"

    install_helm
    link_bin helm "$HELM_VERSION"

    echo "$BIN_DIR"
}

main "$@"
