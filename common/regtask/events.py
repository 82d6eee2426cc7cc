"""The real-time events of the contract (section 4) and their one publisher.

Events travel as JSON on the Redis pub/sub channel ``events:user:{uid}`` (see
:func:`regtask.keys.events_channel`), one channel per user, so a web-app process subscribes to
exactly the users it serves.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from regtask.keys import events_channel
from regtask.timeutil import now_iso

if TYPE_CHECKING:  # runners import this module for the models only: no Redis client for them
    import redis
    import redis.asyncio as aioredis


class EventType(StrEnum):
    TASK_PROGRESS = "task.progress_update"
    LLM_CONVERSATION_UPDATE = "llm.conversation_update"
    LLM_CONVERSATION_COMPLETE = "llm.conversation_complete"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class TaskProgressPayload(_Payload):
    task_id: str
    status: str
    progress: int = Field(ge=0, le=100)
    current_step: str
    data: dict[str, Any] = Field(default_factory=dict)


class LlmConversationUpdatePayload(_Payload):
    conversation_id: str
    status: str
    progress: int = Field(ge=0, le=100)
    data: dict[str, Any] = Field(default_factory=dict)


class LlmConversationCompletePayload(_Payload):
    conversation_id: str
    response: str
    tokens_used: int = Field(ge=0)


class _Event(BaseModel):
    uid: str
    timestamp: str = Field(default_factory=now_iso)

    def channel(self) -> str:
        return events_channel(self.uid)

    def to_json(self) -> str:
        return self.model_dump_json()


class TaskProgressEvent(_Event):
    type: Literal[EventType.TASK_PROGRESS] = EventType.TASK_PROGRESS
    payload: TaskProgressPayload


class LlmConversationUpdateEvent(_Event):
    type: Literal[EventType.LLM_CONVERSATION_UPDATE] = EventType.LLM_CONVERSATION_UPDATE
    payload: LlmConversationUpdatePayload


class LlmConversationCompleteEvent(_Event):
    type: Literal[EventType.LLM_CONVERSATION_COMPLETE] = EventType.LLM_CONVERSATION_COMPLETE
    payload: LlmConversationCompletePayload


AnyEvent = Annotated[
    TaskProgressEvent | LlmConversationUpdateEvent | LlmConversationCompleteEvent,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(raw: str | bytes) -> AnyEvent:
    """Decode an event received on a user channel (CLI ``watch``, tests)."""
    return _EVENT_ADAPTER.validate_json(raw)


class EventPublisher:
    """Publishes events; progress events usually ride inside the registry's Lua update instead."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def publish(self, event: AnyEvent) -> int:
        return int(self.client.publish(event.channel(), event.to_json()))


class AsyncEventPublisher:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def publish(self, event: AnyEvent) -> int:
        return int(await self.client.publish(event.channel(), event.to_json()))
