"""Pydantic models of every JSON document the contract stores in Redis.

Field names and nesting are the web app's (CONTRACT.md section 1). Unknown fields are kept
(``extra="allow"``) so that a newer writer's additions survive an older reader's update.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from regtask.identifiers import Identifier
from regtask.keys import HEARTBEAT_TTL_S
from regtask.timeutil import now_iso


class RegistryStatus(StrEnum):
    """Task statuses as the web app reads them in ``registry:task:*`` and events."""

    QUEUED = "queued"
    # Ours: admitted later, when the company's quota has room (CR phase ``Waiting``).
    WAITING_QUOTA = "waiting_quota"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    # Ours: stopped on request (``spec.cancel`` or deletion).
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {RegistryStatus.COMPLETED, RegistryStatus.FAILED, RegistryStatus.CANCELLED}
)


class UserPresence(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Document(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


# ---------------------------------------------------------------- registry:unified:{user_id}


class UserInfo(Document):
    user_id: Identifier
    session_id: str | None = None
    backend_route: str = ""
    last_seen_at: str = Field(default_factory=now_iso)
    status: UserPresence = UserPresence.ONLINE


class UserCompanies(Document):
    current_company_id: str | None = None
    authorized_companies_ids: list[str] = Field(default_factory=list)
    company_roles: dict[str, str] = Field(default_factory=dict)


class ChromaUsage(Document):
    collections: list[str] = Field(default_factory=list)
    last_heartbeat: str | None = None


class LlmUsage(Document):
    active_conversations: list[str] = Field(default_factory=list)
    model_preferences: dict[str, Any] = Field(default_factory=dict)


class TaskUsage(Document):
    active_tasks: list[str] = Field(default_factory=list)
    task_history: list[str] = Field(default_factory=list)


class UserServices(Document):
    chroma: ChromaUsage = Field(default_factory=ChromaUsage)
    llm: LlmUsage = Field(default_factory=LlmUsage)
    tasks: TaskUsage = Field(default_factory=TaskUsage)


class Heartbeat(Document):
    last_heartbeat: str = Field(default_factory=now_iso)
    ttl_seconds: int = HEARTBEAT_TTL_S


class UnifiedUserDoc(Document):
    user_info: UserInfo
    companies: UserCompanies = Field(default_factory=UserCompanies)
    services: UserServices = Field(default_factory=UserServices)
    heartbeat: Heartbeat = Field(default_factory=Heartbeat)


# ---------------------------------------------------------------- registry:task:{task_id}


class TaskInfo(Document):
    task_id: Identifier
    task_type: str
    user_id: Identifier
    company_id: Identifier
    created_at: str = Field(default_factory=now_iso)
    status: RegistryStatus = RegistryStatus.QUEUED


class TaskIsolation(Document):
    namespace: str
    priority: str = "normal"
    max_duration: int = Field(default=3600, gt=0)


class TaskProgress(Document):
    current_step: str = "queued"
    progress_percent: int = Field(default=0, ge=0, le=100)
    estimated_completion: str | None = None

    # Ours (additive), written by the progress script only while the task waits for a slot
    # (absent otherwise, so a new document holds exactly the contract's fields): its place in
    # the company's queue and when it is expected to start (regtask.eta).
    @property
    def queue_position(self) -> int | None:
        value = (self.model_extra or {}).get("queue_position")
        return int(value) if isinstance(value, int | float) else None

    @property
    def estimated_start(self) -> str | None:
        value = (self.model_extra or {}).get("estimated_start")
        return str(value) if value else None


class TaskResources(Document):
    worker_id: str | None = None
    memory_usage: str | None = None
    cpu_usage: str | None = None


class TaskDoc(Document):
    task_info: TaskInfo
    isolation: TaskIsolation
    progress: TaskProgress = Field(default_factory=TaskProgress)
    resources: TaskResources = Field(default_factory=TaskResources)
    # Ours (additive): small results inline, large ones as a reference; error text on failure.
    result: dict[str, Any] | None = None
    error: str | None = None


class TaskStep(Document):
    """Ours: one entry of a task's step history (a runner's progress report as the gateway
    recorded it), kept beside the document in the same hash (``regtask.keys.task_step_field``)."""

    at: str
    step: str
    progress: int = Field(ge=0, le=100)
    data: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- registry:company:{company_id}


class CompanyInfo(Document):
    company_id: Identifier
    company_name: str | None = None
    created_at: str = Field(default_factory=now_iso)


class ActiveUser(Document):
    role: str = "user"
    last_activity: str = Field(default_factory=now_iso)
    session_id: str | None = None


class CompanyServices(Document):
    chroma_collections: list[str] = Field(default_factory=list)
    active_tasks: list[str] = Field(default_factory=list)
    llm_conversations: list[str] = Field(default_factory=list)


class Quotas(Document):
    # Ours (issue 18): the company's cap on running tasks; None = none. Shown in the
    # contract's company document only when set (an addition: see in_company_doc).
    max_tasks_per_company: int | None = Field(default=None, ge=0)
    max_tasks_per_user: int = Field(default=10, ge=0)
    max_llm_requests_per_hour: int = Field(default=1000, ge=0)
    storage_limit_mb: int = Field(default=5000, ge=0)
    # Additions to the contract's quotas (issue 18): LLM tokens (prompt + completion) per
    # rolling hour and day; None = no token limit.
    max_llm_tokens_per_hour: int | None = Field(default=None, ge=0)
    max_llm_tokens_per_day: int | None = Field(default=None, ge=0)
    # Ours, not in the contract's company document (left out of it): the LLM models the
    # company's tasks may use beside the gateway's default model (CompanyQuota.allowedModels),
    # and what the gateway does with an LLM call over a limit (CompanyQuota.rateLimitPolicy:
    # Wait = 429 with Retry-After, the runner waits; Refuse = 403, the task fails).
    allowed_models: list[str] = Field(default_factory=list)
    rate_limit_policy: str = Field(default="Wait", pattern="^(Wait|Refuse)$")

    # The fields kept out of the contract's registry:company:{id}.quotas copy.
    OURS: ClassVar[set[str]] = {"allowed_models", "rate_limit_policy"}

    def contract_copy(self) -> dict[str, Any]:
        """What ``registry:company:{id}.quotas`` holds: the contract's three fields, plus our
        additions only when set (the company cap, the token limits): a company without them
        keeps the contract's exact shape."""
        copy = self.model_dump(mode="json", exclude=self.OURS)
        for name in ("max_tasks_per_company", "max_llm_tokens_per_hour", "max_llm_tokens_per_day"):
            if copy.get(name) is None:
                copy.pop(name, None)
        return copy


class CompanyDoc(Document):
    company_info: CompanyInfo
    active_users: dict[str, ActiveUser] = Field(default_factory=dict)
    services: CompanyServices = Field(default_factory=CompanyServices)
    quotas: Quotas = Field(default_factory=Quotas)


# ---------------------------------------------------------------- legacy and conversations


class LegacyUserDoc(Document):
    user_id: Identifier
    session_id: str
    backend_route: str = ""
    last_seen_at: str = Field(default_factory=now_iso)


class LegacyChromaDoc(Document):
    user_id: Identifier
    collection_name: str = Field(min_length=1, max_length=256)
    session_id: str
    registered_at: str = Field(default_factory=now_iso)
    last_heartbeat: str = Field(default_factory=now_iso)


class ConversationDoc(Document):
    conversation_id: Identifier
    user_id: Identifier
    company_id: Identifier
    prompt: str
    response: str
    model: str
    temperature: float
    timestamp: str = Field(default_factory=now_iso)
    tokens_used: int = Field(ge=0)
