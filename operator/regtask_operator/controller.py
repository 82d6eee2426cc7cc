"""The task lifecycle behind one small facade: what the Kopf handlers, the runtime's loops,
maintenance and metrics call. Admit, launch, follow, finish.

The work is done in five places, each with one concern:

- :mod:`~regtask_operator.tasks`: what the operator knows (tracked tasks, admission state,
  company limits);
- :mod:`~regtask_operator.scheduler`: the decision loop (step, waiting reports);
- :mod:`~regtask_operator.launcher`: the launches it decides, beside the step, bounded;
- :mod:`~regtask_operator.status`: what a task shows (one guarded status writer, the pure
  builders of each status body, its Events, its end);
- :mod:`~regtask_operator.reconcile`: the cluster's truth fed back (Jobs, progress, quota use);

plus :mod:`~regtask_operator.tenants` for the tenant namespaces. Every decision goes through
one :class:`~regtask_operator.admission.AdmissionState` under one lock (the scheduler step),
and every side effect is idempotent (derived names, create tolerating "already exists", status
guards), so a handler retried after a crash converges to the same state.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from pydantic import ValidationError

from regtask.crmodels import (
    API_GROUP,
    API_VERSION,
    QUOTA_PLURAL,
    TASK_KIND,
    TASK_PLURAL,
    TERMINAL_PHASES,
    CompanyQuotaSpec,
    Phase,
    RegistryTaskSpec,
)
from regtask.documents import Quotas
from regtask.shards import company_namespace, shard_of
from regtask.timeutil import now_iso
from regtask_operator.admission import TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, KubeError
from regtask_operator.launcher import Launcher
from regtask_operator.mirror import Mirror, TaskSnapshot
from regtask_operator.reconcile import Reconciler
from regtask_operator.scheduler import LlmWindow, Scheduler
from regtask_operator.status import StatusWriter
from regtask_operator.tasks import TaskTracker, TrackedTask
from regtask_operator.tenants import Tenants, busy_namespaces

log = structlog.get_logger(__name__)


class Controller:
    def __init__(
        self, settings: OperatorSettings, kube: Kube, mirror: Mirror, llm_window: LlmWindow
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.mirror = mirror
        self.tracker = TaskTracker(settings)
        self.status = StatusWriter(kube, self.tracker, mirror)
        self.tenants = Tenants(
            kube, settings, self.tracker.max_tasks_per_user, self.tracker.active_namespaces
        )
        self.launcher = Launcher(settings, kube, self.tracker, self.status, mirror, self.tenants)
        self.scheduler = Scheduler(
            settings,
            kube,
            self.tracker,
            self.status,
            mirror,
            self.tenants,
            llm_window,
            self.launcher,
        )
        self.reconciler = Reconciler(settings, kube, self.tracker, self.status, mirror)

    # ------------------------------------------------------------------ tasks (handlers)

    async def task_seen(
        self,
        key: TaskKey,
        uid: str,
        spec: Mapping[str, Any],
        status: Mapping[str, Any],
        created: str,
    ) -> None:
        """A watch event of a task (or the task listed at start-up): its whole truth.

        Validated (the CRD schema already did; the model is the same: a spec it refuses fails
        the task once), tracked and queued once; a new queued task is registered as ``queued``
        in the registry; ``spec.cancel`` cancels. No API write for a new task: the CRD
        defaults its phase.
        """
        try:
            task_spec = RegistryTaskSpec.model_validate(dict(spec))
        except ValidationError as exc:
            if status.get("reason") != "InvalidSpec":
                await self.status.refuse_invalid(key, str(exc))
            return
        if not self.settings.handles_company(task_spec.company_id):
            # Created in another shard's namespace (by hand: the shim places tasks by
            # regtask.shards): admitting it here would split the company's slots over two
            # operators.
            if status.get("reason") != "InvalidSpec":
                await self.status.refuse_invalid(key, self._wrong_shard(task_spec.company_id))
            return
        current = dict(status)
        task, is_new = self.tracker.track(key, uid, task_spec, created, current)
        if task.phase in TERMINAL_PHASES:
            return
        if is_new and current.get("phase") in (None, Phase.QUEUED.value):
            await self.mirror.publish(task.snapshot(Phase.QUEUED, current_step="queued"))
        if task_spec.cancel:
            await self.status.cancel(task, "CancelRequested", "cancelled by request")

    async def task_deleted(
        self,
        key: TaskKey,
        uid: str,
        spec: Mapping[str, Any],
        status: Mapping[str, Any],
        created: str,
    ) -> None:
        """Deleted (behind the finalizer): stop its Job, end it as Cancelled, forget it."""
        task = self.tracker.tasks.get(key)
        if task is None:
            try:
                task_spec = RegistryTaskSpec.model_validate(dict(spec))
            except ValidationError:
                return  # never admitted: nothing outside this object to clean
            phase = Phase(status["phase"]) if status.get("phase") else Phase.QUEUED
            task = TrackedTask(key, uid, task_spec, created, phase)
        await self.status.cancel(task, "Deleted", "the task was deleted")
        await self.tracker.forget(key)

    async def job_seen(self, job: dict[str, Any]) -> None:
        """A watch event of one of the operator's Jobs (see :meth:`Reconciler.job_seen`)."""
        await self.reconciler.job_seen(job)

    def job_gone(self, job: dict[str, Any]) -> None:
        """A Job's deletion completed (see :meth:`Reconciler.job_gone`)."""
        self.reconciler.job_gone(job)

    # ------------------------------------------------------------------ quotas (handlers)

    async def quota_seen(self, key: TaskKey, quota: CompanyQuotaSpec) -> None:
        """A CompanyQuota's spec is its company's limits (level-triggered: every event)."""
        if not self.settings.handles_company(quota.company_id):
            log.error(
                "company_quota_in_wrong_shard",
                quota=str(key),
                error=self._wrong_shard(quota.company_id),
            )
            return
        quotas = Quotas(
            max_tasks_per_company=quota.max_tasks_per_company,
            max_tasks_per_user=quota.max_tasks_per_user,
            max_llm_requests_per_hour=quota.max_llm_requests_per_hour,
            max_llm_tokens_per_hour=quota.max_llm_tokens_per_hour,
            max_llm_tokens_per_day=quota.max_llm_tokens_per_day,
            storage_limit_mb=quota.storage_limit_mb,
            allowed_models=list(quota.allowed_models),
            rate_limit_policy=quota.rate_limit_policy.value,
        )
        tracker = self.tracker
        tracker.show_usage_in(quota.company_id, key)
        tracker.set_limits(quota.company_id, quotas, quota.rate_limit_policy)
        if quota.company_id in tracker.limits_in_registry:
            return  # the same limits as already written: nothing to write
        if await self.mirror.publish_limits(quota.company_id, quotas, quota.company_name):
            tracker.limits_in_registry.add(quota.company_id)

    async def quota_deleted(self, key: TaskKey, company_id: str | None) -> None:
        """Its company falls back to the defaults, unless another CompanyQuota now holds it;
        the gateway's limits follow at once (maintenance repeats it if Redis failed now)."""
        tracker = self.tracker
        if company_id and tracker.quota_objects.get(company_id) == key:
            tracker.drop_limits(company_id)
            tracker.quota_objects.pop(company_id, None)
            self.reconciler.forget_shown(company_id)
            await self.mirror.drop_limits(company_id, tracker.company_limits(company_id)[0])

    def known_limits(self) -> tuple[dict[str, Quotas], Quotas]:
        """Every CompanyQuota's limits and the configured defaults (maintenance re-asserts them)."""
        tracker = self.tracker
        own = {company: tracker.company_limits(company)[0] for company in tracker.quota_objects}
        return own, tracker.default_quotas()

    # ------------------------------------------------------------------ the runtime's loops

    async def prime(self) -> None:
        """What must be known before the first decision: every CompanyQuota's limits, every
        task as the API server has it now, and the slots the live Jobs hold. Called at start-up
        and each time this replica becomes the active one (its memory is dropped first: what
        another replica did meanwhile is not in it). Until it returns the scheduler decides
        nothing (``tracker.ready``); an API error propagates, the caller retries.

        Kopf's own listing of the same tasks may arrive before, during or after: tracking is
        idempotent, so the order does not matter.
        """
        self.tracker.clear()
        self.status.pending_final.clear()
        self.reconciler.forget_shown()
        quotas = 0
        async for page in self.kube.pages(f"/apis/{API_GROUP}/{API_VERSION}/{QUOTA_PLURAL}"):
            for item in page:
                key, spec = self._listed(item)
                if key is None:
                    continue
                try:
                    quota = CompanyQuotaSpec.model_validate(spec)
                except ValidationError as exc:
                    log.error("company_quota_invalid", quota=str(key), error=str(exc))
                    continue
                await self.quota_seen(key, quota)
                quotas += 1
        await self.mirror.publish_defaults(self.tracker.default_quotas())
        ended: list[TaskSnapshot] = []
        async for page in self.kube.pages(f"/apis/{API_GROUP}/{API_VERSION}/{TASK_PLURAL}"):
            for item in page:
                key, spec = self._listed(item)
                if key is None:
                    continue
                meta = item["metadata"]
                created = meta.get("creationTimestamp") or now_iso()
                status = item.get("status") or {}
                await self.task_seen(key, meta.get("uid") or "", spec, status, created)
                task = self.tracker.tasks.get(key)
                if task is not None and task.phase in TERMINAL_PHASES:
                    ended.append(
                        task.snapshot(
                            task.phase,
                            reason=str(status.get("reason") or ""),
                            message=str(status.get("message") or ""),
                        )
                    )
        await self.reconcile()
        # The ends a failed registry write of an earlier life (kept in its memory) never wrote.
        await self.mirror.resync(ended)
        # The finished tasks listed leave memory now that their Jobs were seen (a live Job of
        # one was deleted, a draining one keeps it until it is gone).
        settled = self.tracker.settle_all()
        self.tracker.ready = True
        self.tracker.kick()
        log.info(
            "operator_primed",
            company_quotas=quotas,
            tasks=len(self.tracker.tasks),
            finished=settled,
        )

    def _wrong_shard(self, company_id: str) -> str:
        settings = self.settings
        home = company_namespace(settings.namespace, company_id, settings.shards)
        return (
            f"company {company_id!r} lives in shard {shard_of(company_id, settings.shards)} of "
            f"{settings.shards} (namespace {home}), not in shard {settings.shard}"
        )

    def _listed(self, item: Mapping[str, Any]) -> tuple[TaskKey | None, dict[str, Any]]:
        """A listed object's key when this operator handles it (in scope, not being deleted)."""
        meta = item.get("metadata") or {}
        namespace = meta.get("namespace") or ""
        if meta.get("deletionTimestamp") or not self.settings.handles_namespace(namespace):
            return None, {}
        return TaskKey(sys.intern(namespace), meta.get("name") or ""), dict(item.get("spec") or {})

    async def reconcile(self) -> None:
        """The admission counters rebuilt from the live Jobs, listed now."""
        listed_at = time.monotonic()
        await self.reconciler.reconcile(await self.reconciler.live_jobs(), listed_at)

    async def sync_status(self) -> None:
        """Final status writes still owed, runner progress and Job summaries into task status,
        usage into CompanyQuota status (throttled loop)."""
        await self.status.retry_final_writes()
        await self.reconciler.sync_progress()
        await self.reconciler.sync_jobs()
        await self.reconciler.publish_quota_usage()

    async def delete_expired(self) -> int:
        """Delete the finished tasks kept past their TTL (``spec.ttlSecondsAfterFinished``,
        else ``REGTASK_TASK_TTL_SECONDS_AFTER_FINISHED``); the delete handler then forgets
        them. The registry keeps the user's task history. Returns how many were deleted."""
        deleted = 0
        for key in self.tracker.expired(time.time()):
            try:
                await self.kube.delete(
                    f"{API_GROUP}/{API_VERSION}", TASK_KIND, key.namespace, key.name
                )
            except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("expired_task_delete_failed", task=str(key), error=str(exc))
                continue
            self.tracker.deletion_asked(key)  # asked once; the delete handler forgets it
            deleted += 1
        if deleted:
            log.info("expired_tasks_deleted", tasks=deleted)
        return deleted

    async def busy_namespaces(self) -> set[str]:
        """Tenant namespaces that are not idle whatever their last use (see tenants)."""
        return busy_namespaces(await self.reconciler.live_jobs(), self.tracker.active_namespaces())
