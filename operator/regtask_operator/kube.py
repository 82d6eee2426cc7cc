"""The operator's Kubernetes calls, over one shared aiohttp session.

Idempotent by construction: server-side apply for objects the operator owns the shape of
(tenant namespace and its policies: applying again repairs drift), ``create`` tolerating
"already exists" for Jobs and Secrets (derived names make a second create harmless), ``delete``
tolerating "not found".

The session is built from the same :class:`kopf.ConnectionInfo` as Kopf's own (service account
in a cluster, else the kubeconfig), with aiohttp, which Kopf already runs on. No Kubernetes
client library is imported: their generated models cost ~60 MB of resident memory (see
``regtask_operator.__main__``), and the operator only needs a handful of raw REST calls.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from regtask.crmodels import (
    API_GROUP,
    API_VERSION,
    QUOTA_KIND,
    QUOTA_PLURAL,
    TASK_KIND,
    TASK_PLURAL,
)

FIELD_MANAGER = "regtask-operator"
REQUEST_TIMEOUT_S = 30
CONNECTIONS = 16

_PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "NetworkPolicy": "networkpolicies",
    "ResourceQuota": "resourcequotas",
    "LimitRange": "limitranges",
    "Secret": "secrets",
    "Job": "jobs",
    "Event": "events",
    TASK_KIND: TASK_PLURAL,
    QUOTA_KIND: QUOTA_PLURAL,
}

Login = Callable[[], kopf.ConnectionInfo | None]


# One page of a collection's items (an alias: inside Kube, `list` names the method).
Page = list[dict[str, Any]]


class KubeError(Exception):
    """A refused API call: the HTTP status and the apiserver's own message."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = message


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = _PLURALS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


def task_path(namespace: str, name: str | None = None, status: bool = False) -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{TASK_PLURAL}"
    if name:
        path += f"/{name}"
    return path + "/status" if status else path


def quota_path(namespace: str, name: str, status: bool = False) -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{QUOTA_PLURAL}/{name}"
    return path + "/status" if status else path


def default_login(settings: kopf.OperatorSettings) -> Login:
    """Kopf's own logins, in Kopf's order: in-cluster ServiceAccount, else KUBECONFIG."""

    def login() -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )

    return login


def bounded_session(info: kopf.ConnectionInfo) -> aiohttp.ClientSession:
    """An aiohttp session with Kopf's own TLS and auth helpers, and a bounded pool.

    Each TLS connection holds ~130 KB of buffers; the operator's own calls come from few
    coroutines (the scheduler, the loops), which gain nothing from more parallel requests.
    """
    return aiohttp.ClientSession(
        headers=info.as_http_headers(),
        connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=CONNECTIONS),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )


class Kube:
    def __init__(self, login: Login) -> None:
        self._login = login
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    @classmethod
    async def connect(cls, login: Login) -> Kube:
        kube = cls(login)
        await kube._relogin()
        return kube

    async def _relogin(self) -> aiohttp.ClientSession:
        info = self._login()
        if info is None:
            raise RuntimeError("no Kubernetes credentials: neither in-cluster nor KUBECONFIG")
        old = self._session
        self._session = bounded_session(info)
        self._server = info.server.rstrip("/")
        if old is not None:
            await old.close()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = self._session or await self._relogin()
        for attempt in (1, 2):
            async with session.request(
                method,
                self._server + path,
                params=query or None,
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": content_type, "Accept": "application/json"},
            ) as response:
                text = await response.text()
                if response.status == 401 and attempt == 1:
                    # Rotated ServiceAccount token (or expired credentials): log in again once.
                    session = await self._relogin()
                    continue
                if response.status >= 400:
                    raise KubeError(response.status, method, path, _message(text))
                result = json.loads(text) if text else {}
                return result if isinstance(result, dict) else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = object_path(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        return await self.request(
            "PATCH",
            path,
            manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create; False when it already existed (the derived name makes that the same object)."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            await self.request("POST", path, manifest, query=[("fieldManager", FIELD_MANAGER)])
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete (background propagation unless told); False when it was already gone.

        With ``resource_version`` the API server deletes only the object as it was read (else
        409 Conflict: it changed since, e.g. a new admission marked it used). ``Foreground``
        keeps the object, marked for deletion, until its dependents (a Job's pods) are gone."""
        options: dict[str, Any] = {"propagationPolicy": propagation}
        if resource_version:
            options["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self.request("DELETE", object_path(api_version, kind, namespace, name), options)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def post_event(
        self, involved: dict[str, str], kind: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event on ``involved`` (apiVersion, kind, name, namespace, uid)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{secrets.token_hex(8)}",
                "namespace": involved["namespace"],
            },
            "involvedObject": involved,
            "type": kind,
            "reason": reason[:128],
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("POST", object_path("v1", "Event", involved["namespace"]), body)

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async for page in self.pages(path, label_selector):
            items.extend(page)
        return items

    async def pages(self, path: str, label_selector: str | None = None) -> AsyncIterator[Page]:
        """A collection 500 objects at a time: a caller that handles each page as it comes
        never holds the whole list (10,000 tasks are tens of MB of JSON)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        token = ""
        while True:
            page = await self.request(
                "GET", path, query=[*query, ("limit", "500"), ("continue", token)]
            )
            yield page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    async def patch_merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch; None when the object is gone."""
        try:
            return await self.request(
                "PATCH", path, patch, content_type="application/merge-patch+json"
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message") or text)[:500]
    except (ValueError, AttributeError):
        return text[:500]
