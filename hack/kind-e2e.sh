#!/usr/bin/env bash
# The platform end to end on a kind cluster of its own, the way a user installs it: images built
# from the Dockerfile, `helm install` of the chart, `kubectl apply -k manifests/samples/`, every
# sample task Succeeded and read back through the shim (devtools/regtask_dev/e2e.py).
#
# Works here with podman (the project's node image and network lock-down) and where Docker runs
# (kind's own node image). The cluster is deleted at the end, also on failure.
# Env: KEEP_CLUSTER=1   keep the cluster and the services afterwards
#      TASK_TIMEOUT_S   how long the sample tasks may take together (900)
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--timeout "${TASK_TIMEOUT_S:-900}")
[[ "${KEEP_CLUSTER:-0}" != 1 ]] || args+=(--keep)
exec .venv/bin/python -m regtask_dev.e2e "${args[@]}"
