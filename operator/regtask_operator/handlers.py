"""Kopf handlers: thin adapters from watch events to the controller's facade.

Each one turns Kopf's arguments into a key and a model and makes one call
(:class:`~regtask_operator.controller.Controller`); no decision is taken here.

Imported by ``python -m regtask_operator`` (and by tests that run the operator in-process).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

import kopf
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from regtask import naming
from regtask.crmodels import API_GROUP, API_VERSION, QUOTA_PLURAL, TASK_PLURAL, CompanyQuotaSpec
from regtask.settings import get_settings
from regtask.timeutil import now_iso
from regtask_operator.admission import TaskKey
from regtask_operator.config import get_operator_settings
from regtask_operator.kube import default_login
from regtask_operator.runtime import Runtime

log = structlog.get_logger(__name__)

TASKS = (API_GROUP, API_VERSION, TASK_PLURAL)
QUOTAS = (API_GROUP, API_VERSION, QUOTA_PLURAL)
MANAGED_JOBS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}


def filter_watches_on_the_server(settings: kopf.OperatorSettings) -> None:
    """The API server sends this operator only its own Jobs, tasks and quotas.

    Jobs: Kopf 1.45 matches a handler's ``labels=`` on the client (``registries._matches_labels``):
    without this, every Job of the cluster is listed and streamed to the operator and dropped
    there. ``settings.watching.label_selectors`` is what Kopf sends as ``labelSelector`` on the
    list and the watch of the resources it matches (``batch``/``jobs`` only here). With
    several shards, only this shard's Jobs (regtask.shards).

    Tasks and quotas, with one task namespace (each shard's, and the chart's default): only
    that namespace's (``fieldSelector=metadata.namespace=...``). Hazard, why this is more than
    a saving: Kopf removes its finalizer from every object no handler of it requires, and the
    handlers' ``when=`` scope counts there. Watching all namespaces, each shard's operator
    stripped every other shard's tasks of the finalizer (bench-scale SHARDS=3 found it: PATCHes
    of other shards' tasks, refused with 429); a task deleted then ended without its cleanup.
    With several task namespaces no field selector can name them all: run no other operator of
    this CRD in the cluster then.
    """
    config = get_operator_settings()
    settings.watching.label_selectors["batch", "jobs"] = config.managed_selector
    scope = config.task_namespace_scope
    if len(scope) == 1:
        for plural in (TASK_PLURAL, QUOTA_PLURAL):
            settings.watching.field_selectors[API_GROUP, plural] = f"metadata.namespace={scope[0]}"


def _in_scope(namespace: str | None, **_: Any) -> bool:
    """Only tasks and quotas of the namespaces this operator serves (REGTASK_TASK_NAMESPACES)."""
    return get_operator_settings().handles_namespace(namespace)


def _job_in_scope(annotations: kopf.Annotations, **_: Any) -> bool:
    namespace = annotations.get(naming.ANNOTATION_TASK_NAMESPACE)
    return get_operator_settings().handles_namespace(namespace)


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """In-cluster ServiceAccount, else KUBECONFIG: Kopf's own logins, no client library needed.

    Kopf keeps its own unbounded connection pool: bounding it (tried, with 10,000 tasks) leaves
    thousands of per-object workers alive waiting for a connection, which costs far more memory
    (415 MB against 190 MB) than the connections' buffers.
    """
    return default_login(settings)()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = get_operator_settings()
    settings.persistence.finalizer = naming.TASK_FINALIZER
    # Kopf's own state is needed only around deletion (the finalizer's handler): keep it in the
    # status, invisible to `kubectl apply` diffs of the spec. No diff-base: see _NoDiffBase.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(
        name=config.operator_name, field="status.operatorState.progress"
    )
    settings.persistence.diffbase_storage = _NoDiffBase()
    # Hung watches are Kopf's best-known failure: bound every watch request.
    settings.watching.server_timeout = config.watch_timeout_s
    settings.watching.client_timeout = config.watch_timeout_s + 30
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = config.watch_timeout_s + 60
    filter_watches_on_the_server(settings)
    settings.peering.name = config.peering_name
    settings.peering.standalone = config.standalone
    # One active replica: with peering on, the KopfPeering CRDs are required (shipped in
    # manifests/ and the chart); standalone (tests, a single dev process) needs none.
    settings.peering.mandatory = not config.standalone
    # Decisions are posted as Events by the controller; Kopf posts only its warnings and errors.
    settings.posting.level = logging.WARNING
    runtime = await Runtime.start(config, get_settings(), default_login(settings))
    memo["runtime"] = runtime


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if runtime is not None:
        await runtime.close()


@kopf.on.probe(id="redis")
async def redis_probe(memo: kopf.Memo, **_: Any) -> bool:
    try:
        return bool(await _runtime(memo).redis.ping())
    except RedisError:
        return False


class _NoDiffBase(kopf.DiffBaseStorage):
    """Keeps no diff-base: the operator is level-triggered (see :func:`task_event`).

    Kopf's default stores the last-handled spec after every change, one PATCH per task and per
    change; the handlers here act on each event's whole state instead, so there is nothing to
    compare with. Nor to build: Kopf builds the "new" essence of every event of every watched
    resource (tasks, Jobs, quotas) as a deep copy of the body, and deep-copies it again to strip
    its progress field: 10 % of the operator's CPU in bench-scale, for a value no handler here
    reads (``on.delete`` takes no ``old``/``new``/``diff``).
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.event(*TASKS, when=_in_scope)
async def task_event(
    type: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    uid: str,
    memo: Any,
    **_: Any,
) -> None:
    """Every watch event of a task (and each one listed at start-up) is its whole truth.

    Level-triggered: see :meth:`~regtask_operator.controller.Controller.task_seen`. No write
    here for a new task: the CRD defaults ``status.phase`` to ``Queued``; the scheduler's first
    decision (Running or Waiting) is the task's first status write.
    """
    if type == "DELETED" or meta.get("deletionTimestamp"):
        return  # task_deleted (behind the finalizer) releases and records the end
    # One namespace string for all the tasks kept in memory, not one per task.
    key = TaskKey(sys.intern(namespace or ""), name)
    created = meta.get("creationTimestamp") or now_iso()
    await _runtime(memo).controller.task_seen(key, uid, spec, status, created)


