"""Pydantic models of the custom resources; the CRDs in ``manifests/crds`` are generated from them.

``RegistryTask`` declares one unit of work; ``CompanyQuota`` declares a company's limits. Field
names are camelCase on the wire (Kubernetes style) and snake_case in Python.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from regtask.documents import RegistryStatus
from regtask.identifiers import Identifier
from regtask.tasktypes import TASK_TYPES, TaskType

API_GROUP = "regtask.io"
API_VERSION = "v1alpha1"
API_VERSION_FULL = f"{API_GROUP}/{API_VERSION}"
# The resources' kinds and plurals (their API paths): the CRDs, the operator, the shim, the
# gateway and the CLI all name them from here.
TASK_KIND = "RegistryTask"
TASK_PLURAL = "registrytasks"
QUOTA_KIND = "CompanyQuota"
QUOTA_PLURAL = "companyquotas"

MAX_INLINE_INPUT_BYTES = 64 * 1024
MAX_INPUTS = 16
MAX_PARAMETERS = 32
MAX_PARAMETER_LENGTH = 4096
MAX_DURATION_LIMIT_S = 7 * 24 * 3600
# An LLM model name as providers spell them (``gpt-4o-mini``, ``org/model:tag``).
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class CRModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase dict the Kubernetes API expects (unset optional fields omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Phase(StrEnum):
    QUEUED = "Queued"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})

# The registry status the web app sees for each phase (CONTRACT.md section 6).
PHASE_TO_STATUS: dict[Phase, RegistryStatus] = {
    Phase.QUEUED: RegistryStatus.QUEUED,
    Phase.WAITING: RegistryStatus.WAITING_QUOTA,
    Phase.RUNNING: RegistryStatus.PROCESSING,
    Phase.SUCCEEDED: RegistryStatus.COMPLETED,
    Phase.FAILED: RegistryStatus.FAILED,
    Phase.CANCELLED: RegistryStatus.CANCELLED,
}


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


# Higher rank is admitted first; FIFO within a rank.
PRIORITY_RANK: dict[Priority, int] = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


class InputRef(CRModel):
    """Large inputs stay outside the CR; the runner fetches them."""

    uri: str = Field(
        max_length=2048,
        pattern=r"^(redis|https?|s3|gs|chroma|configmap)://",
        description="Where the runner reads the input (redis://key, https://..., s3://...).",
    )
    size_bytes: int | None = Field(default=None, ge=0, description="Declared size, for quotas.")


class TaskInput(CRModel):
    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$",
        description="Input name as the runner knows it (document, prompt...).",
    )
    content_type: str = Field(default="text/plain", max_length=127)
    value: str | None = Field(
        default=None,
        max_length=MAX_INLINE_INPUT_BYTES,
        description="Small inputs inline (text, or base64 for binary content types).",
    )
    encoding: str | None = Field(default=None, pattern=r"^(utf-8|base64)$")
    ref: InputRef | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.value) != has(self.ref)",
                    "message": "exactly one of value or ref must be set",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _value_xor_ref(self) -> TaskInput:
        if (self.value is None) == (self.ref is None):
            raise ValueError("exactly one of value or ref must be set")
        return self


ParameterValue = Annotated[str, StringConstraints(max_length=MAX_PARAMETER_LENGTH)]


# A finished task is kept at most this long (a year), whatever its spec asks.
MAX_TASK_TTL_S = 365 * 24 * 3600


class RegistryTaskSpec(CRModel):
    task_id: Identifier = Field(description="The id the web app knows (doc_analysis_job456...).")
    task_type: TaskType
    user_id: Identifier
    company_id: Identifier
    priority: Priority = Priority.NORMAL
    max_duration_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DURATION_LIMIT_S,
        description="Deadline of the run; the task type's default when unset.",
    )
    inputs: list[TaskInput] = Field(default_factory=list, max_length=MAX_INPUTS)
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict,
        max_length=MAX_PARAMETERS,
        description="Task-type parameters as strings (model, temperature, chunk_size...).",
    )
    conversation_id: Identifier | None = None
    session_id: str | None = Field(default=None, max_length=256)
    cancel: bool = Field(default=False, description="Set to true to stop the task.")
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TASK_TTL_S,
        description=(
            "Seconds a finished task is kept before the operator deletes it (the registry keeps "
            "its history); the operator's default when unset."
        ),
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.taskId == oldSelf.taskId && self.taskType == oldSelf.taskType"
                    " && self.userId == oldSelf.userId && self.companyId == oldSelf.companyId",
                    "message": "taskId, taskType, userId and companyId are immutable",
                },
                {
                    "rule": "!has(oldSelf.cancel) || !oldSelf.cancel || self.cancel",
                    "message": "a cancelled task cannot be resumed",
                },
            ]
        }
    )

    @property
    def effective_max_duration_s(self) -> int:
        """The run's deadline: ``maxDurationSeconds``, else the task type's default. The Job's
        deadline, the runner's token lifetime and the registry's TTLs all come from this."""
        return self.max_duration_seconds or TASK_TYPES[self.task_type].default_max_duration_s


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(CRModel):
    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(default=None, ge=0)


MAX_POD_SUMMARIES = 5


class PodSummary(CRModel):
    """One pod of a task's Job, as the operator last read it (for the console)."""

    name: str
    phase: str | None = None
    node: str | None = None
    restarts: int = Field(default=0, ge=0)
    exit_code: int | None = None
    reason: str | None = Field(default=None, description="The runner's termination reason.")
    started_at: datetime | None = None


