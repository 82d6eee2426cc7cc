"""When a waiting task will start and finish: the slot model, shared by the operator (which
publishes it to the user) and the CLI (which shows it). Pure: no I/O, times in seconds from now.

A user has ``limit`` slots (``maxTasksPerUser``; a user at the limit never blocks another user),
and the company, when it has a ``maxTasksPerCompany``, that many in all. A running task frees its
slot after ``max(median(type) - elapsed, 0)``, ``median(type)`` being the median run time of
recent Succeeded tasks of its type. Each freed slot goes by fair share (:mod:`regtask.fairshare`:
the user with the fewest running, then priority, then age); a user's waiting tasks take their
slots in their own order (never before its ``retry_after`` when it waits for the hourly LLM
quota) and hold them for one ``median(type)``. With one user, equal medians and a long queue this
is the queue's work divided across the slots: ``start ~ median x (running + ahead) / limit``.

Unknown when a needed type has no run history; never while a limit is 0.
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from regtask.fairshare import FairShare, Rank

NEVER = "never while maxTasksPerUser is 0"
NEVER_COMPANY = "never while maxTasksPerCompany is 0"
DEFAULT_HISTORY = 20


@dataclass(frozen=True)
class Eta:
    """Seconds from now until the task starts and until it is done (None: unknown)."""

    start_in_s: float | None
    done_in_s: float | None
    note: str = ""


@dataclass(frozen=True)
class Busy:
    """A running task: its type, how long it has run, and its user (company model)."""

    task_type: str
    elapsed_s: float
    user_id: str = ""


@dataclass(frozen=True)
class Queued:
    """A waiting task of the user, in queue order."""

    task_id: str
    task_type: str
    # Seconds from now before which it cannot start (the LLM window), if any.
    not_before_s: float | None = None
    # Its user, and its rank among them (regtask.fairshare.rank): the company model only.
    user_id: str = ""
    rank: Rank = (0, 0.0, 0)


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
    return schedule_company(queued, running, medians, limit, None)


def schedule_company(
    queued: Sequence[Queued],
    running: Sequence[Busy],
    medians: Mapping[str, float | None],
    limit: int,
    company_cap: int | None,
) -> list[Eta]:
    """ETAs of a company's waiting tasks over its slots: ``limit`` per user and, when set,
    ``company_cap`` for the whole company, each freed slot going by fair share
    (:mod:`regtask.fairshare`). The answer is in the order of ``queued``.

    An event simulation: at each moment a slot frees (or an LLM window opens) the free slots
    go, one at a time, to the user with the fewest running tasks, then their task of highest
    rank. A user's tasks start in their own order (a head that may not start yet holds the
    ones behind it). A run of unknown length holds its slot for ever: what waits on it has no
    ETA. Without ``company_cap`` users do not compete, so each user's answer is the one-user
    model's.
    """
    if limit <= 0:
        return [Eta(None, None, NEVER) for _ in queued]
    if company_cap is not None and company_cap <= 0:
        return [Eta(None, None, NEVER_COMPANY) for _ in queued]
    order = itertools.count()
    # (moment it frees, tie, user) of every occupied slot; math.inf when unknown.
    ends: list[tuple[float, int, str]] = []
    stuck: dict[str, str] = {}  # user -> why their slots may never free (first such note)
    for busy in running:
        median = medians.get(busy.task_type)
        end = math.inf if median is None else max(median - busy.elapsed_s, 0.0)
        if median is None:
            stuck.setdefault(busy.user_id, f"no run history of {busy.task_type}")
        heapq.heappush(ends, (end, next(order), busy.user_id))
    queues: dict[str, list[tuple[Rank, int]]] = {}
    for index, task in enumerate(queued):
        queues.setdefault(task.user_id, []).append((task.rank, index))
    for queue in queues.values():
        queue.sort()  # by rank, then the order given
    share = FairShare(queues, Counter(b.user_id for b in running))
    opens: list[tuple[float, str]] = []  # (moment, user) a parked head may start
    etas: list[Eta | None] = [None] * len(queued)
    occupied = len(running)
    now = 0.0
    while True:
        while ends and ends[0][0] <= now:
            _, _, user = heapq.heappop(ends)
            occupied -= 1
            share.end(user)
            share.unpark(user)
        while opens and opens[0][0] <= now:
            share.unpark(heapq.heappop(opens)[1])
        while company_cap is None or occupied < company_cap:
            picked = share.peek()
            if picked is None:
                break
            user, index = picked
            task = queued[index]
            if share.running[user] >= limit:
                share.park(user)  # until one of their own tasks ends
                continue
            if task.not_before_s is not None and task.not_before_s > now:
                share.park(user)
                heapq.heappush(opens, (task.not_before_s, user))
                continue
            share.pop(user)
            median = medians.get(task.task_type)
            if median is None:
                etas[index] = Eta(now, None, f"no run history of {task.task_type}")
                stuck.setdefault(
                    user, f"waits behind {task.task_id} (no run history of {task.task_type})"
                )
                end = math.inf
            else:
                etas[index] = Eta(now, now + median)
                end = now + median
            share.start(user)
            occupied += 1
            heapq.heappush(ends, (end, next(order), user))
        if not share:
            break
        now = min(ends[0][0] if ends else math.inf, opens[0][0] if opens else math.inf)
        if now == math.inf:
            break  # only runs of unknown length are left: the rest has no ETA
    anyone = next(iter(stuck.values()), "")
    return [
        eta if eta is not None else Eta(None, None, stuck.get(task.user_id, anyone))
        for eta, task in zip(etas, queued, strict=True)
    ]
