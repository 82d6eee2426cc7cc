"""The production token check: ServiceAccount tokens bound to pods, reviewed by the real API server.

Each runner pod gets a projected token whose audience names its task; the gateway asks the API
server (TokenReview) and then matches pod, namespace and ServiceAccount to the task's spec.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from kubernetes import client

from regtask import keys, naming, tokens
from regtask.documents import TaskDoc
from regtask_dev.gateway_harness import GatewayHarness
from regtask_dev.kind import KindCluster
from regtask_dev.redis_server import RedisServer
from tests.fixtures.kube import delete_namespace
from tests.gateway.helpers import bearer, make_spec

PROGRESS = {"progress": 30, "current_step": "reviewed"}


@pytest.fixture
def reviewing_gateway(cluster: KindCluster, redis_server: RedisServer) -> Iterator[GatewayHarness]:
    gateway = GatewayHarness(
        review_tokens=True,
        redis_url=redis_server.url,
        kubeconfig=str(cluster.kubeconfig_path),
    ).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def tenants(kube_api: client.ApiClient) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for name in created:
        delete_namespace(kube_api, name)


def runner_pod(
    api: client.ApiClient, tenants: list[str], namespace: str, pod_name: str, account: str
) -> dict[str, Any]:
    """What the Job controller would create: a pod of the runner ServiceAccount."""
    core = client.CoreV1Api(api)
    if namespace not in tenants:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        tenants.append(namespace)
    for name in {account, naming.RUNNER_SERVICE_ACCOUNT}:
        try:
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    pod = core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=pod_name),
            spec=client.V1PodSpec(
                service_account_name=account,
                automount_service_account_token=False,
                containers=[
                    client.V1Container(
                        name="runner", image="runner:test", image_pull_policy="Never"
                    )
                ],
            ),
        ),
    )
    return {"name": pod.metadata.name, "uid": pod.metadata.uid, "account": account}


def bound_token(
    api: client.ApiClient, namespace: str, pod: dict[str, Any], audience: str | None
) -> str:
    """A token as the kubelet requests it for the pod's projected volume."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[audience] if audience else [],
            expiration_seconds=600,
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=pod["name"], uid=pod["uid"]
            ),
        )
    )
    answer = client.CoreV1Api(api).create_namespaced_service_account_token(
        pod["account"], namespace, request
    )
    return str(answer.status.token)


async def post_progress(url: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await http.post("/v1/task/progress", json=PROGRESS, headers=bearer(token))


async def step_of(redis_async: aioredis.Redis, task_id: str) -> str:
    raw = await redis_async.hget(keys.task(task_id), keys.DATA_FIELD)
    assert raw is not None
    return TaskDoc.model_validate_json(raw).progress.current_step


async def test_a_runner_pod_token_acts_for_its_task_only(
    reviewing_gateway: GatewayHarness,
    kube_api: client.ApiClient,
    tenants: list[str],
    redis_async: aioredis.Redis,
) -> None:
    spec_a = make_spec("tr_task_a", user_id="alice", company_id="acme")
    spec_b = make_spec("tr_task_b", user_id="bob", company_id="globex")
    await reviewing_gateway.add_task(spec_a)
    await reviewing_gateway.add_task(spec_b)
    ns_a = naming.tenant_namespace("alice", "acme")
    pod_a = runner_pod(
        kube_api, tenants, ns_a, naming.job_name(spec_a.task_id) + "-a1b2c", "regtask-runner"
    )
    token_a = bound_token(kube_api, ns_a, pod_a, tokens.audience(spec_a.task_id))
    # Pod A asking for B's audience (a tenant cannot: its ServiceAccount has no rights at all).
    token_a_as_b = bound_token(kube_api, ns_a, pod_a, tokens.audience(spec_b.task_id))
    # Another pod of A's namespace, not of A's Job; and a pod of A's Job as another account.
    stray = runner_pod(kube_api, tenants, ns_a, "rt-stray-job-0123456789-x1y2z", "regtask-runner")
    token_stray = bound_token(kube_api, ns_a, stray, tokens.audience(spec_a.task_id))
    other_account = runner_pod(
        kube_api, tenants, ns_a, naming.job_name(spec_a.task_id) + "-q9w8e", "default"
    )
    token_default = bound_token(kube_api, ns_a, other_account, tokens.audience(spec_a.task_id))
    # The API server's own audience: not a gateway token at all.
    token_api = bound_token(kube_api, ns_a, pod_a, None)

    own = await post_progress(reviewing_gateway.url, token_a)
    assert own.status_code == 200, own.text
    assert (await post_progress(reviewing_gateway.url, token_a_as_b)).status_code == 403
    assert (await post_progress(reviewing_gateway.url, token_stray)).status_code == 403
    assert (await post_progress(reviewing_gateway.url, token_default)).status_code == 403
    refused_api = await post_progress(reviewing_gateway.url, token_api)
    assert refused_api.status_code == 401
    head, payload, signature = token_a.split(".")
    forged = f"{head}.{payload}.{signature[:-6]}AAAAAA"
    assert (await post_progress(reviewing_gateway.url, forged)).status_code == 401
    assert await step_of(redis_async, spec_a.task_id) == "reviewed"
    assert await step_of(redis_async, spec_b.task_id) == "queued"


async def test_a_deleted_pods_token_is_refused(
    reviewing_gateway: GatewayHarness,
    kube_api: client.ApiClient,
    tenants: list[str],
) -> None:
    spec = make_spec("tr_task_gone", user_id="carol", company_id="acme")
    await reviewing_gateway.add_task(spec)
    namespace = naming.tenant_namespace("carol", "acme")
    pod = runner_pod(
        kube_api, tenants, namespace, naming.job_name(spec.task_id) + "-g0n3e", "regtask-runner"
    )
    used = bound_token(kube_api, namespace, pod, tokens.audience(spec.task_id))
    unused = bound_token(kube_api, namespace, pod, tokens.audience(spec.task_id))
    assert (await post_progress(reviewing_gateway.url, used)).status_code == 200
    client.CoreV1Api(kube_api).delete_namespaced_pod(pod["name"], namespace, grace_period_seconds=0)
    # A token never reviewed while its pod lived is refused at once; one already reviewed is
    # taken from the short review cache until it expires (REVIEW_CACHE_TTL_S).
    assert (await post_progress(reviewing_gateway.url, unused)).status_code == 401


async def test_no_token_review_answer_is_503(
    cluster: KindCluster, redis_server: RedisServer, tmp_path: Any
) -> None:
    """The API server unreachable: the runner is told to retry, not that its token is bad."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        cluster.kubeconfig_path.read_text().replace(cluster.server_url, "https://127.0.0.1:9")
    )
    spec = make_spec("tr_task_down")
    with GatewayHarness(
        review_tokens=True, redis_url=redis_server.url, kubeconfig=str(kubeconfig)
    ) as gateway:
        await gateway.add_task(spec)
        payload = "eyJhdWQiOlsicmVndGFzay1nYXRld2F5OnRyX3Rhc2tfZG93biJdfQ"
        response = await post_progress(gateway.url, f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
