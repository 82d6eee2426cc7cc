"""The runner gateway's HTTP contract: its paths and bodies, one definition for both sides.

The gateway (``regtask_gateway``) serves these paths with these models and the runners' client
(:class:`regtask_runners.framework.GatewayClient`) calls them, so the contract cannot drift
between the two. Answers ignore fields they do not know and default the optional ones (a runner
built against an older or newer gateway still reads them); requests forbid unknown fields (a
misspelt field is a 422, never silently dropped).

The LLM routes pass OpenAI's own bodies through (``regtask_gateway.models``); runners call them
with the OpenAI SDK (``base_url`` = the gateway's URL + :data:`LLM_PREFIX`) or as plain JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from regtask.events import EventType
from regtask.identifiers import Identifier

TASK_PATH = "/v1/task"
PROGRESS_PATH = "/v1/task/progress"
RESULT_PATH = "/v1/task/result"
EVENTS_PATH = "/v1/task/events"
CONVERSATION_PATH = "/v1/task/conversation"
LLM_PREFIX = "/v1/llm"
CHAT_PATH = f"{LLM_PREFIX}/chat/completions"
EMBEDDINGS_PATH = f"{LLM_PREFIX}/embeddings"
VECTORS_UPSERT_PATH = "/v1/vectors/upsert"

MAX_PROGRESS_DATA_BYTES = 8 * 1024
MAX_VECTOR_BATCH = 1000


# ------------------------------------------------------------------ the task


class ResolvedInput(BaseModel):
    """An input as the runner receives it: always inline (references resolved by the gateway)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    content_type: str = "text/plain"
    value: str
    encoding: Literal["utf-8", "base64"] = "utf-8"
    size_bytes: int = 0


class RunnerTask(BaseModel):
    """``GET /v1/task``: the task as its runner gets it, inputs resolved, from the task's spec."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    task_type: str
    user_id: str
    company_id: str
    max_duration_seconds: int = Field(
        description="the run's deadline: the spec's maxDurationSeconds, else the type's default"
    )
    conversation_id: str | None = None
    session_id: str | None = None
    priority: str = "normal"
    cancel: bool = False
    parameters: dict[str, str] = {}
    inputs: list[ResolvedInput] = []
    # The user's LLM defaults (unified registry), for runners that call the LLM.
    model_preferences: dict[str, Any] = {}

    def input(self, name: str) -> ResolvedInput | None:
        return next((item for item in self.inputs if item.name == name), None)


# ------------------------------------------------------------------ the task's records


class ProgressIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Runners report work in progress only; the end of a task is recorded by the operator from
    # the Job's outcome, so a runner cannot claim "completed" for work it did not finish.
    status: Literal["processing"] = "processing"
    progress: int = Field(ge=0, le=100)
    current_step: str = Field(min_length=1, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict)
    estimated_completion: str | None = Field(default=None, max_length=64)


class ProgressOut(BaseModel):
    # False: dropped by the per-task throttle (answered 202).
    accepted: bool
    # False: the task had already finished; nothing was written.
    applied: bool = False


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: dict[str, Any]


class ResultOut(BaseModel):
    stored: bool
    size_bytes: int
    storage_used_bytes: int


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[EventType.LLM_CONVERSATION_UPDATE, EventType.LLM_CONVERSATION_COMPLETE]
    payload: dict[str, Any]


class EventOut(BaseModel):
    published: bool
    receivers: int


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversation_id: Identifier
    prompt: str
    response: str
    model: str = Field(min_length=1, max_length=256)
    temperature: float = Field(ge=0, le=2)
    tokens_used: int = Field(ge=0)


class ConversationOut(BaseModel):
    stored: bool
    conversation_id: str


# ------------------------------------------------------------------ vectors

MetadataValue = str | int | float | bool


class VectorUpsertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_VECTOR_BATCH
    )
    embeddings: list[list[float]]
    documents: list[str] | None = None
    metadatas: list[dict[str, MetadataValue]] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> VectorUpsertIn:
        count = len(self.ids)
        for name in ("embeddings", "documents", "metadatas"):
            values = getattr(self, name)
            if values is not None and len(values) != count:
                raise ValueError(f"{name} has {len(values)} items for {count} ids")
        dims = {len(vector) for vector in self.embeddings}
        if len(dims) != 1 or 0 in dims:
            raise ValueError("embeddings must all have the same, non-zero dimension")
        if len(set(self.ids)) != count:
            raise ValueError("ids must be unique within a batch")
        return self

    @property
    def dimension(self) -> int:
        return len(self.embeddings[0])


class VectorUpsertOut(BaseModel):
    collection: str
    requested_collection: str
    upserted: int
    total: int
    dimension: int
