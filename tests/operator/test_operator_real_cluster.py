"""What only a real cluster shows: Kubernetes' own admission, controllers, kubelet and network.

Each test here failed (or would have) against the code before its fix, on this cluster:
- a tenant's 21st task within the Job TTL was refused by its ResourceQuota (``count/jobs.batch``
  counts finished Jobs), and a company allowed more than 10 tasks per user got no pod for the
  11th (a fixed 10 CPU quota);
- an evicted runner (SIGTERM, exit 143, condition DisruptionTarget) failed its task: the
  podFailurePolicy's FailJob on 143 came before Ignore DisruptionTarget;
- NetworkPolicy had never been enforced anywhere the tests ran.

Long (about 430 lines) for a reason: each scenario needs the same real cluster, operator and
gateway; one module keeps them together with the reasons above.
"""

from __future__ import annotations

import json
import secrets
import textwrap
import threading
import time
import urllib.request
from typing import Any

import pytest
import redis
from kubernetes import client, watch

from regtask import keys, naming
from regtask.crmodels import API_GROUP, API_VERSION
from regtask_dev.kind import KindCluster
from regtask_dev.llm_server import LlamaServer
from regtask_dev.redis_server import RedisServer
from regtask_dev.stack import GatewayProcess, scrape_metrics, wait_until
from tests.fixtures.platform import create_company_quota, gateway_env
from tests.operator.test_operator_lifecycle import get_task, new_task, phase_of

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(900)]

RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def phases(api: client.ApiClient, namespace: str, names: list[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for name in names:
        phase = phase_of(api, namespace, name) or ""
        counted[phase] = counted.get(phase, 0) + 1
    return counted


def job_pods(api: client.ApiClient, tenant: str, task_id: str) -> list[Any]:
    selector = f"batch.kubernetes.io/job-name={naming.job_name(task_id)}"
    return list(client.CoreV1Api(api).list_namespaced_pod(tenant, label_selector=selector).items)


def quota_refusals(api: client.ApiClient, tenant: str) -> list[str]:
    """The Job controller's FailedCreate events: pods the tenant's quota refused."""
    events = client.CoreV1Api(api).list_namespaced_event(tenant).items
    return [
        str(e.message) for e in events if e.reason == "FailedCreate" and "quota" in str(e.message)
    ]


class PodFollower(threading.Thread):
    """One pod followed by a watch (from the moment it is made) until it is deleted: its last
    state and when it went."""

    def __init__(self, api: client.ApiClient, namespace: str, pod: Any) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace, self.pod = api, namespace, pod
        self.deleted_at: float | None = None
        self.start()

    def run(self) -> None:
        for event in watch.Watch().stream(
            client.CoreV1Api(self.api).list_namespaced_pod,
            self.namespace,
            field_selector=f"metadata.name={self.pod.metadata.name}",
            resource_version=self.pod.metadata.resource_version,
            timeout_seconds=120,
        ):
            self.pod = event["object"]
            if event["type"] == "DELETED":
                self.deleted_at = time.time()
                return


def test_thirty_tasks_for_one_tenant_within_the_job_ttl_all_succeed(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: GatewayProcess,
) -> None:
    """Finished Jobs stay for their TTL (an hour by default): they must not count against the
    tenant. Before the fix the 21st Job was refused by the API server and requeued for ever."""
    user, company = f"many_{secrets.token_hex(3)}", "company_many"
    operator_factory(**gateway_env(gateway))  # the default ttlSecondsAfterFinished: 3600
    names = [
        new_task(
            kube_api,
            control_namespace,
            f"many_{n:02d}_{user}",
            userId=user,
            companyId=company,
            inputs=[{"name": "document", "value": f"Facture {n} du 24/09/2025, 12,00 EUR."}],
        )
        for n in range(30)
    ]
    wait_until(
        lambda: phases(kube_api, control_namespace, names).get("Succeeded") == 30,
        600,
        "30 tasks Succeeded",
        2.0,
    )
    tenant = naming.tenant_namespace(user, company)
    finished = client.BatchV1Api(kube_api).list_namespaced_job(tenant).items
    assert len(finished) == 30  # all still there, within their TTL
    assert quota_refusals(kube_api, tenant) == []


def test_the_tenant_quota_holds_max_tasks_per_user_runners(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: GatewayProcess,
) -> None:
    """A company allowed 12 tasks per user: 12 admitted tasks, 12 pods. Pods are counted by
    the ResourceQuota when they are created, before any scheduling: with the node cordoned
    they all wait Pending, and none may have been refused."""
    user, company = f"wide_{secrets.token_hex(3)}", f"company_wide_{secrets.token_hex(2)}"
    create_company_quota(kube_api, control_namespace, company, 12)
    operator_factory(**gateway_env(gateway))
    cluster.kubectl("cordon", cluster.node_container)
    try:
        names = [
            new_task(
                kube_api,
                control_namespace,
                f"wide_{n:02d}_{user}",
                userId=user,
                companyId=company,
                inputs=[{"name": "document", "value": "Facture 7, 10,00 EUR."}],
            )
            for n in range(12)
        ]
        wait_until(
            lambda: phases(kube_api, control_namespace, names).get("Running") == 12,
            120,
            "12 tasks Running",
        )
        tenant = naming.tenant_namespace(user, company)
        wait_until(
            lambda: (
                len(client.CoreV1Api(kube_api).list_namespaced_pod(tenant).items) == 12
                or quota_refusals(kube_api, tenant)
            ),
            60,
            "a pod per admitted task (or a refusal)",
        )
        assert quota_refusals(kube_api, tenant) == []
        pods = client.CoreV1Api(kube_api).list_namespaced_pod(tenant).items
        assert {p.status.phase for p in pods} == {"Pending"}
        assert len(pods) == 12
    finally:
        cluster.kubectl("uncordon", cluster.node_container)
    wait_until(
        lambda: phases(kube_api, control_namespace, names).get("Succeeded") == 12,
        300,
        "12 tasks Succeeded",
        2.0,
    )


def test_an_evicted_runner_is_retried_not_failed(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway_factory: Any,
    llm_server: LlamaServer,
    redis_sync: redis.Redis,
) -> None:
    """A node drain evicts a runner mid-answer: the kubelet sends SIGTERM, the runner stops
    (exit 143) and the pod gets the DisruptionTarget condition. The task must go on in a new
    pod and succeed."""
    gateway = gateway_factory(LLM_BASE_URL=llm_server.base_url)
    operator_factory(**gateway_env(gateway))
    user, company = f"evict_{secrets.token_hex(3)}", "company_evict"
    task_id = f"llm_evict_{user}"
    name = new_task(
        kube_api,
        control_namespace,
        task_id,
        taskType="llm_conversation",
        userId=user,
        companyId=company,
        conversationId=f"conv_{user}",
        inputs=[{"name": "prompt", "value": "Tell a long story about a lighthouse keeper."}],
        parameters={"max_tokens": "400"},
    )
    tenant = naming.tenant_namespace(user, company)

    def answering() -> Any:
        assert phase_of(kube_api, control_namespace, name) not in ("Failed", "Succeeded")
        raw = redis_sync.hget(keys.task(task_id), keys.DATA_FIELD)
        progress = json.loads(raw)["progress"]["progress_percent"] if raw else 0
        running = [p for p in job_pods(kube_api, tenant, task_id) if p.status.phase == "Running"]
        return running[0] if running and progress > 10 else None

    pod = wait_until(answering, 180, "the runner streaming its answer", 0.5)
    # The evicted pod's last state, seen by a watch (the Job controller lets it go once counted).
    last = PodFollower(kube_api, tenant, pod)
    client.CoreV1Api(kube_api).create_namespaced_pod_eviction(
        pod.metadata.name,
        tenant,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=tenant)),
    )
    wait_until(
        lambda: phase_of(kube_api, control_namespace, name) in ("Succeeded", "Failed"),
        420,
        "the task ended",
        2.0,
    )
    last.join(timeout=130)
    status = get_task(kube_api, control_namespace, name)["status"]
    assert status["phase"] == "Succeeded", status
    evicted = last.pod
    assert any(c.type == "DisruptionTarget" for c in evicted.status.conditions or [])
    [terminated] = [s.state.terminated for s in evicted.status.container_statuses]
    assert terminated.exit_code == 143  # the runner's own exit after SIGTERM
    after = job_pods(kube_api, tenant, task_id)
    assert [(p.metadata.name != pod.metadata.name, p.status.phase) for p in after] == [
        (True, "Succeeded")
    ]


PROBE = textwrap.dedent(
    """
    import json, socket, sys, time, urllib.error, urllib.request
    targets = json.loads(sys.argv[1])
    urls = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}

    def status(url):
        try:
            with urllib.request.urlopen(url, timeout=3) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def connects(host, port):
        try:
            socket.create_connection((host, port), timeout=2).close()
            return True
        except OSError:
            return False

    # A new pod's policy lands about a second after it starts (kube-router): wait for it.
    deadline = time.time() + 30
    while connects(*targets["redis"]) and time.time() < deadline:
        time.sleep(0.5)
    try:
        socket.gethostbyname("kubernetes.default.svc.cluster.local")
        dns = True
    except OSError:
        dns = False
    found = {"dns": dns, **{k: connects(*v) for k, v in targets.items()}}
    if urls:
        found["http"] = {k: status(v) for k, v in urls.items()}
    print(json.dumps(found))
    """
)


