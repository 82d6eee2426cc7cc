"""The LLM routes: OpenAI-compatible pass-through with the provider key held here.

Every request is counted against the company's hourly quota first (:mod:`regtask.ratelimit`;
over it: 429 with ``Retry-After``, in OpenAI's error shape so the runner's SDK raises its own
exception), then sent with the real key and ``user`` set to the tenant's namespace (providers
attribute usage per end user: never a runner's choice). Streams are relayed chunk by chunk,
without buffering.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from regtask.gateway_api import CHAT_PATH, EMBEDDINGS_PATH
from regtask.ratelimit import RateDecision
from regtask.tokens import TaskClaims
from regtask_gateway.auth import ClaimsDep
from regtask_gateway.models import ChatCompletionIn, EmbeddingsIn
from regtask_gateway.state import GatewayState, StateDep, company_quotas

log = structlog.get_logger(__name__)

router = APIRouter()


@router.post(CHAT_PATH)
async def chat_completions(body: ChatCompletionIn, state: StateDep, claims: ClaimsDep) -> Response:
    settings = state.settings
    base = settings.llm_base_url
    model = settings.llm_default_model
    refused = _over_caps(body, settings.llm_max_tokens, settings.llm_max_n)
    if refused is not None:
        return refused
    if body.max_tokens is None and body.max_completion_tokens is None:
        body.max_tokens = settings.llm_max_tokens  # never the provider's own (unbounded) default
    return await _relay_llm(
        state,
        claims,
        f"{base.rstrip('/')}/chat/completions",
        model,
        body,
        body.stream,
        kind="chat",
    )


@router.post(EMBEDDINGS_PATH)
async def embeddings(body: EmbeddingsIn, state: StateDep, claims: ClaimsDep) -> Response:
    settings = state.settings
    base = settings.llm_embeddings_base_url or settings.llm_base_url
    model = settings.llm_embedding_model or settings.llm_default_model
    return await _relay_llm(
        state,
        claims,
        f"{base.rstrip('/')}/embeddings",
        model,
        body,
        stream=False,
        kind="embeddings",
    )


async def _relay_llm(
    state: GatewayState,
    claims: TaskClaims,
    url: str,
    default_model: str,
    body: BaseModel,
    stream: bool,
    kind: str,
) -> Response:
    """Check the model against the company's allow-list, count the request against its hour,
    then pass it through with the real key."""
    quotas = await company_quotas(state, claims.company_id)
    model = getattr(body, "model", None) or default_model
    if model != default_model and model not in quotas.allowed_models:
        state.metrics.llm_requests.labels(claims.company_id, kind, "model_refused").inc()
        log.warning(
            "llm_model_refused", company_id=claims.company_id, task_id=claims.task_id, model=model
        )
        return _openai_error(
            403,
            f"model {model[:128]!r} is not allowed for this company (allowed: the default "
            f"model {default_model!r} and the CompanyQuota's allowedModels)",
            "invalid_request_error",
            "model_not_allowed",
        )
    if not await state.llm_share.acquire(claims.company_id):
        state.metrics.llm_requests.labels(claims.company_id, kind, "share_full").inc()
        log.warning("llm_share_full", company_id=claims.company_id, task_id=claims.task_id)
        return _openai_error(
            429,
            f"this company holds its whole share of LLM connections "
            f"({state.llm_share.per_company}); retry shortly",
            "rate_limit_exceeded",
            "llm_connections_exhausted",
            **{"Retry-After": "1"},
        )
    released = False
    try:
        response = await _send(
            state, claims, url, model, body, stream, kind, quotas.max_llm_requests_per_hour
        )
        if isinstance(response, StreamingResponse):
            released = True  # the stream gives the slot back when it ends
        return response
    finally:
        if not released:
            state.llm_share.release(claims.company_id)


async def _send(
    state: GatewayState,
    claims: TaskClaims,
    url: str,
    model: str,
    body: BaseModel,
    stream: bool,
    kind: str,
    hourly_limit: int,
) -> Response:
    """Count the request against the company's hour and relay it (a slot is held)."""
    decision = await state.limiter.hit(claims.company_id, hourly_limit)
    outcome = "allowed" if decision.allowed else "rate_limited"
    state.metrics.llm_requests.labels(claims.company_id, kind, outcome).inc()
    if not decision.allowed:
        log.warning(
            "llm_rate_limited",
            company_id=claims.company_id,
            task_id=claims.task_id,
            limit=decision.limit,
            retry_after_s=decision.retry_after_s,
        )
        return _openai_error(
            429,
            f"company LLM quota exhausted ({decision.limit} requests per hour); "
            f"retry in {decision.retry_after_s} s",
            "rate_limit_exceeded",
            "llm_quota_exceeded",
            **{"Retry-After": str(decision.retry_after_s)},
            **_rate_headers(decision),
        )
    payload = body.model_dump(exclude_none=True)
    payload["model"] = model
    # Providers attribute usage (and abuse) per end user: the tenant, never a runner's choice.
    payload["user"] = claims.namespace
    headers = {"Content-Type": "application/json"}
    key = state.settings.llm_api_key.get_secret_value()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = state.http.build_request("POST", url, json=payload, headers=headers)
    try:
        upstream = await state.http.send(request, stream=True)
    except httpx.TimeoutException as exc:
        return _openai_error(504, f"LLM provider timed out: {exc}", "upstream_error", "timeout")
    except httpx.TransportError as exc:
        log.error("llm_upstream_unreachable", url=url, error=str(exc))
        return _openai_error(502, "LLM provider unreachable", "upstream_error", "unreachable")
    rate = _rate_headers(decision)
    media_type = upstream.headers.get("content-type", "application/json")
    if not stream or upstream.status_code >= 400:
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(
            content, status_code=upstream.status_code, media_type=media_type, headers=rate
        )
    log.info("llm_stream_started", task_id=claims.task_id, company_id=claims.company_id)
    done = False

    def release_once() -> None:
        # Hazard: a stream never iterated (client gone before its first chunk) runs no
        # generator ``finally``; the response's background task gives the slot back then.
        nonlocal done
        if not done:
            done = True
            state.llm_share.release(claims.company_id)

    return StreamingResponse(
        _relay_chunks(upstream, release_once),
        background=BackgroundTask(release_once),
        status_code=upstream.status_code,
        media_type=media_type,
        headers={**rate, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _relay_chunks(
    upstream: httpx.Response, release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Each upstream chunk as it arrives (no buffering); the upstream closes with the client,
    and the company's connection slot is given back."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        release()
        await upstream.aclose()


def _over_caps(body: ChatCompletionIn, max_tokens: int, max_n: int) -> JSONResponse | None:
    """A 400 naming the cap when the request asks for more than one request may cost."""
    for name, asked, cap in (
        ("max_tokens", body.max_tokens, max_tokens),
        ("max_completion_tokens", body.max_completion_tokens, max_tokens),
        ("n", body.n, max_n),
    ):
        if asked is not None and asked > cap:
            return _openai_error(
                400,
                f"{name}={asked} is over the gateway's cap of {cap}",
                "invalid_request_error",
                f"{name}_over_cap",
            )
    return None


def _openai_error(status: int, message: str, kind: str, code: str, **headers: str) -> JSONResponse:
    """Errors in the OpenAI shape, so the SDK in the runner raises its matching exception."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}},
        status_code=status,
        headers=headers,
    )


def _rate_headers(decision: RateDecision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_in_s),
    }
