"""What the operator knows: the tasks it tracks, the admission state, the companies' limits.

:class:`TaskTracker` is the operator's memory and nothing else: no API call, no Redis call.
Every other part reads it and changes it through its methods. Hazard: the admission state
(:class:`~regtask_operator.admission.AdmissionState`) is changed by synchronous calls (submit in
:meth:`TaskTracker.track`) or under :attr:`TaskTracker.lock` (the scheduler's decision, a
release, a reconcile), never across an ``await`` without the lock: that is what keeps a burst of
concurrent events from admitting over quota.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from regtask import naming
from regtask.crmodels import (
    TERMINAL_PHASES,
    Phase,
    Priority,
    RateLimitPolicy,
    RegistryTaskSpec,
)
from regtask.documents import Quotas
from regtask.eta import RunHistory
from regtask.tasktypes import TASK_TYPES, TaskType
from regtask.timeutil import parse_iso
from regtask_operator.admission import AdmissionState, Candidate, TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.mirror import TaskSnapshot


class TrackedTask:
    """One known task. Slotted and compact: the operator keeps one per task (10,000 and more).

    The spec is kept as its JSON (a few hundred bytes instead of the validated model's ~2 KB)
    and validated again when a caller needs it whole (a launch); validation is deterministic,
    so ``task.spec`` is equal to the spec given here. The fields every scheduler step and
    metrics scrape read for every task are kept apart.
    """

    __slots__ = (
        "_spec_json",
        "admitted_at",
        "company_id",
        "created",
        "current_step",
        "end_seen",
        "finished_at",
        "key",
        "launched_mono",
        "max_duration_s",
        "phase",
        "priority",
        "progress",
        "progress_patched_at",
        "published_wait",
        "reported_at",
        "reported_wait",
        "status_lock",
        "task_id",
        "task_type",
        "ttl_after_finished_s",
        "uid",
        "user_id",
    )

    def __init__(
        self,
        key: TaskKey,
        uid: str,
        spec: RegistryTaskSpec,
        created: str,
        phase: Phase = Phase.QUEUED,
        progress: int = 0,
        current_step: str = "",
    ) -> None:
        self.key = key
        self.uid = uid
        self.created = created
        self.phase = phase
        self.progress = progress
        self.current_step = current_step
        self.reported_wait: tuple[int, str, int] | None = None
        self.reported_at = 0.0
        self.published_wait: tuple[int, str] | None = None
        # time.monotonic() of the last progress written to the CR status (or of the launch)
        self.progress_patched_at = 0.0
        self.admitted_at: float | None = None
        # time.monotonic() when its Job was created by this process (see reconcile)
        self.launched_mono = 0.0
        # Status writes of one task go one at a time, in the order they were decided (see
        # regtask_operator.status.StatusWriter.write).
        self.status_lock = asyncio.Lock()
        self.task_id: str = spec.task_id
        self.task_type: TaskType = spec.task_type
        # Shared by all the tasks of a user or company: one string each, not one per task.
        self.user_id: str = sys.intern(spec.user_id)
        self.company_id: str = sys.intern(spec.company_id)
        self.priority: Priority = spec.priority
        self.max_duration_s: int = spec.effective_max_duration_s
        # time.time() when it ended (its status' completionTime when listed), for its TTL
        self.finished_at: float | None = None
        # The API server has shown its end (a watch event or a listing with a terminal
        # phase): no older event of it can arrive any more (see TaskTracker.settle).
        self.end_seen = False
        self.ttl_after_finished_s: int | None = spec.ttl_seconds_after_finished
        self._spec_json: str = spec.model_dump_json(by_alias=True, exclude_unset=True)

    @property
    def spec(self) -> RegistryTaskSpec:
        return RegistryTaskSpec.model_validate_json(self._spec_json)

    def __repr__(self) -> str:
        return f"TrackedTask({self.key!s}, {self.task_id}, {self.phase.value})"

    @property
    def tenant_namespace(self) -> str:
        return naming.tenant_namespace(self.user_id, self.company_id)

    def candidate(self) -> Candidate:
        return Candidate(
            key=self.key,
            task_id=self.task_id,
            user_id=self.user_id,
            company_id=self.company_id,
            priority=self.priority,
            created=parse_iso(self.created).timestamp(),
            uses_llm=TASK_TYPES[self.task_type].uses_llm,
        )

    def ttl_deadline(self, default_ttl_s: int) -> float | None:
        """time.time() when its TTL has passed (None while it has not ended)."""
        if self.finished_at is None or self.phase not in TERMINAL_PHASES:
            return None
        ttl = default_ttl_s if self.ttl_after_finished_s is None else self.ttl_after_finished_s
        return self.finished_at + ttl

    def labels(self) -> tuple[str, str, str]:
        """(phase, task type, company): its series of the ``regtask_tasks`` gauge."""
        return (self.phase.value, self.task_type.value, self.company_id)

    def snapshot(self, phase: Phase, **changes: Any) -> TaskSnapshot:
        base = TaskSnapshot(
            task_id=self.task_id,
            task_type=self.task_type.value,
            user_id=self.user_id,
            company_id=self.company_id,
            namespace=self.tenant_namespace,
            priority=self.priority.value,
            max_duration_s=self.max_duration_s,
            created_at=self.created,
            phase=phase,
            progress=self.progress,
            current_step=self.current_step,
        )
        return replace(base, **changes)


def _timestamp(value: Any) -> float | None:
    try:
        return parse_iso(str(value)).timestamp() if value else None
    except ValueError:
        return None


@dataclass
class CompanyLimits:
    quotas: Quotas
    policy: RateLimitPolicy


@dataclass
class TaskTracker:
    """The tasks in play and the finished ones awaiting their TTL, kept apart.

    A finished task leaves :attr:`tasks` once nothing can still concern it (:meth:`settle`):
    its end is in the API server, its slot is free. What stays is one entry of :attr:`ended`
    (its TTL deadline and its gauge labels, shared), until it is deleted. Every walk over
    :attr:`tasks` (the scheduler's step, reconcile, scrapes, the busy namespaces) is therefore
    over the running and waiting tasks, never over the history.
    """

    settings: OperatorSettings
    state: AdmissionState = field(default_factory=AdmissionState)
    tasks: dict[TaskKey, TrackedTask] = field(default_factory=dict)
    limits: dict[str, CompanyLimits] = field(default_factory=dict)
    # The one decision lock: every change of `state` that spans an await holds it.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set to wake the scheduler (a change it should decide on).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Admitted by a decision, Job not created yet: a reconcile counts their slots as taken.
    launching: set[TaskKey] = field(default_factory=set)
    # Ended (cancelled) while their Job's pods are still terminating: they keep their slot until
    # the Job is gone (see transition's hold_slot), so the user's next task never runs beside it.
    draining: set[TaskKey] = field(default_factory=set)
    # company_id -> the CompanyQuota object whose status shows its usage.
    quota_objects: dict[str, TaskKey] = field(default_factory=dict)
    # companies whose usage the next quota-usage round must look at besides those whose
    # counts moved (a CompanyQuota just seen, a patch that failed)
    usage_owed: set[str] = field(default_factory=set)
    # companies whose current limits are written in the Redis registry
    limits_in_registry: set[str] = field(default_factory=set)
    # company_id -> (time.time(), task) of its LLM tasks admitted lately, not yet assumed to be
    # in the gateway's log (see recent_llm_admissions); a task's entry goes with its slot
    llm_admissions: dict[str, list[tuple[float, TaskKey | None]]] = field(default_factory=dict)
    # Recent run times per task type: the ETA model's medians (regtask.eta)
    runs: RunHistory = field(default_factory=RunHistory)
    # False until the CompanyQuotas and the live Jobs were listed (start-up, and each time this
    # replica becomes the active one): no decision before, or the defaults (10 per user, Wait)
    # would admit while the companies' own limits are still on their way.
    ready: bool = False
    # Finished tasks no longer in `tasks`: key -> (time.time() their TTL passes, gauge labels).
    ended: dict[TaskKey, tuple[float, tuple[str, str, str]]] = field(default_factory=dict)
    # One tuple per label set, shared by every entry of `ended` that has it, and how many
    # entries have it (a scrape reads these counts, never walks `ended`).
    _labels: dict[tuple[str, str, str], tuple[str, str, str]] = field(default_factory=dict)
    _ended_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def kick(self) -> None:
        self.wake.set()

    def clear(self) -> None:
        """Forget everything (this replica was paused, or is starting): rebuilt by a prime."""
        self.ready = False
        self.state = AdmissionState()
        self.tasks.clear()
        self.limits.clear()
        self.launching.clear()
        self.draining.clear()
        self.quota_objects.clear()
        self.usage_owed.clear()
        self.limits_in_registry.clear()
        self.llm_admissions.clear()
        self.runs = RunHistory()
        self.ended.clear()
        self._ended_counts.clear()

    # ------------------------------------------------------------------ company limits

    def company_limits(self, company_id: str) -> tuple[Quotas, RateLimitPolicy]:
        known = self.limits.get(company_id)
        if known is not None:
            return known.quotas, known.policy
        return self._default_limits.quotas, self._default_limits.policy

    @functools.cached_property
    def _default_limits(self) -> CompanyLimits:
        """Built once: the scheduler looks limits up for every queued task at every step."""
        return CompanyLimits(
            Quotas(
                max_tasks_per_company=self.settings.default_max_tasks_per_company,
                max_tasks_per_user=self.settings.default_max_tasks_per_user,
                max_llm_requests_per_hour=self.settings.default_max_llm_requests_per_hour,
                max_llm_tokens_per_hour=self.settings.default_max_llm_tokens_per_hour,
                max_llm_tokens_per_day=self.settings.default_max_llm_tokens_per_day,
                storage_limit_mb=self.settings.default_storage_limit_mb,
                rate_limit_policy=self.settings.rate_limit_policy.value,
            ),
            self.settings.rate_limit_policy,
        )

    def default_quotas(self) -> Quotas:
        """The configured defaults (chart ``operator.quotas.*``): companies without a quota."""
        return self._default_limits.quotas

    def max_tasks_per_user(self, company_id: str) -> int:
        """The company's maxTasksPerUser: what its tenants' ResourceQuotas are sized for."""
        return self.company_limits(company_id)[0].max_tasks_per_user

    def max_tasks_per_company(self, company_id: str) -> int | None:
        """The company's maxTasksPerCompany (None: no company cap)."""
        return self.company_limits(company_id)[0].max_tasks_per_company

    def set_limits(self, company_id: str, quotas: Quotas, policy: RateLimitPolicy) -> bool:
        """Record a company's limits; True when they differ from the ones known."""
        limits = CompanyLimits(quotas, policy)
        if self.limits.get(company_id) == limits:
            return False
        self.limits[company_id] = limits
        self.limits_in_registry.discard(company_id)
        self.state.mark_to_decide(company_id)
        self.kick()
        return True

    def drop_limits(self, company_id: str) -> None:
        self.limits.pop(company_id, None)
        self.limits_in_registry.discard(company_id)
        self.state.mark_to_decide(company_id)
        self.kick()

    def show_usage_in(self, company_id: str, key: TaskKey) -> None:
        """This CompanyQuota shows the company's usage (its status is patched from now on)."""
        self.quota_objects[company_id] = key
        self.usage_owed.add(company_id)

    def take_usage_changes(self) -> set[str]:
        """The companies whose usage may differ from what their CompanyQuota shows."""
        owed = self.usage_owed | self.state.take_changed()
        self.usage_owed = set()
        return owed

    # ------------------------------------------------------------------ LLM admissions

    def admitted_llm(self, company_id: str, now: float, key: TaskKey | None = None) -> None:
        self.llm_admissions.setdefault(company_id, []).append((now, key))

    def _drop_llm_admission(self, key: TaskKey) -> None:
        """A task that ended (cancelled, failed, done) or went back to the queue gives back
        the room its admission held: whatever it called is in the gateway's log already."""
        task = self.tasks.get(key)
        held = self.llm_admissions.get(task.company_id) if task is not None else None
        if held:
            held[:] = [entry for entry in held if entry[1] != key]

    def recent_llm_admissions(self, company_id: str, since: float) -> int:
        """LLM tasks of the company admitted at or after ``since``: counted against its window
        on top of the gateway's counter, which sees a task only once its first request is made
        (a runner needs a few seconds to start). Without them, every step near the end of a
        window would admit as many tasks as the counter still has room for."""
        times = self.llm_admissions.get(company_id)
        if not times:
            return 0
        kept = [entry for entry in times if entry[0] >= since]
        if kept:
            self.llm_admissions[company_id] = kept
        else:
            del self.llm_admissions[company_id]
        return len(kept)

    # ------------------------------------------------------------------ tasks

    def track(
        self, key: TaskKey, uid: str, spec: RegistryTaskSpec, created: str, status: dict[str, Any]
    ) -> tuple[TrackedTask, bool]:
        """Remember a task (new, or listed at start-up) and queue it unless it ended or runs.

        Called for every watch event of the task: idempotent. True when it was not known. A
        finished task is not kept once settled (:meth:`settle`); one seen finished after the
        prime is never kept (only its :attr:`ended` entry): the task returned is then a view.
        """
        phase = Phase(status["phase"]) if status.get("phase") else Phase.QUEUED
        task = self.tasks.get(key)
        if task is not None:
            if phase in TERMINAL_PHASES and task.phase in TERMINAL_PHASES:
                task.end_seen = True  # its end, back from the API server
                self.settle(task)
            return task, False
        if key in self.ended:
            if phase in TERMINAL_PHASES:
                return self._ended_view(key, uid, spec, created, phase, status), False
            self._drop_ended(key)  # a new task took the name of one deleted meanwhile
        task = TrackedTask(
            key,
            uid,
            spec,
            created,
            phase,
            int(status.get("progress") or 0),
            str(status.get("currentStep") or ""),
        )
        task.admitted_at = _timestamp(status.get("admittedAt"))
        if phase in TERMINAL_PHASES:
            task.end_seen = True
            task.finished_at = _timestamp(status.get("completionTime")) or time.time()
            began = task.admitted_at or _timestamp(status.get("startTime"))
            if phase is Phase.SUCCEEDED and began is not None:
                self.runs.record(task.task_type.value, task.finished_at - began)
            if self.ready:
                # Seen ended after the prime (a re-list): never in play here again. During a
                # prime it is kept until the prime's reconcile has seen its Jobs (settle_all).
                self._remember_ended(task)
                return task, True
        self.tasks[key] = task
        if phase in TERMINAL_PHASES:
            return task, True
        if not self.state.is_running(key):
            self.state.submit(task.candidate())
        self.kick()
        return task, True

    def transition(self, task: TrackedTask, phase: Phase, hold_slot: bool = False) -> bool:
        """The one way a task's phase changes in memory; False when refused.

        Nothing leaves a terminal phase: a decision taken before a cancel (a launch, a waiting
        report) that arrives after it is refused here, and its writer must stop. Entering a
        terminal phase takes the task out of the queue in the same synchronous step, so no
        decision taken after this instant can admit it; its slot is freed at once too, unless
        ``hold_slot`` and it holds one (a cancelled task whose pods are still terminating: the
        slot waits for :meth:`drained`).
        """
        if task.phase in TERMINAL_PHASES:
            return False
        task.phase = phase
        if phase in TERMINAL_PHASES:
            task.finished_at = time.time()
            if phase is Phase.SUCCEEDED and task.admitted_at is not None:
                self.runs.record(task.task_type.value, task.finished_at - task.admitted_at)
            if hold_slot and self.state.is_running(task.key):
                self.draining.add(task.key)
            else:
                self.state.release(task.key)
            self.kick()
        return True

    def drained(self, key: TaskKey) -> None:
        """The Job of a task ended while running is gone (its pods too): its slot is free."""
        if key in self.draining:
            self.draining.discard(key)
            self.state.release(key)
            self.kick()
            task = self.tasks.get(key)
            if task is not None:
                self.settle(task)

    def settle(self, task: TrackedTask) -> bool:
        """Let a finished task leave memory once nothing can concern it any more; True if it
        left. Its end must have been seen from the API server (``end_seen``: an older watch
        event, say its ``Running``, could otherwise track it anew and queue it again) and its
        slot be free (not draining: its Job's deletion still frees it). Hazard: never call it
        for a task in play; the checks here are the whole rule."""
        key = task.key
        if (
            task.phase not in TERMINAL_PHASES
            or not task.end_seen
            or key in self.draining
            or self.state.is_running(key)
            or self.tasks.get(key) is not task
        ):
            return False
        del self.tasks[key]
        self._remember_ended(task)
        return True

    def settle_all(self) -> int:
        """After a prime: the finished tasks it listed leave memory (see :meth:`settle`)."""
        return sum(self.settle(task) for task in list(self.tasks.values()))

    def _remember_ended(self, task: TrackedTask) -> None:
        self._drop_ended(task.key)
        deadline = task.ttl_deadline(self.settings.task_ttl_seconds_after_finished)
        labels = task.labels()
        labels = self._labels.setdefault(labels, labels)
        self.ended[task.key] = (time.time() if deadline is None else deadline, labels)
        self._ended_counts[labels] += 1

    def _drop_ended(self, key: TaskKey) -> None:
        entry = self.ended.pop(key, None)
        if entry is not None:
            self._ended_counts[entry[1]] -= 1
            if not self._ended_counts[entry[1]]:
                del self._ended_counts[entry[1]]

    def _ended_view(
        self,
        key: TaskKey,
        uid: str,
        spec: RegistryTaskSpec,
        created: str,
        phase: Phase,
        status: dict[str, Any],
    ) -> TrackedTask:
        """A finished task out of memory, as an event shows it (not kept)."""
        task = TrackedTask(key, uid, spec, created, phase)
        task.end_seen = True
        task.finished_at = _timestamp(status.get("completionTime"))
        return task

    def expired(self, now: float) -> list[TaskKey]:
        """Finished tasks kept past their TTL (spec, else the operator's default): those out
        of memory and those still in it (an end not yet seen back from the API server)."""
        default = self.settings.task_ttl_seconds_after_finished
        keys = [key for key, (deadline, _) in self.ended.items() if now >= deadline]
        for task in self.tasks.values():
            deadline = task.ttl_deadline(default)
            if deadline is not None and now >= deadline:
                keys.append(task.key)
        return keys

    def deletion_asked(self, key: TaskKey) -> None:
        """Its deletion was asked once: not again (its delete handler forgets it)."""
        entry = self.ended.get(key)
        if entry is not None:
            self.ended[key] = (float("inf"), entry[1])
        task = self.tasks.get(key)
        if task is not None:
            task.finished_at = None

    async def release(self, key: TaskKey) -> None:
        """Free the task's slot (or its place in the queue), and its LLM admission."""
        async with self.lock:
            self.state.release(key)
            self._drop_llm_admission(key)

    async def requeue(self, task: TrackedTask) -> None:
        """Back in the queue after a failed launch, unless it ended meanwhile (a cancel)."""
        async with self.lock:
            self.state.release(task.key)
            self._drop_llm_admission(task.key)
            if task.phase not in TERMINAL_PHASES:
                self.state.submit(task.candidate())

    async def forget(self, key: TaskKey) -> None:
        await self.release(key)
        self.tasks.pop(key, None)
        self._drop_ended(key)
        self.kick()

    # ------------------------------------------------------------------ questions

    def active_namespaces(self) -> set[str]:
        """Tenant namespaces of the running and waiting tasks (they keep their namespace)."""
        return {
            task.tenant_namespace
            for task in self.tasks.values()
            if self.state.is_running(task.key) or self.state.is_queued(task.key)
        }

    def queue_summary(self, company_id: str) -> dict[str, int]:
        return {
            "activeTasks": self.state.running_count(company_id),
            "waitingTasks": self.state.queued_count(company_id),
        }

    def task_counts(self) -> Counter[tuple[str, str, str]]:
        """Known tasks by (phase, task type, company): in play, and ended awaiting their TTL."""
        counts = Counter(t.labels() for t in self.tasks.values())
        counts.update(self._ended_counts)
        return counts

    def companies(self) -> set[str]:
        """Every company with a task (in play, or ended and awaiting its TTL) or limits known:
        a company whose tasks all ended still shows its usage, 0, until they are deleted."""
        return (
            self.state.companies()
            | set(self.limits)
            | {t.company_id for t in self.tasks.values()}
            | {company for _, _, company in self._ended_counts}
        )