def run_probe(
    api: client.ApiClient,
    namespace: str,
    image: str,
    targets: dict[str, Any],
    urls: dict[str, str] | None = None,
) -> Any:
    """From a pod of ``namespace``: which (host, port) ``targets`` accept a connection, and
    the HTTP status of each of ``urls`` (None: no answer)."""
    core = client.CoreV1Api(api)
    name = f"probe-{secrets.token_hex(3)}"
    body: Any = {
        "metadata": {"name": name, "labels": {"app": "probe"}},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": naming.RUNNER_SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "command": ["python", "-c", PROBE, json.dumps(targets), json.dumps(urls or {})],
                    "securityContext": RESTRICTED,
                    "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, body)
    wait_until(
        lambda: core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed"),
        120,
        "probe finished",
        0.5,
    )
    log = str(core.read_namespaced_pod_log(name, namespace))
    return json.loads(log.strip().splitlines()[-1])


def test_network_policy_lets_a_runner_reach_the_gateway_and_dns_only(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: GatewayProcess,
    runner_image: str,
) -> None:
    """From a pod of a tenant namespace (its fences as admission builds them): the gateway's API
    port and cluster DNS answer; the gateway's metrics port (every company's LLM usage), Redis
    on the host, the API server, another tenant's pod and addresses outside the machine do not,
    and the API port serves neither metrics nor docs (issue 16, item 7)."""
    operator_factory(**gateway_env(gateway))
    run = secrets.token_hex(3)
    tenants = {"a": (f"neta_{run}", "company_net"), "b": (f"netb_{run}", "company_net")}
    for key, (user, company) in tenants.items():
        name = new_task(
            kube_api, control_namespace, f"net_{key}_{run}", userId=user, companyId=company
        )
        wait_until(
            lambda n=name: phase_of(kube_api, control_namespace, n) == "Succeeded", 120, "ran"
        )
    ns_a = naming.tenant_namespace(*tenants["a"])
    ns_b = naming.tenant_namespace(*tenants["b"])

    # A listening pod in the other tenant's namespace.
    core = client.CoreV1Api(kube_api)
    server: Any = {
        "metadata": {"name": "listener"},
        "spec": {
            "serviceAccountName": naming.RUNNER_SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "listener",
                    "image": runner_image,
                    "command": ["python", "-m", "http.server", "8080"],
                    "securityContext": RESTRICTED,
                    "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}},
                }
            ],
        },
    }
    core.create_namespaced_pod(ns_b, server)
    listener_ip = wait_until(
        lambda: core.read_namespaced_pod("listener", ns_b).status.pod_ip, 60, "listener IP"
    )
    # The metrics port does serve (from the host): a refusal from the pod is the policy's.
    assert (
        "regtask_llm_requests_total"
        in urllib.request.urlopen(gateway.metrics_url, timeout=5).read().decode()
    )
    with RedisServer(host=cluster.host_address) as host_redis:
        found = run_probe(
            kube_api,
            ns_a,
            runner_image,
            {
                "gateway": [gateway.host, gateway.port],
                "gateway_metrics": [gateway.host, gateway.metrics_port],
                "redis": [host_redis.host, host_redis.port],
                "apiserver_service": ["10.96.0.1", 443],
                "apiserver_node": [cluster.node_address, 6443],
                "other_tenant": [listener_ip, 8080],
                "outside": ["192.0.2.1", 443],
            },
            {
                "healthz": f"{gateway.url}/healthz",
                "metrics": f"{gateway.url}/metrics",
                "docs": f"{gateway.url}/docs",
                "openapi": f"{gateway.url}/openapi.json",
            },
        )
    assert found == {
        "dns": True,
        "gateway": True,
        "gateway_metrics": False,
        "http": {"healthz": 200, "metrics": 404, "docs": 404, "openapi": 404},
        "redis": False,
        "apiserver_service": False,
        "apiserver_node": False,
        "other_tenant": False,
        "outside": False,
    }, found


def test_a_deadline_stops_the_runner_and_fails_the_task(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway_factory: Any,
    llm_server: LlamaServer,
) -> None:
    """``maxDurationSeconds`` is the Job's activeDeadlineSeconds: the Job controller ends the
    run (its pod terminated), the task fails with the controller's reason."""
    gateway = gateway_factory(LLM_BASE_URL=llm_server.base_url)
    operator_factory(**gateway_env(gateway))
    name = new_task(
        kube_api,
        control_namespace,
        f"llm_deadline_{secrets.token_hex(3)}",
        taskType="llm_conversation",
        userId="deadline_user",
        companyId="company_deadline",
        conversationId="conv_deadline",
        maxDurationSeconds=8,
        inputs=[{"name": "prompt", "value": "Write a very long poem about the sea."}],
        parameters={"max_tokens": "2000"},
    )
    wait_until(
        lambda: phase_of(kube_api, control_namespace, name) in ("Succeeded", "Failed"),
        120,
        "the task ended",
    )
    status = get_task(kube_api, control_namespace, name)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded"), status


