"""Launching admitted tasks: tenant namespace, Job, ``Running``, beside the decision step.

The scheduler's step decides and hands each admitted task here; it does not wait for the
launch. Launches run at most ``REGTASK_LAUNCH_CONCURRENCY`` at once, so a tenant whose API calls
are slow (a namespace being built, a throttled Job create) delays its own tasks, not the step
nor the other tenants' launches. A failed launch waits its own back-off
(``REGTASK_LAUNCH_RETRY_S``, doubled per consecutive failure of the task, at most
``REGTASK_LAUNCH_RETRY_MAX_S``) outside the concurrency gate, then goes back to the queue.

Hazard: until its launch ends, an admitted task is in the running set and in
``tracker.launching``: a reconcile that lists Jobs meanwhile must count its slot, its user's
slot stays held during a back-off (only that user's), and a cancel may land at any await (the
phase is checked after each; a Job created for a task that ended meanwhile is deleted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from regtask.crmodels import TERMINAL_PHASES, Phase
from regtask.timeutil import iso_in, now_iso, parse_iso
from regtask_operator import jobs, metrics
from regtask_operator.admission import Candidate, TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, KubeError, object_path
from regtask_operator.mirror import Mirror
from regtask_operator.status import StatusWriter, running_status
from regtask_operator.tasks import TaskTracker, TrackedTask
from regtask_operator.tenants import Tenants

log = structlog.get_logger(__name__)


class StaleJobError(RuntimeError):
    """The derived Job name is taken by a Job of an earlier task with the same taskId."""


class Launcher:
    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        tracker: TaskTracker,
        status: StatusWriter,
        mirror: Mirror,
        tenants: Tenants,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.tracker = tracker
        self.status = status
        self.mirror = mirror
        self.tenants = tenants
        self._gate = asyncio.Semaphore(settings.launch_concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        # consecutive failed launches per task (its back-off); dropped on success or end
        self._failures: dict[TaskKey, int] = {}

    # ------------------------------------------------------------------ starting work

    def start(self, candidate: Candidate) -> None:
        """Launch an admitted task in the background (the caller marked it launching)."""
        self.beside(self._launch_guarded(candidate), f"launch {candidate.key}")

    def beside(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run an apply step of a decision (a launch, a refusal) in the background, tracked
        so that :meth:`settle` and :meth:`cancel` reach it."""
        running = asyncio.create_task(work, name=name)
        self._in_flight.add(running)
        running.add_done_callback(self._in_flight.discard)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def settle(self) -> None:
        """Return once every piece of work started so far has ended (tests, shutdown)."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def cancel(self) -> None:
        """Stop the work in flight (shutdown). A Job already created is adopted by the next
        active replica (derived name, this task's UID in its annotations)."""
        for running in list(self._in_flight):
            running.cancel()
        await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    # ------------------------------------------------------------------ one launch

    async def _launch_guarded(self, candidate: Candidate) -> None:
        key = candidate.key
        task = self.tracker.tasks.get(key)
        try:
            if task is None:  # forgotten (deleted) between the decision and now
                await self.tracker.release(key)
                return
            try:
                async with self._gate:
                    await self.launch(task)
            except Exception as exc:  # noqa: BLE001 - any failure: back off, queue again
                await self._failed(task, exc)
            else:
                self._failures.pop(key, None)
        finally:
            self.tracker.launching.discard(key)

    async def _failed(self, task: TrackedTask, exc: Exception) -> None:
        """Log and show it, wait this task's back-off (no other task waits), queue it again
        (unless it was cancelled meanwhile)."""
        key = task.key
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        log.error("task_launch_failed", task=str(key), failures=failures, exc_info=exc)
        if isinstance(exc, KubeError) and exc.status == 404:
            self.tenants.forget(task.tenant_namespace)  # removed behind our back: rebuild
        self.status.emit(task, "Warning", "LaunchFailed", str(exc)[:500])
        await asyncio.sleep(self.retry_delay_s(failures))
        await self.tracker.requeue(task)
        if task.phase in TERMINAL_PHASES:
            self._failures.pop(key, None)
        self.tracker.kick()

    def retry_delay_s(self, failures: int) -> float:
        settings = self.settings
        return float(
            min(settings.launch_retry_s * 2 ** min(failures - 1, 30), settings.launch_retry_max_s)
        )

    async def launch(self, task: TrackedTask) -> None:
        """Tenant namespace, Job, ``Running``. A cancel may land at any await of this: the
        task's phase is checked after each, and a Job created for a task that ended meanwhile
        is deleted at once (the reconcile loop deletes it otherwise)."""
        if task.phase in TERMINAL_PHASES:
            return
        spec = task.spec
        namespace = await self.tenants.ensure(spec.user_id, spec.company_id)
        if task.phase in TERMINAL_PHASES:
            return
        metrics.ADMISSION_WAIT.labels(spec.company_id).observe(
            max(0.0, time.time() - parse_iso(task.created).timestamp())
        )
        task.admitted_at = time.time()
        job = jobs.build_job(spec, task.key.name, task.key.namespace, task.uid, self.settings)
        created = await self.kube.create(job)
        task.launched_mono = task.progress_patched_at = time.monotonic()
        if task.phase in TERMINAL_PHASES:
            await self.status.delete_job(task)  # cancelled while its Job was being created
            return
        if not created:
            existing = await self.kube.get(
                object_path("batch/v1", "Job", namespace, job["metadata"]["name"])
            )
            if existing is not None and not jobs.belongs_to(existing, task.uid):
                # An earlier task with the same taskId left its Job: never inherit its outcome.
                await self.status.delete_job(task)
                raise StaleJobError(
                    f"Job {job['metadata']['name']} belongs to an earlier task with this "
                    "taskId; deleted, the launch is retried"
                )
            # Launched by an earlier life of the operator: follow that Job, whatever its state.
            outcome = jobs.read_job_status((existing or {}).get("status"))
            if outcome.phase is not None:
                await self.status.finish_as_job(task, outcome)
                return
        if not self.tracker.transition(task, Phase.RUNNING):
            await self.status.delete_job(task)  # ended in the meantime
            return
        await self.status.write(task, running_status(namespace, job["metadata"]["name"]))
        median = self.tracker.runs.medians().get(task.task_type.value)
        await self.mirror.publish(
            task.snapshot(
                Phase.RUNNING,
                current_step="starting",
                estimated_completion=iso_in(time.time(), median),
            )
        )
        self.status.emit(
            task,
            "Normal",
            "Admitted",
            f"Job {job['metadata']['name']} {'created' if created else 'already existed'}"
            f" in {namespace}",
        )
        log.info(
            "task_started",
            task_id=spec.task_id,
            task_type=spec.task_type.value,
            user_id=spec.user_id,
            company_id=spec.company_id,
            isolation_namespace=namespace,
            timestamp=now_iso(),
        )
