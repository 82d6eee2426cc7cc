"""The company's hourly LLM quota: the Lua counter itself, and the gateway's 429."""

from __future__ import annotations

import asyncio

import httpx
import redis.asyncio as aioredis

from regtask import keys
from regtask.documents import Quotas
from regtask.ratelimit import COUNTER_TTL_S, LlmRateLimiter, hour_bucket
from regtask.registry import Registry
from regtask.tasktypes import TaskType
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import client, make_spec

HOUR = 3600
T0 = 1_758_700_800.0 + 1800.5  # the middle of an hour


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_fixed_window_counts_refuses_and_resets(redis_async: aioredis.Redis) -> None:
    clock = Clock(T0)
    limiter = LlmRateLimiter(redis_async, clock)
    decisions = [await limiter.hit("acme", limit=3) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.count for d in decisions] == [1, 2, 3, 3, 3]  # refusals consume nothing
    assert decisions[0].retry_after_s == 0
    assert decisions[3].retry_after_s == 1800  # until the hour ends
    key = keys.llm_rate("acme", hour_bucket(T0))
    assert 0 < await redis_async.ttl(key) <= COUNTER_TTL_S
    assert (await limiter.peek("acme", limit=3)).allowed is False
    assert (await limiter.hit("globex", limit=3)).allowed is True  # per company

    clock.now = T0 + 1800  # next window
    fresh = await limiter.hit("acme", limit=3)
    assert (fresh.allowed, fresh.count, fresh.reset_in_s) == (True, 1, 3600)


async def test_peek_reads_without_consuming(redis_async: aioredis.Redis) -> None:
    limiter = LlmRateLimiter(redis_async, Clock(T0))
    await limiter.hit("acme", limit=10, cost=8)
    first = await limiter.peek("acme", limit=10)
    assert (first.allowed, first.count) == (True, 8)
    assert (await limiter.peek("acme", limit=10, pending=2)).allowed is False
    assert (await limiter.peek("acme", limit=10)).count == 8


async def test_concurrent_hits_never_exceed_the_limit(redis_server: object) -> None:
    """50 clients racing for 20 slots: exactly 20 win (a read-then-write would let more in)."""
    from regtask_dev.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(10)]
    await clients[0].flushall()
    limiters = [LlmRateLimiter(c, Clock(T0)) for c in clients]
    try:
        results = await asyncio.gather(*(limiters[i % 10].hit("race", limit=20) for i in range(50)))
    finally:
        for c in clients:
            await c.aclose()
    assert sum(r.allowed for r in results) == 20
    assert max(r.count for r in results) == 20


async def test_gateway_refuses_over_a_small_company_quota(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    await Registry(redis_async).set_company_quotas("acme", Quotas(max_llm_requests_per_hour=3))
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    token = await gateway.add_task(make_spec("vector_1", TaskType.VECTOR_COMPUTATION))
    async with client(gateway.url, token) as http:
        answers = [await http.post("/v1/llm/embeddings", json={"input": "x"}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[3]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= HOUR
    assert refused.json()["error"]["code"] == "llm_quota_exceeded"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert answers[2].headers["x-ratelimit-remaining"] == "0"
    assert answers[0].headers["x-ratelimit-remaining"] == "2"
    assert len(fake_llm.state.requests) == 3  # the refused one never reached the provider
    async with httpx.AsyncClient() as plain:
        scraped = (await plain.get(gateway.metrics_url)).text
    assert 'regtask_llm_requests_total{company="acme",kind="embeddings",outcome="allowed"} 3.0' in (
        scraped
    )
    assert (
        'regtask_llm_requests_total{company="acme",kind="embeddings",outcome="rate_limited"} 1.0'
        in scraped
    )


async def test_gateway_default_quota_is_1000_per_hour(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    """No company document: the contract's default (1000). The 1,000th passes, the 1,001st not."""
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    token = await gateway.add_task(make_spec("vector_1", TaskType.VECTOR_COMPUTATION))
    limiter = LlmRateLimiter(redis_async)
    # 999 requests already counted this hour (the cheap path to request 1,000).
    await redis_async.set(limiter.key("acme"), 999, ex=COUNTER_TTL_S)
    async with client(gateway.url, token) as http:
        thousandth = await http.post("/v1/llm/embeddings", json={"input": "x"})
        over = await http.post(
            "/v1/llm/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    assert thousandth.status_code == 200
    assert thousandth.headers["x-ratelimit-limit"] == "1000"
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) >= 1
    assert int(await redis_async.get(limiter.key("acme")) or 0) == 1000
