"""The console's LLM figures: the gateway's sliding log, read without writing (real Redis)."""

from __future__ import annotations

import redis.asyncio as aioredis

from regtask.ratelimit import LlmLimits, LlmRateLimiter
from regtask_shim.console import usage


async def test_llm_usage_reads_the_rolling_hours_requests_and_tokens(
    redis_async: aioredis.Redis,
) -> None:
    seconds, micros = await redis_async.time()
    now = seconds + micros / 1e6
    limits = LlmLimits(10, tokens_per_day=10_000)  # calls kept a day: the old one stays
    past = LlmRateLimiter(redis_async, lambda: now - 3700)
    assert (await past.reserve("acme", limits, 500)).allowed  # 61 min ago: out of the hour
    live = LlmRateLimiter(redis_async)  # Redis' own clock, as the gateway's
    for tokens in (40, 60):
        assert (await live.reserve("acme", limits, tokens)).allowed
    figures = await usage.llm_usage(redis_async, "acme")
    assert (figures.requests, figures.tokens, figures.window) == (2, 100, "last 60 min")
    assert (await live.usage("acme", limits)).tokens_day == 600
    assert (await usage.llm_usage(redis_async, "globex")).requests == 0
