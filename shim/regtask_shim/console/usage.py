"""Usage counters a company's quota is measured against, read from Redis.

Hazard: the LLM figure is the gateway's request count in the current fixed hour window
(``quota:llm:{company}:{hour}``); rolling windows and token budgets are being built elsewhere:
:func:`llm_usage` is the one place to point at them when they land.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from regtask.ratelimit import LlmRateLimiter
from regtask.storage import MB, StorageAccounting


@dataclass(frozen=True)
class LlmUsage:
    requests: int
    window: str  # what the count covers, shown beside it
    tokens: int | None = None  # not counted yet anywhere


async def llm_usage(client: aioredis.Redis, company_id: str) -> LlmUsage:
    """LLM requests of the company in the current window, as the gateway counts them."""
    decision = await LlmRateLimiter(client).peek(company_id, limit=0)
    return LlmUsage(requests=decision.count, window="this clock hour")


async def storage_used_mb(client: aioredis.Redis, company_id: str) -> float:
    return round(await StorageAccounting(client).used(company_id) / MB, 1)
