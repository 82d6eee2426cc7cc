"""Periodic upkeep: registry cleanup, presence sweep, mirror retries, idle namespaces."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from regtask import naming
from regtask.timeutil import now_iso, parse_iso, utc_now
from regtask_operator.isolation import ANNOTATION_LAST_USED

if TYPE_CHECKING:
    from regtask_operator.runtime import Runtime

log = structlog.get_logger(__name__)


async def run_once(rt: Runtime) -> None:
    await retry_mirrors(rt)
    await sweep_registry(rt)
    await remove_idle_namespaces(rt)


async def retry_mirrors(rt: Runtime) -> None:
    pending = await rt.controller.mirror.retry_pending()
    if pending:
        log.warning("registry_mirror_pending", tasks=pending)


async def sweep_registry(rt: Runtime) -> None:
    try:
        await rt.registry.cleanup_expired_entries()
        swept = await rt.registry.sweep_heartbeats()
    except RedisError as exc:
        log.warning("registry_maintenance_skipped", error=str(exc))
        return
    if rt.firestore is None:
        return
    for user_id in swept:
        doc = await rt.registry.get_user_registry(user_id)
        if doc is None:
            continue
        rt.firestore.mirror_presence(
            user_id,
            status=doc.user_info.status.value,
            heartbeat_at=doc.heartbeat.last_heartbeat,
            ttl_seconds=doc.heartbeat.ttl_seconds,
            authorized_companies_ids=list(doc.companies.authorized_companies_ids),
        )


async def remove_idle_namespaces(rt: Runtime) -> list[str]:
    """Delete tenant namespaces without Jobs whose last admission is older than the idle time."""
    selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    namespaces = await rt.kube.list("/api/v1/namespaces", label_selector=selector)
    busy = {(job.get("metadata") or {}).get("namespace") for job in await rt.live_jobs()} | {
        task.tenant_namespace
        for task in rt.controller.tasks.values()
        if rt.controller.state.is_running(task.key) or rt.controller.state.is_queued(task.key)
    }
    cutoff = utc_now() - timedelta(seconds=rt.settings.namespace_idle_seconds)
    removed: list[str] = []
    for namespace in namespaces:
        meta = namespace.get("metadata") or {}
        name = meta.get("name", "")
        last_used = (meta.get("annotations") or {}).get(ANNOTATION_LAST_USED, now_iso())
        if name in busy or meta.get("deletionTimestamp") or parse_iso(last_used) > cutoff:
            continue
        if await rt.kube.delete("v1", "Namespace", None, name):
            rt.controller.forget_namespace(name)
            removed.append(name)
            log.info("tenant_namespace_removed", namespace=name, last_used=last_used)
    return removed
