"""A company's headroom (issue 18, item 5): computed from the counters the gateway enforces,
read from real Redis; and how ``regtask quota`` shows it."""

from __future__ import annotations

import io

import redis.asyncio as aioredis
from rich.console import Console

from regtask import headroom
from regtask.documents import Quotas
from regtask.ratelimit import LlmLimits, LlmRateLimiter
from regtask.storage import MB, StorageAccounting
from regtask_cli import render


async def test_headroom_reads_the_llm_log_and_the_storage_counter(
    redis_async: aioredis.Redis,
) -> None:
    quotas = Quotas(
        max_tasks_per_user=3,
        max_llm_requests_per_hour=10,
        max_llm_tokens_per_hour=1_000,
        max_llm_tokens_per_day=5_000,
        storage_limit_mb=2,
    )
    limiter = LlmRateLimiter(redis_async)
    for tokens in (100, 250):
        decision = await limiter.reserve("acme", LlmLimits.of(quotas), tokens)
        assert decision.allowed
    await limiter.settle("acme", decision.call_id, 50)  # the second used 50 of its 250
    await StorageAccounting(redis_async).reserve("acme", MB // 2, 2, "blob:a")
    room = await headroom.read(redis_async, "acme", quotas, busiest_user_running=2)
    assert room == headroom.Headroom(
        requests_per_hour=8,
        tokens_per_hour=850,
        tokens_per_day=4_850,
        storage_bytes=2 * MB - MB // 2,
        slots_busiest_user=1,
    )
    # No token limits: None, not a number that would read as room.
    other = await headroom.read(redis_async, "globex", Quotas())
    assert (other.requests_per_hour, other.tokens_per_hour, other.tokens_per_day) == (
        1000,
        None,
        None,
    )
    out = io.StringIO()
    render.print_headroom(Console(file=out, width=100), room)
    shown = out.getvalue()
    assert "850" in shown and "4850" in shown and "1.5 MB" in shown
