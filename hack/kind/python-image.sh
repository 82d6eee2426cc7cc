#!/usr/bin/env bash
# The base image the project's Dockerfile is built on here (its PYTHON_IMAGE build argument),
# made without pulling: Debian bookworm (Python 3.11, the interpreter CI tests with) by
# debootstrap, plus pip, venv and passwd, shaped like the official python:3.11-slim image where
# the Dockerfile relies on it (pip not Debian-managed, `python` on the PATH, sbin folders on the
# PATH for groupadd). Built once per recipe.
#
# Usage: hack/kind/python-image.sh              build it unless cached; print its reference
#        hack/kind/python-image.sh --print-ref  only print the reference it would have
#
# Where users can pull, the Dockerfile's default (python:3.11.15-slim-trixie by digest) is used
# instead; the two differ in Debian release (12 here, 13 there) and Python patch level.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "$0")/lib.sh"

key=$({
    inputs_hash "$0"
    echo "$DEBIAN_SUITE"
} | sha256sum | cut -c1-12)
BASE_REF="localhost/regtask/python:3.11-$DEBIAN_SUITE-$key"

if [[ "${1:-}" == "--print-ref" ]]; then
    echo "$BASE_REF"
    exit 0
fi

need_root
need_cmd podman buildah debootstrap
kind_podman_env
if podman image exists "$BASE_REF"; then
    kind_log "cached: $BASE_REF"
    echo "$BASE_REF"
    exit 0
fi

mkdir -p "$REGTASK_KIND_DIR/debs"
WORK=$(mktemp -d "$REGTASK_KIND_DIR/python-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R="$WORK/rootfs"
started=$SECONDS
kind_log "debootstrap $DEBIAN_SUITE with Python 3.11"
debootstrap --variant=minbase --cache-dir="$REGTASK_KIND_DIR/debs" \
    --include=python3,python3-pip,python3-venv,passwd,ca-certificates \
    "$DEBIAN_SUITE" "$R" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    {
        tail -n 20 "$WORK/debootstrap.log" >&2
        kind_die "debootstrap failed"
    }
rm -f "$R"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf python3 "$R/usr/bin/python"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* \
    "$R"/usr/share/man/* "$R"/usr/share/locale/*
: >"$R/etc/machine-id"

container=$(buildah from scratch)
buildah copy "$container" "$R" / >/dev/null
# SSL_CERT_FILE: uv reads its own trust roots unless told; this is the image's Debian bundle
# (at build time the host's bundle is mounted over it, see hack/kind/images.sh).
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --cmd '["python3"]' "$container"
buildah commit -q --rm "$container" "$BASE_REF" >/dev/null
kind_log "built $BASE_REF in $((SECONDS - started)) s"
echo "$BASE_REF"
