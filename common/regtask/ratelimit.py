"""A company's hourly LLM request quota: fixed one-hour windows counted in Redis.

The gateway calls :meth:`LlmRateLimiter.hit` for every real LLM request; the check and the
increment are one Lua script, so concurrent gateway replicas can never let the window go over
the limit (a read-then-increment from two processes would). The operator reads the same counter
with :meth:`LlmRateLimiter.peek` at admission time, without consuming anything.

Windows are fixed clock hours (``bucket = epoch // 3600``), one key per company and bucket
(:func:`regtask.keys.llm_rate`), expiring two hours after creation: the previous window stays
readable a little while for dashboards, then disappears on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from regtask import keys

WINDOW_S = 3600
COUNTER_TTL_S = 2 * WINDOW_S

# KEYS[1] counter; ARGV limit, cost, ttl. Returns {allowed (0/1), count after the call}.
# A refused call leaves the counter untouched, so refusals do not eat future capacity.
_HIT_LUA = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
if count + cost > limit then
  return {0, count}
end
count = redis.call('INCRBY', KEYS[1], cost)
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {1, count}
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    # Requests counted in the current window (after this one, when it was allowed).
    count: int
    limit: int
    # Seconds until the current window ends (when a refused caller may try again).
    reset_in_s: int

    @property
    def retry_after_s(self) -> int:
        """What a refused caller waits (``Retry-After``); 0 when the request was allowed."""
        return 0 if self.allowed else self.reset_in_s

    @property
    def remaining(self) -> int:
        return max(self.limit - self.count, 0)


def hour_bucket(now: float) -> int:
    return int(now // WINDOW_S)


def seconds_to_reset(now: float) -> int:
    """Whole seconds until the next window; at least 1 so ``Retry-After`` never says 0."""
    return max(int((hour_bucket(now) + 1) * WINDOW_S - now + 0.999), 1)


class LlmRateLimiter:
    def __init__(self, client: aioredis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.clock = clock
        self._hit = client.register_script(_HIT_LUA)

    def key(self, company_id: str, now: float | None = None) -> str:
        return keys.llm_rate(company_id, hour_bucket(self.clock() if now is None else now))

    async def hit(self, company_id: str, limit: int, cost: int = 1) -> RateDecision:
        """Count ``cost`` requests if the window has room for them; refuse otherwise."""
        if cost < 1:
            raise ValueError("cost must be at least 1")
        now = self.clock()
        allowed, count = await self._hit(
            keys=[self.key(company_id, now)], args=[limit, cost, COUNTER_TTL_S]
        )
        return RateDecision(bool(allowed), int(count), limit, seconds_to_reset(now))

    async def peek(self, company_id: str, limit: int, pending: int = 0) -> RateDecision:
        """Would one more request (after ``pending`` not yet counted) fit? Consumes nothing."""
        now = self.clock()
        raw = await self.client.get(self.key(company_id, now))
        count = int(raw) if raw is not None else 0
        allowed = count + pending + 1 <= limit
        return RateDecision(allowed, count, limit, seconds_to_reset(now))
