"""The console's reads: RegistryTasks (their status carries the Job and pod summary the
operator records), CompanyQuotas and a task's Events from the API (the shim's own client and
RBAC: ``get``/``list`` in the control namespace, or in every shard's), task documents, step
histories and usage counters from Redis. Each failure of a server becomes a 503 with a clear
message. The shim reads nothing in tenant namespaces."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from redis.exceptions import RedisError

from regtask import naming
from regtask.crmodels import API_GROUP, API_VERSION, QUOTA_PLURAL, TASK_KIND, TASK_PLURAL
from regtask.docstore import DocumentError
from regtask.documents import TaskStep
from regtask.registry import Registry
from regtask_shim.console import usage
from regtask_shim.console.views import Live, Usage
from regtask_shim.errors import Unavailable
from regtask_shim.taskstore import KubeTaskStore

log = structlog.get_logger(__name__)


class ConsoleSource:
    def __init__(self, store: KubeTaskStore, registry: Registry, timeout_s: float) -> None:
        self.store = store
        self.registry = registry
        self.redis: aioredis.Redis = registry.client
        self.namespaces = store.namespaces  # the control namespace, or every shard's
        self.timeout_s = timeout_s

    async def _list(self, plural: str) -> list[dict[str, Any]]:
        found = await asyncio.gather(*(self._list_in(ns, plural) for ns in self.namespaces))
        return [item for items in found for item in items]

    async def _list_in(self, namespace: str, plural: str) -> list[dict[str, Any]]:
        api = client.CustomObjectsApi(await self.store.api_client())
        items: list[dict[str, Any]] = []
        token: str | None = None
        try:
            while True:
                paging: dict[str, Any] = {"_continue": token} if token else {}
                page = await api.list_namespaced_custom_object(
                    API_GROUP,
                    API_VERSION,
                    namespace,
                    plural,
                    limit=500,
                    _request_timeout=self.timeout_s,
                    **paging,
                )
                items.extend(page.get("items") or [])
                token = (page.get("metadata") or {}).get("continue") or None
                if not token:
                    return items
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("console_read_failed", what=plural, error=type(exc).__name__)
            raise Unavailable(f"Kubernetes API unavailable: cannot list {plural}") from exc

    async def tasks(self) -> list[dict[str, Any]]:
        return await self._list(TASK_PLURAL)

    async def quotas(self) -> list[dict[str, Any]]:
        return await self._list(QUOTA_PLURAL)

    async def task(self, task_id: str) -> dict[str, Any] | None:
        """The task's RegistryTask, from whichever shard's namespace holds it."""
        found = await asyncio.gather(*(self._task_in(ns, task_id) for ns in self.namespaces))
        return next((obj for obj in found if obj is not None), None)

    async def _task_in(self, namespace: str, task_id: str) -> dict[str, Any] | None:
        api = client.CustomObjectsApi(await self.store.api_client())
        try:
            obj: dict[str, Any] = await api.get_namespaced_custom_object(
                API_GROUP,
                API_VERSION,
                namespace,
                TASK_PLURAL,
                naming.task_resource_name(task_id),
                _request_timeout=self.timeout_s,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise Unavailable(f"Kubernetes API error (HTTP {exc.status})") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable("Kubernetes API unavailable: not reachable") from exc
        return obj if (obj.get("spec") or {}).get("taskId") == task_id else None

    async def events(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """The Kubernetes Events on one RegistryTask (the operator's decisions), in its
        namespace."""
        meta = task.get("metadata") or {}
        task_resource_name = str(meta.get("name") or "")
        namespace = str(meta.get("namespace") or self.store.namespace)
        api_client = await self.store.api_client()
        api = client.CoreV1Api(api_client)
        selector = f"involvedObject.name={task_resource_name},involvedObject.kind={TASK_KIND}"
        try:
            listing = await api.list_namespaced_event(
                namespace, field_selector=selector, _request_timeout=self.timeout_s
            )
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("console_read_failed", what="events", error=type(exc).__name__)
            raise Unavailable("Kubernetes API unavailable: cannot list events") from exc
        sanitized: list[dict[str, Any]] = api_client.sanitize_for_serialization(listing.items)
        return sanitized

    async def live(self, task_ids: list[str]) -> dict[str, Live]:
        """The registry's progress of running tasks; missing or unreadable ones are left out."""

        async def one(task_id: str) -> tuple[str, Live | None]:
            try:
                doc = await self.registry.get_task(task_id)
            except (DocumentError, RedisError):
                return task_id, None
            if doc is None:
                return task_id, None
            progress = doc.progress
            return task_id, Live(
                progress=progress.progress_percent, current_step=progress.current_step
            )

        found = await asyncio.gather(*(one(t) for t in task_ids))
        return {task_id: live for task_id, live in found if live is not None}

    async def usage(self, company_id: str) -> Usage:
        try:
            llm = await usage.llm_usage(self.redis, company_id)
            storage = await usage.storage_used_mb(self.redis, company_id)
        except RedisError as exc:
            raise Unavailable("registry unavailable: Redis did not answer") from exc
        return Usage(
            llm_requests=llm.requests,
            llm_window=llm.window,
            llm_tokens=llm.tokens,
            storage_mb=storage,
        )

    async def steps(self, task_id: str) -> list[TaskStep]:
        """The runner's reported steps, oldest first (the gateway's history; regtask.keys)."""
        try:
            return await self.registry.get_task_steps(task_id)
        except RedisError as exc:
            raise Unavailable("registry unavailable: Redis did not answer") from exc

    async def company_of_task(self, task_id: str) -> str | None:
        """For the live stream's filter: the registry document's company."""
        try:
            doc = await self.registry.get_task(task_id)
        except (DocumentError, RedisError):
            return None
        return doc.task_info.company_id if doc else None
