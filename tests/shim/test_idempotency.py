"""The same start twice never starts two tasks (the apiserver's 409 is the arbiter)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from kubernetes import client
from structlog.testing import capture_logs

from regtask import keys
from regtask.documents import RegistryStatus
from tests.fixtures.shim import ShimFactory
from tests.shim.helpers import ok, refused, set_cr_status, task_crs

pytestmark = pytest.mark.kube

USER, COMPANY = "user123", "company_abc"
DOC = {"company_id": COMPANY, "content": "hello"}


async def test_the_same_start_twice_is_one_task(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim()
    with capture_logs() as logs:
        first = ok(await shim.rpc("TASK.start_document_analysis", [USER, DOC, "same"]))
        second = ok(await shim.rpc("TASK.start_document_analysis", [USER, DOC, "same"]))
    assert first == second == {"success": True, "task_id": "doc_analysis_same", "status": "queued"}
    assert len(task_crs(kube_api, shim_namespace, "doc_analysis_same")) == 1
    assert [e["event"] for e in logs if e["event"].startswith("task_start")] == [
        "task_started",
        "task_start_replayed",
    ]


async def test_concurrent_identical_starts_make_one_resource(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim()
    responses = await asyncio.gather(
        *(shim.rpc("TASK.start_document_analysis", [USER, DOC, "burst"]) for _ in range(8))
    )
    answers = [ok(response) for response in responses]
    assert {answer["task_id"] for answer in answers} == {"doc_analysis_burst"}
    assert len(task_crs(kube_api, shim_namespace, "doc_analysis_burst")) == 1


async def test_a_replay_answers_the_current_status(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    ok(await shim.rpc("TASK.start_document_analysis", [USER, DOC, "progressing"]))
    await shim.registry.update_task_progress(
        "doc_analysis_progressing", USER, RegistryStatus.PROCESSING, 60, "analysis", 1800
    )
    replay = ok(await shim.rpc("TASK.start_document_analysis", [USER, DOC, "progressing"]))
    assert replay["status"] == "processing"


async def test_a_crash_between_resource_and_registry_converges_on_retry(
    make_shim: ShimFactory,
    redis_async: aioredis.Redis,
    kube_api: client.ApiClient,
    shim_namespace: str,
) -> None:
    shim = await make_shim()
    ok(await shim.rpc("TASK.start_document_analysis", [USER, DOC, "crash"]))
    set_cr_status(kube_api, shim_namespace, "doc_analysis_crash", phase="Running", progress=20)
    await redis_async.delete(keys.task("doc_analysis_crash"))  # as if the first write was lost
    retry = ok(await shim.rpc("TASK.start_document_analysis", [USER, DOC, "crash"]))
    assert retry["status"] == "processing"  # the resource's state, not a fresh "queued"
    assert await redis_async.exists(keys.task("doc_analysis_crash"))
    assert len(task_crs(kube_api, shim_namespace, "doc_analysis_crash")) == 1


async def test_a_job_id_taken_by_another_user_is_a_conflict(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    shim = await make_shim()
    ok(await shim.rpc("TASK.start_document_analysis", [USER, DOC, "taken"]))
    refused(
        await shim.rpc("TASK.start_document_analysis", ["someone_else", DOC, "taken"]),
        409,
        "already used",
    )
    # Also when only the resource remembers the owner.
    await redis_async.delete(keys.task("doc_analysis_taken"))
    refused(
        await shim.rpc("TASK.start_document_analysis", ["someone_else", DOC, "taken"]),
        409,
        "already used",
    )


async def test_a_client_conversation_id_makes_llm_starts_idempotent(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim()
    kwargs = {"conversation_id": "conv_client1"}
    first = ok(await shim.rpc("TASK.start_llm_conversation", [USER, COMPANY, "p"], kwargs))
    second = ok(await shim.rpc("LLM.start_conversation", [USER, COMPANY, "p"], kwargs))
    assert first["task_id"] == second["task_id"] == "llm_conv_client1"
    assert len(task_crs(kube_api, shim_namespace, "llm_conv_client1")) == 1
    without = [ok(await shim.rpc("TASK.start_llm_conversation", [USER, COMPANY, "p"]))]
    without.append(ok(await shim.rpc("TASK.start_llm_conversation", [USER, COMPANY, "p"])))
    assert without[0]["conversation_id"] != without[1]["conversation_id"]
