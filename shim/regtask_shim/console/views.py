"""Page models of the console, built from what :mod:`.source` read. Pure: no I/O, so every
figure a page shows is unit-tested here, and the JSON API returns exactly these models."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from regtask.crmodels import (
    CompanyQuotaSpec,
    JobSummary,
    Phase,
    RegistryTaskSpec,
    RegistryTaskStatus,
)
from regtask.documents import TaskStep
from regtask.runner_contract import FAILURE_STEP
from regtask_shim.console.eta import company_plan

WAITING_PHASES = frozenset({Phase.QUEUED, Phase.WAITING})
FINISHED_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
SPARK_MINUTES = 30


class Task(BaseModel):
    """One RegistryTask as the console shows it (live progress from the registry when known)."""

    task_id: str
    task_type: str
    user_id: str
    company_id: str
    priority: str
    phase: str
    created: datetime | None = None
    queue_position: int | None = None
    reason: str | None = None
    message: str | None = None
    progress: int = 0
    current_step: str | None = None
    admitted_at: datetime | None = None
    completion_time: datetime | None = None
    namespace: str | None = None
    job_name: str | None = None
    attempts: int | None = None
    result: dict[str, Any] | None = None
    job: JobSummary | None = None  # the Job and its pods, as the operator last recorded them
    cancel_requested: bool = False
    conditions: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES


class Live(BaseModel):
    """The registry's view of a running task: fresher than the CR status (throttled)."""

    progress: int
    current_step: str


def task_from_resource(obj: Mapping[str, Any], live: Live | None = None) -> Task | None:
    """None for an object that is not a readable RegistryTask (never breaks a page)."""
    try:
        spec = RegistryTaskSpec.model_validate(obj.get("spec") or {})
        status = RegistryTaskStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        return None
    created_raw = (obj.get("metadata") or {}).get("creationTimestamp")
    phase = status.phase or Phase.QUEUED
    progress, step = status.progress or 0, status.current_step
    if live is not None and phase == Phase.RUNNING:
        progress, step = live.progress, live.current_step
    if phase == Phase.SUCCEEDED:
        progress = 100
    return Task(
        task_id=spec.task_id,
        task_type=spec.task_type.value,
        user_id=spec.user_id,
        company_id=spec.company_id,
        priority=spec.priority.value,
        phase=phase.value,
        created=datetime.fromisoformat(created_raw) if isinstance(created_raw, str) else None,
        queue_position=status.queue_position,
        reason=status.reason,
        message=status.message,
        progress=progress,
        current_step=step,
        admitted_at=status.admitted_at,
        completion_time=status.completion_time,
        namespace=status.namespace,
        job_name=status.job_name,
        attempts=status.attempts,
        result=status.result,
        job=status.job,
        cancel_requested=spec.cancel,
        conditions=[c.model_dump(mode="json", by_alias=True) for c in status.conditions],
    )


class Spark(BaseModel):
    """Admissions and completions per minute over the last ``SPARK_MINUTES`` minutes."""

    admitted: list[int]
    completed: list[int]


