"""Periodic upkeep, one round every ``REGTASK_MAINTENANCE_INTERVAL_S``.

A round retries the mirror writes kept while Redis was down, prunes registry references whose
keys expired, sweeps users whose heartbeat outlived its TTL offline (and mirrors them to the
Firestore presence collection), removes idle tenant namespaces, and, at most every
``REGTASK_NAMESPACE_REPAIR_INTERVAL_S``, re-applies every tenant namespace's fences so drift is
repaired without waiting for the next admission of that tenant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import RedisError

from regtask import keys, naming
from regtask.docstore import DocumentError
from regtask.documents import UnifiedUserDoc
from regtask.timeutil import now_iso, parse_iso, utc_now
from regtask_operator import isolation
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import KubeError

if TYPE_CHECKING:
    from regtask_operator.runtime import Runtime

log = structlog.get_logger(__name__)

MANAGED_NAMESPACES = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"


@dataclass
class RepairClock:
    """When the next drift repair is due (``time.monotonic()``); the first round repairs."""

    next_at: float | None = None

    def due(self, interval_s: float, now: float | None = None) -> bool:
        """True (and the next repair scheduled ``interval_s`` later) when a repair is due."""
        now = time.monotonic() if now is None else now
        if self.next_at is not None and now < self.next_at:
            return False
        self.next_at = now + interval_s
        return True


# One operator process runs one Runtime, hence one clock.
REPAIR_CLOCK = RepairClock()


async def run_once(rt: Runtime, clock: RepairClock = REPAIR_CLOCK) -> None:
    await retry_mirrors(rt)
    await sweep_registry(rt)
    removed = await remove_idle_namespaces(rt)
    if clock.due(rt.settings.namespace_repair_interval_s):
        await repair_namespaces(rt, skip=removed)


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
        # The swept document itself: the registry's fallback read would answer the legacy key
        # (always "online") when UNIFIED_REGISTRY_ENABLED is off.
        try:
            doc = await rt.registry.store.read(keys.unified_user(user_id), UnifiedUserDoc)
        except (RedisError, DocumentError) as exc:
            log.warning("presence_mirror_skipped", user_id=user_id, error=str(exc))
            continue
        if doc is None:
            continue
        rt.firestore.write_presence(
            user_id,
            status=doc.user_info.status.value,
            heartbeat_at=doc.heartbeat.last_heartbeat,
            ttl_seconds=doc.heartbeat.ttl_seconds,
            authorized_companies_ids=list(doc.companies.authorized_companies_ids),
        )


# ------------------------------------------------------------------ tenant namespaces


def last_used(namespace: dict[str, Any]) -> datetime | None:
    """The namespace's last admission (annotation); None when missing or unreadable."""
    value = ((namespace.get("metadata") or {}).get("annotations") or {}).get(
        isolation.ANNOTATION_LAST_USED
    )
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def idle_namespaces(
    namespaces: Iterable[dict[str, Any]], busy: set[str], cutoff: datetime
) -> list[str]:
    """Names of the tenant namespaces to remove: not busy, not already being deleted, and last
    used before ``cutoff``. Without a readable last-used time a namespace counts as just used
    (the next drift repair writes one)."""
    idle: list[str] = []
    for namespace in namespaces:
        meta = namespace.get("metadata") or {}
        name = meta.get("name", "")
        used = last_used(namespace)
        if not name or name in busy or meta.get("deletionTimestamp"):
            continue
        if used is not None and used <= cutoff:
            idle.append(name)
    return idle


async def remove_idle_namespaces(rt: Runtime) -> list[str]:
    """Delete tenant namespaces without Jobs whose last admission is older than the idle time.

    A finished Job keeps its namespace until the Job's own TTL
    (``REGTASK_TTL_SECONDS_AFTER_FINISHED``) removes it; a running or waiting task keeps it too.
    """
    namespaces = await rt.kube.list("/api/v1/namespaces", label_selector=MANAGED_NAMESPACES)
    busy = {(job.get("metadata") or {}).get("namespace", "") for job in await rt.live_jobs()} | {
        task.tenant_namespace
        for task in rt.controller.tasks.values()
        if rt.controller.state.is_running(task.key) or rt.controller.state.is_queued(task.key)
    }
    cutoff = utc_now() - timedelta(seconds=rt.settings.namespace_idle_seconds)
    removed: list[str] = []
    for name in idle_namespaces(namespaces, busy, cutoff):
        if await rt.kube.delete("v1", "Namespace", None, name):
            rt.controller.forget_namespace(name)
            removed.append(name)
            log.info("tenant_namespace_removed", namespace=name)
    return removed


def repair_manifests(
    namespace: dict[str, Any], settings: OperatorSettings, max_tasks: Callable[[str], int]
) -> list[dict[str, Any]] | None:
    """What the tenant namespace and its fences must look like, as admission builds them.

    None when the namespace cannot be rebuilt: being deleted, or its annotations do not name
    the (user, company) whose namespace it is. ``max_tasks`` gives a company's maxTasksPerUser
    (the size of its tenants' quotas). The last-used time is kept as it is, so a repair
    never makes an idle namespace look used. The Namespace comes last: when the namespace has
    vanished since it was listed, the fences' applies fail first and it is not re-created.
    """
    meta = namespace.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    annotations = meta.get("annotations") or {}
    user_id = annotations.get(naming.ANNOTATION_USER)
    company_id = annotations.get(naming.ANNOTATION_COMPANY)
    if not isinstance(user_id, str) or not isinstance(company_id, str):
        return None
    if not user_id or not company_id:
        return None
    if naming.tenant_namespace(user_id, company_id) != meta.get("name"):
        return None
    used = last_used(namespace)
    stamp = annotations[isolation.ANNOTATION_LAST_USED] if used is not None else now_iso()
    return [
        *isolation.namespaced_manifests(user_id, company_id, settings, max_tasks(company_id)),
        isolation.namespace_manifest(user_id, company_id, stamp),
    ]


async def repair_namespaces(rt: Runtime, skip: Iterable[str] = ()) -> int:
    """Re-apply every tenant namespace's fences (server-side apply: a no-op without drift).

    One apply per object per namespace; returns how many applies were issued.
    """
    namespaces = await rt.kube.list("/api/v1/namespaces", label_selector=MANAGED_NAMESPACES)
    skipped = set(skip)
    repaired = applies = 0
    for namespace in namespaces:
        meta = namespace.get("metadata") or {}
        name = meta.get("name", "")
        if name in skipped or meta.get("deletionTimestamp"):
            continue
        if rt.controller.applied_within(name, rt.settings.namespace_repair_interval_s):
            continue  # admission applied it (fences included) less than an interval ago
        manifests = repair_manifests(namespace, rt.settings, rt.controller.max_tasks_per_user)
        if manifests is None:
            log.warning("tenant_namespace_unrepairable", namespace=name)
            continue
        try:
            for manifest in manifests:
                applies += 1
                await rt.kube.apply(manifest)
        except KubeError as exc:
            log.warning(
                "tenant_namespace_repair_failed",
                namespace=name,
                status=exc.status,
                error=exc.message,
            )
            continue
        repaired += 1
    log.info("tenant_namespaces_repaired", namespaces=repaired, applies=applies)
    return applies
