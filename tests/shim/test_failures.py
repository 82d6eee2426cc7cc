"""Failures answer clearly: Redis or Kubernetes down (503), too large (413), quotas (429)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from kubernetes import client

from regtask import storage
from regtask.documents import Quotas
from regtask.registry import Registry
from regtask_dev.kind import KindCluster
from regtask_dev.redis_server import RedisServer
from tests.fixtures.shim import ShimFactory, dead_kubeconfig
from tests.shim.helpers import ok, refused, task_crs

pytestmark = pytest.mark.kube

USER, COMPANY = "user123", "company_abc"


async def test_redis_down_is_503_with_a_clear_error(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    with RedisServer() as doomed:
        shim = await make_shim(redis_url=doomed.url)
        ok(
            await shim.rpc(
                "TASK.start_document_analysis",
                [USER, {"company_id": COMPANY, "content": "x"}, "rd1"],
            )
        )
        doomed.stop()
        calls: list[tuple[str, list[Any]]] = [
            ("REGISTRY.register_user", [USER, "s1", "/"]),
            ("CHROMA_VECTOR.heartbeat_collection", [USER, "c"]),
            (
                "TASK.start_document_analysis",
                [USER, {"company_id": COMPANY, "content": "x"}, "rd2"],
            ),
            ("UNIFIED_REGISTRY.get_user_registry", [USER]),
            ("TASK.get_task_status", ["doc_analysis_unknown"]),
        ]
        for method, args in calls:
            refused(await shim.rpc(method, args), 503, "Redis")
        # A task whose resource exists still answers from its resource status.
        status = ok(await shim.rpc("TASK.get_task_status", ["doc_analysis_rd1"]))
        assert status["status"] == "queued"
        health = await shim.http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["checks"]["redis"].startswith("unavailable")
        assert health.json()["checks"]["kubernetes"] == "ok"
    assert task_crs(kube_api, shim_namespace, "doc_analysis_rd2") == []


async def test_kubernetes_down_is_503_with_a_clear_error(
    make_shim: ShimFactory, cluster: KindCluster, tmp_path: Path
) -> None:
    dead = dead_kubeconfig(cluster.kubeconfig_path, tmp_path / "dead.yaml")
    shim = await make_shim(kubeconfig=dead)
    refused(
        await shim.rpc(
            "TASK.start_document_analysis", [USER, {"company_id": COMPANY, "content": "x"}, "kd"]
        ),
        503,
        "Kubernetes API unavailable",
    )
    refused(await shim.rpc("TASK.get_task_status", ["doc_analysis_kd"]), 503, "Kubernetes")
    ok(await shim.rpc("REGISTRY.register_user", [USER, "s1", "/"]))  # Redis-only still works
    health = await shim.http.get("/healthz")
    assert health.status_code == 503
    assert health.json()["checks"] == {
        "redis": "ok",
        "kubernetes": "unavailable: Kubernetes API unavailable: not reachable",
    }


async def test_requests_over_the_limit_are_413(make_shim: ShimFactory) -> None:
    shim = await make_shim(env={"SHIM_MAX_REQUEST_BYTES": "4096"})
    big = {"method": "TASK.start_llm_conversation", "args": [USER, COMPANY, "x" * 5000]}
    refused(await shim.http.post("/rpc", json=big, headers=shim.auth()), 413, "too large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"method": "TASK.get_task_status", "args": ["'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"]}'

    streamed = await shim.http.post(
        "/rpc", content=chunks(), headers={**shim.auth(), "Content-Type": "application/json"}
    )
    refused(streamed, 413, "too large")
    ok(await shim.rpc("TASK.start_llm_conversation", [USER, COMPANY, "small"]))


async def test_task_starts_over_the_per_user_rate_are_429(make_shim: ShimFactory) -> None:
    shim = await make_shim(env={"SHIM_TASK_STARTS_PER_MINUTE": "2"})
    for attempt in range(3):
        minute = int(time.time() // 60)
        user = f"rate{attempt}"
        first = [
            await shim.rpc("TASK.start_llm_conversation", [user, COMPANY, "p"]) for _ in range(3)
        ]
        if int(time.time() // 60) == minute:
            break  # all three landed in one clock minute
    ok(first[0])
    ok(first[1])
    refused(first[2], 429, "quota exceeded", "2 new tasks per minute")
    assert 1 <= int(first[2].headers["Retry-After"]) <= 60


async def test_input_blobs_over_the_company_storage_quota_are_429(
    make_shim: ShimFactory,
    redis_async: aioredis.Redis,
    kube_api: client.ApiClient,
    shim_namespace: str,
) -> None:
    shim = await make_shim()
    # As the operator sets them: the shim's own Redis user may not write quotas.
    await Registry(redis_async).set_company_quotas(COMPANY, Quotas(storage_limit_mb=0))
    big = "z" * (70 * 1024)
    response = await shim.rpc(
        "TASK.start_llm_conversation", [USER, COMPANY, big], {"conversation_id": "conv_full"}
    )
    refused(response, 429, "storage limit")
    assert await redis_async.keys(storage.blob_prefix(COMPANY, USER) + "*") == []
    assert task_crs(kube_api, shim_namespace, "llm_conv_full") == []


async def test_unknown_routes_methods_and_bodies_answer_json(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    refused(await shim.http.get("/nope", headers=shim.auth()), 404, "not found")
    refused(await shim.http.get("/rpc", headers=shim.auth()), 405, "method not allowed")
    malformed = await shim.http.post(
        "/rpc", content=b"{not json", headers={**shim.auth(), "Content-Type": "application/json"}
    )
    refused(malformed, 400)
    refused(await shim.http.post("/rpc", json={"args": []}, headers=shim.auth()), 400, "method")
    refused(await shim.http.post("/rpc", json=[1, 2], headers=shim.auth()), 400)
