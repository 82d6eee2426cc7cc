"""The runner gateway: the only door from a task's Job to the platform's data and the LLM.

Every request carries the runner's token (``Authorization: Bearer``): a ServiceAccount token
the kubelet projected into the task's pod, checked by the API server
(:mod:`regtask_gateway.runnerauth`) and matched to the task's spec (:mod:`regtask_gateway.auth`).
The task, user, company, namespace and conversation come from the spec of the task the token is
bound to, never from the request body, so a runner can read and write its own task's records
only. The gateway holds the LLM provider key (runners never see it) and counts every real LLM
request against the company's hourly quota (:mod:`regtask.ratelimit`).

One router per area: the task's own records (:mod:`~regtask_gateway.task`, its inputs resolved
by :mod:`~regtask_gateway.inputs`), the LLM (:mod:`~regtask_gateway.llm`) and vectors
(:mod:`~regtask_gateway.vectors`); the paths and bodies are the runner contract in
:mod:`regtask.gateway_api`. Run it with ``python -m regtask_gateway``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from kubernetes_asyncio.client import ApiClient
from redis.exceptions import RedisError

from regtask.events import AsyncEventPublisher
from regtask.kubeclient import async_api_client
from regtask.ratelimit import LlmRateLimiter
from regtask.registry import Registry
from regtask.servicemetrics import CONTENT_TYPE_LATEST
from regtask.shards import all_control_namespaces
from regtask.storage import StorageAccounting
from regtask_gateway import llm, task, vectors
from regtask_gateway.guard import RequestGuard
from regtask_gateway.llmshare import ConnectionShare
from regtask_gateway.runnerauth import (
    FailureLimiter,
    RunnerAuthenticator,
    TokenReviewAuthenticator,
)
from regtask_gateway.settings import GatewaySettings
from regtask_gateway.state import GatewayState, ProgressThrottle, StateDep
from regtask_gateway.taskspec import KubeTaskSpecSource, TaskSpecSource

log = structlog.get_logger(__name__)


def create_gateway_app(
    settings: GatewaySettings,
    spec_source: TaskSpecSource | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
    authenticator: RunnerAuthenticator | None = None,
) -> FastAPI:
    """Build the app. By default specs come from the RegistryTask CRs and tokens are reviewed
    by the API server; tests without a cluster pass both (memory, a static authenticator)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url)
        api: ApiClient | None = None
        specs: TaskSpecSource
        auth: RunnerAuthenticator
        if spec_source is not None and authenticator is not None:
            specs, auth = spec_source, authenticator
        else:
            api = await async_api_client(settings.kubeconfig)
            specs = spec_source or KubeTaskSpecSource(
                api, all_control_namespaces(settings.namespace, settings.shards)
            )
            auth = authenticator or TokenReviewAuthenticator(api)
        timeout = httpx.Timeout(settings.llm_timeout_s, connect=10.0)
        http = httpx.AsyncClient(
            timeout=timeout,
            transport=http_transport,
            limits=httpx.Limits(
                max_connections=settings.llm_max_connections, max_keepalive_connections=50
            ),
        )
        app.state.gateway = GatewayState(
            settings=settings,
            redis=client,
            registry=Registry(client, settings),
            limiter=LlmRateLimiter(client),
            storage=StorageAccounting(client),
            publisher=AsyncEventPublisher(client),
            http=http,
            specs=specs,
            authenticator=auth,
            throttle=ProgressThrottle(settings.progress_min_interval_s),
            auth_failures=FailureLimiter(settings.token_failures_per_minute),
            llm_share=ConnectionShare.of_pool(
                settings.llm_max_connections, settings.llm_company_share, settings.llm_share_wait_s
            ),
        )
        log.info(
            "gateway_started",
            llm_base_url=settings.llm_base_url,
            unified_registry=settings.unified_registry_enabled,
        )
        try:
            yield
        finally:
            await http.aclose()
            if api is not None:
                await api.close()
            await client.aclose()

    # The interactive docs and the schema are off by default: runners reach this port.
    docs = settings.docs_enabled
    app = FastAPI(
        title="regtask runner gateway",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    # Authentication and the body limit before any route reads a body.
    app.add_middleware(RequestGuard)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.error("gateway_redis_error", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": "registry unavailable"}, status_code=503)

    @app.get("/healthz")
    async def healthz(state: StateDep) -> dict[str, str]:
        await state.redis.ping()
        return {"status": "ok"}

    for router in (task.router, llm.router, vectors.router):
        app.include_router(router)
    return app


def create_metrics_app(gateway_app: FastAPI) -> FastAPI:
    """``GET /metrics`` of ``gateway_app`` (every company's LLM usage), to be served on its own
    port (``REGTASK_GATEWAY_METRICS_PORT``), which the tenant NetworkPolicy does not open to
    runners. It reads the gateway's state once the gateway's lifespan has built it; 503 before.
    """
    app = FastAPI(title="regtask gateway metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        state: GatewayState | None = getattr(gateway_app.state, "gateway", None)
        if state is None:
            return Response("gateway starting\n", status_code=503, media_type="text/plain")
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
