"""RegistryTask resources in the control namespace: create, read, cancel, list, ping.

With several operator shards (:mod:`regtask.shards`), a task is created in its company's
shard namespace; a read, a cancel or a listing by task or user id asks every shard's namespace
at once (task ids are unique platform-wide; the answer is the one shard that has it).

The apiserver is the arbiter of idempotency: a task's resource name is derived from its id
(:func:`regtask.naming.task_resource_name`), so a second create of the same task answers 409
and the existing resource is returned instead of a new task being started.
Transport failures and server errors become :class:`~regtask_shim.errors.Unavailable` (503).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from regtask import naming
from regtask.crmodels import (
    API_GROUP,
    API_VERSION,
    API_VERSION_FULL,
    TASK_KIND,
    TASK_PLURAL,
    RegistryTaskSpec,
    RegistryTaskStatus,
)
from regtask.kubeclient import async_api_client
from regtask.shards import all_control_namespaces, company_namespace
from regtask_shim.errors import BadArguments, ShimError, Unavailable

log = structlog.get_logger(__name__)

LABEL_USER = naming.LABEL_USER
MERGE_PATCH = "application/merge-patch+json"


user_label = naming.user_label


@dataclass(frozen=True)
class StoredTask:
    name: str
    spec: RegistryTaskSpec
    status: RegistryTaskStatus | None
    created: str | None


@dataclass(frozen=True)
class CreateOutcome:
    created: bool
    task: StoredTask


class TaskStore(Protocol):
    async def create(self, spec: RegistryTaskSpec) -> CreateOutcome: ...

    async def get(self, task_id: str) -> StoredTask | None: ...

    async def request_cancel(self, task_id: str) -> StoredTask | None: ...

    async def list_for_user(self, user_id: str, limit: int) -> list[StoredTask]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def task_manifest(spec: RegistryTaskSpec, namespace: str) -> dict[str, Any]:
    """The RegistryTask the operator admits: labels for selection, raw ids in annotations, and
    the operator's finalizer already set (one PATCH per task fewer for the operator)."""
    return {
        "apiVersion": API_VERSION_FULL,
        "kind": TASK_KIND,
        "metadata": {
            "name": naming.task_resource_name(spec.task_id),
            "namespace": namespace,
            "finalizers": [naming.TASK_FINALIZER],
            "labels": {
                LABEL_USER: user_label(spec.user_id),
                naming.LABEL_TENANT: naming.tenant_label(spec.user_id, spec.company_id),
                naming.LABEL_COMPANY: naming.company_label(spec.company_id),
                naming.LABEL_TASK_TYPE: spec.task_type.value,
            },
            "annotations": {
                naming.ANNOTATION_TASK: spec.task_id,
                naming.ANNOTATION_USER: spec.user_id,
                naming.ANNOTATION_COMPANY: spec.company_id,
            },
        },
        "spec": spec.to_wire(),
    }


def parse_task(obj: dict[str, Any]) -> StoredTask:
    meta = obj.get("metadata") or {}
    try:
        spec = RegistryTaskSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        log.error("task_resource_malformed", name=meta.get("name"), error=str(exc))
        raise ShimError("a task resource is unreadable; see the shim logs") from exc
    status: RegistryTaskStatus | None = None
    if obj.get("status"):
        try:
            status = RegistryTaskStatus.model_validate(obj["status"])
        except ValidationError as exc:
            log.warning("task_status_unreadable", name=meta.get("name"), error=str(exc))
    return StoredTask(
        name=str(meta.get("name", "")),
        spec=spec,
        status=status,
        created=meta.get("creationTimestamp"),
    )


