"""How long a waiting task will wait: the listed RegistryTasks put through the operator's own
model (:mod:`regtask.eta`: a user's slots, the company's cap shared by fair share, the median
run time of recent Succeeded tasks per type). Pure: no I/O.

The waiting tasks are shown in the operator's order (:mod:`regtask.fairshare`: the user with the
fewest running first, then priority, then age), recomputed from what is listed now: the
position in a task's CR status is refreshed only every few minutes.

The medians here come from the last N ``Succeeded`` tasks of each type in the control namespace
(``completionTime - admittedAt``, ``startTime`` when ``admittedAt`` is missing; all companies: a
type's run time depends on the work, not on who asked).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from regtask.crmodels import Phase, Priority, RegistryTaskStatus
from regtask.eta import Busy, Eta, Queued, schedule, schedule_company
from regtask.fairshare import Rank, fair_order, rank
from regtask.timeutil import parse_iso

DEFAULT_HISTORY = 20
_LAST = float("inf")
_NO_POSITION = 2**62


@dataclass(frozen=True)
class TaskRecord:
    """The fields of one RegistryTask that the quota view and the estimate need."""

    task_id: str
    task_type: str
    user_id: str
    company_id: str
    phase: str | None = None
    created: datetime | None = None
    queue_position: int | None = None
    reason: str | None = None
    progress: int | None = None
    current_step: str | None = None
    admitted_at: datetime | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    retry_after: datetime | None = None
    priority: Priority = Priority.NORMAL

    @property
    def began(self) -> datetime | None:
        """When the run began: admission (the slot was taken), else the Job's start."""
        return self.admitted_at or self.start_time

    def run_seconds(self) -> float | None:
        if self.completion_time is None or self.began is None:
            return None
        return max((self.completion_time - self.began).total_seconds(), 0.0)

    def rank(self) -> Rank:
        """Its place among its user's tasks (:func:`regtask.fairshare.rank`): priority, age,
        then the operator's last reported position (the arrival order it knows)."""
        created = self.created.timestamp() if self.created is not None else _LAST
        arrival = self.queue_position if self.queue_position is not None else _NO_POSITION
        return rank(self.priority, created, arrival)


def record_from_resource(obj: Mapping[str, Any]) -> TaskRecord | None:
    """A RegistryTask as returned by the API; None when it is not readable as one."""
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    ids = [spec.get(name) for name in ("taskId", "taskType", "userId", "companyId")]
    if not all(isinstance(value, str) and value for value in ids):
        return None
    task_id, task_type, user_id, company_id = (str(value) for value in ids)
    try:
        status = RegistryTaskStatus.model_validate(obj.get("status") or {})
        created_raw = meta.get("creationTimestamp")
        created = parse_iso(created_raw) if isinstance(created_raw, str) else None
        priority = Priority(spec.get("priority") or Priority.NORMAL.value)
    except (ValidationError, ValueError):
        return None
    return TaskRecord(
        task_id=task_id,
        task_type=task_type,
        user_id=user_id,
        company_id=company_id,
        phase=status.phase.value if status.phase is not None else None,
        created=created,
        queue_position=status.queue_position,
        reason=status.reason,
        progress=status.progress,
        current_step=status.current_step,
        admitted_at=status.admitted_at,
        start_time=status.start_time,
        completion_time=status.completion_time,
        retry_after=status.retry_after,
        priority=priority,
    )


@dataclass(frozen=True)
class RunTimes:
    task_type: str
    median_s: float | None
    samples: int


def typical_run_times(records: Iterable[TaskRecord], last_n: int) -> dict[str, RunTimes]:
    """Per task type: the median run time of its last ``last_n`` Succeeded tasks."""
    finished: dict[str, list[TaskRecord]] = {}
    for record in records:
        if record.phase == Phase.SUCCEEDED.value and record.run_seconds() is not None:
            finished.setdefault(record.task_type, []).append(record)
    times: dict[str, RunTimes] = {}
    for task_type, done in finished.items():
        done.sort(key=lambda r: r.completion_time or datetime.min, reverse=True)
        recent = [r.run_seconds() for r in done[: max(last_n, 0)]]
        samples = [s for s in recent if s is not None]
        median = statistics.median(samples) if samples else None
        times[task_type] = RunTimes(task_type, median, len(samples))
    return times


