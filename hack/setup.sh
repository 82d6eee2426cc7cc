#!/usr/bin/env bash
# Install everything the tests and the local demo need on a fresh Debian machine, idempotently:
# Debian packages, the Python environment (.venv, from uv.lock), the control-plane binaries
# (built from Go modules) and firebase-tools (from npm), cached under ~/.cache/regtask. A second
# run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
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
# The local OpenAI-compatible LLM server for runner tests and the demo (cached wheel).
hack/install-llama.sh
# firebase-tools from npm: its Auth emulator tests the shim's production token verifier.
hack/install-firebase-tools.sh >/dev/null
log "ready"
