"""Who is calling the gateway: the API server's word on a runner's projected token.

The runner's token is a ServiceAccount token bound to its pod, with the audience
``regtask-gateway:<task id>`` (:mod:`regtask.tokens`). A TokenReview for that audience checks
signature, expiry, audience and that the pod still exists; the answer is cached for a short
while, since a runner calls the gateway many times with the same token.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from regtask.tokens import PodIdentity, TokenError, audience, claimed_task_id

log = structlog.get_logger(__name__)

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
REVIEW_CACHE_TTL_S = 10.0
REVIEW_CACHE_MAX = 10_000


class AuthUnavailable(RuntimeError):
    """The API server could not be asked: the caller should retry later (503)."""


class RunnerAuthenticator(Protocol):
    async def authenticate(self, token: str) -> PodIdentity: ...

    def knows(self, token: str) -> bool:
        """True when ``token`` was accepted lately (answered without asking anyone)."""
        ...


class FailureLimiter:
    """At most ``limit`` refused tokens per source address per window (issue 16, item 11).

    Every unknown token costs the API server a TokenReview: a source over its limit gets 429
    for the rest of the window without one, while tokens already accepted (cached) still pass,
    so a misbehaving pod behind a shared address does not lock its neighbours' runners out.
    Hazard: in memory, per gateway process (each replica counts its own).
    """

    def __init__(
        self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        # source -> (window start, failures in it)
        self._seen: dict[str, tuple[float, int]] = {}

    def blocked(self, source: str) -> float | None:
        """Seconds until ``source`` may be reviewed again; None when it may now."""
        if self.limit <= 0:
            return None
        seen = self._seen.get(source)
        if seen is None:
            return None
        left = seen[0] + self.window_s - self.clock()
        if left <= 0:
            return None
        return left if seen[1] >= self.limit else None

    def failed(self, source: str) -> None:
        now = self.clock()
        start, count = self._seen.get(source, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        self._seen[source] = (start, count + 1)
        if len(self._seen) > REVIEW_CACHE_MAX:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}


class TokenReviewAuthenticator:
    """Production: every new token is reviewed by the API server (``tokenreviews: create``)."""

    def __init__(
        self, api: client.ApiClient, ttl_s: float = REVIEW_CACHE_TTL_S, max_entries: int = 0
    ) -> None:
        self.auth = client.AuthenticationV1Api(api)
        self.ttl_s = ttl_s
        self.max_entries = max_entries or REVIEW_CACHE_MAX
        # sha256(token) -> (expiry on the monotonic clock, identity); only successes are kept.
        self._cache: dict[str, tuple[float, PodIdentity]] = {}

    def knows(self, token: str) -> bool:
        cached = self._cache.get(hashlib.sha256(token.encode()).hexdigest())
        return cached is not None and cached[0] > time.monotonic()

    async def authenticate(self, token: str) -> PodIdentity:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        identity = await self._review(token)
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[key] = (now + self.ttl_s, identity)
        return identity

    async def _review(self, token: str) -> PodIdentity:
        task_id = claimed_task_id(token)
        wanted = audience(task_id)
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[wanted]))
        try:
            review = await self.auth.create_token_review(body)
        except ApiException as exc:
            log.error("gateway_token_review_failed", status=exc.status, reason=exc.reason)
            raise AuthUnavailable(f"token review failed: HTTP {exc.status}") from exc
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise AuthUnavailable(f"token review failed: {exc}") from exc
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            raise TokenError((status.error if status else None) or "token not authenticated")
        if wanted not in (status.audiences or []):
            raise TokenError("token is for another audience")
        username = status.user.username or ""
        namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        pods = (status.user.extra or {}).get(POD_NAME_EXTRA) or []
        if not username.startswith(SERVICE_ACCOUNT_PREFIX) or not account or len(pods) != 1:
            raise TokenError("token is not bound to a pod")
        return PodIdentity(
            task_id=task_id, namespace=namespace, service_account=account, pod_name=pods[0]
        )


class StaticAuthenticator:
    """Tokens handed out by a test harness, each mapped to the pod identity it stands for.

    For the gateway's functional tests and local runs without a cluster; the identities then go
    through the same :func:`regtask.tokens.authorize` as the API server's.
    """

    def __init__(self) -> None:
        self.identities: dict[str, PodIdentity] = {}

    def add(self, token: str, identity: PodIdentity) -> None:
        self.identities[token] = identity

    def knows(self, token: str) -> bool:
        return token in self.identities

    async def authenticate(self, token: str) -> PodIdentity:
        try:
            return self.identities[token]
        except KeyError:
            raise TokenError("unknown token") from None