def sparkline(tasks: Iterable[Task], now: datetime) -> Spark:
    admitted = [0] * SPARK_MINUTES
    completed = [0] * SPARK_MINUTES
    for task in tasks:
        for moment, series in ((task.admitted_at, admitted), (task.completion_time, completed)):
            if moment is None:
                continue
            ago = int((now - moment).total_seconds() // 60)
            if 0 <= ago < SPARK_MINUTES:
                series[SPARK_MINUTES - 1 - ago] += 1
    return Spark(admitted=admitted, completed=completed)


class Quota(BaseModel):
    max_tasks_per_user: int
    max_llm_requests_per_hour: int
    storage_limit_mb: int
    rate_limit_policy: str
    defined: bool  # False: no CompanyQuota, the defaults shown apply
    max_tasks_per_company: int | None = None  # None: no company cap


class Usage(BaseModel):
    llm_requests: int = 0
    llm_window: str = "last 60 min"
    llm_tokens: int | None = None
    storage_mb: float = 0.0


class CompanySummary(BaseModel):
    company_id: str
    running: int
    waiting: int
    finished: int
    failed_last_hour: int
    busiest_user_running: int
    quota: Quota
    usage: Usage


class Overview(BaseModel):
    companies: list[CompanySummary]
    spark: Spark
    generated_at: datetime


def quota_of(quotas: Iterable[Mapping[str, Any]], company_id: str) -> Quota:
    """The company's CompanyQuota (first by name, as the CLI reads it), else the defaults."""
    found: list[tuple[str, CompanyQuotaSpec]] = []
    for obj in quotas:
        try:
            spec = CompanyQuotaSpec.model_validate(obj.get("spec") or {})
        except ValidationError:
            continue
        if spec.company_id == company_id:
            found.append((str((obj.get("metadata") or {}).get("name", "")), spec))
    spec = min(found, key=lambda f: f[0])[1] if found else CompanyQuotaSpec(company_id=company_id)
    return Quota(
        max_tasks_per_user=spec.max_tasks_per_user,
        max_llm_requests_per_hour=spec.max_llm_requests_per_hour,
        storage_limit_mb=spec.storage_limit_mb,
        rate_limit_policy=spec.rate_limit_policy.value,
        defined=bool(found),
        max_tasks_per_company=spec.max_tasks_per_company,
    )


def companies_in(
    tasks: Iterable[Task], quotas: Iterable[Mapping[str, Any]], scope: frozenset[str] | None
) -> list[str]:
    """Every company with a task or a quota, limited to ``scope`` (None: all)."""
    names = {t.company_id for t in tasks}
    names |= {str((q.get("spec") or {}).get("companyId")) for q in quotas if q.get("spec")}
    if scope is not None:
        names &= scope
    return sorted(names)


def summarize(
    company_id: str, tasks: list[Task], quota: Quota, usage: Usage, now: datetime
) -> CompanySummary:
    mine = [t for t in tasks if t.company_id == company_id]
    hour_ago = now - timedelta(hours=1)
    running_by_user = Counter(t.user_id for t in mine if t.phase == Phase.RUNNING)
    return CompanySummary(
        company_id=company_id,
        running=sum(running_by_user.values()),
        waiting=sum(1 for t in mine if t.phase in WAITING_PHASES),
        finished=sum(1 for t in mine if t.finished),
        failed_last_hour=sum(
            1
            for t in mine
            if t.phase == Phase.FAILED and t.completion_time and t.completion_time >= hour_ago
        ),
        busiest_user_running=max(running_by_user.values(), default=0),
        quota=quota,
        usage=usage,
    )


class QueuedTask(BaseModel):
    task: Task
    eta_start_s: float | None
    eta_done_s: float | None
    eta_note: str = ""


class RunningTask(BaseModel):
    task: Task
    elapsed_s: float | None
    remaining_s: float | None


class UserUsage(BaseModel):
    user_id: str
    running: int
    waiting: int
    finished: int
    limit: int


class CompanyPage(BaseModel):
    summary: CompanySummary
    queue: list[QueuedTask]
    running: list[RunningTask]
    users: list[UserUsage]
    recent: list[Task]
    spark: Spark
    generated_at: datetime


def company_page(
    company_id: str,
    objects: Sequence[Mapping[str, Any]],
    tasks: list[Task],
    quota: Quota,
    usage: Usage,
    now: datetime,
) -> CompanyPage:
    """``objects`` are the raw RegistryTasks (every company's: run-time history for the ETA)."""
    plan = company_plan(
        objects, company_id, quota.max_tasks_per_user, now, quota.max_tasks_per_company
    )
    by_id = {t.task_id: t for t in tasks}
    mine = [t for t in tasks if t.company_id == company_id]
    queue = [
        QueuedTask(
            task=by_id[row.record.task_id],
            eta_start_s=row.eta.start_in_s,
            eta_done_s=row.eta.done_in_s,
            eta_note=row.eta.note,
        )
        for row in plan.waiting
        if row.record.task_id in by_id
    ]
    # Queued (not yet seen by the operator) come after the Waiting ones, oldest first.
    planned = {q.task.task_id for q in queue}
    fresh = sorted(
        (t for t in mine if t.phase == Phase.QUEUED and t.task_id not in planned),
        key=lambda t: t.created or now,
    )
    queue += [QueuedTask(task=t, eta_start_s=None, eta_done_s=None) for t in fresh]
    running = [
        RunningTask(
            task=by_id[row.record.task_id], elapsed_s=row.elapsed_s, remaining_s=row.remaining_s
        )
        for row in plan.running
        if row.record.task_id in by_id
    ]
    users = []
    for user in sorted({t.user_id for t in mine}):
        theirs = [t for t in mine if t.user_id == user]
        users.append(
            UserUsage(
                user_id=user,
                running=sum(1 for t in theirs if t.phase == Phase.RUNNING),
                waiting=sum(1 for t in theirs if t.phase in WAITING_PHASES),
                finished=sum(1 for t in theirs if t.finished),
                limit=quota.max_tasks_per_user,
            )
        )
    recent = sorted(
        (t for t in mine if t.finished), key=lambda t: t.completion_time or now, reverse=True
    )[:20]
    return CompanyPage(
        summary=summarize(company_id, tasks, quota, usage, now),
        queue=queue,
        running=running,
        users=users,
        recent=recent,
        spark=sparkline(mine, now),
        generated_at=now,
    )


class KubeEvent(BaseModel):
    """One Kubernetes Event on the task: a decision of the operator, with its time."""

    time: datetime | None
    type: str
    reason: str
    message: str
    count: int = 1


def kube_event(obj: Mapping[str, Any]) -> KubeEvent:
    raw = obj.get("lastTimestamp") or obj.get("eventTime") or obj.get("firstTimestamp")
    moment: datetime | None = None
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            moment = None
    return KubeEvent(
        time=moment,
        type=str(obj.get("type") or ""),
        reason=str(obj.get("reason") or ""),
        message=str(obj.get("message") or ""),
        count=int(obj.get("count") or 1),
    )


class Step(BaseModel):
    """One step the runner reported: when, which, how far, and the data it carried."""

    time: datetime | None
    step: str
    progress: int
    data: dict[str, Any]


def step_of(entry: TaskStep) -> Step:
    try:
        moment: datetime | None = datetime.fromisoformat(entry.at)
    except ValueError:
        moment = None
    return Step(time=moment, step=entry.step, progress=entry.progress, data=entry.data)


class TaskPage(BaseModel):
    task: Task
    events: list[KubeEvent]
    steps: list[Step]  # oldest first, the last regtask.keys.TASK_STEP_HISTORY_CAP
    # The runner's own words on its last failure (its FAILURE_STEP's data), beside the Job's
    # reason: "BackoffLimitExceeded" says that it failed, this says why.
    runner_error: str | None = None
    cancellable: bool
    generated_at: datetime


def runner_error(steps: Sequence[Step]) -> str | None:
    failures = [s for s in steps if s.step == FAILURE_STEP and s.data.get("error")]
    return str(failures[-1].data["error"]) if failures else None


def task_page(
    task: Task, events: Iterable[Mapping[str, Any]], steps: Iterable[TaskStep], now: datetime
) -> TaskPage:
    history = sorted((kube_event(e) for e in events), key=lambda e: e.time or now)
    reported = [step_of(s) for s in steps]
    return TaskPage(
        task=task,
        events=history,
        steps=reported,
        runner_error=runner_error(reported),
        cancellable=not task.finished and not task.cancel_requested,
        generated_at=now,
    )
