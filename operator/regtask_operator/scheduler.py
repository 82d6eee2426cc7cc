"""The scheduler: one loop that decides who runs, launches them, and tells the others why they
wait. "Why is my task Waiting?" is answered here and in :mod:`regtask_operator.admission`.

A step, in order:

1. read the rolling LLM windows of the companies with queued LLM tasks (Redis; before the lock);
   the LLM tasks admitted in the last ``REGTASK_LLM_ADMISSION_GRACE_S`` of the window count on
   top of the counter (their runners have not made their first request yet);
2. decide, under the one lock, with :meth:`~regtask_operator.admission.AdmissionState.decide`:
   admitted tasks move to the running set and are marked launching in the same critical
   section, so a concurrent reconcile counts their slots before their Jobs exist;
3. hand the admitted to the :class:`~regtask_operator.launcher.Launcher` (tenant namespace,
   Job, ``Running``, beside the step, a bounded number at once) and the refused too: the step
   never waits for a launch, so a slow or failing tenant holds nobody else;
4. report the waiting tasks whose position or reason moved: the registry and the events get
   every change among the first :data:`EXACT_POSITIONS` and, further back, each crossing of a
   1-2-5 boundary (:func:`shown_position`), so an admission costs O(log W) Redis writes, not one
   per waiting task (draining a queue of W was O(W²)); the CR status follows at most every
   ``REGTASK_QUEUE_POSITION_REFRESH_S`` per task.

A failed launch waits its own back-off, then goes back to the queue (see the launcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from regtask.crmodels import TERMINAL_PHASES, Phase
from regtask.eta import Busy, Eta, Queued, schedule_company
from regtask.ratelimit import WINDOW_S
from regtask.timeutil import iso_in
from regtask_operator.admission import (
    Candidate,
    Decisions,
    RateVerdict,
    TaskKey,
    Waiting,
    WaitReason,
)
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube
from regtask_operator.launcher import Launcher
from regtask_operator.mirror import Mirror
from regtask_operator.status import StatusWriter, waiting_status
from regtask_operator.tasks import TaskTracker, TrackedTask
from regtask_operator.tenants import Tenants

log = structlog.get_logger(__name__)


# The positions published at every change; further back only the crossings of 1-2-5 boundaries.
EXACT_POSITIONS = 10


def shown_position(position: int) -> int:
    """What must change for a waiting task's position to be published again: the position
    itself among the first :data:`EXACT_POSITIONS`, beyond that the smallest boundary of the
    1-2-5 series (20, 50, 100, 200, ...) at or above it. An admission moves every waiting task
    by one but crosses at most one boundary per decade, so it republishes O(log W) tasks.
    The value published is the exact position at that moment: further back it may lag (only
    ever by less than the distance to the boundary below)."""
    if position <= EXACT_POSITIONS:
        return position
    decade = EXACT_POSITIONS
    while True:
        for step in (2, 5, 10):
            if position <= decade * step:
                return decade * step
        decade *= 10


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
    launcher: Launcher
    # company -> time.monotonic() when a waiting task's CR status write, held back by
    # REGTASK_QUEUE_POSITION_REFRESH_S, is due: the company is decided again then.
    _recheck_at: dict[str, float] = field(default_factory=dict)

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
            # Admitted lately and maybe not in the log yet (each task makes at least one
            # request): they take room too. The window rolls: it always began an hour ago.
            recent = tracker.recent_llm_admissions(company_id, max(now - WINDOW_S, now - grace))
            return RateVerdict(used + recent + pending < limit, reset_in)

        async with tracker.lock:
            # Only the companies whose tasks or limits changed (and those waiting on an LLM
            # window): a step's work does not grow with other companies' queues.
            due = tracker.state.take_to_decide() | self._rechecks_due()
            decisions = tracker.state.decide(tracker.company_limits, rate, due)
            # Marked in the same critical section: a reconcile that lists Jobs meanwhile must
            # count these slots as taken even though their Jobs do not exist yet.
            tracker.launching.update(c.key for c in decisions.admitted)
            for admitted in decisions.admitted:
                if admitted.uses_llm:
                    tracker.admitted_llm(admitted.company_id, now, admitted.key)
        # Applied beside the step (regtask_operator.launcher): a slow or failing tenant never
        # holds the step, nor the other tenants' launches.
        for candidate in decisions.admitted:
            self.launcher.start(candidate)
        for refused in decisions.refused:
            self.launcher.beside(
                self._refuse(refused.candidate, refused.message), f"refuse {refused.candidate.key}"
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
        (:func:`regtask.eta.schedule_company`: the users' slots, the company's cap shared by
        fair share, the median run time per type). A company with a cap is simulated whole
        (its users compete for its slots); without one, only these users (they do not)."""
        tracker = self.tracker
        now = time.time()
        medians: dict[str, float | None] = dict(tracker.runs.medians())
        caps = {company: tracker.max_tasks_per_company(company) for company, _ in users}

        def wanted(candidate: Candidate) -> bool:
            company = candidate.company_id
            return company in caps and (caps[company] is not None or _user(candidate) in users)

        queues: dict[str, list[Waiting]] = {}
        for entry in waiting:
            if wanted(entry.candidate):
                queues.setdefault(entry.candidate.company_id, []).append(entry)
        busy: dict[str, list[Busy]] = {}
        # The running tasks of these companies only: with 50,000 tasks known and 20,000 of
        # them running, a walk over all of them at each step was a quarter of the operator's
        # CPU (py-spy, bench-scale).
        running = (c for company in caps for c in tracker.state.running_in(company))
        for candidate in running:
            task = tracker.tasks.get(candidate.key)
            if task is not None and wanted(candidate):
                elapsed = now - task.admitted_at if task.admitted_at is not None else 0.0
                busy.setdefault(candidate.company_id, []).append(
                    Busy(task.task_type.value, elapsed, candidate.user_id)
                )
        etas: dict[TaskKey, Eta] = {}
        for company, entries in queues.items():
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
                        entry.candidate.user_id,
                        entry.rank,
                    )
                )
            limit = tracker.max_tasks_per_user(company)
            planned = schedule_company(queued, busy.get(company, []), medians, limit, caps[company])
            for entry, eta in zip(entries, planned, strict=True):
                etas[entry.candidate.key] = eta
        return etas

    def _wait_changed(self, waiting: Waiting) -> bool:
        task = self.tracker.tasks.get(waiting.candidate.key)
        if task is None:
            return False
        reason = waiting.reason.value
        return task.published_wait != (
            shown_position(waiting.position),
            reason,
        ) or task.reported_wait != (
            waiting.position,
            reason,
            waiting.retry_after_s // 60,
        )

    def _rechecks_due(self) -> set[str]:
        now = time.monotonic()
        due = {company for company, at in self._recheck_at.items() if at <= now}
        for company in due:
            del self._recheck_at[company]
        return due

    async def _llm_windows(self) -> dict[str, tuple[int, int]]:
        tracker = self.tracker
        companies = tracker.state.companies_with_queued_llm()
        windows: dict[str, tuple[int, int]] = {}
        for company_id in companies:
            try:
                windows[company_id] = await self.llm_window(company_id)
            except Exception as exc:  # noqa: BLE001 - Redis down: admit, the gateway still counts
                log.warning("llm_window_unavailable", company_id=company_id, error=str(exc))
        return windows

    # ------------------------------------------------------------------ refusing

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
            # most this often per task (the registry and the events: see _publish_waiting).
            due = task.reported_at + self.settings.queue_position_refresh_s
            company = task.company_id
            self._recheck_at[company] = min(self._recheck_at.get(company, due), due)
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
        """The registry and the events (Redis only), in real time: each change of
        :func:`shown_position` or of the reason, with the task's ETA computed at that moment."""
        marker = (shown_position(waiting.position), waiting.reason.value)
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
                estimated_start=iso_in(now, eta.start_in_s if eta else None),
                estimated_completion=iso_in(now, eta.done_in_s if eta else None),
            )
        )


def _user(candidate: Candidate) -> tuple[str, str]:
    return (candidate.company_id, candidate.user_id)
