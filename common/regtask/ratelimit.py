"""A company's LLM quota: requests per rolling hour, tokens per rolling hour and day.

One sliding log per company (``lua/llm_quota.lua``, keys :func:`regtask.keys.llm_calls` and
:func:`regtask.keys.llm_tokens`): every call the gateway lets through is a member of a sorted
set scored by its time in microseconds, with its tokens beside it. The check and the record are
one Lua script, so gateway replicas share one exact window: no interval of 3,600 s ever holds
more calls than ``max_llm_requests_per_hour`` (a fixed clock hour let a company spend its quota
at 10:59 and again at 11:00). A refused call's ``Retry-After`` is the instant the calls that
block it leave the window.

Tokens are reserved, then settled: :meth:`LlmRateLimiter.reserve` holds the call's bound
(``max_tokens`` plus a bound on its prompt) before it is sent, :meth:`LlmRateLimiter.settle`
replaces it by the provider's real usage, :meth:`LlmRateLimiter.refund` gives everything back
for a call that never reached the provider. Overspend bound: real usage minus reservation,
summed over the calls in flight (0 while providers honour ``max_tokens`` and the prompt bound).

Clock: the Redis server's ``TIME``, the only clock all replicas share. ``clock`` (tests only)
passes an explicit time instead, so tests control time without faking Redis.

Memory: one sorted-set member and one hash field per call in the window (an hour; a day for a
company with a daily token budget): about 100 bytes per call.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from regtask import keys
from regtask.documents import Quotas

WINDOW_S = 3600
DAY_S = 24 * WINDOW_S
_US = 1_000_000
NO_LIMIT = -1

LLM_QUOTA_LUA = resources.files("regtask").joinpath("lua/llm_quota.lua").read_text()


@dataclass(frozen=True)
class LlmLimits:
    """What a company may spend; ``None`` = no token limit."""

    requests_per_hour: int
    tokens_per_hour: int | None = None
    tokens_per_day: int | None = None

    @classmethod
    def of(cls, quotas: Quotas) -> LlmLimits:
        return cls(
            quotas.max_llm_requests_per_hour,
            quotas.max_llm_tokens_per_hour,
            quotas.max_llm_tokens_per_day,
        )

    @property
    def retention_us(self) -> int:
        """How long calls are kept: a day when a daily budget needs them, else an hour."""
        return (DAY_S if self.tokens_per_day is not None else WINDOW_S) * _US


@dataclass(frozen=True)
class LlmUsage:
    """The company's log at one instant: calls and tokens in the last hour, tokens in the
    last day, and microseconds until the hour's oldest call leaves (0: none)."""

    requests: int
    tokens_hour: int
    tokens_day: int
    reset_us: int = 0


@dataclass(frozen=True)
class RateDecision:
    """The answer to one reservation (or a peek)."""

    allowed: bool
    usage: LlmUsage
    limits: LlmLimits
    call_id: str = ""
    # Microseconds until the call would fit (0 when allowed); None: it never can (over a limit
    # on its own, or a limit of 0).
    wait_us: int | None = 0
    # Which limit refused it: requests_per_hour, tokens_per_hour or tokens_per_day.
    exceeded: str = ""

    @property
    def count(self) -> int:
        return self.usage.requests

    @property
    def limit(self) -> int:
        return self.limits.requests_per_hour

    @property
    def remaining(self) -> int:
        return max(self.limit - self.count, 0)

    @property
    def retry_after_s(self) -> int:
        """``Retry-After`` in whole seconds, rounded up (never early), at least 1 when refused."""
        if self.allowed:
            return 0
        if self.wait_us is None:
            return DAY_S
        return max(math.ceil(self.wait_us / _US), 1)

    @property
    def reset_in_s(self) -> int:
        """Seconds until the hour's oldest call leaves it (one more request fits then)."""
        return math.ceil(self.usage.reset_us / _US)


