"""Quota decisions: who runs now, who waits, in which order. Pure state, no I/O.

One :class:`AdmissionState` lives in the single active operator (Kopf peering) and is only
mutated by the scheduler's decision step, under one lock, so a burst of concurrent submissions
can never be admitted over quota. It is rebuilt from the cluster's live Jobs at start-up and by
a reconcile timer, so a crash between "admit" and "create Job" cannot leak a slot.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from regtask.crmodels import Priority, RateLimitPolicy
from regtask.documents import Quotas
from regtask.fairshare import FairShare, Rank, merge_order, rank

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TaskKey:
    """The RegistryTask's namespace and name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Candidate:
    key: TaskKey
    task_id: str
    user_id: str
    company_id: str
    priority: Priority
    # creationTimestamp of the CR as epoch seconds: FIFO order within a priority.
    created: float
    uses_llm: bool = False


@dataclass(frozen=True)
class RateVerdict:
    """What the company's hourly LLM window allows right now."""

    allowed: bool
    retry_after_s: int = 0


class WaitReason(StrEnum):
    USER_CONCURRENCY = "UserConcurrencyQuota"
    # The company runs maxTasksPerCompany tasks; the next free slot goes by fair share.
    COMPANY_CONCURRENCY = "CompanyConcurrencyQuota"
    LLM_RATE = "LlmRateQuota"


@dataclass(frozen=True)
class Waiting:
    candidate: Candidate
    position: int  # 1-based, within the company's fair-share order
    reason: WaitReason
    retry_after_s: int = 0
    # Its place among its user's tasks and the fair-share tie-break (regtask.fairshare.rank).
    rank: Rank = (0, 0.0, 0)


@dataclass(frozen=True)
class Refused:
    candidate: Candidate
    message: str


@dataclass
class Decisions:
    admitted: list[Candidate] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


QuotaLookup = Callable[[str], tuple[Quotas, RateLimitPolicy]]
# (company_id, LLM tasks admitted by this decision so far) -> verdict. Callers pre-fetch the
# window's counters so that the decision itself stays synchronous and atomic.
RateCheck = Callable[[str, int], RateVerdict]


