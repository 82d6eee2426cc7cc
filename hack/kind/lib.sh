# Shared by the hack/kind/*.sh scripts (sourced, not run): where the kind tooling keeps its state,
# and podman/buildah pointed at the project's own configuration and storage, never the
# machine's (/etc/containers, /var/lib/containers stay untouched).
#
# REGTASK_KIND_DIR (default ~/.cache/regtask/kind) holds:
#   conf/         containers.conf and storage.conf, written here (they need absolute paths)
#   podman/       podman/buildah image storage and network definitions
#   debs/         debootstrap's downloaded .deb files (reused by later builds)
#   archives/     image archives made for `kind load image-archive`, by image id

# shellcheck shell=bash

REGTASK_KIND_DIR="${REGTASK_KIND_DIR:-$HOME/.cache/regtask/kind}"
export REGTASK_KIND_DIR
KIND_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$KIND_LIB_DIR/../.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
TOOLS_BIN="$("$REPO_ROOT/hack/install-k8s-tools.sh" --print-bin)"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# shellcheck disable=SC2034
DEBIAN_SUITE=bookworm

kind_log() { echo "$(basename "$0"): $*" >&2; }
kind_die() {
    kind_log "$*"
    exit 1
}

# Podman and buildah read these two variables; with them, nothing of the machine's container
# configuration is read or written. The settings some lines need:
# - no default ulimits, pids limit or oom_score_adj: setting them needs CAP_SYS_RESOURCE, which
#   this kind of machine does not grant (`podman run` fails with "error setting rlimit");
# - runc, not crun: crun refuses cgroup v1 hierarchies mixed with cgroup2 ("hybrid mode");
# - DNS servers of the containers: an address on the internal kind network that nobody answers,
#   so nothing inside a node (CoreDNS's upstream) ever resolves through the machine's resolver.
kind_podman_env() {
    local conf="$REGTASK_KIND_DIR/conf"
    mkdir -p "$conf" "$REGTASK_KIND_DIR/podman/tmp" "$REGTASK_KIND_DIR/podman/networks"
    cat >"$conf/containers.conf.tmp" <<EOF
[containers]
default_ulimits = []
pids_limit = 0
oom_score_adj = 0
dns_servers = ["${REGTASK_KIND_DEAD_DNS:-10.89.0.254}"]

[engine]
runtime = "runc"
tmp_dir = "$REGTASK_KIND_DIR/podman/tmp"

[network]
network_config_dir = "$REGTASK_KIND_DIR/podman/networks"
EOF
    mv "$conf/containers.conf.tmp" "$conf/containers.conf"
    cat >"$conf/storage.conf.tmp" <<EOF
[storage]
driver = "overlay"
runroot = "$REGTASK_KIND_DIR/podman/runroot"
graphroot = "$REGTASK_KIND_DIR/podman/graphroot"

[storage.options.overlay]
# No private bind mount of the storage folder on itself (a mount left on the host).
skip_mount_home = "true"
EOF
    mv "$conf/storage.conf.tmp" "$conf/storage.conf"
    export CONTAINERS_CONF="$conf/containers.conf"
    export CONTAINERS_STORAGE_CONF="$conf/storage.conf"
}

# inputs_hash FILE... : one short hash of the files' contents (and names), a cache key.
inputs_hash() {
    local f
    for f in "$@"; do
        printf '%s\n' "${f#"$REPO_ROOT"/}"
        sha256sum <"$f"
    done | sha256sum | cut -c1-12
}

need_root() {
    [[ $(id -u) -eq 0 ]] || kind_die "needs root (debootstrap, chroot, rootful podman)"
}

need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || kind_die "$c not found: run make setup (hack/setup.sh)"
    done
}
