"""A tenant namespace's whole life: created with its fences at the tenant's first admission,
its last-used time refreshed by later admissions, its drift repaired, removed once idle.

What the namespace and its fences look like is :mod:`regtask_operator.isolation` (pure); this
module applies it (server-side apply: creating and repairing are the same call) and decides
when. A namespace lives from its first admission until it is idle: no Job left in it (a finished
Job goes with its ``ttlSecondsAfterFinished``), no running or waiting task, and a last admission
(annotation ``regtask.io/last-used``) older than ``REGTASK_NAMESPACE_IDLE_SECONDS``; the
tenant's next task then creates a new one. In between, drift is repaired twice over: by
admission (:meth:`Tenants.ensure`: the fences once per namespace and process, again when the
company's maxTasksPerUser changes, which sizes the ResourceQuota) and by the maintenance round
(:meth:`Tenants.repair`), which keeps the last-used time so that a repair never counts as a use.

Hazard: what this process applied, and when, is kept in memory only; a namespace removed
behind its back must be forgotten (:meth:`Tenants.forget`) or the next admission would take it
for applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog

from regtask import naming
from regtask.timeutil import now_iso, parse_iso, utc_now
from regtask_operator import isolation
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, KubeError, object_path

log = structlog.get_logger(__name__)

# An admission refreshes its namespace's last-used annotation at most this often (idle removal
# reads it); the fences are applied once per namespace and process (drift: Tenants.repair).
LAST_USED_REFRESH_S = 300.0

# The objects admission applies in a tenant namespace besides the Namespace (what the drift
# repair lists, cluster-wide, by the label every tenant object carries).
FENCE_KINDS = (
    ("v1", "ServiceAccount"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "ResourceQuota"),
    ("v1", "LimitRange"),
)
MANAGED_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"


def object_key(manifest: dict[str, Any]) -> tuple[str, str, str]:
    meta = manifest["metadata"]
    return (meta.get("namespace") or "", manifest["kind"], meta["name"])


# ------------------------------------------------------------------ decisions (pure)


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


def busy_namespaces(live_jobs: Iterable[dict[str, Any]], active: Iterable[str]) -> set[str]:
    """Namespaces kept whatever their last use: those with a Job (a finished Job until its TTL
    removes it) and those of running or waiting tasks (``active``)."""
    return {(job.get("metadata") or {}).get("namespace", "") for job in live_jobs} | set(active)


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
        isolation.namespace_manifest(user_id, company_id, stamp, settings.shard_labels),
    ]


# ------------------------------------------------------------------ the life


class Tenants:
    """The tenant namespaces of one operator process.

    ``max_tasks`` gives a company's maxTasksPerUser (the size of its tenants' ResourceQuotas).
    """

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        max_tasks: Callable[[str], int],
        active: Callable[[], set[str]] = set,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.max_tasks = max_tasks
        # Namespaces of the running and waiting tasks, now (TaskTracker.active_namespaces)
        self.active = active
        # tenant namespace -> time.monotonic() of this process's last apply of the namespace,
        # and of its apply of the fences with the maxTasksPerUser their quota was sized for
        self._namespaces_applied: dict[str, float] = {}
        self._fences_applied: dict[str, tuple[float, int]] = {}
        # tenant namespace -> the UID of the namespace those fences were applied in
        self._uids: dict[str, str | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, user_id: str, company_id: str) -> str:
        """The tenant's namespace, fenced, its last use refreshed: at every admission."""
        namespace = naming.tenant_namespace(user_id, company_id)
        # One apply at a time per namespace: the launches of one step for the same tenant all
        # arrive here together, and all but the first find it freshly applied.
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            max_tasks = self.max_tasks(company_id)
            fences = self._fences_applied.get(namespace)
            fresh = fences is not None and fences[1] == max_tasks
            applied = self._namespaces_applied.get(namespace)
            if fresh and applied is not None and time.monotonic() - applied < LAST_USED_REFRESH_S:
                return namespace
            applied_ns = await self.kube.apply(
                isolation.namespace_manifest(
                    user_id, company_id, now_iso(), self.settings.shard_labels
                )
            )
            uid = (applied_ns.get("metadata") or {}).get("uid")
            if fresh and uid != self._uids.get(namespace):
                # Deleted behind this process's back and created again by this very apply: an
                # empty namespace, its fences must come with it, in this step, before any Job.
                log.warning("tenant_namespace_recreated", namespace=namespace)
                fresh = False
            if not fresh:
                for manifest in isolation.namespaced_manifests(
                    user_id, company_id, self.settings, max_tasks
                ):
                    await self.kube.apply(manifest)
                self._fences_applied[namespace] = (time.monotonic(), max_tasks)
                self._uids[namespace] = uid
            self._namespaces_applied[namespace] = time.monotonic()
        return namespace

    def applied_within(self, namespace: str, seconds: float) -> bool:
        """Whether this process applied the namespace's fences in the last ``seconds``."""
        applied = self._fences_applied.get(namespace)
        return applied is not None and time.monotonic() - applied[0] < seconds

    def forget(self, namespace: str) -> None:
        """Removed (or found missing): the next admission applies it all again."""
        self._namespaces_applied.pop(namespace, None)
        self._fences_applied.pop(namespace, None)
        self._uids.pop(namespace, None)

    async def remove_idle(self, busy: Callable[[], Awaitable[set[str]]]) -> list[str]:
        """Delete tenant namespaces that are not ``busy`` (:func:`busy_namespaces`) and whose
        last admission is older than the idle time; returns their names."""
        namespaces = await self.kube.list(
            "/api/v1/namespaces", label_selector=self.settings.managed_selector
        )
        kept = await busy()
        cutoff = utc_now() - timedelta(seconds=self.settings.namespace_idle_seconds)
        versions = {
            (n.get("metadata") or {}).get("name"): (n.get("metadata") or {}).get("resourceVersion")
            for n in namespaces
        }
        removed: list[str] = []
        for name in idle_namespaces(namespaces, kept, cutoff):
            # Checked again at the last instant: a task admitted since `busy` was read (this
            # process), or a namespace changed since it was listed (another replica's
            # admission refreshed it), keeps it.
            if name in self.active():
                continue
            try:
                deleted = await self.kube.delete("v1", "Namespace", None, name, versions.get(name))
            except KubeError as exc:
                if exc.status != 409:
                    raise
                log.info("tenant_namespace_kept", namespace=name, reason="changed since listed")
                continue
            if deleted:
                self.forget(name)
                removed.append(name)
                log.info("tenant_namespace_removed", namespace=name)
        return removed

    async def repair(self, skip: Iterable[str] = ()) -> int:
        """Re-apply what drifted in the tenant namespaces: each object whose live state no
        longer holds what admission applied (:func:`isolation.holds`), or that is missing.

        Reads first, one cluster-wide list per kind of fence, so that a round without drift
        writes nothing (an apply per object per round was 6 writes per tenant every interval,
        the bulk of the operator's writes at scale). Returns how many applies were issued.
        """
        namespaces = await self.kube.list(
            "/api/v1/namespaces", label_selector=self.settings.managed_selector
        )
        skipped = set(skip)
        interval = self.settings.namespace_repair_interval_s
        # name -> (the namespace as listed, what admission applies in it)
        due: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for namespace in namespaces:
            meta = namespace.get("metadata") or {}
            name = meta.get("name", "")
            if name in skipped or meta.get("deletionTimestamp"):
                continue
            if self.applied_within(name, interval):
                continue  # admission applied it (fences included) less than an interval ago
            manifests = repair_manifests(namespace, self.settings, self.max_tasks)
            if manifests is None:
                log.warning("tenant_namespace_unrepairable", namespace=name)
                continue
            due[name] = (namespace, manifests)
        holding = await self._conforming_fences(
            {object_key(m): m for _, manifests in due.values() for m in manifests}
        )
        checked = repaired = applies = 0
        for name, (namespace, manifests) in due.items():
            checked += 1
            drifted = [
                manifest
                for manifest in manifests
                if not (
                    isolation.holds(manifest, namespace)
                    if manifest["kind"] == "Namespace"
                    else object_key(manifest) in holding
                )
            ]
            if not drifted:
                continue
            log.info(
                "tenant_namespace_drifted",
                namespace=name,
                objects=[f"{m['kind']}/{m['metadata']['name']}" for m in drifted],
            )
            try:
                for manifest in drifted:
                    applies += 1
                    await self.kube.apply(manifest)
            except KubeError as exc:
                log.warning(
                    "tenant_namespace_repair_failed",
                    namespace=name,
                    status=exc.status,
                    error=exc.message,
                )
                continue
            repaired += 1
        log.info(
            "tenant_namespaces_repaired", checked=checked, namespaces=repaired, applies=applies
        )
        return applies

    async def _conforming_fences(
        self, wanted: dict[tuple[str, str, str], dict[str, Any]]
    ) -> set[tuple[str, str, str]]:
        """The keys (namespace, kind, name) of ``wanted`` whose live object holds what it
        applies. Page by page: only these keys are kept, never the listed objects."""
        holding: set[tuple[str, str, str]] = set()
        if not wanted:
            return holding
        for api_version, kind in FENCE_KINDS:
            async for page in self.kube.pages(
                object_path(api_version, kind, None), label_selector=MANAGED_SELECTOR
            ):
                for live in page:
                    meta = live.get("metadata") or {}
                    key = (meta.get("namespace", ""), kind, meta.get("name", ""))
                    manifest = wanted.get(key)
                    if manifest is not None and isolation.holds(manifest, live):
                        holding.add(key)
        return holding
