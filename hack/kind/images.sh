#!/usr/bin/env bash
# The project's images, built from its Dockerfile with `buildah bud` (no Docker engine needed),
# each cached by a hash of what it is built from.
#
# Usage: hack/kind/images.sh [TARGET...]               build what is missing; print one
#                                                      "TARGET=REFERENCE" line per target
#        hack/kind/images.sh --print-refs [TARGET...]  only print the references
# TARGET: operator, shim, runner (default: all three).
#
# The reference is localhost/regtask/<target>:<hash>, the hash taken over the Dockerfile,
# docker/, pyproject.toml, uv.lock, common/regtask and the target's own packages, and the base
# image: a change to any of them gives a new image, anything else reuses the cached one. The
# base is hack/kind/python-image.sh's (PYTHON_IMAGE=...; REGTASK_PYTHON_IMAGE overrides it,
# e.g. with the Dockerfile's own default where images can be pulled). Builds keep their layers
# (--layers), so a change to the project's code rebuilds in seconds; a change to uv.lock
# re-runs `uv sync` (minutes).
#
# Package downloads during the build go through this workplace's TLS-inspecting egress, whose
# CA is in the host's bundle only: that bundle is mounted read-only into the build's RUN steps,
# never copied into an image.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "$0")/lib.sh"

print_only=false
builder=buildah
while [[ "${1:-}" == --* ]]; do
    case "$1" in
        --print-refs) print_only=true ;;
        --docker) builder=docker ;;
        *) kind_die "unknown option $1" ;;
    esac
    shift
done
targets=("$@")
((${#targets[@]})) || targets=(operator shim runner)

# packages_of TARGET: the project packages the target's image carries, one per line (the shim
# image serves two processes: the RPC shim and the runner gateway; the console reads the
# CLI's ETA module).
packages_of() {
    case "$1" in
        operator) echo operator/regtask_operator ;;
        shim) printf '%s\n' shim/regtask_shim gateway/regtask_gateway cli/regtask_cli ;;
        runner) echo runners/regtask_runners ;;
        *) kind_die "unknown target $1 (operator, shim, runner)" ;;
    esac
}

if [[ $builder == docker ]]; then
    base=${REGTASK_PYTHON_IMAGE:-}  # empty: the Dockerfile's own pinned default
else
    base=${REGTASK_PYTHON_IMAGE:-$("$KIND_LIB_DIR/python-image.sh" --print-ref)}
fi

# source_files TARGET: every file the target's image is built from, in a stable order.
source_files() {
    local listed packages
    listed=$(packages_of "$1")
    mapfile -t packages <<<"$listed"
    cd "$REPO_ROOT"
    {
        printf '%s\n' Dockerfile pyproject.toml uv.lock .dockerignore
        find docker common/regtask "${packages[@]}" -type f \
            -not -path '*/__pycache__/*' -not -name '*.py[cod]'
    } | LC_ALL=C sort | sed "s#^#$REPO_ROOT/#"
}

ref_of() {
    local target=$1 key
    mapfile -t files < <(source_files "$target")
    key=$({
        inputs_hash "${files[@]}"
        echo "$builder $base"
    } | sha256sum | cut -c1-12)
    echo "localhost/regtask/$target:$key"
}

if $print_only; then
    for target in "${targets[@]}"; do
        echo "$target=$(ref_of "$target")"
    done
    exit 0
fi

if [[ $builder == docker ]]; then
    need_cmd docker
    for target in "${targets[@]}"; do
        ref=$(ref_of "$target")
        if ! docker image inspect "$ref" >/dev/null 2>&1; then
            args=(--target "$target" --build-arg "REVISION=${ref##*:}" -t "$ref")
            [[ -z "$base" ]] || args+=(--build-arg "PYTHON_IMAGE=$base")
            docker build "${args[@]}" "$REPO_ROOT" >&2
        fi
        echo "$target=$ref"
    done
    exit 0
fi

need_root
need_cmd podman buildah
kind_podman_env
if [[ -z "${REGTASK_PYTHON_IMAGE:-}" ]]; then
    "$KIND_LIB_DIR/python-image.sh" >/dev/null
fi
# The build's RUN steps use the host's network and resolvers, not the dead DNS address the
# project's containers.conf gives kind nodes.
dns_args=()
while read -r server; do
    dns_args+=(--dns "$server")
done < <(awk '$1 == "nameserver" { print $2 }' /etc/resolv.conf)
ca_mount=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    ca_mount=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi

for target in "${targets[@]}"; do
    ref=$(ref_of "$target")
    if podman image exists "$ref"; then
        kind_log "cached: $ref"
    else
        started=$SECONDS
        kind_log "building $ref (the first build of a target runs uv sync: minutes)"
        log_file="$REGTASK_KIND_DIR/build-$target.log"
        if ! buildah bud --layers --force-rm --format docker --target "$target" --network host "${dns_args[@]}" "${ca_mount[@]}" \
            --build-arg "PYTHON_IMAGE=$base" --build-arg "REVISION=${ref##*:}" \
            --tag "$ref" -f "$REPO_ROOT/Dockerfile" "$REPO_ROOT" >"$log_file" 2>&1; then
            tail -n 30 "$log_file" >&2
            kind_die "building $target failed (whole log: $log_file)"
        fi
        kind_log "built $ref in $((SECONDS - started)) s"
    fi
    echo "$target=$ref"
done