class LlmRateLimiter:
    def __init__(self, client: aioredis.Redis, clock: Callable[[], float] | None = None) -> None:
        self.client = client
        # Tests only: a clock in seconds, passed to the script. None = Redis' own TIME.
        self.clock = clock
        self._script = client.register_script(LLM_QUOTA_LUA)

    def _now(self) -> str:
        return "" if self.clock is None else str(round(self.clock() * _US))

    @staticmethod
    def keys(company_id: str) -> list[str]:
        return [keys.llm_calls(company_id), keys.llm_tokens(company_id)]

    async def reserve(self, company_id: str, limits: LlmLimits, tokens: int = 0) -> RateDecision:
        """Record one call holding ``tokens`` if every limit has room for it; refuse otherwise
        (a refused call records nothing, so refusals never eat future capacity)."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        call_id = uuid.uuid4().hex
        raw = await self._script(
            keys=self.keys(company_id),
            args=[
                "reserve",
                self._now(),
                call_id,
                tokens,
                limits.requests_per_hour,
                NO_LIMIT if limits.tokens_per_hour is None else limits.tokens_per_hour,
                NO_LIMIT if limits.tokens_per_day is None else limits.tokens_per_day,
                limits.retention_us,
            ],
        )
        allowed, requests, hour, day, wait, exceeded, reset = raw
        usage = LlmUsage(int(requests), int(hour), int(day), int(reset))
        exceeded_name = exceeded.decode() if isinstance(exceeded, bytes) else str(exceeded)
        return RateDecision(
            allowed=bool(allowed),
            usage=usage,
            limits=limits,
            call_id=call_id if allowed else "",
            wait_us=None if int(wait) < 0 else int(wait),
            exceeded=exceeded_name,
        )

    async def hit(self, company_id: str, limit: int) -> RateDecision:
        """One call without tokens against ``limit`` requests per rolling hour."""
        return await self.reserve(company_id, LlmLimits(limit))

    async def settle(self, company_id: str, call_id: str, tokens: int) -> LlmUsage | None:
        """Replace the call's reservation by its real usage; the log after it, or None when the
        call has already left the log (nothing to correct)."""
        return _after(
            await self._script(
                keys=self.keys(company_id), args=["settle", self._now(), call_id, max(tokens, 0)]
            )
        )

    async def refund(self, company_id: str, call_id: str) -> LlmUsage | None:
        """Forget the call: it never reached the provider (its request and tokens come back)."""
        return _after(
            await self._script(keys=self.keys(company_id), args=["refund", self._now(), call_id])
        )

    async def usage(self, company_id: str, limits: LlmLimits | None = None) -> LlmUsage:
        """The log as it stands; writes nothing (the operator and the shim only read it).

        Sent as ``EVALSHA_RO``: a plain ``EVALSHA`` counts its keys as written, which the
        read-only ACL key patterns of the operator and the shim refuse (NOPERM)."""
        retention = (limits or LlmLimits(0, tokens_per_day=0)).retention_us
        args: list[str | int] = [*self.keys(company_id), "peek", self._now(), retention]
        try:
            raw = await self.client.evalsha_ro(self._script.sha, 2, *args)
        except NoScriptError:
            await self.client.script_load(LLM_QUOTA_LUA)
            raw = await self.client.evalsha_ro(self._script.sha, 2, *args)
        requests, hour, day, reset = raw
        return LlmUsage(int(requests), int(hour), int(day), int(reset))

    async def peek(self, company_id: str, limit: int, pending: int = 0) -> RateDecision:
        """Would one more request (after ``pending`` not yet counted) fit? Consumes nothing."""
        usage = await self.usage(company_id)
        allowed = usage.requests + pending + 1 <= limit
        return RateDecision(
            allowed, usage, LlmLimits(limit), wait_us=0 if allowed else usage.reset_us
        )


def _after(raw: list[int]) -> LlmUsage | None:
    if not raw[0]:
        return None
    _, requests, hour, day, reset = raw
    return LlmUsage(int(requests), int(hour), int(day), int(reset))
