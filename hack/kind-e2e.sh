#!/usr/bin/env bash
# The platform end to end on a real cluster (kind): build the images, load them into a fresh kind
# cluster, install Redis, Chroma and an LLM (hack/kind/), install the chart, apply
# manifests/samples/ and wait until every sample task has Succeeded. On failure it prints the
# operator, shim and gateway logs, `kubectl describe` of the tasks and the tenants' Jobs/Pods.
#
# Needs: docker, kind, kubectl, helm (PATH or hack/install-k8s-tools.sh's), curl.
# Usage: hack/kind-e2e.sh                  (make kind-e2e)
# Env:   KEEP_CLUSTER=1      keep the cluster afterwards (default: deleted, even on failure)
#        CLUSTER_NAME        kind cluster name (regtask-e2e)
#        KIND_NODE_IMAGE     node image (kind's default)
#        TASK_TIMEOUT_S      how long the sample tasks may take together (900)
#        SKIP_BUILD=1        reuse the regtask/*:e2e images already in the local Docker
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_NAME=${CLUSTER_NAME:-regtask-e2e}
TASK_TIMEOUT_S=${TASK_TIMEOUT_S:-900}
NAMESPACE=regtask-system
RELEASE=regtask
TAG=e2e
IMAGES=("regtask/operator:$TAG" "regtask/shim:$TAG" "regtask/runner:$TAG" "regtask/llm:$TAG")
KUBECONFIG_FILE="${TMPDIR:-/tmp}/regtask-e2e-$CLUSTER_NAME.kubeconfig"
SHIM_LOCAL_PORT=18080

cluster_created=false
port_forward_pid=""

log() { echo "kind-e2e: $*" >&2; }
die() {
    log "$*"
    exit 1
}

find_helm() {
    local tools
    if command -v helm >/dev/null 2>&1; then
        command -v helm
        return
    fi
    tools=$(hack/install-k8s-tools.sh --print-bin 2>/dev/null || true)
    [[ -n "$tools" && -x "$tools/helm" ]] || die "helm not found (PATH, or run hack/install-k8s-tools.sh)"
    echo "$tools/helm"
}

preflight() {
    local tool
    for tool in docker kind kubectl curl; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
    done
    docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable"
    HELM=$(find_helm)
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
        die "a kind cluster named $CLUSTER_NAME exists: delete it or set CLUSTER_NAME"
    fi
}

diagnostics() {
    local ns pod component
    log "---------------- diagnostics"
    kubectl get registrytasks,companyquotas -A -o wide || true
    kubectl -n "$NAMESPACE" describe registrytasks || true
    kubectl -n "$NAMESPACE" get pods -o wide || true
    for component in operator shim gateway; do
        log "---------------- logs: $component"
        kubectl -n "$NAMESPACE" logs "deployment/$RELEASE-$component" --all-containers \
            --tail=300 || true
    done
    for ns in $(kubectl get namespaces -l app.kubernetes.io/managed-by=regtask-operator \
        -o jsonpath='{.items[*].metadata.name}' 2>/dev/null); do
        log "---------------- tenant namespace $ns"
        kubectl -n "$ns" get jobs,pods,networkpolicies -o wide || true
        kubectl -n "$ns" describe jobs,pods || true
        for pod in $(kubectl -n "$ns" get pods -o jsonpath='{.items[*].metadata.name}'); do
            log "---------------- logs: $ns/$pod"
            kubectl -n "$ns" logs "$pod" --all-containers --tail=200 || true
        done
    done
    log "---------------- recent events"
    kubectl get events -A --sort-by=.lastTimestamp | tail -n 60 || true
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n "$port_forward_pid" ]]; then
        kill "$port_forward_pid" 2>/dev/null
        wait "$port_forward_pid" 2>/dev/null
    fi
    if $cluster_created; then
        ((rc == 0)) || diagnostics
        if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
            log "keeping cluster $CLUSTER_NAME: export KUBECONFIG=$KUBECONFIG_FILE"
            log "delete it with: kind delete cluster --name $CLUSTER_NAME"
        else
            kind delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE"
            rm -f "$KUBECONFIG_FILE"
        fi
    fi
    if ((rc == 0)); then
        log "PASSED"
    else
        log "FAILED (exit $rc)"
    fi
    exit "$rc"
}

build_images() {
    local revision created
    revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    for target in operator shim runner; do
        log "building regtask/$target:$TAG"
        docker build --target "$target" -t "regtask/$target:$TAG" \
            --build-arg REVISION="$revision" --build-arg CREATED="$created" .
    done
    log "building regtask/llm:$TAG (compiles llama.cpp: minutes on a cold cache)"
    docker build -f hack/kind/llm.Dockerfile -t "regtask/llm:$TAG" hack/kind
}