def test_a_company_quota_change_resizes_its_tenants_quota(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: GatewayProcess,
) -> None:
    """The tenant's ResourceQuota follows the company's maxTasksPerUser at its next admission."""
    user, company = f"resize_{secrets.token_hex(3)}", f"company_resize_{secrets.token_hex(2)}"
    create_company_quota(kube_api, control_namespace, company, 2)
    operator = operator_factory(**gateway_env(gateway))
    tenant = naming.tenant_namespace(user, company)

    def pods_quota() -> str:
        quota = client.CoreV1Api(kube_api).read_namespaced_resource_quota("tenant-quota", tenant)
        return str(quota.spec.hard["pods"])

    first = new_task(
        kube_api, control_namespace, f"resize_1_{user}", userId=user, companyId=company
    )
    wait_until(lambda: phase_of(kube_api, control_namespace, first) == "Succeeded", 120, "ran")
    assert pods_quota() == "4"
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        control_namespace,
        "companyquotas",
        naming.derived_name("cq", company),
        {"spec": {"maxTasksPerUser": 7}},
    )
    series = f'regtask_quota_max_tasks_per_user{{company="{company}"}}'
    wait_until(
        lambda: scrape_metrics(operator.metrics_url).get(series) == 7.0,
        30,
        "the operator took the new limit",
    )
    second = new_task(
        kube_api, control_namespace, f"resize_2_{user}", userId=user, companyId=company
    )
    wait_until(lambda: phase_of(kube_api, control_namespace, second) == "Succeeded", 120, "ran")
    assert pods_quota() == "14"


def test_a_cancelled_tasks_slot_waits_for_its_pod_to_be_gone(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway_factory: Any,
    llm_server: LlamaServer,
    redis_sync: redis.Redis,
) -> None:
    """One task per user: the user's second task waits while the first streams an answer; the
    first is cancelled. Its pod terminates (SIGTERM, the runner reports why, exits) before the
    second task's Job is created: the foreground deletion keeps the Job until its pods are gone,
    and only then is the slot free. Before: the second Job was created at once, beside the
    terminating pod."""
    gateway = gateway_factory(LLM_BASE_URL=llm_server.base_url)
    user, company = f"cancel_{secrets.token_hex(3)}", f"company_cancel_{secrets.token_hex(2)}"
    create_company_quota(kube_api, control_namespace, company, 1)
    operator_factory(**gateway_env(gateway))
    tenant = naming.tenant_namespace(user, company)
    first_id, second_id = f"llm_first_{user}", f"doc_second_{user}"
    first = new_task(
        kube_api,
        control_namespace,
        first_id,
        taskType="llm_conversation",
        userId=user,
        companyId=company,
        conversationId=f"conv_{user}",
        inputs=[{"name": "prompt", "value": "Tell a long story about a lighthouse keeper."}],
        parameters={"max_tokens": "400"},
    )

    def streaming() -> Any:
        raw = redis_sync.hget(keys.task(first_id), keys.DATA_FIELD)
        progress = json.loads(raw)["progress"]["progress_percent"] if raw else 0
        running = [p for p in job_pods(kube_api, tenant, first_id) if p.status.phase == "Running"]
        return running[0] if running and progress > 10 else None

    pod = wait_until(streaming, 180, "the first runner streaming", 0.5)
    second = new_task(kube_api, control_namespace, second_id, userId=user, companyId=company)
    wait_until(
        lambda: phase_of(kube_api, control_namespace, second) == "Waiting", 60, "second waits"
    )
    gone = PodFollower(kube_api, tenant, pod)
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        control_namespace,
        "registrytasks",
        first,
        {"spec": {"cancel": True}},
    )
    wait_until(
        lambda: phase_of(kube_api, control_namespace, second) == "Succeeded", 180, "second ran"
    )
    gone.join(timeout=130)
    assert phase_of(kube_api, control_namespace, first) == "Cancelled"
    second_job = client.BatchV1Api(kube_api).read_namespaced_job(naming.job_name(second_id), tenant)
    created = second_job.metadata.creation_timestamp.timestamp()
    assert gone.deleted_at is not None, "the first pod was never deleted"
    # Whole seconds: creationTimestamp has no fraction.
    assert created >= int(gone.deleted_at), (created, gone.deleted_at)
