"""Usage counters a company's quota is measured against, read from Redis.

The LLM figures are the gateway's sliding log (:mod:`regtask.ratelimit`): requests and tokens
in the rolling last hour, read without writing (the shim's Redis user only reads it).
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
    tokens: int | None = None  # tokens (reserved or settled) in the same window


async def llm_usage(client: aioredis.Redis, company_id: str) -> LlmUsage:
    """LLM requests and tokens of the company in the rolling last hour, as the gateway
    counts them."""
    log = await LlmRateLimiter(client).usage(company_id)
    return LlmUsage(requests=log.requests, window="last 60 min", tokens=log.tokens_hour)


async def storage_used_mb(client: aioredis.Redis, company_id: str) -> float:
    return round(await StorageAccounting(client).used(company_id) / MB, 1)
