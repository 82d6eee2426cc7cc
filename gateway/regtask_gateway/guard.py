"""What every runner request passes before any route reads its body (issue 16, item 5).

An ASGI middleware in front of the ``/v1/`` routes: the bearer token is authenticated first
(:func:`regtask_gateway.auth.authenticate`: the API server's review, the per-source limit of
refused tokens), then the body is bounded while it arrives: a declared ``Content-Length`` over
the limit is refused at once, and a chunked body is counted chunk by chunk and refused (413) the
moment it passes the limit, never read in full. An unauthenticated caller gets 401 before one
byte of its body is read. The routes authenticate again through ``ClaimsDep`` (a cache hit).
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regtask_gateway.auth import authenticate, bearer_token
from regtask_gateway.state import GatewayState

log = structlog.get_logger(__name__)

GUARDED_PREFIX = "/v1/"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` itself: FastAPI passes HTTPExceptions through body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED_PREFIX):
            await self.app(scope, receive, send)
            return
        state: GatewayState = scope["app"].state.gateway
        limit = state.settings.max_body_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        source = client[0] if client else "unknown"
        try:
            await authenticate(state, bearer_token(headers.get("authorization")), source)
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
        except HTTPException as exc:
            await _refuse(send, exc)
            return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    log.warning("gateway_body_over_limit", path=scope["path"], limit=limit)
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, bounded_receive, send)


async def _refuse(send: Send, exc: HTTPException) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    extra: dict[str, Any] = dict(exc.headers or {})
    headers += [(k.lower().encode(), str(v).encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
