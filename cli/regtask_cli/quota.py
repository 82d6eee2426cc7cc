"""How long a waiting task will wait: the listed RegistryTasks put through the operator's own
model (:mod:`regtask.eta`: a user's slots, the median run time of recent Succeeded tasks per
type). Pure: no I/O.

The medians here come from the last N ``Succeeded`` tasks of each type in the control namespace
(``completionTime - admittedAt``, ``startTime`` when ``admittedAt`` is missing; all companies: a
type's run time depends on the work, not on who asked).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from regtask.crmodels import Phase, RegistryTaskStatus
from regtask.eta import Busy, Eta, Queued, schedule
from regtask.timeutil import parse_iso

DEFAULT_HISTORY = 20
_LAST = float("inf")


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

    @property
    def began(self) -> datetime | None:
        """When the run began: admission (the slot was taken), else the Job's start."""
        return self.admitted_at or self.start_time

    def run_seconds(self) -> float | None:
        if self.completion_time is None or self.began is None:
            return None
        return max((self.completion_time - self.began).total_seconds(), 0.0)

    def queue_key(self) -> tuple[float, float]:
        """Queue order: the operator's position, then creation (FIFO) when not yet reported."""
        position = float(self.queue_position) if self.queue_position is not None else _LAST
        created = self.created.timestamp() if self.created is not None else _LAST
        return (position, created)


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
) -> QuotaPlan:
    """The company's waiting tasks (queue order, with ETAs) and running tasks."""
    everything = list(records)
    run_times = typical_run_times(everything, last_n)
    mine = [r for r in everything if r.company_id == company_id]
    waiting = sorted((r for r in mine if r.phase == Phase.WAITING.value), key=TaskRecord.queue_key)
    running = sorted(
        (r for r in mine if r.phase == Phase.RUNNING.value),
        key=lambda r: r.began.timestamp() if r.began is not None else _LAST,
    )
    etas: dict[str, Eta] = {}
    for user in {r.user_id for r in waiting}:
        queue = [r for r in waiting if r.user_id == user]
        busy = [r for r in running if r.user_id == user]
        for record, eta in zip(
            queue, estimate_user_queue(queue, busy, run_times, limit, now), strict=True
        ):
            etas[record.task_id] = eta
    return QuotaPlan(
        company_id=company_id,
        limit=limit,
        run_times=run_times,
        waiting=[WaitingRow(r, etas[r.task_id]) for r in waiting],
        running=[RunningRow(r, _elapsed(r, now), _remaining(r, run_times, now)) for r in running],
    )
