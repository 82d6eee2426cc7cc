#!/usr/bin/env bash
# Install firebase-tools (the Firebase CLI, whose Auth emulator the shim's production token
# verifier is tested against) from the npm registry into a per-user cache, idempotently.
#
# Usage: hack/install-firebase-tools.sh               # install if missing, print the firebase path
#        hack/install-firebase-tools.sh --print-bin   # only print where the binary lives
#
# The package lands in $REGTASK_FIREBASE_TOOLS_DIR (default ~/.cache/regtask/firebase-tools)
# /<version>/ and is reinstalled only when FIREBASE_TOOLS_VERSION below changes (a new
# directory), so a cached run takes well under a second. The Auth emulator is plain Node (no
# Java, no emulator download): only Node >= 20 and npm are needed.
set -euo pipefail

FIREBASE_TOOLS_VERSION="15.34.2"

CACHE_DIR="${REGTASK_FIREBASE_TOOLS_DIR:-$HOME/.cache/regtask/firebase-tools}"
DEST="$CACHE_DIR/$FIREBASE_TOOLS_VERSION"
BIN="$DEST/node_modules/.bin/firebase"

log() { echo "install-firebase-tools: $*" >&2; }

main() {
    if [[ "${1:-}" == "--print-bin" ]]; then
        echo "$BIN"
        return 0
    fi
    if [[ -x "$BIN" ]]; then
        log "firebase-tools $FIREBASE_TOOLS_VERSION: cached at $BIN"
        echo "$BIN"
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        log "node or npm not found (need Node >= 20 with npm on PATH)"
        exit 1
    fi
    local node_major
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    if ((node_major < 20)); then
        log "Node $(node --version) is too old: firebase-tools $FIREBASE_TOOLS_VERSION needs >= 20"
        exit 1
    fi
    local start tmp
    start=$(date +%s)
    tmp="$DEST.tmp-$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "firebase-tools $FIREBASE_TOOLS_VERSION: npm install into $DEST"
    # Exact version, no audit/fund/update chatter; into a temporary prefix first so that an
    # interrupted install never looks cached.
    npm install --prefix "$tmp" --no-audit --no-fund --no-update-notifier --loglevel=error \
        "firebase-tools@$FIREBASE_TOOLS_VERSION" >&2
    rm -rf "$DEST"
    mv "$tmp" "$DEST"
    "$BIN" --version >/dev/null
    log "firebase-tools $FIREBASE_TOOLS_VERSION: installed in $(($(date +%s) - start)) s -> $BIN"
    echo "$BIN"
}

main "$@"