class KubeTaskStore:
    """``kubernetes_asyncio`` against the apiserver; the client is built on first use."""

    def __init__(
        self,
        namespace: str,
        kubeconfig: Path | None = None,
        timeout_s: float = 10.0,
        shards: int = 1,
    ):
        # The base control namespace; with several shards each has its own (regtask.shards).
        self.namespace = namespace
        self.shards = shards
        self.namespaces = all_control_namespaces(namespace, shards)
        self.kubeconfig = kubeconfig
        self.timeout_s = timeout_s
        self._api: client.ApiClient | None = None
        self._custom: client.CustomObjectsApi | None = None
        self._lock = asyncio.Lock()

    async def _objects(self) -> client.CustomObjectsApi:
        if self._custom is not None:
            return self._custom
        async with self._lock:
            if self._custom is None:
                try:
                    api = await async_api_client(self.kubeconfig)
                except (config.ConfigException, OSError) as exc:
                    log.error("kube_config_unusable", error=str(exc))
                    raise Unavailable(
                        "Kubernetes API unavailable: no usable configuration"
                    ) from exc
                self._api = api
                self._custom = client.CustomObjectsApi(self._api)
        return self._custom

    async def _call(self, what: str, method: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
        """One API call; 404, 409 and 422 are raised as they are, every transport or server
        failure is a 503."""
        api = await self._objects()
        try:
            return await getattr(api, method)(
                API_GROUP,
                API_VERSION,
                namespace,
                TASK_PLURAL,
                *args,
                _request_timeout=self.timeout_s,
                **kwargs,
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):
                raise
            log.warning("kube_api_error", what=what, status=exc.status, reason=exc.reason)
            if exc.status in (401, 403):
                raise Unavailable("Kubernetes API refused the shim (credentials or RBAC)") from exc
            raise Unavailable(f"Kubernetes API unavailable (HTTP {exc.status})") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("kube_api_unreachable", what=what, error=type(exc).__name__)
            raise Unavailable("Kubernetes API unavailable: not reachable") from exc

    def namespace_of(self, company_id: str) -> str:
        """Where the company's tasks are created: its shard's control namespace."""
        return company_namespace(self.namespace, company_id, self.shards)

    async def _each_namespace(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """The same call in every shard's namespace at once; the first answer that is not a
        404 (None when every namespace answers 404). One namespace: one call."""
        answers = await asyncio.gather(
            *(self._call(what, method, ns, *args, **kwargs) for ns in self.namespaces),
            return_exceptions=True,
        )
        found: Any = None
        for answer in answers:
            if isinstance(answer, ApiException) and answer.status == 404:
                continue
            if isinstance(answer, BaseException):
                raise answer
            if found is None:
                found = answer
        return found

    async def create(self, spec: RegistryTaskSpec) -> CreateOutcome:
        namespace = self.namespace_of(spec.company_id)
        body = task_manifest(spec, namespace)
        for _ in range(3):
            try:
                obj = await self._call("create", "create_namespaced_custom_object", namespace, body)
                return CreateOutcome(created=True, task=parse_task(obj))
            except ApiException as exc:
                if exc.status == 422:
                    raise BadArguments(f"task refused by the API: {_reason(exc)}") from exc
                if exc.status == 404:
                    raise Unavailable(
                        "control namespace or RegistryTask definition missing"
                    ) from exc
                # 409: the task exists; answer with it (it may vanish meanwhile: try again).
                existing = await self.get(spec.task_id)
                if existing is not None:
                    return CreateOutcome(created=False, task=existing)
        raise Unavailable("task resource is being replaced; retry")

    async def get(self, task_id: str) -> StoredTask | None:
        try:
            obj = await self._each_namespace(
                "get", "get_namespaced_custom_object", naming.task_resource_name(task_id)
            )
        except ApiException as exc:
            raise Unavailable(f"Kubernetes API error (HTTP {exc.status})") from exc
        if obj is None:
            return None
        task = parse_task(obj)
        return task if task.spec.task_id == task_id else None

    async def request_cancel(self, task_id: str) -> StoredTask | None:
        try:
            obj = await self._each_namespace(
                "cancel",
                "patch_namespaced_custom_object",
                naming.task_resource_name(task_id),
                {"spec": {"cancel": True}},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            raise Unavailable(f"Kubernetes API error (HTTP {exc.status})") from exc
        return None if obj is None else parse_task(obj)

    async def list_for_user(self, user_id: str, limit: int) -> list[StoredTask]:
        try:
            listings = await asyncio.gather(
                *(
                    self._call(
                        "list",
                        "list_namespaced_custom_object",
                        namespace,
                        label_selector=f"{LABEL_USER}={user_label(user_id)}",
                    )
                    for namespace in self.namespaces
                )
            )
        except ApiException as exc:
            raise Unavailable(f"Kubernetes API error (HTTP {exc.status})") from exc
        tasks = [parse_task(item) for listing in listings for item in listing.get("items") or []]
        mine = [t for t in tasks if t.spec.user_id == user_id]
        mine.sort(key=lambda t: t.created or "", reverse=True)
        return mine[:limit]

    async def api_client(self) -> client.ApiClient:
        """The shared API client (the web console's reads of quotas and Events use it)."""
        await self._objects()
        assert self._api is not None
        return self._api

    async def ping(self) -> None:
        try:
            for namespace in self.namespaces:
                await self._call("ping", "list_namespaced_custom_object", namespace, limit=1)
        except ApiException as exc:
            raise Unavailable(f"Kubernetes API error (HTTP {exc.status})") from exc

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
        self._api = None
        self._custom = None


def _reason(exc: ApiException) -> str:
    """The apiserver's own message (validation rule text), without the response dump."""
    import json

    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason)[:500]
