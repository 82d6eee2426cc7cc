"""The company's LLM quota: the sliding log itself (real Redis), and the gateway's 429.

Time is the test's: the limiter passes its clock to the Lua script (``ARGV``), Redis is real.
The properties are checked against a model written from the definition: a call at ``t`` counts
in every window ``(T - 1 h, T]`` that holds ``t``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regtask import keys
from regtask.documents import Quotas
from regtask.ratelimit import LlmLimits, LlmRateLimiter
from regtask.registry import Registry
from regtask.tasktypes import TaskType
from regtask_dev.redis_server import RedisServer
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import client, make_spec

HOUR = 3600
US = 1_000_000
HOUR_US = HOUR * US
DAY_US = 24 * HOUR_US
T0 = 1_758_700_800.0 + 1800.5  # the middle of a clock hour


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class UsClock:
    """A clock in whole microseconds (the script's unit): exact, no float rounding."""

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> float:
        return self.now_us / US


async def test_rolling_window_refuses_the_burst_a_fixed_hour_let_through(
    redis_async: aioredis.Redis,
) -> None:
    """10:59 and 11:00: a fixed clock hour allowed 2x the limit in two minutes; not any more."""
    hour_start = 1_758_700_800.0
    clock = Clock(hour_start + 59 * 60)  # 10:59
    limiter = LlmRateLimiter(redis_async, clock)
    first = [await limiter.hit("acme", limit=3) for _ in range(3)]
    assert all(d.allowed for d in first)
    clock.now = hour_start + HOUR  # 11:00, a new clock hour
    refused = await limiter.hit("acme", limit=3)
    assert not refused.allowed
    assert refused.exceeded == "requests_per_hour"
    assert refused.retry_after_s == 59 * 60  # until 11:59, when the 10:59 calls leave
    clock.now = hour_start + 59 * 60 + HOUR  # 11:59
    assert (await limiter.hit("acme", limit=3)).allowed
    assert (await limiter.hit("globex", limit=3)).allowed  # per company


async def test_peek_reads_without_consuming(redis_async: aioredis.Redis) -> None:
    limiter = LlmRateLimiter(redis_async, Clock(T0))
    for _ in range(8):
        await limiter.hit("acme", limit=10)
    first = await limiter.peek("acme", limit=10)
    assert (first.allowed, first.count) == (True, 8)
    assert (await limiter.peek("acme", limit=10, pending=2)).allowed is False
    assert (await limiter.peek("acme", limit=10)).count == 8
    assert 0 < await redis_async.pttl(keys.llm_calls("acme")) <= HOUR * 1000


@dataclass
class Call:
    at: int
    tokens: int
    call_id: str


def model_wait(calls: list[Call], now: int, span: int, need: int, by_calls: bool) -> int:
    """From the definition: the earliest wait after which the calls of the last ``span`` that
    leave first hold ``need`` (calls or tokens)."""
    freed = 0
    for call in sorted((c for c in calls if c.at > now - span), key=lambda c: c.at):
        freed += 1 if by_calls else call.tokens
        if freed >= need:
            return call.at + span - now
    raise AssertionError("unreachable: need is at most what the window holds")


GAPS = st.one_of(
    st.sampled_from([0, 1, HOUR_US - 1, HOUR_US, HOUR_US + 1]),
    st.integers(0, HOUR_US // 2),
    st.integers(0, 3 * HOUR_US),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(1, 5),
    tokens_per_hour=st.one_of(st.none(), st.integers(0, 400)),
    tokens_per_day=st.one_of(st.none(), st.integers(0, 1200)),
    steps=st.lists(
        st.tuples(GAPS, st.integers(0, 150), st.floats(0, 1.5)), min_size=1, max_size=30
    ),
)
def test_no_window_ever_holds_more_than_the_limits_and_retry_after_is_exact(
    redis_server: RedisServer,
    limit: int,
    tokens_per_hour: int | None,
    tokens_per_day: int | None,
    steps: list[tuple[int, int, float]],
) -> None:
    """For random call times, reservations and settlements: every decision is the model's,
    no (T - 1 h, T] holds more than the limits, and a refused call's wait is the earliest
    instant at which it would be allowed (refused 1 us before it, allowed at it)."""
    limits = LlmLimits(limit, tokens_per_hour, tokens_per_day)

    async def run() -> None:
        redis = aioredis.Redis.from_url(redis_server.url)
        await redis.flushall()
        clock = UsClock(int(T0 * US))
        limiter = LlmRateLimiter(redis, clock)
        held: list[Call] = []
        try:
            for gap, tokens, settle_ratio in steps:
                clock.now_us += gap
                now = clock.now_us
                kept = [c for c in held if c.at > now - limits.retention_us]
                hour = [c for c in kept if c.at > now - HOUR_US]
                tok_hour = sum(c.tokens for c in hour)
                tok_day = sum(c.tokens for c in kept if c.at > now - DAY_US)
                waits: list[int | None] = []
                if len(hour) + 1 > limit:
                    waits.append(model_wait(hour, now, HOUR_US, len(hour) + 1 - limit, True))
                for cap, used, span in (
                    (tokens_per_hour, tok_hour, HOUR_US),
                    (tokens_per_day, tok_day, DAY_US),
                ):
                    if cap is not None and used + tokens > cap:
                        waits.append(
                            None
                            if tokens > cap
                            else model_wait(kept, now, span, used + tokens - cap, False)
                        )
                decision = await limiter.reserve("acme", limits, tokens)
                assert decision.allowed == (not waits)
                assert decision.usage.requests == len(hour) + decision.allowed
                if decision.allowed:
                    real = int(tokens * settle_ratio)  # may exceed the reservation: settled
                    held.append(Call(now, real, decision.call_id))
                    assert await limiter.settle("acme", decision.call_id, real)
                    continue
                expected = None if None in waits else max(w for w in waits if w is not None)
                assert decision.wait_us == expected
                if expected is None:
                    continue
                # The earliest instant: refused 1 us before it, allowed at it (peek only).
                for offset, fits in ((expected - 1, False), (expected, True)):
                    clock.now_us = now + offset
                    usage = await limiter.usage("acme", limits)
                    ok = usage.requests + 1 <= limit
                    ok &= tokens_per_hour is None or usage.tokens_hour + tokens <= tokens_per_hour
                    ok &= tokens_per_day is None or usage.tokens_day + tokens <= tokens_per_day
                    assert ok is fits, (offset, usage)
                clock.now_us = now
            # No window of an hour ever held more than the limit (each starting at a call).
            times = sorted(c.at for c in held)
            for start in times:
                assert sum(1 for t in times if start <= t < start + HOUR_US) <= limit
        finally:
            await redis.aclose()

    asyncio.run(run())


async def test_settle_and_refund_give_tokens_and_requests_back(
    redis_async: aioredis.Redis,
) -> None:
    clock = Clock(T0)
    limiter = LlmRateLimiter(redis_async, clock)
    limits = LlmLimits(2, tokens_per_hour=100, tokens_per_day=150)
    held = await limiter.reserve("acme", limits, 80)
    assert held.allowed and held.usage.tokens_hour == 80
    over = await limiter.reserve("acme", limits, 30)
    assert (over.allowed, over.exceeded) == (False, "tokens_per_hour")
    assert await limiter.settle("acme", held.call_id, 20)  # the real usage was smaller
    second = await limiter.reserve("acme", limits, 30)
    assert second.allowed and second.usage.tokens_hour == 50
    assert (await limiter.reserve("acme", limits, 1)).exceeded == "requests_per_hour"
    assert await limiter.refund("acme", second.call_id)  # never reached the provider
    usage = await limiter.usage("acme", limits)
    assert (usage.requests, usage.tokens_hour, usage.tokens_day) == (1, 20, 20)
    assert not await limiter.refund("acme", second.call_id)  # once only
    never = await limiter.reserve("acme", limits, 151)
    assert (never.allowed, never.wait_us, never.exceeded) == (False, None, "tokens_per_hour")
    clock.now += HOUR  # the hour rolled on; the day still holds the first call
    usage = await limiter.usage("acme", limits)
    assert (usage.requests, usage.tokens_hour, usage.tokens_day) == (0, 0, 20)
    day = await limiter.reserve("acme", limits, 100)
    assert day.allowed and day.usage.tokens_day == 120
    refused = await limiter.reserve("acme", limits, 40)
    assert refused.exceeded == "tokens_per_day"
    assert refused.wait_us == 23 * HOUR_US  # the first call leaves the day then


async def test_concurrent_hits_never_exceed_the_limit(redis_server: RedisServer) -> None:
    """50 clients racing for 20 slots: exactly 20 win (a read-then-write would let more in)."""
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(10)]
    await clients[0].flushall()
    limiters = [LlmRateLimiter(c) for c in clients]  # Redis' own clock, as in production
    try:
        results = await asyncio.gather(*(limiters[i % 10].hit("race", limit=20) for i in range(50)))
    finally:
        for c in clients:
            await c.aclose()
    assert sum(r.allowed for r in results) == 20
    assert max(r.count for r in results) == 20


async def test_concurrent_callers_overspend_by_at_most_their_excess(
    redis_server: RedisServer,
) -> None:
    """The token bound: 16 clients, 200 calls reserving, waiting, then settling. The tokens
    settled never exceed the budget by more than the settled excess over the reservations
    (real - reserved, summed over the calls that had it): 0 for the calls that honour it."""
    budget = 5_000
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(16)]
    await clients[0].flushall()
    rng = random.Random(18)
    limits = LlmLimits(10_000, tokens_per_hour=budget)
    reserved_max = 0
    settled: list[tuple[int, int]] = []  # (reserved, real)

    async def caller(i: int) -> None:
        nonlocal reserved_max
        limiter = LlmRateLimiter(clients[i % 16])
        want = rng.randint(10, 400)
        decision = await limiter.reserve("acme", limits, want)
        if not decision.allowed:
            return
        reserved_max = max(reserved_max, decision.usage.tokens_hour)
        await asyncio.sleep(rng.random() / 50)  # in flight
        real = rng.randint(0, want) if i % 5 else want + rng.randint(1, 50)  # 1 in 5 over
        await limiter.settle("acme", decision.call_id, real)
        settled.append((want, real))

    try:
        await asyncio.gather(*(caller(i) for i in range(200)))
        usage = await LlmRateLimiter(clients[0]).usage("acme", limits)
    finally:
        for c in clients:
            await c.aclose()
    excess = sum(max(real - want, 0) for want, real in settled)
    spent = sum(real for _, real in settled)
    assert reserved_max <= budget  # what was held at any instant never passed the budget
    assert usage.tokens_hour == spent  # every settlement landed
    assert spent <= budget + excess
    assert len(settled) < 200  # the budget did refuse calls
    assert excess > 0  # the bound was exercised


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
    assert HOUR - 60 <= retry_after <= HOUR  # the first call leaves the rolling hour then
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
    assert 'regtask_llm_headroom{company="acme",resource="requests_per_hour"} 0.0' in scraped


async def test_gateway_default_quota_is_1000_per_hour(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    """No company document: the contract's default (1000). The 1,000th passes, the 1,001st not."""
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    token = await gateway.add_task(make_spec("vector_1", TaskType.VECTOR_COMPUTATION))
    # 999 requests already in the log this hour (the cheap path to request 1,000).
    pipe = redis_async.pipeline()
    seconds, micros = await redis_async.time()
    now_us = seconds * US + micros
    pipe.zadd(keys.llm_calls("acme"), {f"old{i}": now_us - 1000 - i for i in range(999)})
    pipe.pexpire(keys.llm_calls("acme"), HOUR * 1000)
    await pipe.execute()
    async with client(gateway.url, token) as http:
        thousandth = await http.post("/v1/llm/embeddings", json={"input": "x"})
        over = await http.post(
            "/v1/llm/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    assert thousandth.status_code == 200
    assert thousandth.headers["x-ratelimit-limit"] == "1000"
    assert over.status_code == 429
    assert int(over.headers["retry-after"]) >= HOUR - 60
    assert await redis_async.zcard(keys.llm_calls("acme")) == 1000
