"""Issue 16 item 4: a company's storage is given back, so it can run for ever within its limit.

The shim, the operator and the gateway as in production, every task a real pod of the runner
image: a company allowed 1 MB stores 5 documents of 700 KB one after another (3.4x its limit),
each task's blob deleted and released when it ends (succeeded, cancelled), only its small result
staying counted until its task document expires; a refused creation keeps nothing;
a counter left wrong by a lost release is reconciled by maintenance from what is still stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from kubernetes import client

from regtask import keys, naming
from regtask.crmodels import API_GROUP, API_VERSION
from regtask.storage import BLOB_PREFIX, StorageAccounting, held_key, storage_key
from tests.fixtures.platform import gateway_env
from tests.fixtures.shim import ShimFactory
from tests.shim.helpers import ok, refused

pytestmark = pytest.mark.kube

USER, COMPANY = "alice", "acme"
DOC = "lorem ipsum dolor sit amet " * (700 * 1024 // 27)  # about 700 KB: 1 MB holds one


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def blobs(redis: aioredis.Redis) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{BLOB_PREFIX}{COMPANY}:*")]


async def held(redis: aioredis.Redis) -> dict[str, int]:
    raw = await redis.hgetall(held_key(COMPANY))
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_a_company_runs_for_ever_within_its_storage_quota(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: Any,
    make_shim: ShimFactory,
    redis_async: aioredis.Redis,
) -> None:
    operator_factory(**gateway_env(gateway), REGTASK_MAINTENANCE_INTERVAL_S="1")
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        control_namespace,
        "companyquotas",
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "CompanyQuota",
            "metadata": {"name": naming.derived_name("cq", COMPANY)},
            "spec": {"companyId": COMPANY, "maxTasksPerUser": 5, "storageLimitMb": 1},
        },
    )
    shim = await make_shim(env={"REGTASK_NAMESPACE": control_namespace})
    storage = StorageAccounting(redis_async)

    async def results() -> int:
        """Bytes of the results still held (their task documents have not expired)."""
        entries = await held(redis_async)
        assert all(item.startswith(keys.TASK_PREFIX) for item in entries), entries
        return sum(entries.values())

    async def limit_known() -> bool:
        doc = await shim.registry.get_company(COMPANY)
        return doc is not None and doc.quotas.storage_limit_mb == 1

    await until(limit_known, 30, "the CompanyQuota in the registry")

    # A refused creation keeps nothing: the first document's blob fits, the second does not.
    answer = await shim.rpc("TASK.start_vector_computation", [USER, COMPANY, [DOC, DOC], "c"])
    refused(answer, 429, "storage")
    assert await storage.used(COMPANY) == 0
    assert await blobs(redis_async) == []

    for run in range(5):
        started = ok(
            await shim.rpc(
                "TASK.start_document_analysis",
                [USER, {"company_id": COMPANY, "content": DOC}, f"run{run}"],
            )
        )
        task_id = started["task_id"]
        assert await storage.used(COMPANY) >= len(DOC)  # held while the task may read it
        if run == 4:
            ok(await shim.rpc("TASK.cancel_task", [task_id]))

        async def ended(task_id: str = task_id) -> bool:
            status = ok(await shim.rpc("TASK.get_task_status", [task_id]))["status"]
            return str(status) in {"completed", "cancelled", "failed"}

        await until(ended, 180, f"{task_id} to end")
        status = ok(await shim.rpc("TASK.get_task_status", [task_id]))["status"]
        assert status == ("cancelled" if run == 4 else "completed"), status

        async def released() -> bool:
            return await blobs(redis_async) == [] and await storage.used(COMPANY) == await results()

        await until(released, 20, f"{task_id}'s blob released")
        # What stays counted is the results, held by their task documents until these expire.
        assert await results() < 64 * 1024 * (run + 1)

    # A release lost in a crash: maintenance sets the counter back to what is stored.
    await redis_async.set(storage_key(COMPANY), 10**9)

    async def reconciled() -> bool:
        return await storage.used(COMPANY) == await results()

    await until(reconciled, 20, "the storage counter reconciled")
    assert await redis_async.exists(keys.company_limits(COMPANY))
