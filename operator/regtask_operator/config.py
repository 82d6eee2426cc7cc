"""Operator configuration, from the environment (Helm values end up here)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from regtask import naming
from regtask.crmodels import RateLimitPolicy
from regtask.shards import LABEL_SHARD, MAX_SHARDS, shard_of
from regtask.tasktypes import TaskType
from regtask_operator.peering import own_identity, priority_of


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGTASK_", extra="ignore", frozen=True)

    # Where RegistryTasks and CompanyQuotas live (the shim creates tasks here).
    namespace: str = "regtask-system"
    # Namespaces whose RegistryTasks and CompanyQuotas this operator handles (comma-separated,
    # e.g. "regtask-system"); empty = every namespace.
    task_namespaces: str = ""
    # Identity of this operator in Kopf's storage and field managers (the finalizer is
    # regtask.naming.TASK_FINALIZER, shared with the shim).
    operator_name: str = "regtask.io"
    peering_name: str = "regtask-operator"
    standalone: bool = Field(default=False, description="no peering (tests, single dev run)")
    # This replica's Kopf identity (default: POD_ID, which the chart sets to the pod name) and
    # priority (default: derived from the identity, distinct per replica: Kopf pauses every
    # peer when two share the highest priority). See regtask_operator.peering.
    peering_identity: str = Field(default_factory=own_identity)
    peering_priority: int | None = Field(default=None, ge=0)
    # How often the operator's own loops check whether this replica is still the active one.
    peering_poll_s: float = Field(default=1.0, gt=0)

    runner_image: str = "ghcr.io/regtask/runner:0.1.0"
    # Optional image per task type, e.g. REGTASK_RUNNER_IMAGES='{"llm_conversation": "..."}'.
    runner_images: dict[TaskType, str] = Field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"
    gateway_url: str = "http://regtask-gateway.regtask-system.svc:8081"

    # Job shape
    backoff_limit: int = Field(default=2, ge=0)
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    # A finished RegistryTask is deleted this long after it ended, unless its spec says
    # otherwise (spec.ttlSecondsAfterFinished): etcd and this process's memory stay bounded;
    # the registry keeps the user's task history.
    task_ttl_seconds_after_finished: int = Field(default=7 * 24 * 3600, ge=0)
    termination_grace_period_s: int = Field(default=30, ge=1)
    runner_cpu_request: str = "100m"
    runner_cpu_limit: str = "1"
    runner_memory_request: str = "128Mi"
    runner_memory_limit: str = "1Gi"

    # Tenant namespaces: their ResourceQuota follows the company's maxTasksPerUser and the
    # runner resources above (regtask_operator.isolation.tenant_quota).
    # A tenant namespace without Jobs, running or waiting tasks is removed once its last
    # admission is older than this (seconds; tests use a few).
    namespace_idle_seconds: int = Field(default=3600, ge=1)
    # Where runners may connect besides DNS: the gateway's pods, selected by labels in the
    # control namespace (a NetworkPolicy peer).
    gateway_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "regtask-gateway"}
    )
    gateway_port: int = 8081
    # Addresses (CIDRs) of a gateway that runs outside the cluster, e.g. a host process during
    # tests, which no pod selector can name: runners may reach them on gateway_port as well.
    gateway_egress_cidrs: list[str] = Field(default_factory=list)

    # Quotas
    default_max_tasks_per_user: int = Field(default=10, ge=0)
    # A company without CompanyQuota: its running tasks at most (None: no company cap).
    default_max_tasks_per_company: int | None = Field(default=None, ge=0)
    default_max_llm_requests_per_hour: int = Field(default=1000, ge=0)
    default_storage_limit_mb: int = Field(default=5000, ge=0)
    # LLM tokens per rolling hour / day of a company without a CompanyQuota; unset = no limit.
    default_max_llm_tokens_per_hour: int | None = Field(default=None, ge=0)
    default_max_llm_tokens_per_day: int | None = Field(default=None, ge=0)
    rate_limit_policy: RateLimitPolicy = RateLimitPolicy.WAIT
    # An LLM task admitted this long ago is assumed to have made its first request (it is then
    # in the gateway's window counter); until then admission counts it on top of the counter.
    llm_admission_grace_s: float = Field(default=120.0, ge=0)

    # Sharding (regtask.shards): this operator is shard `shard` of `shards`. It admits only the
    # companies placed in it and lists and watches only the Jobs and tenant namespaces labelled
    # with its index; its REGTASK_TASK_NAMESPACES and REGTASK_PEERING_NAME are its own.
    shard: int = Field(default=0, ge=0)
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS)

    # Launches (namespace, Job, Running) run beside the decision step, at most this many at
    # once: a slow tenant delays its own tasks, not the step or the other tenants.
    launch_concurrency: int = Field(default=16, ge=1, le=256)
    # A failed launch is tried again after this, doubled per consecutive failure of the task
    # up to launch_retry_max_s; its user's slot stays held meanwhile.
    launch_retry_s: float = Field(default=1.0, gt=0)
    launch_retry_max_s: float = Field(default=30.0, gt=0)

    # Cadences
    status_sync_interval_s: float = Field(default=2.0, gt=0)
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    maintenance_interval_s: float = Field(default=60.0, gt=0)
    # A waiting task's queue position in its CR status follows at most this often (each
    # admission moves every waiting task; the registry and the events, what the web app reads,
    # follow in real time). Every refresh is one API write per waiting task.
    queue_position_refresh_s: float = Field(default=300.0, ge=0)
    # Runner progress in the CR status at most this often per task (the registry: real time).
    progress_status_interval_s: float = Field(default=60.0, ge=0)
    # A running task's Job and pods (status.job) in its CR status at most this often, the first
    # time this long after they changed; its end always writes the last summary. A task shorter
    # than this costs no write for them (each Job change was one, and one pod list).
    job_status_interval_s: float = Field(default=10.0, ge=0)
    # A company's usage in its CompanyQuota status follows this long after it changed (one
    # write for all the changes meanwhile, none when they cancel out: a task that starts and
    # ends within it). Its first showing is not delayed. The registry and events: real time.
    quota_usage_interval_s: float = Field(default=10.0, ge=0)
    # Freed heap is handed back to the OS this often (see regtask_operator.memory).
    memory_trim_interval_s: float = Field(default=30.0, gt=0)
    # Re-apply every tenant namespace's fences (drift repair) at most this often, on the
    # maintenance timer: a repair round runs on the first maintenance round once this has passed.
    namespace_repair_interval_s: float = Field(default=300.0, gt=0)
    watch_timeout_s: int = Field(default=300, ge=10)
    # Prometheus metrics on this port (0 = off); bound to metrics_host.
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"

    @property
    def effective_peering_priority(self) -> int:
        if self.peering_priority is not None:
            return self.peering_priority
        return priority_of(self.peering_identity)

    @model_validator(mode="after")
    def _shard_in_range(self) -> OperatorSettings:
        if self.shard >= self.shards:
            raise ValueError(f"REGTASK_SHARD={self.shard} but REGTASK_SHARDS={self.shards}")
        return self

    def handles_company(self, company_id: str) -> bool:
        """Whether the company lives in this operator's shard (always, with one shard)."""
        return self.shards == 1 or shard_of(company_id, self.shards) == self.shard

    @property
    def shard_labels(self) -> dict[str, str]:
        """On every Job and tenant namespace this operator creates."""
        return {LABEL_SHARD: str(self.shard)}

    @property
    def managed_selector(self) -> str:
        """The label selector of this operator's Jobs and tenant namespaces: the managed-by
        label, and with several shards this shard's label too."""
        selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
        if self.shards > 1:
            selector += f",{LABEL_SHARD}={self.shard}"
        return selector

    @property
    def task_namespace_scope(self) -> list[str]:
        """REGTASK_TASK_NAMESPACES as a list; empty: every namespace."""
        return sorted({n.strip() for n in self.task_namespaces.split(",") if n.strip()})

    def handles_namespace(self, namespace: str | None) -> bool:
        scope = self.task_namespace_scope
        return not scope or (namespace or "") in scope

    def image_for(self, task_type: TaskType) -> str:
        return self.runner_images.get(task_type, self.runner_image)


@lru_cache(maxsize=1)
def get_operator_settings() -> OperatorSettings:
    return OperatorSettings()
