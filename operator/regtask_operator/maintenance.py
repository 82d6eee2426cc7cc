"""Periodic upkeep, one round every ``REGTASK_MAINTENANCE_INTERVAL_S``.

A round retries the mirror writes kept while Redis was down, prunes registry references whose
keys expired, sweeps users whose heartbeat outlived its TTL offline (and writes them to the
Firestore presence collection), re-asserts every company's limits (its CompanyQuota, else the
configured defaults) in the keys the gateway and shim enforce and in the contract's company
document, reconciles every company's storage counter with the blobs and results it still holds,
deletes the finished RegistryTasks kept past their TTL,
removes idle tenant namespaces, and, at most every
``REGTASK_NAMESPACE_REPAIR_INTERVAL_S``, re-applies every tenant namespace's fences so drift is
repaired without waiting for the next admission of that tenant (the namespaces' life:
:mod:`regtask_operator.tenants`).

:class:`Maintenance` is given exactly what a round uses (the mirror, the registry, Firestore,
the tenants, the busy namespaces, the expired tasks' deletion), never the whole runtime.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog
from redis.exceptions import RedisError

from regtask import keys
from regtask.docstore import DocumentError
from regtask.documents import Quotas, UnifiedUserDoc
from regtask.firestore_writer import FirestoreWriter
from regtask.registry import Registry
from regtask.storage import StorageAccounting
from regtask_operator.mirror import Mirror
from regtask_operator.tenants import Tenants

log = structlog.get_logger(__name__)


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


@dataclass
class Maintenance:
    mirror: Mirror
    registry: Registry
    firestore: FirestoreWriter | None
    tenants: Tenants
    # Tenant namespaces kept whatever their last use (Controller.busy_namespaces).
    busy_namespaces: Callable[[], Awaitable[set[str]]]
    # Deletes the finished tasks kept past their TTL (Controller.delete_expired).
    delete_expired: Callable[[], Awaitable[int]]
    repair_interval_s: float
    # Every CompanyQuota's limits and the configured defaults (Controller.known_limits).
    known_limits: Callable[[], tuple[Mapping[str, Quotas], Quotas]] | None = None
    # The companies' storage counters (Mirror.storage), reconciled every round.
    storage: StorageAccounting | None = None
    clock: RepairClock = field(default_factory=RepairClock)
    # With several shards (regtask.shards): the companies this shard serves (limits and storage
    # are theirs to keep), and whether this shard also runs the platform-wide chores (registry
    # cleanup, presence sweep: shard 0 only).
    owns_company: Callable[[str], bool] = lambda _company_id: True
    global_chores: bool = True

    async def run_once(self) -> None:
        await retry_mirrors(self.mirror)
        if self.known_limits is not None:
            own, defaults = self.known_limits()
            await reassert_limits(self.registry, own, defaults, self.owns_company)
        if self.global_chores:
            await sweep_registry(self.registry, self.firestore)
        if self.storage is not None:
            await reconcile_storage(self.storage, self.owns_company)
        await self.delete_expired()
        removed = await self.tenants.remove_idle(self.busy_namespaces)
        if self.clock.due(self.repair_interval_s):
            await self.tenants.repair(skip=removed)


async def retry_mirrors(mirror: Mirror) -> None:
    pending = await mirror.retry_pending()
    if pending:
        log.warning("registry_mirror_pending", tasks=pending)


async def reassert_limits(
    registry: Registry,
    own: Mapping[str, Quotas],
    defaults: Quotas,
    owns_company: Callable[[str], bool] = lambda _company_id: True,
) -> int:
    """Write every company's limits again: the enforced keys (no TTL) and the contract's
    ``registry:company:{id}.quotas`` (24 h TTL, so it is renewed here) for each CompanyQuota, the
    configured defaults for every other company with a document. Nothing is deleted here (a
    deleted CompanyQuota drops its key in its handler): operators with different
    ``REGTASK_TASK_NAMESPACES`` may share one Redis. Returns the documents written; Redis down:
    logged, the next round tries again."""
    written = 0
    try:
        await registry.set_default_quotas(defaults)
        for company_id, quotas in own.items():
            await registry.set_company_quotas(company_id, quotas)
            written += 1
        held = set(own) | set(await registry.company_limit_ids())
        for company_id in await registry.company_ids():
            if company_id in held or not owns_company(company_id):
                continue  # its CompanyQuota's (maybe another operator's): not ours to reset
            try:
                doc = await registry.get_company(company_id)
            except DocumentError:
                continue
            # The copy holds the contract's fields only (Quotas.OURS stay out of it).
            shown = doc.quotas.model_dump(exclude=Quotas.OURS) if doc is not None else None
            if shown is not None and shown != defaults.model_dump(exclude=Quotas.OURS):
                await registry.show_company_quotas(company_id, defaults)
                written += 1
    except RedisError as exc:
        log.warning("company_limits_reassert_skipped", error=str(exc))
        return written
    log.info("company_limits_reasserted", companies=written)
    return written


async def reconcile_storage(
    storage: StorageAccounting, owns_company: Callable[[str], bool] = lambda _company_id: True
) -> None:
    """Every company's storage counter set to what it still holds (expired blobs and task
    documents dropped): a release lost to a crash cannot keep a company full for ever."""
    try:
        for company_id in await storage.companies():
            if not owns_company(company_id):
                continue  # another shard's
            used = await storage.reconcile(company_id)
            log.debug("storage_reconciled", company_id=company_id, used_bytes=used)
    except RedisError as exc:
        log.warning("storage_reconcile_skipped", error=str(exc))


async def sweep_registry(registry: Registry, firestore: FirestoreWriter | None) -> None:
    try:
        await registry.cleanup_expired_entries()
        swept = await registry.sweep_heartbeats()
    except RedisError as exc:
        log.warning("registry_maintenance_skipped", error=str(exc))
        return
    if firestore is None:
        return
    for user_id in swept:
        # The swept document itself: the registry's fallback read would answer the legacy key
        # (always "online") when UNIFIED_REGISTRY_ENABLED is off.
        try:
            doc = await registry.store.read(keys.unified_user(user_id), UnifiedUserDoc)
        except (RedisError, DocumentError) as exc:
            log.warning("presence_mirror_skipped", user_id=user_id, error=str(exc))
            continue
        if doc is None:
            continue
        firestore.write_presence(
            user_id,
            status=doc.user_info.status.value,
            heartbeat_at=doc.heartbeat.last_heartbeat,
            ttl_seconds=doc.heartbeat.ttl_seconds,
            authorized_companies_ids=list(doc.companies.authorized_companies_ids),
        )
