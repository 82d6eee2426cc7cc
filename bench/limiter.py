"""What the LLM limiter costs per call, inside Redis: the sliding log against the fixed window
it replaced, in the same run on the same server.

"Lua time" is Redis' own ``usec_per_call`` of ``EVALSHA`` (``INFO commandstats``, reset before
each case): the script's execution, without the network or the client. A company makes calls
evenly at its limit (1,000 per hour, one every 3.6 s of the test clock) for two simulated
hours, so the log holds a full hour and every call also retires one that leaves it; with a
daily token budget it holds a day (24,000 calls) and retires one from the hour and one from
the day. The fixed window is today's script (``GET``/``INCRBY``/``TTL``), kept here as the
baseline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from regtask.ratelimit import LlmLimits, LlmRateLimiter

FIXED_WINDOW_LUA = """
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

LIMIT = 1000
STEP_S = 3600 / LIMIT


async def _evalsha_us(client: aioredis.Redis) -> float:
    stats = await client.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


async def _fixed(client: aioredis.Redis, calls: int) -> tuple[float, float]:
    script = client.register_script(FIXED_WINDOW_LUA)
    now = 1_758_700_800.0
    await script(keys=["bench:fixed:0"], args=[LIMIT, 1, 7200])  # loaded before timing
    await client.config_resetstat()
    start = time.perf_counter()
    for i in range(calls):
        bucket = int((now + i * STEP_S) // 3600)
        await script(keys=[f"bench:fixed:{bucket}"], args=[LIMIT, 1, 7200])
    wall = (time.perf_counter() - start) / calls * 1e6
    return await _evalsha_us(client), wall


async def _sliding(
    client: aioredis.Redis, calls: int, limits: LlmLimits, warm_calls: int, settle: bool
) -> dict[str, float]:
    clock = [1_758_700_800.0]
    limiter = LlmRateLimiter(client, lambda: clock[0])
    company = f"bench-{limits.tokens_per_day}-{settle}"
    for _ in range(warm_calls):  # fill the window as a steady company would
        decision = await limiter.reserve(company, limits, 120)
        if settle and decision.allowed:
            await limiter.settle(company, decision.call_id, 80)
        clock[0] += STEP_S
    await client.config_resetstat()
    start = time.perf_counter()
    allowed = 0
    for _ in range(calls):
        decision = await limiter.reserve(company, limits, 120)
        allowed += decision.allowed
        if settle and decision.allowed:
            await limiter.settle(company, decision.call_id, 80)
        clock[0] += STEP_S
    wall = (time.perf_counter() - start) / calls * 1e6
    stats = await client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    per_call = float(evalsha.get("usec", 0.0)) / calls  # reserve (+ settle) per LLM call
    usage = await limiter.usage(company, limits)
    return {
        "lua_us_per_call": round(per_call, 2),
        "client_us_per_call": round(wall, 1),
        "log_entries": await client.zcard(LlmRateLimiter.keys(company)[0]),
        "requests_in_hour": usage.requests,
        "allowed": allowed,
    }


async def run(url: str, calls: int = 4000) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    try:
        fixed_lua, fixed_wall = await _fixed(client, calls)
        hour = await _sliding(client, calls, LlmLimits(LIMIT), LIMIT, settle=False)
        tokens = await _sliding(
            client, calls, LlmLimits(LIMIT, 200_000, 24 * 200_000), LIMIT, settle=True
        )
        day = await _sliding(
            client, calls, LlmLimits(LIMIT, 200_000, 24 * 200_000), 24 * LIMIT, settle=True
        )
    finally:
        await client.aclose()
    return {
        "calls": calls,
        "fixed_window": {
            "lua_us_per_call": round(fixed_lua, 2),
            "client_us_per_call": round(fixed_wall, 1),
        },
        "sliding_log_requests": hour,
        "sliding_log_tokens_reserve_settle": tokens,
        "sliding_log_tokens_day_full": day,
        "ratio_lua_requests_to_fixed": round(hour["lua_us_per_call"] / fixed_lua, 2),
        "ratio_lua_tokens_day_to_fixed": round(day["lua_us_per_call"] / fixed_lua, 2),
    }


def measure(url: str, calls: int = 4000) -> dict[str, Any]:
    return asyncio.run(run(url, calls))