create_cluster() {
    local args=(--name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE" --wait 180s)
    [[ -z "${KIND_NODE_IMAGE:-}" ]] || args+=(--image "$KIND_NODE_IMAGE")
    log "creating kind cluster $CLUSTER_NAME"
    cluster_created=true
    kind create cluster "${args[@]}"
    kind load docker-image --name "$CLUSTER_NAME" "${IMAGES[@]}"
}

install_platform() {
    local service_token=$1 deployment
    # The control namespace holds the platform's own pods to the restricted Pod Security level.
    kubectl create namespace "$NAMESPACE"
    kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted \
        pod-security.kubernetes.io/warn=restricted
    log "installing Redis, Chroma and the LLM"
    kubectl -n "$NAMESPACE" apply -f hack/kind/redis.yaml -f hack/kind/chroma.yaml \
        -f hack/kind/llm.yaml
    for deployment in redis chroma llm llm-embed; do
        kubectl -n "$NAMESPACE" rollout status "deployment/$deployment" --timeout=300s
    done
    log "installing the chart"
    "$HELM" install "$RELEASE" charts/regtask --namespace "$NAMESPACE" \
        -f hack/kind/values.yaml --set "shim.auth.serviceToken.value=$service_token" \
        --wait --timeout 5m
}

# Succeeded for every task, failing fast on Failed/Cancelled; progress every 15 s.
wait_for_tasks() {
    local deadline=$((SECONDS + TASK_TIMEOUT_S)) next_report=0 phases pending name phase
    while true; do
        phases=$(kubectl -n "$NAMESPACE" get registrytasks \
            -o jsonpath='{range .items[*]}{.metadata.name}={.status.phase}{"\n"}{end}')
        pending=0
        while IFS='=' read -r name phase; do
            [[ -n "$name" ]] || continue
            case "$phase" in
                Succeeded) ;;
                Failed | Cancelled) die "task $name ended $phase" ;;
                *) pending=$((pending + 1)) ;;
            esac
        done <<<"$phases"
        ((pending > 0)) || break
        ((SECONDS < deadline)) || die "$pending task(s) not Succeeded after ${TASK_TIMEOUT_S}s"
        if ((SECONDS >= next_report)); then
            kubectl -n "$NAMESPACE" get registrytasks
            next_report=$((SECONDS + 15))
        fi
        sleep 3
    done
    # The formal check, as a user would run it.
    kubectl -n "$NAMESPACE" wait registrytasks --all \
        --for=jsonpath='{.status.phase}'=Succeeded --timeout=30s
}

rpc() {
    local service_token=$1 body=$2
    curl -fsS -H "Authorization: Bearer $service_token" -H 'Content-Type: application/json' \
        -d "$body" "http://127.0.0.1:$SHIM_LOCAL_PORT/rpc"
}

print_results() {
    local service_token=$1 task_id i
    log "---------------- results"
    kubectl -n "$NAMESPACE" get registrytasks -o wide
    kubectl -n "$NAMESPACE" get companyquotas
    kubectl get namespaces -l app.kubernetes.io/managed-by=regtask-operator --show-labels
    # The web app's view: the registry documents, read through the shim's RPC.
    kubectl -n "$NAMESPACE" port-forward "service/$RELEASE-shim" "$SHIM_LOCAL_PORT:8080" \
        >/dev/null 2>&1 &
    port_forward_pid=$!
    for i in $(seq 30); do
        curl -fsS "http://127.0.0.1:$SHIM_LOCAL_PORT/healthz" >/dev/null 2>&1 && break
        ((i < 30)) || die "the shim is not reachable through port-forward"
        sleep 1
    done
    for task_id in $(kubectl -n "$NAMESPACE" get registrytasks \
        -o jsonpath='{.items[*].spec.taskId}'); do
        echo "TASK.get_task_status($task_id): $(rpc "$service_token" \
            "{\"method\": \"TASK.get_task_status\", \"args\": [\"$task_id\"]}")"
    done
}

main() {
    local service_token
    # Every kubectl/helm call talks to the e2e cluster only, never the user's current context.
    export KUBECONFIG="$KUBECONFIG_FILE"
    preflight
    trap cleanup EXIT
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        build_images
    fi
    create_cluster
    service_token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    install_platform "$service_token"
    log "applying manifests/samples/"
    kubectl apply -k manifests/samples/
    wait_for_tasks
    print_results "$service_token"
}

main "$@"