@kopf.on.delete(*TASKS, when=_in_scope)
async def task_deleted(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    uid: str,
    memo: Any,
    **_: Any,
) -> None:
    key = TaskKey(namespace or "", name)
    created = meta.get("creationTimestamp") or now_iso()
    await _runtime(memo).controller.task_deleted(key, uid, spec, status, created)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED_JOBS, when=_job_in_scope)
async def job_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    job = {"metadata": dict(body.get("metadata") or {}), "status": dict(body.get("status") or {})}
    if type == "DELETED":
        # A cancelled task's slot comes back now; an unexpected deletion of a running task's
        # Job is caught by the reconcile loop (JobLost).
        _runtime(memo).controller.job_gone(job)
        return
    await _runtime(memo).controller.job_seen(job)


@kopf.on.event(*QUOTAS, when=_in_scope)
async def quota_event(
    type: str | None,
    spec: kopf.Spec,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    memo: Any,
    **_: Any,
) -> None:
    """Level-triggered too: each event's spec is the company's limits (usage goes to status
    from the status-sync loop)."""
    controller = _runtime(memo).controller
    key = TaskKey(namespace or "", name)
    if type == "DELETED" or meta.get("deletionTimestamp"):
        await controller.quota_deleted(key, spec.get("companyId"))
        return
    try:
        quota = CompanyQuotaSpec.model_validate(dict(spec))
    except ValidationError as exc:
        log.error("company_quota_invalid", namespace=namespace, name=name, error=str(exc))
        return
    await controller.quota_seen(key, quota)
