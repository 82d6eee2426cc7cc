"""What one gateway process shares, and the per-request lookups on it.

:class:`GatewayState` is built once by the app's lifespan and reached by every route through
:data:`StateDep`. The task's spec is read from a short-lived copy (:func:`spec_by_id`): only the
immutable fields are read from a copy, ``GET /v1/task`` reads fresh. Hazard: the caches here are
per process and in memory; with several replicas each keeps its own (harmless: they only save
API reads and bound a misbehaving runner's write rate).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

import chromadb
import httpx
import redis.asyncio as aioredis
import structlog
from chromadb.api import AsyncClientAPI
from chromadb.config import Settings as ChromaSettings
from fastapi import Depends, HTTPException, Request

from regtask.crmodels import RegistryTaskSpec
from regtask.documents import Quotas
from regtask.events import AsyncEventPublisher
from regtask.ratelimit import LlmRateLimiter
from regtask.registry import Registry
from regtask.servicemetrics import GatewayMetrics
from regtask.storage import StorageAccounting
from regtask.tokens import TaskClaims
from regtask_gateway.llmshare import ConnectionShare
from regtask_gateway.runnerauth import FailureLimiter, RunnerAuthenticator
from regtask_gateway.settings import GatewaySettings
from regtask_gateway.taskspec import TaskNotFound, TaskSpecSource

log = structlog.get_logger(__name__)

SPEC_CACHE_TTL_S = 30.0


class ProgressThrottle:
    """At most one progress write per task per interval; a new step or 100 % always passes.

    In memory, per gateway process: the runner throttles too, this only bounds a misbehaving
    runner's write rate on Redis and on the users' event channels.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, tuple[float, str]] = {}

    def admit(self, task_id: str, step: str, progress: int) -> bool:
        now = self.clock()
        last = self._last.get(task_id)
        if (
            last is not None
            and now - last[0] < self.interval_s
            and step == last[1]
            and progress < 100
        ):
            return False
        self._last[task_id] = (now, step)
        if len(self._last) > 10_000:
            horizon = now - max(self.interval_s, 1.0)
            self._last = {k: v for k, v in self._last.items() if v[0] >= horizon}
        return True


@dataclass
class GatewayState:
    settings: GatewaySettings
    redis: aioredis.Redis
    registry: Registry
    limiter: LlmRateLimiter
    storage: StorageAccounting
    publisher: AsyncEventPublisher
    http: httpx.AsyncClient
    specs: TaskSpecSource
    authenticator: RunnerAuthenticator
    throttle: ProgressThrottle
    auth_failures: FailureLimiter
    llm_share: ConnectionShare
    chroma: AsyncClientAPI | None = None
    chroma_lock: asyncio.Lock | None = None
    # task id -> (expiry on the monotonic clock, spec); see spec_by_id.
    spec_cache: dict[str, tuple[float, RegistryTaskSpec]] = field(default_factory=dict)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    async def chroma_client(self) -> AsyncClientAPI:
        """Connected on first use: the gateway starts (and serves LLM calls) without Chroma."""
        if self.chroma is None:
            if self.chroma_lock is None:
                self.chroma_lock = asyncio.Lock()
            async with self.chroma_lock:
                if self.chroma is None:
                    url = urlsplit(self.settings.chroma_url)
                    self.chroma = await chromadb.AsyncHttpClient(
                        host=url.hostname or "127.0.0.1",
                        port=url.port or (443 if url.scheme == "https" else 8000),
                        ssl=url.scheme == "https",
                        settings=ChromaSettings(anonymized_telemetry=False),
                    )
        return self.chroma


def _state(request: Request) -> GatewayState:
    return cast(GatewayState, request.app.state.gateway)


StateDep = Annotated[GatewayState, Depends(_state)]


async def spec_by_id(state: GatewayState, task_id: str, fresh: bool = False) -> RegistryTaskSpec:
    """The task's spec, from a copy up to :data:`SPEC_CACHE_TTL_S` old unless ``fresh``.

    Progress and result writes need only immutable fields (ids, type, max duration: the CRD
    refuses changes), so they use the copy instead of one API read per write; ``GET /v1/task``
    reads fresh (it carries ``cancel``).
    """
    now = time.monotonic()
    cached = None if fresh else state.spec_cache.get(task_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        spec = await state.specs.get(task_id)
    except TaskNotFound as exc:
        state.spec_cache.pop(task_id, None)
        raise HTTPException(404, f"task {task_id} not found") from exc
    if len(state.spec_cache) > 10_000:
        state.spec_cache = {k: v for k, v in state.spec_cache.items() if v[0] > now}
    state.spec_cache[task_id] = (now + SPEC_CACHE_TTL_S, spec)
    return spec


async def claimed_spec(
    state: GatewayState, claims: TaskClaims, fresh: bool = False
) -> RegistryTaskSpec:
    """The claims' task spec; one that now names another tenant than the claims is refused."""
    spec = await spec_by_id(state, claims.task_id, fresh)
    if (spec.user_id, spec.company_id, spec.task_type.value) != (
        claims.user_id,
        claims.company_id,
        claims.task_type,
    ):
        log.error("gateway_claims_spec_mismatch", task_id=claims.task_id)
        raise HTTPException(403, "token does not match the task")
    return spec


async def company_quotas(state: GatewayState, company_id: str) -> Quotas:
    """The company's limits as the operator set them (its CompanyQuota, else the configured
    defaults): keys without TTL, never the contract's 24 h company document."""
    return await state.registry.effective_quotas(company_id)


def json_size(value: Any) -> int:
    """The size of ``value`` as compact UTF-8 JSON: what the body limits and storage count."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
