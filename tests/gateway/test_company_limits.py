"""Issue 16 item 3: a company's limits never drift to the contract's defaults.

The clock is moved 25 hours by expiring every key whose TTL is shorter than that (what Redis does
in 25 hours), never by sleeping. Real Redis, the real gateway over HTTP.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from regtask import keys
from regtask.documents import Quotas, TaskDoc, TaskInfo, TaskIsolation
from regtask.registry import Registry
from regtask.settings import Settings
from regtask.tasktypes import TaskType
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import client, make_spec

DAY_PLUS_ONE_H = 25 * 3600


async def pass_hours(redis: aioredis.Redis, seconds: int) -> list[str]:
    """Expire every key that would have expired within ``seconds``; return them."""
    gone: list[str] = []
    async for raw in redis.scan_iter(count=500):
        ttl_ms = await redis.pttl(raw)
        if 0 < ttl_ms <= seconds * 1000:
            await redis.delete(raw)
            gone.append(raw.decode())
    return gone


async def llm_limit(gateway_url: str, token: str) -> int:
    async with client(gateway_url, token) as http:
        answer = await http.post("/v1/llm/embeddings", json={"input": "x"})
    assert answer.status_code == 200, answer.text
    return int(answer.headers["x-ratelimit-limit"])


async def test_limits_survive_25_hours_and_defaults_are_the_configured_ones(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    registry = Registry(redis_async, Settings(unified_registry_enabled=True))
    # The operator saw acme's CompanyQuota (3 LLM requests per hour) once, as at its start.
    await registry.set_company_quotas("acme", Quotas(max_llm_requests_per_hour=3))
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    acme = await gateway.add_task(make_spec("vector_a", TaskType.VECTOR_COMPUTATION))
    assert await llm_limit(gateway.url, acme) == 3

    gone = await pass_hours(redis_async, DAY_PLUS_ONE_H)
    assert keys.company("acme") in gone  # the contract's copy expired, as it must
    # The gateway still enforces the CompanyQuota, not the contract's 1000.
    assert await llm_limit(gateway.url, acme) == 3

    from regtask_operator.maintenance import reassert_limits

    # The operator's configured defaults (chart operator.quotas.*) reach the gateway for a
    # company without a CompanyQuota; a company document created by a task registration (with
    # the contract's defaults) is corrected by the maintenance round.
    defaults = Quotas(max_tasks_per_user=4, max_llm_requests_per_hour=2, storage_limit_mb=7)
    await registry.register_task(
        TaskDoc(
            task_info=TaskInfo(
                task_id="vector_o", task_type="vector_computation", user_id="u", company_id="other"
            ),
            isolation=TaskIsolation(namespace="rt-x", max_duration=60),
        )
    )
    doc = await registry.get_company("other")
    assert doc is not None and doc.quotas == Quotas()  # the drift source
    own = {"acme": Quotas(max_llm_requests_per_hour=3)}
    await reassert_limits(registry, own, defaults)
    other = await gateway.add_task(
        make_spec("vector_o", TaskType.VECTOR_COMPUTATION, company_id="other")
    )
    assert await llm_limit(gateway.url, other) == 2
    doc = await registry.get_company("other")
    assert doc is not None and doc.quotas == defaults
    acme_doc = await registry.get_company("acme")
    assert acme_doc is not None and acme_doc.quotas == own["acme"]  # the copy is back

    # Another 25 hours with a maintenance round on the way: nothing drifts.
    await pass_hours(redis_async, DAY_PLUS_ONE_H)
    assert await llm_limit(gateway.url, other) == 2
    assert await llm_limit(gateway.url, acme) == 3
    await reassert_limits(registry, own, defaults)
    acme_doc = await registry.get_company("acme")
    assert acme_doc is not None and acme_doc.quotas == own["acme"]
    ttl = await redis_async.ttl(keys.company("acme"))
    assert 0 < ttl <= keys.COMPANY_TTL_S
