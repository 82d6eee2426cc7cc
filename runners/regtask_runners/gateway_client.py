"""The runner's side of the gateway contract (:mod:`regtask.gateway_api`): its only connection.

Every call carries the task's token, read again for each request (the kubelet may rotate it).
Transport errors and 5xx are retried a few times, then fail as retryable; 4xx is permanent
(bad input, refused), 429 retryable (the company's LLM hour is full). LLM calls are never
resent once they may have reached the provider: each one is counted against the company's
quota, and the Job's retry decides instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any

import httpx
from pydantic import ValidationError

from regtask.events import EventType
from regtask.gateway_api import (
    CHAT_PATH,
    CONVERSATION_PATH,
    EMBEDDINGS_PATH,
    EVENTS_PATH,
    PROGRESS_PATH,
    RESULT_PATH,
    TASK_PATH,
    VECTORS_UPSERT_PATH,
    RunnerTask,
)
from regtask_runners.errors import LlmQuotaWait, PermanentError, RetryableError, retry_after_s

GATEWAY_ATTEMPTS = 3
# A brand-new pod's first connections may be refused for a moment: its NetworkPolicy is not yet
# programmed on the node (about 1 s on an idle node, measured; longer under load). The first
# call keeps retrying refused connections this long before it counts as a failure. Not longer:
# a gateway that is really down costs each Job attempt this much more before it fails.
FIRST_CONTACT_GRACE_S = 10.0
GATEWAY_TIMEOUT_S = 30.0
# A CPU-served model may take minutes for a large embedding batch; the task deadline bounds it.
LLM_TIMEOUT_S = 600.0


class _Bearer(httpx.Auth):
    """``Authorization: Bearer`` with a token looked up for every request."""

    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("error") or body
        return str(detail)[:300]
    return str(body)[:300]


class GatewayClient:
    """The runner's only connection: every call carries the task token.

    ``token`` is the token or a function returning the current one (:meth:`RunnerEnv.read_token`).
    """

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str],
        timeout_s: float = GATEWAY_TIMEOUT_S,
        attempts: int = GATEWAY_ATTEMPTS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.attempts = attempts
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=_Bearer(token if callable(token) else lambda: token),
            timeout=httpx.Timeout(timeout_s, connect=5.0),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        timeout_s: float | None = None,
        attempts: int | None = None,
        retry_unsent_only: bool = False,
        connect_grace_s: float = 0.0,
    ) -> httpx.Response:
        """Retry transport errors and 5xx a few times; then fail as retryable.

        ``retry_unsent_only`` (LLM calls, each counted against the company's quota): a request
        that may have been sent (read timeout, dropped connection) is not sent again.
        ``connect_grace_s``: connections refused during this long are retried without counting
        as attempts (the pod's first contact, see :data:`FIRST_CONTACT_GRACE_S`).
        """
        tries = attempts or self.attempts
        grace_until = time.monotonic() + connect_grace_s
        grace_delay = 0.2
        last = ""
        attempt = 0
        while attempt < tries:
            try:
                response = await self.http.request(
                    method,
                    path,
                    json=json,
                    timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                if retry_unsent_only and not isinstance(exc, httpx.ConnectError):
                    # The request may have reached the provider (and the quota): the Job's
                    # retry decides, not a silent resend.
                    raise RetryableError(f"gateway {method} {path}: {last}") from exc
                left = grace_until - time.monotonic()
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and left > 0:
                    await asyncio.sleep(min(grace_delay, left))
                    grace_delay = min(grace_delay * 2, 2.0)
                    continue
            else:
                if response.status_code < 500 and response.status_code != 408:
                    return self._check(path, response)
                last = f"HTTP {response.status_code}: {_detail(response)}"
            attempt += 1
            if attempt < tries:
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
        raise RetryableError(f"gateway {method} {path} failed after {tries} attempts ({last})")

    @staticmethod
    def _check(path: str, response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        message = f"gateway refused {path}: HTTP {response.status_code}: {_detail(response)}"
        if response.status_code == 429:
            raise LlmQuotaWait(message, retry_after_s(response.headers.get("Retry-After")))
        raise PermanentError(message)

    async def get_task(
        self,
        timeout_s: float | None = None,
        attempts: int | None = None,
        connect_grace_s: float = 0.0,
    ) -> RunnerTask:
        response = await self.request(
            "GET",
            TASK_PATH,
            timeout_s=timeout_s,
            attempts=attempts,
            connect_grace_s=connect_grace_s,
        )
        try:
            return RunnerTask.model_validate(response.json())
        except (ValidationError, ValueError) as exc:
            raise PermanentError(f"unexpected task view from the gateway: {exc}") from exc

    async def progress(
        self,
        progress: int,
        step: str,
        data: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        attempts: int | None = None,
    ) -> bool:
        """True when recorded; False when throttled by the gateway or the task had finished."""
        response = await self.request(
            "POST",
            PROGRESS_PATH,
            {"progress": progress, "current_step": step, "data": data or {}},
            timeout_s=timeout_s,
            attempts=attempts,
        )
        body = response.json()
        return bool(body.get("accepted")) and bool(body.get("applied"))

    async def store_result(self, result: dict[str, Any]) -> dict[str, Any]:
        response = await self.request("POST", RESULT_PATH, {"result": result})
        return dict(response.json())

    async def publish(
        self,
        event_type: EventType,
        payload: dict[str, Any],
        timeout_s: float | None = None,
        attempts: int | None = None,
    ) -> None:
        await self.request(
            "POST",
            EVENTS_PATH,
            {"type": event_type.value, "payload": payload},
            timeout_s=timeout_s,
            attempts=attempts,
        )

    async def store_conversation(self, conversation: dict[str, Any]) -> None:
        await self.request("POST", CONVERSATION_PATH, conversation)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.request(
            "POST",
            CHAT_PATH,
            body,
            timeout_s=LLM_TIMEOUT_S,
            retry_unsent_only=True,
        )
        return dict(response.json())

    async def embeddings(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        body: dict[str, Any] = {"input": texts}
        if model:
            body["model"] = model
        response = await self.request(
            "POST", EMBEDDINGS_PATH, body, timeout_s=LLM_TIMEOUT_S, retry_unsent_only=True
        )
        data = sorted(response.json().get("data", []), key=lambda item: item.get("index", 0))
        vectors = [item.get("embedding") for item in data]
        if len(vectors) != len(texts):
            raise RetryableError(f"provider returned {len(vectors)} embeddings for {len(texts)}")
        for vector in vectors:
            if not vector or not isinstance(vector, list) or not isinstance(vector[0], float):
                raise PermanentError("provider returned no pooled embedding vectors")
        return vectors

    async def upsert_vectors(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.request("POST", VECTORS_UPSERT_PATH, body)
        return dict(response.json())
