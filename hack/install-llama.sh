#!/usr/bin/env bash
# Build llama-cpp-python (the local OpenAI-compatible LLM server the runner and gateway tests use)
# into a per-user wheel cache and install it into the project venv, idempotently.
#
# Usage: hack/install-llama.sh          # build the wheel if missing, install it into .venv
#
# PyPI ships only an sdist of llama-cpp-python, so a cold install compiles llama.cpp (see
# hack/BUILD_TIMES_LLAMA.md). The wheel lands in $REGTASK_WHEELS_DIR (default
# ~/.cache/regtask/wheels) and is rebuilt only when LLAMA_VERSION below changes; a cached run is
# one `uv pip install` (seconds). GGML_NATIVE=OFF: a -march=native build crashed on this machine
# class with a general protection fault, and a portable build runs on any x86-64 CI runner.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION="0.3.36"
WHEELS_DIR="${REGTASK_WHEELS_DIR:-$HOME/.cache/regtask/wheels}"
VENV_PY="${REGTASK_VENV_PYTHON:-.venv/bin/python}"

log() { echo "install-llama: $*" >&2; }

find_wheel() {
    local wheel
    for wheel in "$WHEELS_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl; do
        if [[ -f "$wheel" ]]; then
            echo "$wheel"
            return 0
        fi
    done
    return 1
}

# pip_wheel ARGS... runs `pip wheel` with the venv's own interpreter (the wheel tag must match
# it). The venv has no pip (uv manages it), so use the base interpreter's pip when it has one,
# else a throwaway pip from PyPI run by uv on that same interpreter.
pip_wheel() {
    local base_py
    base_py=$("$VENV_PY" -c 'import sys; print(sys._base_executable)')
    if "$base_py" -m pip --version >/dev/null 2>&1; then
        "$base_py" -m pip wheel "$@"
    else
        uv tool run --python "$base_py" --from pip pip wheel "$@"
    fi
}

build_wheel() {
    local start tmp
    start=$(date +%s)
    tmp="$WHEELS_DIR/.build-$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "llama-cpp-python $LLAMA_VERSION: building wheel (compiles llama.cpp; minutes on a cold cache)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF ${CMAKE_ARGS:-}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        pip_wheel --no-deps --no-cache-dir --wheel-dir "$tmp" \
        "llama-cpp-python==$LLAMA_VERSION"
    mv "$tmp"/llama_cpp_python-"$LLAMA_VERSION"-*.whl "$WHEELS_DIR"/
    rm -rf "$tmp"
    log "llama-cpp-python $LLAMA_VERSION: built in $(($(date +%s) - start)) s"
}

main() {
    if [[ ! -x "$VENV_PY" ]]; then
        log "no project venv at $VENV_PY (run hack/setup.sh first)"
        exit 1
    fi
    mkdir -p "$WHEELS_DIR"
    local wheel
    if wheel=$(find_wheel); then
        log "llama-cpp-python $LLAMA_VERSION: cached wheel $wheel"
    else
        build_wheel
        wheel=$(find_wheel)
    fi
    # The local wheel satisfies the pin; the [server] extras (uvicorn, fastapi, sse-starlette,
    # starlette-context, pydantic-settings) resolve from PyPI. Already installed -> a no-op.
    uv pip install -q --python "$VENV_PY" --find-links "$WHEELS_DIR" \
        "$wheel" "llama-cpp-python[server]==$LLAMA_VERSION"
    "$VENV_PY" -c 'import llama_cpp, llama_cpp.server; print("llama-cpp-python", llama_cpp.__version__)'
}

main "$@"
