"""Follow one task until it ends: real-time events first, status polls as the safety net.

Order matters: the feed subscribes to ``events:user:{uid}`` *before* the first status read, so
an update published between the read and the subscription cannot be missed (it is either in
the status already or arrives as an event). Events can still be lost (Redis restarts, a wrong
``--user``), so when nothing relevant has arrived for ``poll_interval_s`` the status is read
again through the shim; a terminal status from either source ends the watch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import ValidationError
from redis.client import PubSub

from regtask.events import (
    AnyEvent,
    LlmConversationCompleteEvent,
    LlmConversationUpdateEvent,
    TaskProgressEvent,
    parse_event,
)
from regtask.keys import events_channel
from regtask_cli.client import TERMINAL_STATUSES, ShimClient, TaskStatus
from regtask_cli.errors import CliError, ExitCode

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SUBSCRIBE_TIMEOUT_S = 5.0
RESPONSE_PREVIEW_CHARS = 120

Source = Literal["start", "event", "poll"]


def redact_url(url: str) -> str:
    """The URL with its password hidden, fit for an error message."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Change:
    """What moved the watch on: shown by the view as one line."""

    source: Source
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class WatchState:
    """The task as last seen, from the shim or from an event."""

    task_id: str
    task_type: str = ""
    status: str = "queued"
    progress: int = 0
    current_step: str = ""
    conversation_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    events_seen: int = 0

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def apply_status(self, answer: TaskStatus) -> bool:
        """Take a status read; True when it changed what is shown."""
        before = (self.status, self.progress, self.current_step)
        self.task_type = answer.task_type
        self.conversation_id = answer.conversation_id
        self.status = answer.status
        if answer.status == "completed":
            self.progress = 100
        elif answer.status not in TERMINAL_STATUSES:
            self.progress = answer.progress
        self.current_step = answer.current_step
        return (self.status, self.progress, self.current_step) != before

    def apply_event(self, event: AnyEvent) -> Change | None:
        """Take an event of this user's channel; None when it is about another task."""
        if isinstance(event, TaskProgressEvent):
            payload = event.payload
            if payload.task_id != self.task_id or self.finished:
                return None
            self.status = payload.status
            if payload.status == "completed":
                self.progress = 100
            elif payload.status not in TERMINAL_STATUSES:
                # A failed or cancelled end reports 0: keep where the bar stopped.
                self.progress = payload.progress
            self.current_step = payload.current_step
            self.data = dict(payload.data)
            self.events_seen += 1
            return Change("event", payload.current_step, self.data)
        if self.conversation_id is None or event.payload.conversation_id != self.conversation_id:
            return None
        self.events_seen += 1
        if isinstance(event, LlmConversationUpdateEvent):
            self.progress = max(self.progress, event.payload.progress)
            self.current_step = event.payload.status
            self.data = dict(event.payload.data)
            return Change("event", event.payload.status, self.data)
        assert isinstance(event, LlmConversationCompleteEvent)
        response = event.payload.response
        if len(response) > RESPONSE_PREVIEW_CHARS:
            response = response[:RESPONSE_PREVIEW_CHARS] + "..."
        return Change(
            "event",
            "conversation complete",
            {"tokens_used": event.payload.tokens_used, "response": response},
        )


class EventFeed:
    """A user's event channel, subscribed (and confirmed by Redis) on construction."""

    def __init__(self, client: redis.Redis, pubsub: PubSub, channel: str) -> None:
        self.client = client
        self.pubsub = pubsub
        self.channel = channel

    @classmethod
    def open(cls, redis_url: str, user_id: str) -> Self:
        """Subscribe and wait for Redis' confirmation, so no later publish can be missed."""
        where = redact_url(redis_url)
        try:
            client = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
        except ValueError as exc:
            raise CliError(f"bad Redis URL {where}: {exc}", ExitCode.USAGE) from None
        channel = events_channel(user_id)
        pubsub = cast(Callable[[], PubSub], client.pubsub)()
        try:
            pubsub.subscribe(channel)
            deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CliError(
                        f"Redis at {where} did not confirm the subscription",
                        ExitCode.UNREACHABLE,
                    )
                message = pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    break
        except redis.RedisError as exc:
            pubsub.close()
            client.close()
            raise CliError(f"Redis unreachable at {where}: {exc}", ExitCode.UNREACHABLE) from None
        return cls(client, pubsub, channel)

    def next(self, timeout_s: float) -> AnyEvent | None:
        """The next well-formed event within ``timeout_s``; None when none came."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None and message["type"] == "message":
                try:
                    return parse_event(message["data"])
                except ValidationError:
                    pass  # not an event of ours: skip it
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


class WatchView(Protocol):
    """Where a watch shows its progress (a rich bar, or JSON lines)."""

    def show(self, state: WatchState, change: Change) -> None: ...

    def warn(self, message: str) -> None: ...


def follow(
    shim: ShimClient,
    feed: EventFeed | None,
    task_id: str,
    view: WatchView,
    *,
    poll_interval_s: float = 3.0,
    timeout_s: float | None = None,
) -> TaskStatus:
    """Watch until the task ends; returns its final status (result or error included).

    ``feed`` must already be subscribed (see :meth:`EventFeed.open`); None means polling only.
    """
    began = time.monotonic()
    state = WatchState(task_id)
    state.apply_status(shim.task_status(task_id))
    view.show(state, Change("start", state.current_step))
    quiet_since = time.monotonic()
    while not state.finished:
        now = time.monotonic()
        if timeout_s is not None and now - began >= timeout_s:
            raise CliError(
                f"task {task_id} still {state.status} after {timeout_s:g}s", ExitCode.TIMEOUT
            )
        wait = poll_interval_s - (now - quiet_since)
        if timeout_s is not None:
            wait = min(wait, timeout_s - (now - began))
        if feed is not None and wait > 0:
            try:
                event = feed.next(wait)
            except redis.RedisError as exc:
                view.warn(f"live events lost ({exc}); polling every {poll_interval_s:g}s")
                feed.close()
                feed = None
                continue
            change = state.apply_event(event) if event is not None else None
            if change is not None:
                view.show(state, change)
                quiet_since = time.monotonic()
                if change.note == "conversation complete":
                    quiet_since = time.monotonic() - poll_interval_s  # read the final status now
            continue
        if feed is None and wait > 0:
            time.sleep(wait)
        if state.apply_status(shim.task_status(task_id)):
            view.show(state, Change("poll", state.current_step))
        quiet_since = time.monotonic()
    final = shim.task_status(task_id)
    if not final.finished:  # the event was ahead of the read: trust the event's end
        final = final.model_copy(
            update={
                "status": state.status,
                "progress": state.progress,
                "current_step": state.current_step,
            }
        )
    return final
