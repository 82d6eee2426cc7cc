"""A company's headroom: what it may still spend of each limit right now, read from the
counters the gateway enforces (the LLM log, the storage counter) and, for task slots, from the
tasks the caller lists. ``regtask quota`` shows it; the gateway exports the same figures as
gauges (``regtask_llm_headroom``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from regtask.documents import Quotas
from regtask.ratelimit import LlmLimits, LlmRateLimiter
from regtask.storage import MB, StorageAccounting


@dataclass(frozen=True)
class Headroom:
    """Each field: the limit's room left (None: no such limit)."""

    requests_per_hour: int
    tokens_per_hour: int | None
    tokens_per_day: int | None
    storage_bytes: int
    # What the company's busiest user may still start (maxTasksPerUser minus its running).
    slots_busiest_user: int | None = None


def compute(
    quotas: Quotas,
    requests: int,
    tokens_hour: int,
    tokens_day: int,
    storage_used: int,
    busiest_user_running: int | None = None,
) -> Headroom:
    def room(cap: int | None, used: int) -> int | None:
        return None if cap is None else max(cap - used, 0)

    return Headroom(
        requests_per_hour=max(quotas.max_llm_requests_per_hour - requests, 0),
        tokens_per_hour=room(quotas.max_llm_tokens_per_hour, tokens_hour),
        tokens_per_day=room(quotas.max_llm_tokens_per_day, tokens_day),
        storage_bytes=max(quotas.storage_limit_mb * MB - storage_used, 0),
        slots_busiest_user=room(quotas.max_tasks_per_user, busiest_user_running)
        if busiest_user_running is not None
        else None,
    )


async def read(
    client: aioredis.Redis,
    company_id: str,
    quotas: Quotas,
    busiest_user_running: int | None = None,
) -> Headroom:
    """The company's headroom now, from Redis (read-only)."""
    usage = await LlmRateLimiter(client).usage(company_id, LlmLimits.of(quotas))
    used = await StorageAccounting(client).used(company_id)
    return compute(
        quotas, usage.requests, usage.tokens_hour, usage.tokens_day, used, busiest_user_running
    )
