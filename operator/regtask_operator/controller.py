"""The task lifecycle: admit, launch, follow, finish. Called by the thin Kopf handlers.

Every decision goes through one :class:`~regtask_operator.admission.AdmissionState` under one
lock (the scheduler step), and every side effect is idempotent (derived names, create tolerating
"already exists", status guards), so a handler retried after a crash converges to the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from regtask import naming
from regtask.crmodels import (
    API_GROUP,
    API_VERSION,
    TERMINAL_PHASES,
    ConditionStatus,
    Phase,
    Priority,
    RateLimitPolicy,
    RegistryTaskSpec,
)
from regtask.documents import Quotas
from regtask.tasktypes import TASK_TYPES, TaskType
from regtask.timeutil import now_iso, parse_iso
from regtask_operator import isolation, jobs, metrics
from regtask_operator.admission import (
    AdmissionState,
    Candidate,
    Decisions,
    RateVerdict,
    TaskKey,
    Waiting,
)
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, KubeError, object_path, quota_path, task_path
from regtask_operator.mirror import Mirror, TaskSnapshot

log = structlog.get_logger(__name__)

# An admission refreshes its namespace's last-used annotation at most this often (idle removal
# reads it); the fences are applied once per namespace and process (drift: maintenance.py).
LAST_USED_REFRESH_S = 300.0


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
        # Controller.patch_status).
        self.status_lock = asyncio.Lock()
        self.task_id: str = spec.task_id
        self.task_type: TaskType = spec.task_type
        # Shared by all the tasks of a user or company: one string each, not one per task.
        self.user_id: str = sys.intern(spec.user_id)
        self.company_id: str = sys.intern(spec.company_id)
        self.priority: Priority = spec.priority
        self.max_duration_s: int = spec.effective_max_duration_s
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


@dataclass
class CompanyLimits:
    quotas: Quotas
    policy: RateLimitPolicy


def _condition(kind: str, status: ConditionStatus, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status.value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_iso(),
    }


@dataclass
class Controller:
    settings: OperatorSettings
    kube: Kube
    mirror: Mirror
    # (company_id) -> (requests counted in the current hour window, seconds until it resets)
    llm_window: Callable[[str], Any]
    _event_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    state: AdmissionState = field(default_factory=AdmissionState)
    tasks: dict[TaskKey, TrackedTask] = field(default_factory=dict)
    limits: dict[str, CompanyLimits] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _kick: asyncio.Event = field(default_factory=asyncio.Event)
    # tenant namespace -> time.monotonic() of this process's last apply of the namespace, and
    # of its apply of the fences with the maxTasksPerUser their quota was sized for (applied
    # again when the company's limit changes; drift repair: maintenance.py)
    _namespaces_applied: dict[str, float] = field(default_factory=dict)
    _fences_applied: dict[str, tuple[float, int]] = field(default_factory=dict)
    _tenant_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _launching: set[TaskKey] = field(default_factory=set)
    # company_id -> the CompanyQuota object whose status shows its usage, and what it showed.
    quota_objects: dict[str, TaskKey] = field(default_factory=dict)
    _quota_shown: dict[str, dict[str, int]] = field(default_factory=dict)
    # companies whose current limits are mirrored in Redis
    limits_mirrored: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ quotas

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
                max_tasks_per_user=self.settings.default_max_tasks_per_user,
                max_llm_requests_per_hour=self.settings.default_max_llm_requests_per_hour,
                storage_limit_mb=self.settings.default_storage_limit_mb,
            ),
            self.settings.rate_limit_policy,
        )

    def set_limits(self, company_id: str, quotas: Quotas, policy: RateLimitPolicy) -> bool:
        """Record a company's limits; True when they differ from the ones known."""
        limits = CompanyLimits(quotas, policy)
        if self.limits.get(company_id) == limits:
            return False
        self.limits[company_id] = limits
        self.limits_mirrored.discard(company_id)
        self.kick()
        return True

    def drop_limits(self, company_id: str) -> None:
        self.limits.pop(company_id, None)
        self.limits_mirrored.discard(company_id)
        self.kick()

    # ------------------------------------------------------------------ tracking

    def track(
        self, key: TaskKey, uid: str, spec: RegistryTaskSpec, created: str, status: dict[str, Any]
    ) -> tuple[TrackedTask, bool]:
        """Remember a task (new, or listed at start-up) and queue it unless it ended or runs.

        Called for every watch event of the task: idempotent. True when it was not known.
        """
        task = self.tasks.get(key)
        is_new = task is None
        phase = Phase(status["phase"]) if status.get("phase") else Phase.QUEUED
        if task is None:
            task = TrackedTask(
                key,
                uid,
                spec,
                created,
                phase,
                int(status.get("progress") or 0),
                str(status.get("currentStep") or ""),
            )
            self.tasks[key] = task
        if task.phase in TERMINAL_PHASES or not is_new:
            return task, is_new
        if not self.state.is_running(key):
            self.state.submit(task.candidate())
        self.kick()
        return task, is_new

    def kick(self) -> None:
        self._kick.set()

    def emit(self, task: TrackedTask, kind: str, reason: str, message: str) -> None:
        """Record a decision as a Kubernetes Event on the task; never blocks nor fails a caller."""
        involved = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "RegistryTask",
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

    # ------------------------------------------------------------------ the scheduler

    async def run(self, stop: asyncio.Event) -> None:
        """The single decision loop: wakes on every kick, and at least every few seconds."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._kick.wait(), timeout=self.settings.status_sync_interval_s
                )
            self._kick.clear()
            try:
                await self.step()
            except Exception:
                log.exception("scheduler_step_failed")

    async def step(self) -> Decisions:
        windows = await self._llm_windows()

        def rate(company_id: str, pending: int) -> RateVerdict:
            used, reset_in = windows.get(company_id, (0, 0))
            limit = self.company_limits(company_id)[0].max_llm_requests_per_hour
            return RateVerdict(used + pending < limit, reset_in)

        async with self._lock:
            decisions = self.state.decide(self.company_limits, rate)
            # Marked in the same critical section: a reconcile that lists Jobs meanwhile must
            # count these slots as taken even though their Jobs do not exist yet.
            self._launching.update(c.key for c in decisions.admitted)
        # Launches first: under a burst, hundreds of waiting reports would otherwise queue in
        # front of the Job creations on the shared connection pool.
        await asyncio.gather(
            *(self._launch_guarded(c) for c in decisions.admitted),
            *(self._refuse(r.candidate, r.message) for r in decisions.refused),
        )
        # Most waiting tasks are where they were at the last step: only the moved ones cost a
        # coroutine (with 10,000 tasks waiting, a step would otherwise build 10,000 of them).
        moved = [w for w in decisions.waiting if self._wait_changed(w)]
        await asyncio.gather(*(self._report_waiting(w) for w in moved))
        return decisions

    def _wait_changed(self, waiting: Waiting) -> bool:
        task = self.tasks.get(waiting.candidate.key)
        if task is None:
            return False
        reason = waiting.reason.value
        return task.published_wait != (waiting.position, reason) or task.reported_wait != (
            waiting.position,
            reason,
            waiting.retry_after_s // 60,
        )

    async def _llm_windows(self) -> dict[str, tuple[int, int]]:
        companies = {
            t.company_id
            for t in self.tasks.values()
            if self.state.is_queued(t.key) and TASK_TYPES[t.task_type].uses_llm
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
        task = self.tasks.get(candidate.key)
        try:
            if task is None:  # forgotten (deleted) between the decision and now
                async with self._lock:
                    self.state.release(candidate.key)
                return
            await self.launch(task)
        except Exception as exc:
            log.exception("task_launch_failed", task=str(candidate.key))
            if task is not None and isinstance(exc, KubeError) and exc.status == 404:
                self.forget_namespace(task.tenant_namespace)  # removed behind our back: rebuild
            if task is not None:
                async with self._lock:
                    self.state.release(task.key)
                    self.state.submit(task.candidate())
                self.emit(task, "Warning", "LaunchFailed", str(exc)[:500])
            await asyncio.sleep(1.0)
            self.kick()
        finally:
            self._launching.discard(candidate.key)

    async def ensure_tenant(self, user_id: str, company_id: str) -> str:
        namespace = naming.tenant_namespace(user_id, company_id)
        # One apply at a time per namespace: the launches of one step for the same tenant all
        # arrive here together, and all but the first find it freshly applied.
        async with self._tenant_locks.setdefault(namespace, asyncio.Lock()):
            max_tasks = self.max_tasks_per_user(company_id)
            fences = self._fences_applied.get(namespace)
            fresh = fences is not None and fences[1] == max_tasks
            applied = self._namespaces_applied.get(namespace)
            if fresh and applied is not None and time.monotonic() - applied < LAST_USED_REFRESH_S:
                return namespace
            await self.kube.apply(isolation.namespace_manifest(user_id, company_id, now_iso()))
            if not fresh:
                for manifest in isolation.namespaced_manifests(
                    user_id, company_id, self.settings, max_tasks
                ):
                    await self.kube.apply(manifest)
                self._fences_applied[namespace] = (time.monotonic(), max_tasks)
            self._namespaces_applied[namespace] = time.monotonic()
        return namespace

    def max_tasks_per_user(self, company_id: str) -> int:
        """The company's maxTasksPerUser: what its tenants' ResourceQuotas are sized for."""
        return self.company_limits(company_id)[0].max_tasks_per_user

    def applied_within(self, namespace: str, seconds: float) -> bool:
        """Whether this process applied the namespace's fences in the last ``seconds``."""
        applied = self._fences_applied.get(namespace)
        return applied is not None and time.monotonic() - applied[0] < seconds

    def forget_namespace(self, namespace: str) -> None:
        self._namespaces_applied.pop(namespace, None)
        self._fences_applied.pop(namespace, None)

    async def launch(self, task: TrackedTask) -> None:
        spec = task.spec
        namespace = await self.ensure_tenant(spec.user_id, spec.company_id)
        metrics.ADMISSION_WAIT.labels(spec.company_id).observe(
            max(0.0, time.time() - parse_iso(task.created).timestamp())
        )
        task.admitted_at = time.time()
        job = jobs.build_job(spec, task.key.name, task.key.namespace, self.settings)
        created = await self.kube.create(job)
        task.launched_mono = task.progress_patched_at = time.monotonic()
        if not created:
            # Launched by an earlier life of the operator: follow that Job, whatever its state.
            existing = await self.kube.get(
                object_path("batch/v1", "Job", namespace, job["metadata"]["name"])
            )
            outcome = jobs.read_job_status((existing or {}).get("status"))
            if outcome.phase is not None:
                await self.finish(
                    task,
                    outcome.phase,
                    outcome.reason,
                    outcome.message,
                    attempts=outcome.attempts,
                    start_time=outcome.start_time,
                )
                return
        if task.phase in TERMINAL_PHASES:
            return  # finished (or cancelled) while this launch was under way
        task.phase = Phase.RUNNING
        await self.patch_status(
            task,
            {
                "phase": Phase.RUNNING.value,
                "namespace": namespace,
                "jobName": job["metadata"]["name"],
                "admittedAt": now_iso(),
                "queuePosition": None,
                "retryAfter": None,
                "reason": "Admitted",
                "message": f"running in namespace {namespace}",
                "conditions": [
                    _condition(
                        "Admitted",
                        ConditionStatus.TRUE,
                        "QuotaAvailable",
                        "within the company's quotas",
                    ),
                ],
            },
        )
        await self.mirror.publish(task.snapshot(Phase.RUNNING, current_step="starting"))
        self.emit(
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

    async def _report_waiting(self, waiting: Waiting) -> None:
        task = self.tasks.get(waiting.candidate.key)
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
            await self._publish_waiting(task, waiting)
            return
        task.reported_wait = marker
        task.reported_at = time.monotonic()
        task.phase = Phase.WAITING
        quotas, _ = self.company_limits(task.company_id)
        if waiting.retry_after_s:
            message = (
                f"company LLM quota of {quotas.max_llm_requests_per_hour}/hour reached; "
                f"position {waiting.position} in the company queue"
            )
            retry_after: str | None = datetime.fromtimestamp(
                time.time() + waiting.retry_after_s, UTC
            ).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            message = (
                f"user has {quotas.max_tasks_per_user} running tasks (the company's "
                f"limit); position {waiting.position} in the company queue"
            )
            retry_after = None
        await self.patch_status(
            task,
            {
                "phase": Phase.WAITING.value,
                "queuePosition": waiting.position,
                "retryAfter": retry_after,
                "reason": waiting.reason.value,
                "message": message,
                "conditions": [
                    _condition("Admitted", ConditionStatus.FALSE, waiting.reason.value, message)
                ],
            },
        )
        await self._publish_waiting(task, waiting)

    async def _publish_waiting(self, task: TrackedTask, waiting: Waiting) -> None:
        """The registry and the events: every change of position, real time (Redis only)."""
        marker = (waiting.position, waiting.reason.value)
        if task.published_wait == marker:
            return
        task.published_wait = marker
        await self.mirror.publish(
            task.snapshot(
                Phase.WAITING,
                queue_position=waiting.position,
                reason=waiting.reason.value,
                current_step="waiting_quota",
            )
        )

    async def refuse_invalid(self, key: TaskKey, error: str) -> None:
        """A spec the CRD schema let through but the model refuses: Failed, with the reason."""
        await self.kube.patch_merge(
            task_path(key.namespace, key.name, status=True),
            {
                "status": {
                    "phase": Phase.FAILED.value,
                    "reason": "InvalidSpec",
                    "message": error[:1000],
                }
            },
        )

    async def _refuse(self, candidate: Candidate, message: str) -> None:
        task = self.tasks.get(candidate.key)
        if task is not None:
            self.emit(task, "Warning", "QuotaExceeded", message)
            await self.finish(task, Phase.FAILED, "QuotaExceeded", message)

    # ------------------------------------------------------------------ following and finishing

    async def patch_status(self, task: TrackedTask, status: dict[str, Any]) -> bool:
        """Merge-patch the task's status; False when the task is gone or the write is stale.

        The controller is the only writer of a task's status besides Kopf's deletion
        bookkeeping. Writes of one task are serialised, and once the task has ended (in memory:
        ``finish`` sets the phase before it writes) only the final write goes through: a
        ``Running`` or a progress write still waiting for a connection under a burst can never
        land after ``Succeeded`` and leave the task looking alive.
        """
        async with task.status_lock:
            phase = status.get("phase")
            if task.phase in TERMINAL_PHASES and (phase is None or phase != task.phase.value):
                return False
            body = await self.kube.patch_merge(
                task_path(task.key.namespace, task.key.name, status=True), {"status": status}
            )
        return body is not None

    async def job_changed(self, key: TaskKey, outcome: jobs.JobOutcome) -> None:
        task = self.tasks.get(key)
        if task is None or task.phase in TERMINAL_PHASES:
            return
        if outcome.phase is None:
            return
        await self.finish(
            task,
            outcome.phase,
            outcome.reason,
            outcome.message,
            attempts=outcome.attempts,
            start_time=outcome.start_time,
        )

    async def finish(
        self,
        task: TrackedTask,
        phase: Phase,
        reason: str,
        message: str,
        attempts: int | None = None,
        start_time: str | None = None,
    ) -> None:
        """Record the end everywhere, release the slot, clean the token. Idempotent."""
        if task.phase in TERMINAL_PHASES:
            return
        task.phase = phase
        result: dict[str, Any] | None = None
        if phase is Phase.SUCCEEDED:
            task.progress = 100
            try:
                stored = await self.mirror.registry.get_task(task.task_id)
                result = stored.result if stored else None
            except Exception as exc:  # noqa: BLE001 - the result is a bonus in the CR
                log.warning("task_result_unavailable", task_id=task.task_id, error=str(exc))
        status: dict[str, Any] = {
            "phase": phase.value,
            "reason": reason,
            "message": message,
            "completionTime": now_iso(),
            "queuePosition": None,
            "conditions": [
                _condition("Finished", ConditionStatus.TRUE, reason, message or phase.value)
            ],
        }
        if phase is Phase.SUCCEEDED:
            status["progress"] = 100
        if attempts is not None:
            status["attempts"] = attempts
        if start_time:
            status["startTime"] = start_time
        if result is not None:
            status["result"] = result
        await self.patch_status(task, status)
        await self.mirror.publish(
            task.snapshot(phase, reason=reason, message=message, result=result)
        )
        metrics.TASKS_FINISHED.labels(task.task_type.value, task.company_id, phase.value).inc()
        if task.admitted_at is not None:
            metrics.JOB_DURATION.labels(task.task_type.value, phase.value).observe(
                time.time() - task.admitted_at
            )
        async with self._lock:
            self.state.release(task.key)
        self.emit(
            task,
            "Normal" if phase is Phase.SUCCEEDED else "Warning",
            reason or phase.value,
            message or f"task {phase.value.lower()}",
        )
        self.kick()

    async def cancel(self, task: TrackedTask, reason: str, message: str) -> None:
        """Stop the Job if any and end as Cancelled."""
        if task.phase in TERMINAL_PHASES:
            return
        await self.kube.delete(
            "batch/v1", "Job", task.tenant_namespace, naming.job_name(task.task_id)
        )
        await self.finish(task, Phase.CANCELLED, reason, message)

    async def forget(self, key: TaskKey) -> None:
        async with self._lock:
            self.state.release(key)
        self.tasks.pop(key, None)
        self.kick()

    # ------------------------------------------------------------------ reconciliation

    async def reconcile(self, live_jobs: list[dict[str, Any]], listed_at: float) -> None:
        """Make the admission counters equal to the live Jobs; requeue tasks that lost theirs.

        ``listed_at`` is the ``time.monotonic()`` taken before the Jobs were listed: a task
        launched since then has a Job the list may not show yet, and keeps its slot.
        """
        running: list[Candidate] = []
        finished: list[tuple[TaskKey, jobs.JobOutcome]] = []
        with_job: set[TaskKey] = set()
        for job in live_jobs:
            meta = job.get("metadata") or {}
            annotations = meta.get("annotations") or {}
            labels = meta.get("labels") or {}
            task_ns = annotations.get(naming.ANNOTATION_TASK_NAMESPACE)
            task_name = labels.get(naming.LABEL_TASK)
            if not task_ns or not task_name or not self.settings.handles_namespace(task_ns):
                continue
            key = TaskKey(task_ns, task_name)
            with_job.add(key)
            outcome = jobs.read_job_status(job.get("status"))
            if outcome.phase is not None:
                finished.append((key, outcome))
                continue
            if meta.get("deletionTimestamp"):
                continue
            task = self.tasks.get(key)
            if task is not None:
                if task.phase not in TERMINAL_PHASES:
                    running.append(task.candidate())
                continue
            # A Job whose task has not been seen yet (start-up): its slot counts all the same.
            running.append(
                Candidate(
                    key=key,
                    task_id=annotations.get(naming.ANNOTATION_TASK, task_name),
                    user_id=annotations.get(naming.ANNOTATION_USER, ""),
                    company_id=annotations.get(naming.ANNOTATION_COMPANY, ""),
                    priority=Priority.NORMAL,
                    created=parse_iso(meta.get("creationTimestamp") or now_iso()).timestamp(),
                )
            )
        # Finished Jobs first: their tasks end, and are then neither running nor requeued.
        for key, outcome in finished:
            await self.job_changed(key, outcome)
        recent = {
            key
            for key, task in self.tasks.items()
            if key in self._launching or task.launched_mono >= listed_at
        }
        async with self._lock:
            truth = running + [
                self.tasks[k].candidate()
                for k in recent
                if self.tasks[k].phase not in TERMINAL_PHASES and all(c.key != k for c in running)
            ]
            added, dropped = self.state.rebuild(truth)
            for task in self.tasks.values():
                if task.phase in TERMINAL_PHASES or task.key in with_job:
                    continue
                if not self.state.is_running(task.key) and not self.state.is_queued(task.key):
                    self.state.submit(task.candidate())  # its Job vanished: run it again
        if added or dropped:
            log.warning("admission_counters_rebuilt", added=added, dropped=dropped)
        self.kick()

    async def sync_progress(self) -> int:
        """Copy runner progress from the registry into CR status (throttled by the caller)."""
        patched = 0
        now = time.monotonic()
        for task in list(self.tasks.values()):
            if task.phase is not Phase.RUNNING:
                continue
            try:
                stored = await self.mirror.registry.get_task(task.task_id)
            except Exception:  # noqa: BLE001 - Redis down: the next round will catch up
                return patched
            if stored is None:
                continue
            progress = stored.progress.progress_percent
            step = stored.progress.current_step
            if (progress, step) == (task.progress, task.current_step):
                continue
            if now - task.progress_patched_at < self.settings.progress_status_interval_s:
                continue  # the registry has it in real time; the CR follows at this pace
            task.progress, task.current_step = progress, step
            task.progress_patched_at = now
            if task.phase is Phase.RUNNING:
                await self.patch_status(task, {"progress": progress, "currentStep": step})
                patched += 1
        return patched

    async def publish_quota_usage(self) -> int:
        """Patch each CompanyQuota's status with its company's running and waiting counts."""
        patched = 0
        for company_id, key in list(self.quota_objects.items()):
            usage = self.queue_summary(company_id)
            if self._quota_shown.get(company_id) == usage:
                continue
            body = await self.kube.patch_merge(
                quota_path(key.namespace, key.name, status=True), {"status": usage}
            )
            if body is None:
                self.quota_objects.pop(company_id, None)
                continue
            self._quota_shown[company_id] = usage
            patched += 1
        return patched

    def queue_summary(self, company_id: str) -> dict[str, int]:
        return {
            "activeTasks": self.state.running_count(company_id),
            "waitingTasks": self.state.queued_count(company_id),
        }
