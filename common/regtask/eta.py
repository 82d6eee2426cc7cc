"""When a waiting task will start and finish: the slot model, shared by the operator (which
publishes it to the user) and the CLI (which shows it). Pure: no I/O, times in seconds from now.

A user has ``limit`` slots (``maxTasksPerUser``; a user at the limit never blocks another user,
so only the user's own tasks count). A running task frees its slot after ``max(median(type) -
elapsed, 0)``, ``median(type)`` being the median run time of recent Succeeded tasks of its type.
The user's waiting tasks, in queue order, each take the earliest moment a slot is free (never
before its ``retry_after`` when it waits for the hourly LLM quota) and hold it for one
``median(type)``. With equal medians and a long queue this is the queue's work divided across
the slots: ``start ~ median x (running + ahead) / limit``.

Unknown when a needed type has no run history; never while ``limit`` is 0.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

NEVER = "never while maxTasksPerUser is 0"
DEFAULT_HISTORY = 20


@dataclass(frozen=True)
class Eta:
    """Seconds from now until the task starts and until it is done (None: unknown)."""

    start_in_s: float | None
    done_in_s: float | None
    note: str = ""


@dataclass(frozen=True)
class Busy:
    """A running task of the user: its type and how long it has run."""

    task_type: str
    elapsed_s: float


@dataclass(frozen=True)
class Queued:
    """A waiting task of the user, in queue order."""

    task_id: str
    task_type: str
    # Seconds from now before which it cannot start (the LLM window), if any.
    not_before_s: float | None = None


@dataclass
class RunHistory:
    """The last ``size`` run times per task type, and their median (what the model needs)."""

    size: int = DEFAULT_HISTORY
    _runs: dict[str, deque[float]] = field(default_factory=dict)

    def record(self, task_type: str, seconds: float) -> None:
        self._runs.setdefault(task_type, deque(maxlen=self.size)).append(max(seconds, 0.0))

    def medians(self) -> dict[str, float]:
        return {t: statistics.median(runs) for t, runs in self._runs.items() if runs}


def schedule(
    queued: Sequence[Queued],
    running: Sequence[Busy],
    medians: Mapping[str, float | None],
    limit: int,
) -> list[Eta]:
    """ETAs of one user's waiting tasks (``queued``, in queue order) over ``limit`` slots."""
    if limit <= 0:
        return [Eta(None, None, NEVER) for _ in queued]
    # Moments (seconds from now) at which the user's occupied slots free up.
    ends: list[float] = []
    for busy in running:
        median = medians.get(busy.task_type)
        if median is None:
            note = f"no run history of {busy.task_type}"
            return [Eta(None, None, note) for _ in queued]
        ends.append(max(median - busy.elapsed_s, 0.0))
    etas: list[Eta] = []
    previous_start = 0.0
    for index, task in enumerate(queued):
        ends.sort()
        # A slot is free once fewer than `limit` tasks still run.
        free_at = ends[len(ends) - limit] if len(ends) >= limit else 0.0
        start = max(previous_start, free_at)
        if task.not_before_s is not None:
            start = max(start, task.not_before_s)
        median = medians.get(task.task_type)
        if median is None:
            etas.append(Eta(start, None, f"no run history of {task.task_type}"))
            note = f"waits behind {task.task_id} (no run history of {task.task_type})"
            etas.extend(Eta(None, None, note) for _ in queued[index + 1 :])
            return etas
        etas.append(Eta(start, start + median))
        ends = [end for end in ends if end > start] + [start + median]
        previous_start = start
    return etas
