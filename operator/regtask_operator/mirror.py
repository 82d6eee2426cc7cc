"""The operator's mirror: what the web app reads, copied from the operator's truth.

Each task's state goes to the Redis registry (+ events) and Firestore; each company's limits to
the registry. ("Mirror" means this copy and nothing else in the code.)

The CR status is the source of truth. A mirror write that fails (Redis down) is kept as the
task's latest desired state and retried by the maintenance loop, so every mirror converges once
the service returns; the operator itself never blocks on it. What was kept is in memory only:
after a restart or a takeover the ends are compared again with the CR status (:meth:`resync`).
Firestore writes only enqueue (:class:`regtask.firestore_writer.FirestoreWriter` retries in its
own thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import RedisError

from regtask.crmodels import PHASE_TO_STATUS, TERMINAL_PHASES, Phase
from regtask.docstore import DocumentError, DocumentMissing
from regtask.documents import Quotas, TaskDoc, TaskInfo, TaskIsolation
from regtask.firestore_writer import FirestoreWriter
from regtask.registry import Registry
from regtask.timeutil import now_iso
from regtask_operator import metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TaskSnapshot:
    """Everything the mirror needs to know about a task at one moment."""

    task_id: str
    task_type: str
    user_id: str
    company_id: str
    namespace: str
    priority: str
    max_duration_s: int
    created_at: str
    phase: Phase
    progress: int = 0
    current_step: str = ""
    reason: str = ""
    message: str = ""
    queue_position: int | None = None
    # A waiting task's ETA (regtask.eta), ISO-8601; None when unknown.
    estimated_start: str | None = None
    estimated_completion: str | None = None
    result: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def task_doc(self) -> TaskDoc:
        return TaskDoc(
            task_info=TaskInfo(
                task_id=self.task_id,
                task_type=self.task_type,
                user_id=self.user_id,
                company_id=self.company_id,
                created_at=self.created_at,
            ),
            isolation=TaskIsolation(
                namespace=self.namespace, priority=self.priority, max_duration=self.max_duration_s
            ),
        )

    def firestore_fields(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "user_id": self.user_id,
            "company_id": self.company_id,
            "namespace": self.namespace,
            "phase": self.phase.value,
            "status": PHASE_TO_STATUS[self.phase].value,
            "progress": self.progress,
            "current_step": self.current_step or PHASE_TO_STATUS[self.phase].value,
            "reason": self.reason,
            "message": self.message,
            "queue_position": self.queue_position,
            "estimated_start": self.estimated_start,
            "estimated_completion": self.estimated_completion,
            "updated_at": now_iso(),
        }


class Mirror:
    def __init__(self, registry: Registry, firestore: FirestoreWriter | None) -> None:
        self.registry = registry
        self.firestore = firestore
        self._pending: dict[str, TaskSnapshot] = {}
        self.failures = 0

    async def publish(self, snapshot: TaskSnapshot) -> bool:
        """Mirror one state; False when Redis failed and the state was kept for a retry."""
        if self.firestore is not None:
            self.firestore.write_task(
                snapshot.task_id,
                snapshot.firestore_fields(),
                final=snapshot.phase in TERMINAL_PHASES,
            )
        try:
            await self._write_registry(snapshot)
        except (RedisError, OSError) as exc:
            self.failures += 1
            metrics.MIRROR_FAILURES.labels("redis").inc()
            self._keep(snapshot)
            log.warning("registry_mirror_failed", task_id=snapshot.task_id, error=str(exc))
            return False
        except (DocumentError, DocumentMissing) as exc:
            # A damaged document is reported and left alone; retrying would not help.
            self.failures += 1
            metrics.MIRROR_FAILURES.labels("redis").inc()
            log.error("registry_mirror_refused", task_id=snapshot.task_id, error=str(exc))
            return False
        self._pending.pop(snapshot.task_id, None)
        return True

    def _keep(self, snapshot: TaskSnapshot) -> None:
        previous = self._pending.get(snapshot.task_id)
        # Never let an older running state replace a terminal one waiting to be written.
        if (
            previous is not None
            and previous.phase in TERMINAL_PHASES
            and snapshot.phase not in TERMINAL_PHASES
        ):
            return
        self._pending[snapshot.task_id] = snapshot

    def pending(self) -> int:
        return len(self._pending)

    def firestore_stats(self) -> dict[str, int] | None:
        """The Firestore writer's counters; None when Firestore is off."""
        return self.firestore.stats() if self.firestore is not None else None

    async def publish_limits(
        self, company_id: str, quotas: Quotas, company_name: str | None
    ) -> bool:
        """A company's limits into ``registry:company:{id}.quotas``; False when Redis failed
        (the next event of its CompanyQuota, at the latest the next re-list, writes them)."""
        try:
            await self.registry.set_company_quotas(company_id, quotas, company_name)
        except RedisError as exc:
            log.warning("quota_mirror_failed", company_id=company_id, error=str(exc))
            return False
        return True

    async def resync(self, ended: list[TaskSnapshot], batch: int = 500) -> int:
        """Write the end of each finished task whose registry document does not show it: a
        failed write kept by an earlier life of the operator (or another replica) died with
        it. One pipelined read per ``batch`` tasks; returns how many were written again.
        Redis down: kept for :meth:`retry_pending`, as any failed write."""
        rewritten = 0
        for start in range(0, len(ended), batch):
            chunk = ended[start : start + batch]
            try:
                docs = await self.registry.get_tasks([s.task_id for s in chunk])
            except (RedisError, OSError) as exc:
                log.warning("registry_resync_failed", error=str(exc))
                for snapshot in chunk:
                    self._keep(snapshot)
                continue
            for snapshot, doc in zip(chunk, docs, strict=True):
                if doc is not None and doc.task_info.status is PHASE_TO_STATUS[snapshot.phase]:
                    continue
                await self.publish(snapshot)
                rewritten += 1
        if rewritten:
            log.warning("registry_resynced", tasks=rewritten)
        return rewritten

    async def retry_pending(self) -> int:
        """Write the kept states again; returns how many are still pending."""
        for snapshot in list(self._pending.values()):
            if not await self.publish(snapshot):
                break  # Redis still down: try again next round
        return len(self._pending)

    async def _write_registry(self, snapshot: TaskSnapshot) -> None:
        status = PHASE_TO_STATUS[snapshot.phase]
        await self.registry.register_task(snapshot.task_doc())
        if snapshot.phase in TERMINAL_PHASES:
            await self.registry.finish_task(
                snapshot.task_id,
                snapshot.user_id,
                snapshot.company_id,
                status,
                snapshot.max_duration_s,
                result=snapshot.result,
                error=snapshot.message or None if snapshot.phase is not Phase.SUCCEEDED else None,
            )
            return
        data = dict(snapshot.data)
        if snapshot.queue_position is not None:
            data["queue_position"] = snapshot.queue_position
            data["estimated_start"] = snapshot.estimated_start
            data["estimated_completion"] = snapshot.estimated_completion
        if snapshot.reason:
            data["reason"] = snapshot.reason
        await self.registry.update_task_progress(
            snapshot.task_id,
            snapshot.user_id,
            status,
            snapshot.progress,
            snapshot.current_step or status.value,
            snapshot.max_duration_s,
            data=data,
            estimated_completion=snapshot.estimated_completion,
            queue_position=snapshot.queue_position,
            estimated_start=snapshot.estimated_start,
        )