@dataclass(frozen=True)
class WaitingRow:
    record: TaskRecord
    eta: Eta
    position: int  # 1-based, in the company's fair-share order now


@dataclass(frozen=True)
class RunningRow:
    record: TaskRecord
    elapsed_s: float | None
    remaining_s: float | None


@dataclass(frozen=True)
class QuotaPlan:
    company_id: str
    limit: int
    run_times: dict[str, RunTimes]
    waiting: list[WaitingRow]
    running: list[RunningRow]
    company_cap: int | None = None

    @property
    def headroom(self) -> int | None:
        """Slots the company may still fill before its cap (None: no company cap)."""
        if self.company_cap is None:
            return None
        return max(self.company_cap - len(self.running), 0)


def _median(run_times: Mapping[str, RunTimes], task_type: str) -> float | None:
    known = run_times.get(task_type)
    return known.median_s if known is not None else None


def _elapsed(record: TaskRecord, now: datetime) -> float | None:
    began = record.began
    return max((now - began).total_seconds(), 0.0) if began is not None else None


def _remaining(
    record: TaskRecord, run_times: Mapping[str, RunTimes], now: datetime
) -> float | None:
    median = _median(run_times, record.task_type)
    if median is None:
        return None
    return max(median - (_elapsed(record, now) or 0.0), 0.0)


def estimate_user_queue(
    waiting: list[TaskRecord],
    running: list[TaskRecord],
    run_times: Mapping[str, RunTimes],
    limit: int,
    now: datetime,
) -> list[Eta]:
    """ETAs of one user's waiting tasks (given in queue order) over ``limit`` slots: the
    operator's own model (:func:`regtask.eta.schedule`) over the listed tasks."""
    medians = {t: r.median_s for t, r in run_times.items()}
    busy = [Busy(r.task_type, _elapsed(r, now) or 0.0) for r in running]
    queued = [
        Queued(
            r.task_id,
            r.task_type,
            (r.retry_after - now).total_seconds() if r.retry_after is not None else None,
        )
        for r in waiting
    ]
    return schedule(queued, busy, medians, limit)


def plan_company(
    records: Iterable[TaskRecord],
    company_id: str,
    limit: int,
    last_n: int = DEFAULT_HISTORY,
    *,
    now: datetime,
    company_cap: int | None = None,
) -> QuotaPlan:
    """The company's waiting tasks (fair-share order, with ETAs) and running tasks."""
    everything = list(records)
    run_times = typical_run_times(everything, last_n)
    mine = [r for r in everything if r.company_id == company_id]
    running = sorted(
        (r for r in mine if r.phase == Phase.RUNNING.value),
        key=lambda r: r.began.timestamp() if r.began is not None else _LAST,
    )
    per_user = Counter(r.user_id for r in running)
    waiting = fair_order(
        (r for r in mine if r.phase == Phase.WAITING.value),
        per_user,
        lambda r: r.user_id,
        TaskRecord.rank,
    )
    medians = {t: r.median_s for t, r in run_times.items()}
    etas = schedule_company(
        [
            Queued(
                r.task_id,
                r.task_type,
                (r.retry_after - now).total_seconds() if r.retry_after is not None else None,
                r.user_id,
                r.rank(),
            )
            for r in waiting
        ],
        [Busy(r.task_type, _elapsed(r, now) or 0.0, r.user_id) for r in running],
        medians,
        limit,
        company_cap,
    )
    return QuotaPlan(
        company_id=company_id,
        limit=limit,
        run_times=run_times,
        waiting=[
            WaitingRow(r, eta, position)
            for position, (r, eta) in enumerate(zip(waiting, etas, strict=True), start=1)
        ],
        running=[RunningRow(r, _elapsed(r, now), _remaining(r, run_times, now)) for r in running],
        company_cap=company_cap,
    )
