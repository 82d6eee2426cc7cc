"""The caller of every runner route: its bearer token, authenticated, then matched to its task.

The token is checked by the API server (:mod:`regtask_gateway.runnerauth`), then matched to the
spec of the task it names (:func:`regtask.tokens.authorize`): the pod must run in the task's
tenant namespace, as the runner ServiceAccount, and be one of the task's Job's pods. Routes take
:data:`ClaimsDep` and read task, user, company and namespace from the claims, never from the
request body. A token the API server refuses is 401, a pod that is not the task's 403, no answer
from the API server 503 with ``Retry-After``. A source address with too many refused tokens in
a minute gets 429 without a TokenReview (:class:`~regtask_gateway.runnerauth.FailureLimiter`).
"""

from __future__ import annotations

import math
from typing import Annotated

import structlog
from fastapi import Depends, Header, HTTPException, Request

from regtask.tokens import PodIdentity, TaskClaims, TokenError, authorize
from regtask_gateway.runnerauth import AuthUnavailable
from regtask_gateway.state import GatewayState, StateDep, spec_by_id

log = structlog.get_logger(__name__)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header; 401 without one."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="regtask"'}
        )
    return token.strip()


async def authenticate(state: GatewayState, token: str, source: str) -> PodIdentity:
    """The API server's word on ``token``: 401 refused, 429 too many refusals from ``source``
    lately (no review asked), 503 no answer. Called before any body is read
    (:mod:`regtask_gateway.guard`) and again by the routes (then a cache hit)."""
    wait = state.auth_failures.blocked(source)
    if wait is not None and not state.authenticator.knows(token):
        log.warning("gateway_token_reviews_limited", source=source)
        raise HTTPException(
            429,
            "too many refused tokens from this address: retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    try:
        return await state.authenticator.authenticate(token)
    except TokenError as exc:
        state.auth_failures.failed(source)
        log.warning("gateway_token_refused", error=str(exc), source=source)
        raise HTTPException(
            401,
            "invalid or expired task token",
            headers={"WWW-Authenticate": 'Bearer realm="regtask", error="invalid_token"'},
        ) from exc
    except AuthUnavailable as exc:
        raise HTTPException(
            503, "cannot verify the token now", headers={"Retry-After": "5"}
        ) from exc


async def _claims(
    request: Request, state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> TaskClaims:
    source = request.client.host if request.client is not None else "unknown"
    identity = await authenticate(state, bearer_token(authorization), source)
    spec = await spec_by_id(state, identity.task_id)
    try:
        return authorize(identity, spec)
    except TokenError as exc:
        log.error("gateway_token_task_mismatch", task_id=identity.task_id, error=str(exc))
        raise HTTPException(403, "token does not match the task") from exc


ClaimsDep = Annotated[TaskClaims, Depends(_claims)]
