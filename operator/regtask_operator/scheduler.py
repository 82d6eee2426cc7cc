"""The scheduler: one loop that decides who runs, launches them, and tells the others why they
wait. "Why is my task Waiting?" is answered here and in :mod:`regtask_operator.admission`.

A step, in order:

1. read the hourly LLM windows of the companies with queued LLM tasks (Redis; before the lock);
   the LLM tasks admitted in the last ``REGTASK_LLM_ADMISSION_GRACE_S`` of the window count on
   top of the counter (their runners have not made their first request yet);
2. decide, under the one lock, with :meth:`~regtask_operator.admission.AdmissionState.decide`:
   admitted tasks move to the running set and are marked launching in the same critical
   section, so a concurrent reconcile counts their slots before their Jobs exist;
3. launch the admitted (tenant namespace, Job, ``Running``) and refuse the refused, first:
   under a burst, hundreds of waiting reports would otherwise queue in front of the Job creations;
4. report the waiting tasks whose position or reason moved: the registry and the events get
   every change, the CR status at most every ``REGTASK_QUEUE_POSITION_REFRESH_S`` per task.

A failed launch puts the task back in the queue (and forgets its namespace when the API says it
is gone), so the next step tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from regtask.crmodels import TERMINAL_PHASES, Phase
from regtask.eta import Busy, Eta, Queued, schedule
from regtask.ratelimit import WINDOW_S
from regtask.tasktypes import TASK_TYPES
from regtask.timeutil import iso_z, now_iso, parse_iso
from regtask_operator import jobs, metrics
from regtask_operator.admission import (
    Candidate,
    Decisions,
    RateVerdict,
    TaskKey,
    Waiting,
    WaitReason,
)
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, KubeError, object_path
from regtask_operator.mirror import Mirror
from regtask_operator.status import StatusWriter, running_status, waiting_status
from regtask_operator.tasks import TaskTracker, TrackedTask
from regtask_operator.tenants import Tenants

log = structlog.get_logger(__name__)


class StaleJobError(RuntimeError):
    """The derived Job name is taken by a Job of an earlier task with the same taskId."""


# (company_id) -> (requests counted in the current hour window, seconds until it resets)
LlmWindow = Callable[[str], Awaitable[tuple[int, int]]]


@dataclass
class Scheduler:
    settings: OperatorSettings
    kube: Kube
    tracker: TaskTracker
    status: StatusWriter
    mirror: Mirror
    tenants: Tenants
    llm_window: LlmWindow

    async def run(self, stop: asyncio.Event, active: asyncio.Event) -> None:
        """The single decision loop: wakes on every kick, and at least every few seconds; steps
        only while this replica is the active one (``active``, see regtask_operator.peering)."""
        wake = self.tracker.wake
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=self.settings.status_sync_interval_s)
            wake.clear()
            if not active.is_set():
                continue
            try:
                await self.step()
            except Exception:
                log.exception("scheduler_step_failed")

    async def step(self) -> Decisions:
        tracker = self.tracker
        if not tracker.ready:
            return Decisions()  # limits and Jobs not listed yet (Controller.prime)
        windows = await self._llm_windows()

        now = time.time()
        grace = self.settings.llm_admission_grace_s

        def rate(company_id: str, pending: int) -> RateVerdict:
            used, reset_in = windows.get(company_id, (0, 0))
            limit = tracker.company_limits(company_id)[0].max_llm_requests_per_hour
            # Admitted in this window lately and maybe not in the counter yet (each task makes
            # at least one request): they take room too.
            window_start = now + reset_in - WINDOW_S
            recent = tracker.recent_llm_admissions(company_id, max(window_start, now - grace))
            return RateVerdict(used + recent + pending < limit, reset_in)

        async with tracker.lock:
            decisions = tracker.state.decide(tracker.company_limits, rate)
            # Marked in the same critical section: a reconcile that lists Jobs meanwhile must
            # count these slots as taken even though their Jobs do not exist yet.
            tracker.launching.update(c.key for c in decisions.admitted)
            for admitted in decisions.admitted:
                if admitted.uses_llm:
                    tracker.admitted_llm(admitted.company_id, now)
        # Launches first: under a burst, hundreds of waiting reports would otherwise queue in
        # front of the Job creations on the shared connection pool.
        await asyncio.gather(
            *(self._launch_guarded(c) for c in decisions.admitted),
            *(self._refuse(r.candidate, r.message) for r in decisions.refused),
        )
        # Most waiting tasks are where they were at the last step: only the moved ones cost a
        # coroutine (with 10,000 tasks waiting, a step would otherwise build 10,000 of them).
        moved = [w for w in decisions.waiting if self._wait_changed(w)]
        if moved:
            etas = self._etas(decisions.waiting, {_user(w.candidate) for w in moved})
            await asyncio.gather(
                *(self._report_waiting(w, etas.get(w.candidate.key)) for w in moved)
            )
        return decisions

    def _etas(self, waiting: list[Waiting], users: set[tuple[str, str]]) -> dict[TaskKey, Eta]:
        """When the waiting tasks of these (company, user) pairs should start and end
        (:func:`regtask.eta.schedule`: the user's slots, the median run time per type)."""
        tracker = self.tracker
        now = time.time()
        medians: dict[str, float | None] = dict(tracker.runs.medians())
        queues: dict[tuple[str, str], list[Waiting]] = {}
        for entry in waiting:
            if _user(entry.candidate) in users:
                queues.setdefault(_user(entry.candidate), []).append(entry)
        busy: dict[tuple[str, str], list[Busy]] = {}
        for candidate in tracker.state.running():
            task = tracker.tasks.get(candidate.key)
            if task is not None and _user(candidate) in users:
                elapsed = now - task.admitted_at if task.admitted_at is not None else 0.0
                busy.setdefault(_user(candidate), []).append(Busy(task.task_type.value, elapsed))
        etas: dict[TaskKey, Eta] = {}
        for pair, entries in queues.items():
            entries.sort(key=lambda w: w.position)
            queued = []
            for entry in entries:
                task = tracker.tasks.get(entry.candidate.key)
                task_type = task.task_type.value if task is not None else ""
                llm_wait = entry.reason is WaitReason.LLM_RATE
                queued.append(
                    Queued(
                        entry.candidate.task_id,
                        task_type,
                        entry.retry_after_s if llm_wait else None,
                    )
                )
            limit = tracker.max_tasks_per_user(pair[0])
            for entry, eta in zip(
                entries, schedule(queued, busy.get(pair, []), medians, limit), strict=True
            ):
                etas[entry.candidate.key] = eta
        return etas

    def _wait_changed(self, waiting: Waiting) -> bool:
        task = self.tracker.tasks.get(waiting.candidate.key)
        if task is None:
            return False
        reason = waiting.reason.value
        return task.published_wait != (waiting.position, reason) or task.reported_wait != (
            waiting.position,
            reason,
            waiting.retry_after_s // 60,
        )

    async def _llm_windows(self) -> dict[str, tuple[int, int]]:
        tracker = self.tracker
        companies = {
            t.company_id
            for t in tracker.tasks.values()
            if tracker.state.is_queued(t.key) and TASK_TYPES[t.task_type].uses_llm
        }
        windows: dict[str, tuple[int, int]] = {}
        for company_id in companies:
            try:
                windows[company_id] = await self.llm_window(company_id)
            except Exception as exc:  # noqa: BLE001 - Redis down: admit, the gateway still counts
                log.warning("llm_window_unavailable", company_id=company_id, error=str(exc))
        return windows

    # ------------------------------------------------------------------ launching

    async def _launch_guarded(self, candidate: Candidate) -> None:
        task = self.tracker.tasks.get(candidate.key)
        try:
            if task is None:  # forgotten (deleted) between the decision and now
                await self.tracker.release(candidate.key)
                return
            await self.launch(task)
        except Exception as exc:
            log.exception("task_launch_failed", task=str(candidate.key))
            if task is not None and isinstance(exc, KubeError) and exc.status == 404:
                self.tenants.forget(task.tenant_namespace)  # removed behind our back: rebuild
            if task is not None:
                await self.tracker.requeue(task)  # unless it was cancelled meanwhile
                self.status.emit(task, "Warning", "LaunchFailed", str(exc)[:500])
            await asyncio.sleep(1.0)
            self.tracker.kick()
        finally:
            self.tracker.launching.discard(candidate.key)

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
                estimated_completion=_iso_in(time.time(), median),
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

    async def _refuse(self, candidate: Candidate, message: str) -> None:
        task = self.tracker.tasks.get(candidate.key)
        if task is not None:
            self.status.emit(task, "Warning", "QuotaExceeded", message)
            await self.status.finish(task, Phase.FAILED, "QuotaExceeded", message)

    # ------------------------------------------------------------------ waiting

    async def _report_waiting(self, waiting: Waiting, eta: Eta | None = None) -> None:
        task = self.tracker.tasks.get(waiting.candidate.key)
        if task is None:
            return
        marker = (waiting.position, waiting.reason.value, waiting.retry_after_s // 60)
        if task.reported_wait == marker:
            return
        same_reason = task.reported_wait is not None and task.reported_wait[1] == marker[1]
        if (
            same_reason
            and time.monotonic() - task.reported_at < self.settings.queue_position_refresh_s
        ):
            # Every admission shifts every waiting task's position: the CR status follows at
            # most this often per task (the registry and the events get every change, below).
            await self._publish_waiting(task, waiting, eta)
            return
        if not self.tracker.transition(task, Phase.WAITING):
            return  # ended after the decision that found it waiting
        task.reported_wait = marker
        task.reported_at = time.monotonic()
        quotas, _ = self.tracker.company_limits(task.company_id)
        await self.status.write(task, waiting_status(waiting, quotas))
        await self._publish_waiting(task, waiting, eta)

    async def _publish_waiting(
        self, task: TrackedTask, waiting: Waiting, eta: Eta | None = None
    ) -> None:
        """The registry and the events: every change of position, real time (Redis only),
        with the task's ETA computed at that moment."""
        marker = (waiting.position, waiting.reason.value)
        if task.published_wait == marker or task.phase in TERMINAL_PHASES:
            return
        task.published_wait = marker
        now = time.time()
        await self.mirror.publish(
            task.snapshot(
                Phase.WAITING,
                queue_position=waiting.position,
                reason=waiting.reason.value,
                current_step="waiting_quota",
                estimated_start=_iso_in(now, eta.start_in_s if eta else None),
                estimated_completion=_iso_in(now, eta.done_in_s if eta else None),
            )
        )


def _user(candidate: Candidate) -> tuple[str, str]:
    return (candidate.company_id, candidate.user_id)


def _iso_in(now: float, seconds: float | None) -> str | None:
    """``now + seconds`` as ISO-8601 UTC, None when unknown."""
    if seconds is None:
        return None
    return iso_z(datetime.fromtimestamp(now + seconds, UTC))
