"""The unified registry (async facade used by the operator and the RPC shim).

Writes go through :mod:`regtask.registry_ops` as atomic single-key Lua updates; the
``UNIFIED_REGISTRY_ENABLED`` switch decides whether the unified user/company documents are
written beside the legacy keys. Task documents (``registry:task:*``) are the task platform's own
status store and are always written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from regtask import keys, registry_ops
from regtask.docstore import AsyncDocStore, DocResult, DocumentError, DocumentMissing, DocUpdate
from regtask.documents import (
    CompanyDoc,
    ConversationDoc,
    LegacyUserDoc,
    Quotas,
    RegistryStatus,
    TaskDoc,
    TaskStep,
    UnifiedUserDoc,
    UserInfo,
    UserPresence,
)
from regtask.settings import Settings, get_settings
from regtask.timeutil import parse_iso, utc_now

log = structlog.get_logger(__name__)


class SessionTaken(Exception):
    """A session id registered by another user (it is theirs until unregistered or expired)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


@dataclass
class CleanupReport:
    """What one maintenance pass removed, by document family."""

    company_tasks_pruned: int = 0
    company_users_pruned: int = 0
    user_tasks_pruned: int = 0
    malformed_keys: list[str] = field(default_factory=list)


class Registry:
    def __init__(self, client: aioredis.Redis, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.client = client
        self.store = AsyncDocStore(client)

    @property
    def unified(self) -> bool:
        return self.settings.unified_registry_enabled

    async def apply(self, updates: Iterable[DocUpdate]) -> list[DocResult]:
        return [await self.store.apply(update) for update in updates]

    # -------------------------------------------------------------- sessions

    async def register_user(
        self,
        user_id: str,
        session_id: str,
        backend_route: str,
        company_id: str | None = None,
        authorized_companies: list[str] | None = None,
        company_roles: dict[str, str] | None = None,
    ) -> None:
        claimed = await self.store.apply(registry_ops.session_index(session_id, user_id))
        if not claimed.applied:
            log.warning("session_claim_refused", user_id=user_id, session_id=session_id)
            raise SessionTaken(session_id)
        await self.store.apply(
            registry_ops.legacy_register_user(user_id, session_id, backend_route)
        )
        if self.unified:
            await self.apply(
                registry_ops.unified_register_user(
                    user_id,
                    session_id,
                    backend_route,
                    company_id,
                    authorized_companies,
                    company_roles,
                )
            )
        log.info("user_registered", user_id=user_id, session_id=session_id, company_id=company_id)

    async def session_user(self, session_id: str) -> str | None:
        index = await self.client.hget(keys.session(session_id), keys.DATA_FIELD)
        if index is None:
            return None
        doc = _json_object(index)
        user_id = doc.get("user_id")
        return user_id if isinstance(user_id, str) else None

    async def unregister_session(self, session_id: str) -> bool:
        """Forget a session; False when it is unknown (already gone or never registered)."""
        user_id = await self.session_user(session_id)
        if user_id is None:
            return False
        found = await self._apply_tolerant(
            registry_ops.legacy_unregister_session(user_id, session_id)
        )
        await self._apply_tolerant(registry_ops.drop_session_index(session_id, user_id))
        if self.unified:
            current = await self._unified_doc_or_none(user_id)
            company_id = current.companies.current_company_id if current else None
            for update in registry_ops.unified_unregister_session(user_id, session_id, company_id):
                await self._apply_tolerant(update)
        log.info("session_unregistered", user_id=user_id, session_id=session_id)
        return found

    async def heartbeat(self, user_id: str) -> bool:
        if not self.unified:
            return False
        return await self._apply_tolerant(registry_ops.unified_heartbeat(user_id))

    # -------------------------------------------------------------- chroma collections

    async def register_collection(
        self, user_id: str, collection_name: str, session_id: str
    ) -> None:
        await self.store.apply(
            registry_ops.legacy_register_collection(user_id, collection_name, session_id)
        )
        if self.unified:
            current = await self._unified_doc_or_none(user_id)
            company_id = current.companies.current_company_id if current else None
            await self.apply(
                registry_ops.unified_register_collection(user_id, collection_name, company_id)
            )

    async def heartbeat_collection(self, user_id: str, collection_name: str) -> bool:
        """Refresh a collection's heartbeat; False when it is not (or no longer) registered."""
        alive = await self._apply_tolerant(
            registry_ops.legacy_heartbeat_collection(user_id, collection_name)
        )
        if alive and self.unified:
            await self.store.apply(registry_ops.unified_heartbeat_collection(user_id))
        return alive

    # -------------------------------------------------------------- tasks

    async def register_task(self, doc: TaskDoc) -> None:
        await self.apply(registry_ops.register_task(doc, self.unified))

    async def update_task_progress(
        self,
        task_id: str,
        user_id: str,
        status: RegistryStatus,
        progress: int,
        current_step: str,
        max_duration_s: int,
        data: dict[str, Any] | None = None,
        estimated_completion: str | None = None,
        queue_position: int | None = None,
        estimated_start: str | None = None,
        record_step: bool = False,
    ) -> bool:
        """True when applied; False when the task had already finished (a late update).
        ``queue_position`` (and ``estimated_start``) only for a waiting task: an update
        without them removes both. ``record_step``: the update also joins the task's step
        history (:meth:`get_task_steps`), in the same atomic call."""
        return await self.store.progress(
            registry_ops.task_progress(
                task_id,
                user_id,
                status,
                progress,
                current_step,
                max_duration_s,
                data,
                estimated_completion,
                queue_position,
                estimated_start,
                record_step,
            )
        )

    async def finish_task(
        self,
        task_id: str,
        user_id: str,
        company_id: str,
        status: RegistryStatus,
        max_duration_s: int,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """True when this call recorded the end; False when it was already recorded."""
        task_update, *bookkeeping = registry_ops.finish_task(
            task_id,
            user_id,
            company_id,
            status,
            max_duration_s,
            self.unified,
            self.settings.task_history_limit,
            result,
            error,
        )
        recorded = await self._apply_tolerant(task_update)
        await self.apply(bookkeeping)
        return recorded

    async def get_task(self, task_id: str) -> TaskDoc | None:
        return await self.store.read(keys.task(task_id), TaskDoc)

    async def get_task_steps(self, task_id: str) -> list[TaskStep]:
        """The task's step history, oldest first: the last ``keys.TASK_STEP_HISTORY_CAP``
        recorded, read in one HMGET. An unreadable entry is logged and skipped."""
        cap = keys.TASK_STEP_HISTORY_CAP
        fields = [keys.TASK_STEP_COUNT_FIELD, *(keys.task_step_field(i) for i in range(cap))]
        raw = await self.client.hmget(keys.task(task_id), fields)
        count = int(raw[0] or 0)
        steps: list[TaskStep] = []
        for sequence in range(max(0, count - cap), count):
            entry = raw[1 + sequence % cap]
            if entry is None:
                continue
            try:
                steps.append(TaskStep.model_validate_json(entry))
            except ValidationError:
                log.warning("task_step_unreadable", task_id=task_id, sequence=sequence)
        return steps

    async def get_tasks(self, task_ids: list[str]) -> list[TaskDoc | None]:
        """Many tasks' documents in one round trip, in the order asked."""
        return await self.store.read_many([keys.task(t) for t in task_ids], TaskDoc)

    # -------------------------------------------------------------- companies, conversations

    async def set_company_quotas(
        self, company_id: str, quotas: Quotas, company_name: str | None = None
    ) -> None:
        """A CompanyQuota's limits: the enforced copy (no TTL), then the contract's copy."""
        await self.client.set(keys.company_limits(company_id), quotas.model_dump_json())
        await self.store.apply(registry_ops.company_quotas(company_id, quotas, company_name))

    async def set_default_quotas(self, quotas: Quotas) -> None:
        """The operator's configured defaults: the limits of every company without a quota."""
        await self.client.set(keys.DEFAULT_LIMITS_KEY, quotas.model_dump_json())

    async def drop_company_quotas(self, company_id: str, defaults: Quotas) -> None:
        """Its CompanyQuota is gone: the company falls back to the configured defaults (the
        enforced key removed, the contract's copy showing the defaults)."""
        await self.client.delete(keys.company_limits(company_id))
        await self.show_company_quotas(company_id, defaults)

    async def show_company_quotas(self, company_id: str, quotas: Quotas) -> None:
        """The contract's copy only (``registry:company:{id}.quotas``, what the web app reads)."""
        await self.store.apply(registry_ops.company_quotas(company_id, quotas))

    async def effective_quotas(self, company_id: str) -> Quotas:
        """The limits to enforce: the company's CompanyQuota, else the operator's configured
        defaults, else (no operator has run yet) the contract's defaults. One round trip.
        Never the contract's ``registry:company`` copy, which expires after 24 h."""
        own, default = await self.client.mget(
            keys.company_limits(company_id), keys.DEFAULT_LIMITS_KEY
        )
        for raw in (own, default):
            if raw is None:
                continue
            try:
                return Quotas.model_validate_json(raw)
            except ValueError:
                log.error("company_limits_malformed", company_id=company_id)
        return Quotas()

    async def company_limit_ids(self) -> list[str]:
        """The companies that have an enforced limits key (maintenance drops stale ones)."""
        found: list[str] = []
        async for key in self.client.scan_iter(match=f"{keys.COMPANY_LIMITS_PREFIX}*", count=500):
            found.append(_text(key)[len(keys.COMPANY_LIMITS_PREFIX) :])
        return found

    async def company_ids(self) -> list[str]:
        """The companies that have a contract document now."""
        found: list[str] = []
        async for key in self.client.scan_iter(match=f"{keys.COMPANY_PREFIX}*", count=500):
            found.append(_text(key)[len(keys.COMPANY_PREFIX) :])
        return found

    async def get_company(self, company_id: str) -> CompanyDoc | None:
        return await self.store.read(keys.company(company_id), CompanyDoc)

    async def get_company_active_users(self, company_id: str) -> list[str]:
        doc = await self.get_company(company_id)
        return sorted(doc.active_users) if doc else []

    async def store_conversation(self, doc: ConversationDoc) -> None:
        await self.apply(registry_ops.store_conversation(doc, self.unified))

    async def get_conversation(
        self, company_id: str, user_id: str, conversation_id: str
    ) -> ConversationDoc | None:
        key = keys.conversation(company_id, user_id, conversation_id)
        return await self.store.read(key, ConversationDoc)

    # -------------------------------------------------------------- reads with fallback

    async def get_user_registry(self, user_id: str) -> UnifiedUserDoc | None:
        """The unified document; the legacy keys answer when it is off, missing or unreadable."""
        if self.unified:
            try:
                doc = await self.store.read(keys.unified_user(user_id), UnifiedUserDoc)
            except (RedisError, DocumentError) as exc:
                log.warning("unified_read_fallback", user_id=user_id, error=str(exc))
                doc = None
            if doc is not None:
                return doc
        legacy = await self.store.read(keys.legacy_user(user_id), LegacyUserDoc)
        if legacy is None:
            return None
        return UnifiedUserDoc(
            user_info=UserInfo(
                user_id=legacy.user_id,
                session_id=legacy.session_id,
                backend_route=legacy.backend_route,
                last_seen_at=legacy.last_seen_at,
                status=UserPresence.ONLINE,
            )
        )

    async def get_legacy_user(self, user_id: str) -> LegacyUserDoc | None:
        return await self.store.read(keys.legacy_user(user_id), LegacyUserDoc)

    # -------------------------------------------------------------- maintenance

    async def cleanup_expired_entries(self) -> CleanupReport:
        """Drop ids whose own keys have expired from the lists that reference them."""
        report = CleanupReport()
        async for key in self.client.scan_iter(match=f"{keys.COMPANY_PREFIX}*", count=500):
            name = _text(key)
            try:
                company = await self.store.read(name, CompanyDoc)
            except DocumentError:
                report.malformed_keys.append(name)
                continue
            if company is None:
                continue
            stale_tasks = await self._missing(company.services.active_tasks, keys.task)
            stale_users = await self._missing(list(company.active_users), keys.unified_user)
            cutoff = utc_now() - timedelta(seconds=keys.UNIFIED_USER_TTL_S)
            stale_users += [
                uid
                for uid, member in company.active_users.items()
                if uid not in stale_users and parse_iso(member.last_activity) < cutoff
            ]
            ops: list[dict[str, Any]] = [
                *registry_ops.prune_list(name, ("services", "active_tasks"), stale_tasks).ops,
                *({"op": "del", "path": ["active_users", uid]} for uid in stale_users),
            ]
            if ops and await self._apply_tolerant(DocUpdate(key=name, ops=ops)):
                report.company_tasks_pruned += len(stale_tasks)
                report.company_users_pruned += len(stale_users)
        async for key in self.client.scan_iter(match=f"{keys.UNIFIED_USER_PREFIX}*", count=500):
            name = _text(key)
            try:
                user = await self.store.read(name, UnifiedUserDoc)
            except DocumentError:
                report.malformed_keys.append(name)
                continue
            if user is None:
                continue
            stale = await self._missing(user.services.tasks.active_tasks, keys.task)
            if stale and await self._apply_tolerant(
                registry_ops.prune_list(name, ("services", "tasks", "active_tasks"), stale)
            ):
                report.user_tasks_pruned += len(stale)
        log.info("registry_cleanup", **report.__dict__)
        return report

    async def sweep_heartbeats(self) -> list[str]:
        """Mark offline every online user whose heartbeat is older than its TTL; return them."""
        swept: list[str] = []
        now = utc_now()
        async for key in self.client.scan_iter(match=f"{keys.UNIFIED_USER_PREFIX}*", count=500):
            name = _text(key)
            try:
                user = await self.store.read(name, UnifiedUserDoc)
            except DocumentError:
                continue
            if user is None or user.user_info.status is not UserPresence.ONLINE:
                continue
            seen = user.heartbeat.last_heartbeat
            if now - parse_iso(seen) <= timedelta(seconds=user.heartbeat.ttl_seconds):
                continue
            update = registry_ops.mark_offline_if_stale(user.user_info.user_id, seen)
            if await self._apply_tolerant(update):
                swept.append(user.user_info.user_id)
        return swept

    # -------------------------------------------------------------- helpers

    async def _apply_tolerant(self, update: DocUpdate) -> bool:
        """Apply; a missing document or a failed guard is an expected 'no', not an error."""
        try:
            return (await self.store.apply(update)).applied
        except DocumentMissing:
            return False

    async def _unified_doc_or_none(self, user_id: str) -> UnifiedUserDoc | None:
        try:
            return await self.store.read(keys.unified_user(user_id), UnifiedUserDoc)
        except DocumentError:
            return None

    async def _missing(self, ids: list[str], key_of: Any) -> list[str]:
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for item in ids:
                pipe.exists(key_of(item))
            present = await pipe.execute()
        return [item for item, alive in zip(ids, present, strict=True) if not alive]


def _json_object(raw: bytes | str) -> dict[str, Any]:
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
