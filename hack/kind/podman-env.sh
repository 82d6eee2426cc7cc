#!/usr/bin/env bash
# Print the environment that points podman and buildah at the project's own configuration and
# storage (hack/kind/lib.sh), as NAME=VALUE lines: how regtask_dev.kind runs podman and kind.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "$0")/lib.sh"
kind_podman_env
printf 'CONTAINERS_CONF=%s\nCONTAINERS_STORAGE_CONF=%s\nREGTASK_KIND_DIR=%s\n' \
    "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF" "$REGTASK_KIND_DIR"
