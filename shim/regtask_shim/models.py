"""Arguments and answers of every shim operation, shared by ``POST /rpc`` and the REST routes.

Field order of each ``*Args`` model is the RPC's positional order (``rpc_call(method, args=[...])``
binds ``args[i]`` to the i-th field), so the models are the published signatures. Answers always
carry ``success``; fields beyond the contract's are additive.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from regtask.documents import RegistryStatus, UnifiedUserDoc
from regtask.identifiers import ID_MAX_LENGTH, ID_PATTERN, Identifier
from regtask.tasktypes import TASK_TYPES, TaskType

CONVERSATION_PREFIX = "conv_"
DOC_PREFIX = TASK_TYPES[TaskType.DOCUMENT_ANALYSIS].id_prefix
VECTOR_PREFIX = TASK_TYPES[TaskType.VECTOR_COMPUTATION].id_prefix
LLM_TASK_PREFIX = TASK_TYPES[TaskType.LLM_CONVERSATION].id_prefix

# Client ids that still fit an Identifier once the task type's prefix is put in front.
DocJobId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ID_MAX_LENGTH - len(DOC_PREFIX), pattern=ID_PATTERN),
]
VectorJobId = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=ID_MAX_LENGTH - len(VECTOR_PREFIX), pattern=ID_PATTERN
    ),
]
ConversationId = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=ID_MAX_LENGTH - len(LLM_TASK_PREFIX), pattern=ID_PATTERN
    ),
]
SessionId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[!-~]+$")]
CollectionName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$")]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
Prompt = Annotated[str, StringConstraints(min_length=1)]


class Args(BaseModel):
    # Strict: the published types are the accepted types (no "45" for 45, no 45 for "45").
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RegisterUserArgs(Args):
    user_id: Identifier
    session_id: SessionId
    backend_route: str = Field(default="", max_length=2048)
    # Service credential only: the companies the user may act for (unified registry).
    company_id: Identifier | None = None
    authorized_companies_ids: list[Identifier] | None = Field(default=None, max_length=1000)
    company_roles: dict[Identifier, Annotated[str, StringConstraints(max_length=64)]] | None = (
        Field(default=None, max_length=1000)
    )


class UnregisterSessionArgs(Args):
    session_id: SessionId


class RegisterCollectionArgs(Args):
    user_id: Identifier
    collection_name: CollectionName
    session_id: SessionId


class HeartbeatCollectionArgs(Args):
    user_id: Identifier
    collection_name: CollectionName


class DocumentAnalysisArgs(Args):
    user_id: Identifier
    document_data: dict[str, Any] = Field(
        description="The document to analyse; its 'company_id' names the company when given."
    )
    job_id: DocJobId = Field(description="Client id of the job: the task is doc_analysis_{job_id}.")


class VectorComputationArgs(Args):
    user_id: Identifier
    company_id: Identifier
    documents: list[Any] = Field(min_length=1, max_length=100_000)
    collection_name: CollectionName
    job_id: VectorJobId | None = Field(
        default=None, description="Client id: the task is vector_{job_id} (idempotent when set)."
    )


class LlmConversationArgs(Args):
    user_id: Identifier
    company_id: Identifier
    prompt: Prompt
    conversation_id: ConversationId | None = Field(
        default=None, description="Client-chosen id (idempotent when set); minted otherwise."
    )


class LlmStartArgs(Args):
    user_id: Identifier
    company_id: Identifier
    prompt: Prompt
    model: ModelName | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    conversation_id: ConversationId | None = None


class TaskIdArgs(Args):
    task_id: Identifier


class UserIdArgs(Args):
    user_id: Identifier


class CompanyIdArgs(Args):
    company_id: Identifier


class ConversationIdArgs(Args):
    conversation_id: ConversationId


# ----------------------------------------------------------------------------- answers


class Answer(BaseModel):
    success: Literal[True] = True


class RegisterUserAnswer(Answer):
    user_id: str
    session_id: str


class UnregisterSessionAnswer(Answer):
    session_id: str
    unregistered: bool = Field(description="False when the session was unknown or already gone.")


class CollectionAnswer(Answer):
    user_id: str
    collection_name: str


class TaskStartedAnswer(Answer):
    task_id: str
    status: RegistryStatus = Field(description="'queued' for a new task; replays give the current.")
    conversation_id: str | None = None
    collection_name: str | None = None


class TaskStatusAnswer(Answer):
    task_id: str
    task_type: str
    status: RegistryStatus
    progress: int = Field(ge=0, le=100)
    current_step: str
    created_at: str | None = None
    conversation_id: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    # Ours (additive): while waiting, its place in the company's queue and its ETA (ISO-8601,
    # the operator's estimate from recent run times); estimated_completion also while running.
    queue_position: int | None = None
    estimated_start: str | None = None
    estimated_completion: str | None = None


class CancelAnswer(Answer):
    task_id: str
    status: RegistryStatus
    cancel_requested: Literal[True] = True


class TaskListAnswer(Answer):
    user_id: str
    tasks: list[TaskStatusAnswer]
    count: int


class ConversationProgress(BaseModel):
    current_step: str
    progress_percent: int = Field(ge=0, le=100)
    estimated_completion: str | None = None


class ConversationStatusAnswer(Answer):
    conversation_id: str
    task_id: str
    status: RegistryStatus
    progress: ConversationProgress
    created_at: str | None = None
    response: str | None = None
    tokens_used: int | None = None
    model: str | None = None
    error: str | None = None


class UserRegistryAnswer(Answer):
    user_id: str
    registry: UnifiedUserDoc


class CompanyUsersAnswer(Answer):
    company_id: str
    active_users: list[str]
    count: int


class RpcRequest(BaseModel):
    """What the web app's ``rpc_call(method, args=[...], kwargs={...})`` posts."""

    model_config = ConfigDict(populate_by_name=True)

    method: str = Field(max_length=200, examples=["TASK.start_document_analysis"])
    args: list[Any] = Field(default_factory=list, max_length=32)
    # "kwargs" on the wire (a field named kwargs would clash with __init__'s **kwargs).
    keyword_args: dict[str, Any] = Field(default_factory=dict, max_length=32, alias="kwargs")


class RpcAnswer(BaseModel):
    """Any method's answer: ``success`` plus the method's own fields (see /rpc/methods)."""

    model_config = ConfigDict(extra="allow")

    success: bool


class RpcMethodInfo(BaseModel):
    name: str
    params: list[str]
    required: list[str]
    summary: str


class HealthAnswer(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, str]
