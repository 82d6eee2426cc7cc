"""The cluster's truth fed back into the operator's memory, and its memory into task status.

- Jobs: a Job's end finishes its task (:meth:`Reconciler.job_seen`, from the Job watch), and
  every ``REGTASK_RECONCILE_INTERVAL_S`` (and in each prime, after every task was listed) the
  admission counters are rebuilt from the live Jobs (:meth:`Reconciler.reconcile`): a Job that
  finished while the operator was down finishes its
  task, a live Job of a finished task is deleted (and holds its slot until it is gone: a
  cancelled task's pods may still be terminating), a running task whose Job vanished ends
  ``Failed`` (``JobLost``). Only a task's own Job (:func:`owns`: its namespace, its derived
  name, the task's UID) counts for it; a Job naming a task it does not belong to is ignored (an
  Event on the task says so), and a Job naming no known task holds no slot.
- Progress: the runners' progress, written by the gateway in the registry, is copied into the
  CR status at most every ``REGTASK_PROGRESS_STATUS_INTERVAL_S`` per task.
- Quota usage: each CompanyQuota's status shows its company's running and waiting counts.

Hazard: a task launched after the Jobs were listed has a Job the list may not show yet;
``listed_at`` (taken before the list) and the tracker's launching set keep its slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from regtask import naming
from regtask.crmodels import TERMINAL_PHASES, Phase
from regtask_operator import jobs
from regtask_operator.admission import Candidate, TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, KubeError, quota_path
from regtask_operator.mirror import Mirror
from regtask_operator.status import StatusWriter, progress_status
from regtask_operator.tasks import TaskTracker, TrackedTask

log = structlog.get_logger(__name__)


def job_task_key(job: dict[str, Any], settings: OperatorSettings) -> TaskKey | None:
    """The task a Job says it runs (its annotations and labels), if this operator handles it."""
    meta = job.get("metadata") or {}
    task_ns = (meta.get("annotations") or {}).get(naming.ANNOTATION_TASK_NAMESPACE)
    task_name = (meta.get("labels") or {}).get(naming.LABEL_TASK)
    if not task_ns or not task_name or not settings.handles_namespace(task_ns):
        return None
    return TaskKey(task_ns, task_name)


def owns(task: TrackedTask, job: dict[str, Any]) -> bool:
    """Whether a Job is this task's own: in the task's tenant namespace, under its derived
    name, created for this task (its UID). Labels and annotations anyone can write are never
    enough: a Job that is not the task's neither ends it nor holds its slot."""
    meta = job.get("metadata") or {}
    return (
        meta.get("namespace") == task.tenant_namespace
        and meta.get("name") == naming.job_name(task.task_id)
        and jobs.belongs_to(job, task.uid)
    )


