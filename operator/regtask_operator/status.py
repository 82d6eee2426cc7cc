"""What a task shows: its CR status, its Events, and its end.

The bodies are built by pure functions, one per situation (:func:`running_status`,
:func:`waiting_status`, :func:`progress_status`, :func:`finished_status`,
:func:`invalid_spec_status`), and written by one guarded function (:meth:`StatusWriter.write`).
:meth:`StatusWriter.finish` and :meth:`StatusWriter.cancel` are where a task becomes terminal,
through the tracker's one guarded transition (:meth:`TaskTracker.transition`); a final write
the API server refuses for now is retried until it lands (:meth:`StatusWriter.write_final`).

Hazard: the operator is the only writer of a task's status besides Kopf's deletion bookkeeping.
Writes of one task are serialised (its ``status_lock``), and once the task has ended in memory
(``finish`` sets the phase before it writes) only the final write goes through: a ``Running`` or
a progress write still waiting for a connection under a burst can never land after
``Succeeded`` and leave the task looking alive.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from regtask import naming
from regtask.crmodels import (
    API_GROUP,
    API_VERSION,
    TASK_KIND,
    TERMINAL_PHASES,
    ConditionStatus,
    Phase,
)
from regtask.documents import Quotas
from regtask.timeutil import now_iso
from regtask_operator import jobs, metrics
from regtask_operator.admission import TaskKey, Waiting, WaitReason
from regtask_operator.kube import Kube, KubeError, task_path
from regtask_operator.mirror import Mirror
from regtask_operator.tasks import TaskTracker, TrackedTask

log = structlog.get_logger(__name__)


# ------------------------------------------------------------------ the bodies (pure)


def condition(kind: str, status: ConditionStatus, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status.value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_iso(),
    }


def running_status(namespace: str, job_name: str) -> dict[str, Any]:
    """Admitted: its Job runs in the tenant namespace."""
    return {
        "phase": Phase.RUNNING.value,
        "namespace": namespace,
        "jobName": job_name,
        "admittedAt": now_iso(),
        "queuePosition": None,
        "retryAfter": None,
        "reason": "Admitted",
        "message": f"running in namespace {namespace}",
        "conditions": [
            condition(
                "Admitted",
                ConditionStatus.TRUE,
                "QuotaAvailable",
                "within the company's quotas",
            ),
        ],
    }


def waiting_status(waiting: Waiting, quotas: Quotas) -> dict[str, Any]:
    """Waiting for room: its position in the company's queue and the quota that holds it."""
    if waiting.retry_after_s:
        message = (
            f"company LLM quota of {quotas.max_llm_requests_per_hour}/hour reached; "
            f"position {waiting.position} in the company queue"
        )
        retry_after: str | None = datetime.fromtimestamp(
            time.time() + waiting.retry_after_s, UTC
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif waiting.reason is WaitReason.COMPANY_CONCURRENCY:
        message = (
            f"company runs {quotas.max_tasks_per_company} tasks (its limit); the next free "
            f"slot goes to the user with the fewest running; position {waiting.position} in "
            "the company queue"
        )
        retry_after = None
    else:
        message = (
            f"user has {quotas.max_tasks_per_user} running tasks (the company's "
            f"limit); position {waiting.position} in the company queue"
        )
        retry_after = None
    return {
        "phase": Phase.WAITING.value,
        "queuePosition": waiting.position,
        "retryAfter": retry_after,
        "reason": waiting.reason.value,
        "message": message,
        "conditions": [condition("Admitted", ConditionStatus.FALSE, waiting.reason.value, message)],
    }


def finished_status(
    phase: Phase,
    reason: str,
    message: str,
    attempts: int | None = None,
    start_time: str | None = None,
    result: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ended (Succeeded, Failed or Cancelled), with the small result when there is one and the
    Job's last summary (:func:`jobs.job_summary`) when it ended as its Job did."""
    status: dict[str, Any] = {
        "phase": phase.value,
        "reason": reason,
        "message": message,
        "completionTime": now_iso(),
        "queuePosition": None,
        "conditions": [condition("Finished", ConditionStatus.TRUE, reason, message or phase.value)],
    }
    if phase is Phase.SUCCEEDED:
        status["progress"] = 100
    if attempts is not None:
        status["attempts"] = attempts
    if start_time:
        status["startTime"] = start_time
    if result is not None:
        status["result"] = result
    if job is not None:
        status["job"] = job
    return status


def progress_status(progress: int, current_step: str) -> dict[str, Any]:
    """A running task's progress, as its runner reported it."""
    return {"progress": progress, "currentStep": current_step}


def invalid_spec_status(error: str) -> dict[str, Any]:
    """A spec the CRD schema let through but the model refuses."""
    return {"phase": Phase.FAILED.value, "reason": "InvalidSpec", "message": error[:1000]}


# ------------------------------------------------------------------ the writer


@dataclass
class StatusWriter:
    kube: Kube
    tracker: TaskTracker
    mirror: Mirror
    _event_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Final status writes the API server has not taken yet, retried by the status-sync loop.
    pending_final: dict[TaskKey, _PendingWrite] = field(default_factory=dict)

    async def write(self, task: TrackedTask, status: dict[str, Any]) -> bool:
        """Merge-patch the task's status; False when the task is gone or the write is stale
        (see the module's hazard)."""
        async with task.status_lock:
            phase = status.get("phase")
            if task.phase in TERMINAL_PHASES and (phase is None or phase != task.phase.value):
                return False
            body = await self.kube.patch_merge(
                task_path(task.key.namespace, task.key.name, status=True), {"status": status}
            )
        return body is not None

    async def refuse_invalid(self, key: TaskKey, error: str) -> None:
        """A spec the CRD schema let through but the model refuses: Failed, with the reason."""
        await self.kube.patch_merge(
            task_path(key.namespace, key.name, status=True),
            {"status": invalid_spec_status(error)},
        )

    def emit(self, task: TrackedTask, kind: str, reason: str, message: str) -> None:
        """Record a decision as a Kubernetes Event on the task; never blocks nor fails a caller."""
        involved = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": TASK_KIND,
            "name": task.key.name,
            "namespace": task.key.namespace,
            "uid": task.uid,
        }

        async def post() -> None:
            try:
                await self.kube.post_event(involved, kind, reason, message)
            except Exception as exc:  # noqa: BLE001 - an Event is informative only; logged
                log.warning("event_post_failed", task=str(task.key), reason=reason, error=str(exc))

        posting = asyncio.create_task(post())
        self._event_tasks.add(posting)
        posting.add_done_callback(self._event_tasks.discard)

    # ------------------------------------------------------------------ the end

    async def finish(
        self,
        task: TrackedTask,
        phase: Phase,
        reason: str,
        message: str,
        attempts: int | None = None,
        start_time: str | None = None,
        job: dict[str, Any] | None = None,
    ) -> None:
        """End the task: decided in memory first (its slot freed, every later decision about
        it refused: :meth:`TaskTracker.transition`), then recorded everywhere (status, mirror,
        metrics, Event). Idempotent."""
        if not self.tracker.transition(task, phase):
            return
        await self._record_end(task, phase, reason, message, attempts, start_time, job)

    async def finish_as_job(
        self, task: TrackedTask, outcome: jobs.JobOutcome, job: dict[str, Any] | None = None
    ) -> None:
        """The task ends as its Job did (``outcome.phase`` set: Succeeded or Failed); ``job``:
        the Job's summary, shown in the same final write."""
        assert outcome.phase is not None
        await self.finish(
            task,
            outcome.phase,
            outcome.reason,
            outcome.message,
            attempts=outcome.attempts,
            start_time=outcome.start_time,
            job=job,
        )

    async def cancel(self, task: TrackedTask, reason: str, message: str) -> None:
        """End as Cancelled, then stop its Job. A running task keeps its slot until its Job is
        gone (deleted in the foreground: the Job stays until its pods have terminated, then its
        DELETED event or the next reconcile frees the slot). A Job the API refuses to delete now
        is deleted by the next reconcile, which deletes every live Job of a finished task."""
        if not self.tracker.transition(task, Phase.CANCELLED, hold_slot=True):
            return
        if await self.delete_job(task) is None:
            self.tracker.drained(task.key)  # no Job (not launched yet): nothing to wait for
        await self._record_end(task, Phase.CANCELLED, reason, message, None, None)

    async def delete_job(self, task: TrackedTask) -> bool | None:
        """Delete the task's Job and its pods (foreground). True: deleting; None: there was no
        Job; False: the API refused (logged; the reconcile loop tries again)."""
        try:
            deleted = await self.kube.delete(
                "batch/v1",
                "Job",
                task.tenant_namespace,
                naming.job_name(task.task_id),
                propagation="Foreground",
            )
        except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("job_delete_failed", task=str(task.key), error=str(exc))
            return False
        return True if deleted else None

    async def _record_end(
        self,
        task: TrackedTask,
        phase: Phase,
        reason: str,
        message: str,
        attempts: int | None,
        start_time: str | None,
        job: dict[str, Any] | None = None,
    ) -> None:
        result: dict[str, Any] | None = None
        if phase is Phase.SUCCEEDED:
            task.progress = 100
            try:
                stored = await self.mirror.registry.get_task(task.task_id)
                result = stored.result if stored else None
            except Exception as exc:  # noqa: BLE001 - the result is a bonus in the CR
                log.warning("task_result_unavailable", task_id=task.task_id, error=str(exc))
        await self.write_final(
            task, finished_status(phase, reason, message, attempts, start_time, result, job)
        )
        await self.mirror.publish(
            task.snapshot(phase, reason=reason, message=message, result=result)
        )
        metrics.TASKS_FINISHED.labels(task.task_type.value, task.company_id, phase.value).inc()
        if task.admitted_at is not None:
            metrics.JOB_DURATION.labels(task.task_type.value, phase.value).observe(
                time.time() - task.admitted_at
            )
        self.emit(
            task,
            "Normal" if phase is Phase.SUCCEEDED else "Warning",
            reason or phase.value,
            message or f"task {phase.value.lower()}",
        )
        self.tracker.kick()

    # ------------------------------------------------------------------ final writes

    async def write_final(self, task: TrackedTask, status: dict[str, Any]) -> None:
        """The task's end in its CR status. A refusal or no answer from the API server (429,
        5xx, timeout) is not the end of it: the write is kept and retried with backoff
        (:meth:`retry_final_writes`, from the status-sync loop) until the API server has the
        outcome or the task is gone."""
        try:
            await self.write(task, status)
        except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
            pending = _PendingWrite(task, status, attempts=1)
            pending.next_at = time.monotonic() + pending.backoff_s
            self.pending_final[task.key] = pending
            log.warning(
                "final_status_write_failed", task=str(task.key), error=str(exc), will_retry=True
            )
        else:
            self.pending_final.pop(task.key, None)

    async def retry_final_writes(self) -> int:
        """Retry the final status writes still waiting; returns how many landed."""
        landed = 0
        now = time.monotonic()
        for key, pending in list(self.pending_final.items()):
            if pending.next_at > now:
                continue
            try:
                await self.write(pending.task, pending.status)
            except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
                pending.attempts += 1
                pending.next_at = time.monotonic() + pending.backoff_s
                log.warning(
                    "final_status_write_failed",
                    task=str(key),
                    error=str(exc),
                    attempts=pending.attempts,
                )
                continue
            self.pending_final.pop(key, None)
            landed += 1
        return landed


@dataclass
class _PendingWrite:
    """A task's final status the API server has not taken yet."""

    task: TrackedTask
    status: dict[str, Any]
    attempts: int
    next_at: float = 0.0

    @property
    def backoff_s(self) -> float:
        """1, 2, 4 ... 60 s between attempts."""
        return float(min(60, 2 ** (self.attempts - 1)))