class AdmissionState:
    def __init__(self) -> None:
        self._running: dict[TaskKey, Candidate] = {}
        # Each queued task with its fair-share rank (priority, age, arrival), computed once.
        self._queued: dict[TaskKey, tuple[Rank, Candidate]] = {}
        self._seq = itertools.count()
        # Per-company counts kept with every change of the two dicts (through _run, _unrun,
        # _queue, _unqueue only): the quota usage and the metrics read them in O(1) instead of
        # walking every task of every company.
        self._running_per_company: Counter[str] = Counter()
        self._queued_per_company: Counter[str] = Counter()
        # The same two sets per company, so that a decision for one company reads only its own
        # tasks (a step's work follows the companies that changed, not every task).
        self._running_of: dict[str, dict[TaskKey, Candidate]] = {}
        self._queued_of: dict[str, dict[TaskKey, tuple[Rank, Candidate]]] = {}
        # Queued LLM tasks per company: the companies whose LLM window a step must read.
        self._queued_llm_per_company: Counter[str] = Counter()
        # Companies whose counts changed since the last take_changed(): the quota-usage round
        # visits only them, not every company.
        self._changed: set[str] = set()
        # Companies to decide again at the next step (see take_to_decide).
        self._to_decide: set[str] = set()

    def _touch(self, company_id: str) -> None:
        self._changed.add(company_id)
        self._to_decide.add(company_id)

    def _run(self, candidate: Candidate) -> None:
        self._unrun(candidate.key)  # replaced (rebuild): counted once
        company_id = candidate.company_id
        self._running_per_company[company_id] += 1
        self._running_of.setdefault(company_id, {})[candidate.key] = candidate
        self._touch(company_id)
        self._running[candidate.key] = candidate

    def _unrun(self, key: TaskKey) -> Candidate | None:
        candidate = self._running.pop(key, None)
        if candidate is not None:
            company_id = candidate.company_id
            _decrement(self._running_per_company, company_id)
            _forget(self._running_of, company_id, key)
            self._touch(company_id)
        return candidate

    def _queue(self, candidate: Candidate) -> None:
        company_id = candidate.company_id
        entry = (_rank(candidate, next(self._seq)), candidate)
        self._queued[candidate.key] = entry
        self._queued_of.setdefault(company_id, {})[candidate.key] = entry
        self._queued_per_company[company_id] += 1
        if candidate.uses_llm:
            self._queued_llm_per_company[company_id] += 1
        self._touch(company_id)

    def _unqueue(self, key: TaskKey) -> None:
        item = self._queued.pop(key, None)
        if item is not None:
            candidate = item[1]
            company_id = candidate.company_id
            _decrement(self._queued_per_company, company_id)
            _forget(self._queued_of, company_id, key)
            if candidate.uses_llm:
                _decrement(self._queued_llm_per_company, company_id)
            self._touch(company_id)

    # ---------------------------------------------------------------- state changes

    def submit(self, candidate: Candidate) -> None:
        """Queue a task for admission; a no-op when it is already queued or running."""
        if candidate.key in self._running or candidate.key in self._queued:
            return
        self._queue(candidate)

    def mark_running(self, candidate: Candidate) -> None:
        """Record a task whose Job already exists (start-up, resume, reconcile)."""
        self._unqueue(candidate.key)
        self._run(candidate)

    def release(self, key: TaskKey) -> Candidate | None:
        """Forget a task (finished, cancelled, deleted); frees its slot if it had one."""
        self._unqueue(key)
        return self._unrun(key)

    def rebuild(self, running: Iterable[Candidate]) -> tuple[int, int]:
        """Make the running set equal to the cluster's truth; returns (added, dropped)."""
        truth = {c.key: c for c in running}
        dropped = [key for key in self._running if key not in truth]
        for key in dropped:
            self._unrun(key)
        added = 0
        for key, candidate in truth.items():
            known = self._running.get(key)
            if known is None:
                added += 1
            if known != candidate or key in self._queued:
                self.mark_running(candidate)  # unchanged ones stay as they are: no re-decision
        return added, len(dropped)

    def take_changed(self) -> set[str]:
        """The companies whose running or queued count may have moved since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def mark_to_decide(self, company_id: str) -> None:
        """Decide this company again at the next step (its limits changed)."""
        self._to_decide.add(company_id)

    def take_to_decide(self) -> set[str]:
        """The companies a step must decide: those whose tasks or limits changed since the last
        step, and those with queued LLM tasks (their window moves with time). A company with
        none of these would be decided exactly as before: nothing to admit, positions as
        published."""
        due, self._to_decide = self._to_decide, set()
        return due | set(self._queued_llm_per_company)

    def companies_with_queued_llm(self) -> set[str]:
        return set(self._queued_llm_per_company)

    # ---------------------------------------------------------------- queries

    def is_running(self, key: TaskKey) -> bool:
        return key in self._running

    def is_queued(self, key: TaskKey) -> bool:
        return key in self._queued

    def running_count(self, company_id: str, user_id: str | None = None) -> int:
        if user_id is None:
            return self._running_per_company[company_id]  # O(1): no walk over every task
        return sum(1 for c in self.running_in(company_id) if c.user_id == user_id)

    def running_in(self, company_id: str) -> Iterable[Candidate]:
        """One company's running tasks, from its index: never a walk over every company's."""
        return self._running_of.get(company_id, {}).values()

    def queued_count(self, company_id: str) -> int:
        return self._queued_per_company[company_id]

    def companies(self) -> set[str]:
        return set(self._running_per_company) | set(self._queued_per_company)

    def running(self) -> list[Candidate]:
        return list(self._running.values())

    # ---------------------------------------------------------------- the decision

    def decide(
        self, quotas: QuotaLookup, rate: RateCheck, companies: Iterable[str] | None = None
    ) -> Decisions:
        """Admit every queued task that fits, company by company, in fair-share order
        (:mod:`regtask.fairshare`: the user with the fewest running first, then priority, then
        age), within ``maxTasksPerUser`` and ``maxTasksPerCompany``.

        A user at their limit does not block other users of the same company: the scan goes on
        past them. Admitted tasks move to the running set before this returns. The waiting get
        their position in the company's fair-share order, so the next slot to free goes to the
        one at position 1.

        ``companies``: only these (their waiting only in the answer); None: every company with
        queued tasks. The work is that of the companies decided, whatever the others hold.
        """
        decisions = Decisions()
        chosen = sorted(self._queued_of if companies is None else companies)
        for company_id in chosen:
            queued = list(self._queued_of.get(company_id, {}).values())
            if not queued:
                continue
            running = Counter(c.user_id for c in self._running_of.get(company_id, {}).values())
            self._decide_company(company_id, queued, running, quotas, rate, decisions)
        # Its own admissions changed these companies: already decided with them, not due again.
        self._to_decide.difference_update(chosen)
        # Launched in priority, then age order across companies (stable: fair share within one).
        decisions.admitted.sort(key=lambda c: _rank(c, 0))
        return decisions

    def _decide_company(
        self,
        company_id: str,
        queued: list[tuple[Rank, Candidate]],
        running: Counter[str],
        quotas: QuotaLookup,
        rate: RateCheck,
        decisions: Decisions,
    ) -> None:
        company_quotas, policy = quotas(company_id)
        per_user = company_quotas.max_tasks_per_user
        cap = company_quotas.max_tasks_per_company
        queues: dict[str, list[tuple[Rank, Candidate]]] = {}
        for entry in queued:
            queues.setdefault(entry[1].user_id, []).append(entry)
        for queue in queues.values():
            queue.sort(key=_first)
        share: FairShare[tuple[Rank, Candidate]] = FairShare(
            {user: [(entry[0], entry) for entry in queue] for user, queue in queues.items()},
            running,
        )
        room = None if cap is None else max(cap - self._running_per_company[company_id], 0)
        llm_pending = 0
        llm_closed: RateVerdict | None = None
        # LLM tasks over the window (Wait), per user in rank order: popped heads, so ahead of the
        # user's remaining queue
        set_aside: dict[str, list[tuple[Rank, tuple[Rank, Candidate]]]] = {}
        over_window: dict[TaskKey, RateVerdict] = {}
        while room is None or room > 0:
            picked = share.peek()
            if picked is None:
                break
            user, (task_rank, candidate) = picked
            if share.running[user] >= per_user:
                share.park(user)  # at their own limit: the others go on
                continue
            share.pop(user)
            if candidate.uses_llm:
                verdict = llm_closed or rate(company_id, llm_pending)
                if not verdict.allowed:
                    llm_closed = verdict
                    if policy is RateLimitPolicy.REFUSE:
                        self._unqueue(candidate.key)
                        decisions.refused.append(
                            Refused(
                                candidate,
                                "company LLM quota exhausted "
                                f"({company_quotas.max_llm_requests_per_hour} requests/hour); "
                                f"retry after {verdict.retry_after_s}s",
                            )
                        )
                    else:
                        set_aside.setdefault(user, []).append((task_rank, (task_rank, candidate)))
                        over_window[candidate.key] = verdict
                    continue
                llm_pending += 1
            share.start(user)
            if room is not None:
                room -= 1
            self._unqueue(candidate.key)
            self._run(candidate)
            decisions.admitted.append(candidate)
        waiting = share.remaining()
        for user, aside in set_aside.items():
            waiting[user] = aside + waiting.get(user, [])
        ordered = merge_order(waiting, share.running)
        for position, (task_rank, candidate) in enumerate(ordered, start=1):
            blocked = over_window.get(candidate.key) if over_window else None
            if share.running[candidate.user_id] >= per_user:  # 0 >= 0 too: maxTasksPerUser 0
                reason, retry = WaitReason.USER_CONCURRENCY, 0
            elif blocked is not None:
                reason, retry = WaitReason.LLM_RATE, blocked.retry_after_s
            else:
                reason, retry = WaitReason.COMPANY_CONCURRENCY, 0
            decisions.waiting.append(Waiting(candidate, position, reason, retry, task_rank))


def _rank(candidate: Candidate, seq: int) -> Rank:
    return rank(candidate.priority, candidate.created, seq)


def _first(entry: tuple[Rank, Candidate]) -> Rank:
    return entry[0]


def _forget(index: dict[str, dict[TaskKey, _T]], company_id: str, key: TaskKey) -> None:
    entries = index.get(company_id)
    if entries is not None:
        entries.pop(key, None)
        if not entries:
            del index[company_id]  # a company without tasks leaves no entry behind


def _decrement(counts: Counter[str], company_id: str) -> None:
    counts[company_id] -= 1
    if counts[company_id] <= 0:
        del counts[company_id]  # a company without tasks leaves no entry behind
