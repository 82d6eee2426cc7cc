#!/bin/sh
# The one entrypoint of the regtask images: CONTAINER_TYPE picks the process (as the seed's
# start.sh did), so one image serves several roles and the chart only sets a variable.
#
#   CONTAINER_TYPE=operator  python -m regtask_operator [ARGS]     Kopf; liveness :8080/healthz
#   CONTAINER_TYPE=shim      python -m regtask_shim                RPC shim, :$SHIM_PORT (8080)
#   CONTAINER_TYPE=gateway   python -m regtask_gateway             runner gateway, :8081
#   CONTAINER_TYPE=runner    python -m regtask_runners TASK_TYPE   (Jobs set this command directly)
#
#   regtask-entrypoint healthcheck   GET the current mode's /healthz (Docker HEALTHCHECK)
#   regtask-entrypoint CMD [ARGS]    any installed command (sh, python, chroma...) runs as is
#
# Each image lists the modes it can run in REGTASK_IMAGE_MODES (the runner image has no kopf or
# fastapi): asking another one fails at once with a clear message instead of an ImportError.
set -eu

mode="${CONTAINER_TYPE:-}"
modes="${REGTASK_IMAGE_MODES:-operator shim gateway runner}"

die() {
    echo "regtask-entrypoint: $*" >&2
    exit 64
}

healthcheck() {
    case "$mode" in
        operator) port=8080 ;;
        shim) port="${SHIM_PORT:-8080}" ;;
        gateway) port="${REGTASK_GATEWAY_PORT:-8081}" ;;
        *) die "no health endpoint in mode '${mode}'" ;;
    esac
    exec python -c '
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except Exception as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
' "http://127.0.0.1:${port}/healthz"
}

if [ "${1:-}" = "healthcheck" ]; then
    healthcheck
fi

# An explicit command (docker run IMAGE sh, a Pod's args) wins over the mode.
if [ "$#" -gt 0 ] && command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi

[ -n "$mode" ] || die "set CONTAINER_TYPE to one of: ${modes}"
case " ${modes} " in
    *" ${mode} "*) ;;
    *) die "CONTAINER_TYPE=${mode} is not served by this image (it serves: ${modes})" ;;
esac

case "$mode" in
    operator) exec python -m regtask_operator "$@" ;;
    shim) exec python -m regtask_shim "$@" ;;
    gateway) exec python -m regtask_gateway "$@" ;;
    runner)
        [ "$#" -ge 1 ] || die "runner mode needs the task type: regtask-entrypoint TASK_TYPE"
        exec python -m regtask_runners "$@"
        ;;
    *) die "unknown CONTAINER_TYPE=${mode} (operator, shim, gateway or runner)" ;;
esac