@dataclass
class Reconciler:
    settings: OperatorSettings
    kube: Kube
    tracker: TaskTracker
    status: StatusWriter
    mirror: Mirror
    # (task, Job namespace/name) pairs already reported as foreign (one Event each)
    _foreign_reported: set[tuple[TaskKey, str]] = field(default_factory=set)
    # company_id -> the usage its CompanyQuota's status shows
    _quota_shown: dict[str, dict[str, int]] = field(default_factory=dict)
    # company_id -> time.monotonic() at which its changed usage is written (quota_usage_interval_s)
    _quota_due: dict[str, float] = field(default_factory=dict)
    # running task -> the Job summary its status shows (status.job)
    _job_shown: dict[TaskKey, dict[str, Any]] = field(default_factory=dict)
    # running task -> its Job as last seen, not yet summarised in its status, and the
    # time.monotonic() from which sync_jobs may write it (REGTASK_JOB_STATUS_INTERVAL_S)
    _job_owed: dict[TaskKey, dict[str, Any]] = field(default_factory=dict)
    _job_due: dict[TaskKey, float] = field(default_factory=dict)

    def forget_shown(self, company_id: str | None = None) -> None:
        """What the CompanyQuotas' status shows is unknown again (another replica wrote it, or
        the company's CompanyQuota was deleted: a new one starts with an empty status); with no
        company (a prime), the tasks' Job summaries too."""
        if company_id is None:
            self._quota_shown.clear()
            self._quota_due.clear()
            self._job_shown.clear()
            self._job_owed.clear()
            self._job_due.clear()
        else:
            self._quota_shown.pop(company_id, None)
            self._quota_due.pop(company_id, None)

    async def live_jobs(self) -> list[dict[str, Any]]:
        """Every Job of this operator (of its shard), in every namespace."""
        return await self.kube.list(
            "/apis/batch/v1/jobs", label_selector=self.settings.managed_selector
        )

    # ------------------------------------------------------------------ Jobs

    async def job_seen(self, job: dict[str, Any]) -> None:
        """A watch event of a Job: its end ends its task; a Job still running for a task that
        ended (a cancel that raced its launch) is deleted; a Job that is not the task's own
        (:func:`owns`) decides nothing."""
        key = job_task_key(job, self.settings)
        task = self.tracker.tasks.get(key) if key is not None else None
        if task is None:
            return
        if not owns(task, job):
            self._report_foreign(task, job)
            return
        outcome = jobs.read_job_status(job.get("status"))
        if task.phase in TERMINAL_PHASES:
            if outcome.phase is None and not (job.get("metadata") or {}).get("deletionTimestamp"):
                await self.status.delete_job(task)
            return
        if outcome.phase is not None:
            summary = jobs.job_summary(job, await self._pods_of(job))
            self._forget_job(task.key)
            await self.status.finish_as_job(task, outcome, job=summary)
            return
        # Still running: its summary waits for sync_jobs (one write for a burst of changes,
        # none for a task that ends first: its end writes the last summary).
        self._job_owed[task.key] = job
        self._job_due.setdefault(task.key, time.monotonic() + self.settings.job_status_interval_s)

    def _forget_job(self, key: TaskKey) -> None:
        self._job_shown.pop(key, None)
        self._job_owed.pop(key, None)
        self._job_due.pop(key, None)

    async def sync_jobs(self) -> int:
        """Write the Job summaries owed to running tasks whose time has come (status-sync
        loop); returns how many were written. A task that ended or left meanwhile is dropped."""
        now = time.monotonic()
        written = 0
        for key in [k for k, due in self._job_due.items() if due <= now]:
            job = self._job_owed.pop(key, None)
            task = self.tracker.tasks.get(key)
            if job is None or task is None or task.phase is not Phase.RUNNING:
                # Nothing new since the last write (the next change waits an interval again),
                # or nothing to show it on.
                self._job_due.pop(key, None)
                continue
            self._job_due[key] = now + self.settings.job_status_interval_s
            summary = jobs.job_summary(job, await self._pods_of(job))
            if self._job_shown.get(key) != summary and await self.status.write(
                task, {"job": summary}
            ):
                self._job_shown[key] = summary
                written += 1
        return written

    async def _pods_of(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The Job's own pods (read-only, its namespace only); none when the API refuses: the
        summary is informative and never holds up the task's end."""
        selector = jobs.pods_selector(job)
        namespace = (job.get("metadata") or {}).get("namespace")
        if selector is None or not namespace:
            return []
        try:
            return await self.kube.list(f"/api/v1/namespaces/{namespace}/pods", selector)
        except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("job_pods_unreadable", namespace=namespace, error=str(exc))
            return []

    def _report_foreign(self, task: TrackedTask, job: dict[str, Any]) -> None:
        """A Job that names this task but is not its own: ignored, said once on the task."""
        meta = job.get("metadata") or {}
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        if (task.key, where) in self._foreign_reported:
            return
        self._foreign_reported.add((task.key, where))
        log.warning("foreign_job_ignored", task=str(task.key), job=where)
        self.status.emit(
            task,
            "Warning",
            "ForeignJobIgnored",
            f"Job {where} names this task but is not its own (its namespace, name or task UID "
            "differ): it decides nothing and holds no slot",
        )

    def job_gone(self, job: dict[str, Any]) -> None:
        """A Job's DELETED event: a task that ended while it ran gets its slot back now (a
        foreground deletion sends it once the pods are gone)."""
        key = job_task_key(job, self.settings)
        task = self.tracker.tasks.get(key) if key is not None else None
        if key is not None:
            self._forget_job(key)
        if task is not None and key is not None and owns(task, job):
            self.tracker.drained(key)

    async def reconcile(self, live_jobs: list[dict[str, Any]], listed_at: float) -> None:
        """Make the admission counters equal to the live Jobs; settle what they contradict.

        ``listed_at`` is the ``time.monotonic()`` taken before the Jobs were listed: a task
        launched since then has a Job the list may not show yet, and keeps its slot. A Job that
        finished ends its task; a live Job of a task that ended is deleted; a task that was
        running and whose Job is gone ends ``Failed`` (``JobLost``): its work is not run again
        from scratch behind the user's back.
        """
        tracker = self.tracker
        listed_wall = time.time() - (time.monotonic() - listed_at)  # tasks' ends are wall times
        running: list[Candidate] = []
        finished: list[tuple[TrackedTask, jobs.JobOutcome]] = []
        orphans: list[TrackedTask] = []
        with_job: set[TaskKey] = set()
        draining: set[TaskKey] = set()
        for job in live_jobs:
            key = job_task_key(job, self.settings)
            if key is None:
                continue
            meta = job.get("metadata") or {}
            task = tracker.tasks.get(key)
            if task is not None and not owns(task, job):
                continue  # not this task's Job: it decides nothing (and takes no slot of it)
            outcome = jobs.read_job_status(job.get("status"))
            if task is not None:
                with_job.add(key)
                if outcome.phase is not None:
                    if task.phase not in TERMINAL_PHASES:
                        finished.append((task, outcome))
                elif task.phase in TERMINAL_PHASES:
                    # Its pods may still run (or terminate): the slot stays taken until the
                    # Job is gone, and a Job nobody is deleting is deleted now; unless the
                    # task ended after the list was taken: the list is older than its end,
                    # and a Job that has finished since looks running in it (CI: a Complete
                    # Job deleted within its TTL).
                    running.append(task.candidate())
                    draining.add(key)
                    ended = task.finished_at
                    if (
                        not meta.get("deletionTimestamp")
                        and ended is not None
                        and ended < listed_wall
                    ):
                        orphans.append(task)
                elif not meta.get("deletionTimestamp"):
                    running.append(task.candidate())
                continue
            # A Job whose task is not known: every task was listed before the first reconcile
            # (Controller.prime), so none of ours. Its labels and annotations are anyone's to
            # write: it takes no slot, whoever it names.
        # Finished Jobs first: their tasks end, and are then neither running nor requeued.
        for task, outcome in finished:
            await self.status.finish_as_job(task, outcome)
        for task in orphans:
            log.warning("job_of_finished_task_deleted", task=str(task.key))
            await self.status.delete_job(task)
        recent = {
            key
            for key, task in tracker.tasks.items()
            if key in tracker.launching or task.launched_mono >= listed_at
        }
        lost: list[TrackedTask] = []
        async with tracker.lock:
            truth = running + [
                tracker.tasks[k].candidate()
                for k in recent
                if tracker.tasks[k].phase not in TERMINAL_PHASES
                and all(c.key != k for c in running)
            ]
            added, dropped = tracker.state.rebuild(truth)
            # Ended tasks whose Job is gone: nothing left to wait for.
            tracker.draining = draining | (tracker.draining & recent)
            for task in tracker.tasks.values():
                if task.phase in TERMINAL_PHASES or task.key in with_job or task.key in recent:
                    continue
                if task.phase is Phase.RUNNING:
                    lost.append(task)  # launched, and its Job is gone
                elif not tracker.state.is_queued(task.key):
                    tracker.state.submit(task.candidate())
        if added or dropped:
            log.warning("admission_counters_rebuilt", added=added, dropped=dropped)
        for task in lost:
            await self.status.finish(
                task,
                Phase.FAILED,
                "JobLost",
                f"its Job {naming.job_name(task.task_id)} is gone (deleted, or removed by its "
                "TTL while the operator was away); the work is not run again",
            )
        tracker.kick()

    # ------------------------------------------------------------------ status sync

    async def sync_progress(self) -> int:
        """Copy runner progress from the registry into CR status (throttled by the caller).
        One pipelined read for all running tasks (a GET each was one round trip per task)."""
        patched = 0
        now = time.monotonic()
        running = [t for t in self.tracker.tasks.values() if t.phase is Phase.RUNNING]
        if not running:
            return 0
        try:
            docs = await self.mirror.registry.get_tasks([t.task_id for t in running])
        except Exception:  # noqa: BLE001 - Redis down: the next round will catch up
            return 0
        for task, stored in zip(running, docs, strict=True):
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
                await self.status.write(task, progress_status(progress, step))
                patched += 1
        return patched

    async def publish_quota_usage(self) -> int:
        """Patch the CompanyQuota status of each company whose running or waiting count moved
        (or whose quota object is new): the round's work follows what changed, not the number
        of companies. A company already shown is written ``quota_usage_interval_s`` after its
        first change, with the usage of then: the changes meanwhile cost one write, or none
        when they cancel out. A failed patch is owed to the next round."""
        tracker = self.tracker
        now = time.monotonic()
        delay = self.settings.quota_usage_interval_s
        ready: set[str] = set()
        for company_id in tracker.take_usage_changes():
            if delay and company_id in self._quota_shown:
                self._quota_due.setdefault(company_id, now + delay)
            else:
                ready.add(company_id)
        for company_id, due in list(self._quota_due.items()):
            if due <= now:
                del self._quota_due[company_id]
                ready.add(company_id)
        patched = 0
        owed = sorted(ready)
        for done, company_id in enumerate(owed):
            key = tracker.quota_objects.get(company_id)
            if key is None:
                continue  # no CompanyQuota shows this company's usage
            usage = tracker.queue_summary(company_id)
            if self._quota_shown.get(company_id) == usage:
                continue
            try:
                body = await self.kube.patch_merge(
                    quota_path(key.namespace, key.name, status=True), {"status": usage}
                )
            except BaseException:
                tracker.usage_owed.update(owed[done:])
                raise
            if body is None:
                tracker.quota_objects.pop(company_id, None)
                continue
            self._quota_shown[company_id] = usage
            patched += 1
        return patched