class JobSummary(CRModel):
    """The task's Job and its pods, refreshed by the operator on each event of the Job."""

    name: str
    namespace: str
    state: str = Field(description="Running, Complete or Failed (the Job's own condition).")
    active: int = Field(default=0, ge=0)
    ready: int = Field(default=0, ge=0)
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    start_time: datetime | None = None
    completion_time: datetime | None = None
    pods: list[PodSummary] = Field(
        default_factory=list,
        max_length=MAX_POD_SUMMARIES,
        description="The newest pods first, at most five.",
    )


class RegistryTaskStatus(CRModel):
    model_config = ConfigDict(extra="allow")

    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: int | None = Field(default=None, ge=0, le=100)
    current_step: str | None = None
    queue_position: int | None = Field(default=None, ge=0)
    attempts: int | None = Field(default=None, ge=0)
    namespace: str | None = None
    job_name: str | None = None
    job: JobSummary | None = None
    admitted_at: datetime | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    retry_after: datetime | None = None
    reason: str | None = None
    message: str | None = None
    result: dict[str, Any] | None = Field(default=None, description="Small results inline.")
    observed_generation: int | None = None
    operator_state: dict[str, Any] | None = Field(
        default=None, description="Kopf's progress and diffbase (operator-private)."
    )


class RateLimitPolicy(StrEnum):
    WAIT = "Wait"
    REFUSE = "Refuse"


class CompanyQuotaSpec(CRModel):
    company_id: Identifier
    company_name: str | None = Field(default=None, max_length=256)
    # Issue 18, item 3: a cap on the company's running tasks, shared by fair share.
    max_tasks_per_company: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Running tasks of the whole company at most; unset = no company cap. At"
        " the cap the next free slot goes to the waiting user with the fewest running tasks,"
        " then priority, then age.",
    )
    max_tasks_per_user: int = Field(default=10, ge=0, le=10_000)
    max_llm_requests_per_hour: int = Field(default=1000, ge=0)
    max_llm_tokens_per_hour: int | None = Field(
        default=None,
        ge=0,
        description="LLM tokens (prompt + completion) per rolling hour; unset = no limit.",
    )
    max_llm_tokens_per_day: int | None = Field(
        default=None,
        ge=0,
        description="LLM tokens (prompt + completion) per rolling 24 hours; unset = no limit.",
    )
    storage_limit_mb: int = Field(default=5000, ge=0)
    allowed_models: list[ModelName] = Field(
        default_factory=list,
        max_length=64,
        description="LLM models this company's tasks may ask the gateway for; empty = the"
        " gateway's configured default model only.",
    )
    rate_limit_policy: RateLimitPolicy = Field(
        default=RateLimitPolicy.WAIT,
        description="Wait: over the hourly LLM quota a task waits for the window, and an"
        " LLM call over a request or token limit gets 429 with Retry-After (the runner waits);"
        " Refuse: the task fails at once (admission), the call gets 403.",
    )


class CompanyQuotaStatus(CRModel):
    model_config = ConfigDict(extra="allow")

    active_tasks: int | None = Field(default=None, ge=0)
    waiting_tasks: int | None = Field(default=None, ge=0)
    llm_requests_this_hour: int | None = Field(default=None, ge=0)
    storage_used_mb: int | None = Field(default=None, ge=0)
    observed_generation: int | None = None
    operator_state: dict[str, Any] | None = None
