"""The LLM routes: OpenAI-compatible pass-through with the provider key held here.

Every request is first reserved in the company's rolling windows (:mod:`regtask.ratelimit`:
one request, and its token bound from :mod:`regtask_gateway.llmusage`; over a limit: 429 with
``Retry-After`` in OpenAI's error shape so the runner's SDK raises its own exception, or 403
under the Refuse policy), then sent with the real key and ``user`` set to the tenant's
namespace (providers attribute usage per end user: never a runner's choice), then settled at
the tokens it used. Streams are relayed event by event, without buffering. Redis unreachable:
fail closed (503, ``regtask_llm_limiter_unavailable_total``): no call leaves uncounted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from redis.exceptions import RedisError
from starlette.background import BackgroundTask

from regtask.documents import Quotas
from regtask.gateway_api import CHAT_PATH, EMBEDDINGS_PATH
from regtask.ratelimit import LlmLimits, LlmUsage, RateDecision
from regtask.tokens import TaskClaims
from regtask_gateway import headroom
from regtask_gateway.auth import ClaimsDep
from regtask_gateway.llmusage import StreamMeter, body_usage, prompt_bound, reservation
from regtask_gateway.models import ChatCompletionIn, EmbeddingsIn
from regtask_gateway.state import GatewayState, StateDep, company_quotas

log = structlog.get_logger(__name__)

router = APIRouter()

# What a runner waits before asking again when the limiter could not be asked.
LIMITER_RETRY_AFTER_S = 5


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
    body: ChatCompletionIn | EmbeddingsIn,
    stream: bool,
    kind: str,
) -> Response:
    """Check the model against the company's allow-list, reserve the call in the company's
    windows, then pass it through with the real key."""
    try:
        quotas = await company_quotas(state, claims.company_id)
    except RedisError as exc:
        return _limiter_unavailable(state, claims, exc)
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
        response = await _send(state, claims, url, model, body, stream, kind, quotas)
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
    body: ChatCompletionIn | EmbeddingsIn,
    stream: bool,
    kind: str,
    quotas: Quotas,
) -> Response:
    """Reserve the call in the company's windows and relay it (a slot is held); settle what
    it used, or refund it when it never reached the provider."""
    company = claims.company_id
    limits = LlmLimits.of(quotas)
    reserved = reservation(body)
    try:
        decision = await state.limiter.reserve(company, limits, reserved)
    except RedisError as exc:
        return _limiter_unavailable(state, claims, exc)
    headroom.show_llm(state.metrics, company, limits, decision.usage)
    outcome = "allowed" if decision.allowed else "rate_limited"
    state.metrics.llm_requests.labels(company, kind, outcome).inc()
    if not decision.allowed:
        return _refused(claims, quotas, decision, reserved)
    payload = body.model_dump(exclude_none=True)
    payload["model"] = model
    # Providers attribute usage (and abuse) per end user: the tenant, never a runner's choice.
    payload["user"] = claims.namespace
    runner_asked_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    if stream:
        # The provider's own count settles the call (those that honour it).
        payload["stream_options"] = {**payload.get("stream_options", {}), "include_usage": True}
    headers = {"Content-Type": "application/json"}
    key = state.settings.llm_api_key.get_secret_value()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    call = _Call(state, company, kind, decision.call_id, limits)
    request = state.http.build_request("POST", url, json=payload, headers=headers)
    try:
        upstream = await state.http.send(request, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # Never reached the provider: the request and its tokens come back.
        await call.refund()
        if isinstance(exc, httpx.ConnectTimeout):
            return _openai_error(504, f"LLM provider timed out: {exc}", "upstream_error", "timeout")
        log.error("llm_upstream_unreachable", url=url, error=str(exc))
        return _openai_error(502, "LLM provider unreachable", "upstream_error", "unreachable")
    except httpx.TimeoutException as exc:
        # Sent, maybe processed: the reservation stays (its bound is what it may have used).
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
        # An error answer generated nothing; an answer without usage keeps its reservation.
        used = 0 if upstream.status_code >= 400 else body_usage(content)
        if used is None:
            log.warning("llm_usage_missing", company_id=company, kept_tokens=reserved)
        else:
            await call.settle(used)
        return Response(
            content, status_code=upstream.status_code, media_type=media_type, headers=rate
        )
    log.info("llm_stream_started", task_id=claims.task_id, company_id=company)
    meter = StreamMeter(prompt_bound(body), drop_usage_chunk=not runner_asked_usage)
    released = settled = False

    async def finish() -> None:
        # Hazard: a stream never iterated (client gone before its first chunk) runs no
        # generator ``finally``, and one cancelled by the client's disconnect may be cancelled
        # again inside it: the response's background task finishes it then. The slot is given
        # back once; the settlement is repeated until one lands (it is idempotent).
        nonlocal released, settled
        if not released:
            released = True
            state.llm_share.release(company)
        if not settled:
            await call.settle(meter.used)
            settled = True

    return StreamingResponse(
        _relay_events(upstream, meter, finish),
        background=BackgroundTask(finish),
        status_code=upstream.status_code,
        media_type=media_type,
        headers={**rate, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@dataclass
class _Call:
    """One reserved call: its settlement or refund, and the company's headroom after it.
    Redis failing here keeps the reservation (it bounds the call) and is counted."""

    state: GatewayState
    company: str
    kind: str
    call_id: str
    limits: LlmLimits

    async def settle(self, tokens: int) -> None:
        self.state.metrics.llm_tokens.labels(self.company, self.kind).inc(tokens)
        await self._apply("settle", self.state.limiter.settle(self.company, self.call_id, tokens))

    async def refund(self) -> None:
        await self._apply("refund", self.state.limiter.refund(self.company, self.call_id))

    async def _apply(self, operation: str, change: Awaitable[LlmUsage | None]) -> None:
        try:
            usage = await change
        except RedisError as exc:
            self.state.metrics.limiter_unavailable.labels(operation).inc()
            log.error("llm_limiter_unavailable", operation=operation, error=str(exc))
            return
        if usage is not None:
            headroom.show_llm(self.state.metrics, self.company, self.limits, usage)


async def _relay_events(
    upstream: httpx.Response, meter: StreamMeter, finish: Callable[[], Awaitable[None]]
) -> AsyncIterator[bytes]:
    """Each upstream event as soon as it is complete (no buffering beyond one event); the
    upstream closes with the client, and the call is settled and its slot given back."""
    try:
        async for chunk in upstream.aiter_raw():
            for event in meter.feed(chunk):
                yield event
        rest = meter.rest()
        if rest:
            yield rest
    finally:
        try:
            await upstream.aclose()
        finally:
            await finish()


def _refused(
    claims: TaskClaims, quotas: Quotas, decision: RateDecision, reserved: int
) -> JSONResponse:
    """Over a limit: 429 with ``Retry-After`` (policy Wait: the runner waits), 403 (policy
    Refuse: the task fails), 400 when the call alone is over a token budget (it never fits)."""
    limits = decision.limits
    log.warning(
        "llm_rate_limited",
        company_id=claims.company_id,
        task_id=claims.task_id,
        exceeded=decision.exceeded,
        reserved_tokens=reserved,
        retry_after_s=decision.retry_after_s,
    )
    headers = {"Retry-After": str(decision.retry_after_s), **_rate_headers(decision)}
    if decision.wait_us is None and decision.exceeded != "requests_per_hour":
        budget = (
            limits.tokens_per_hour
            if decision.exceeded == "tokens_per_hour"
            else limits.tokens_per_day
        )
        return _openai_error(
            400,
            f"this call may use {reserved} tokens (prompt bound + max_tokens), more than the "
            f"company's whole budget ({budget} {decision.exceeded.replace('_', ' ')}); "
            "lower max_tokens or shorten the prompt",
            "invalid_request_error",
            "llm_call_over_token_budget",
        )
    described = {
        "requests_per_hour": f"{limits.requests_per_hour} requests per hour",
        "tokens_per_hour": f"{limits.tokens_per_hour} tokens per hour",
        "tokens_per_day": f"{limits.tokens_per_day} tokens per day",
    }[decision.exceeded]
    message = (
        f"company LLM quota exhausted ({described}, rolling); retry in {decision.retry_after_s} s"
    )
    if quotas.rate_limit_policy == "Refuse":
        return _openai_error(403, message, "insufficient_quota", "llm_quota_exceeded", **headers)
    return _openai_error(429, message, "rate_limit_exceeded", "llm_quota_exceeded", **headers)


def _limiter_unavailable(state: GatewayState, claims: TaskClaims, exc: Exception) -> JSONResponse:
    """Redis cannot be asked: fail closed (no call goes out uncounted), and say so."""
    state.metrics.limiter_unavailable.labels("reserve").inc()
    log.error(
        "llm_limiter_unavailable",
        operation="reserve",
        company_id=claims.company_id,
        task_id=claims.task_id,
        error=str(exc),
    )
    return _openai_error(
        503,
        "the LLM quota cannot be checked right now (registry unavailable); retry shortly",
        "upstream_error",
        "llm_limiter_unavailable",
        **{"Retry-After": str(LIMITER_RETRY_AFTER_S)},
    )


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
    headers = {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_in_s),
    }
    budget = decision.limits.tokens_per_hour
    if budget is not None:
        headers["X-RateLimit-Limit-Tokens"] = str(budget)
        headers["X-RateLimit-Remaining-Tokens"] = str(max(budget - decision.usage.tokens_hour, 0))
    return headers
