"""How ``regtask watch`` reads events: the platform's own event producers, a real Redis."""

from __future__ import annotations

import redis

from regtask import registry_ops
from regtask.documents import RegistryStatus
from regtask.events import (
    LlmConversationCompleteEvent,
    LlmConversationCompletePayload,
    LlmConversationUpdateEvent,
    LlmConversationUpdatePayload,
    parse_event,
)
from regtask_cli.client import TaskStatus
from regtask_cli.watching import EventFeed, WatchState, redact_url
from regtask_dev.redis_server import RedisServer


def progress_message(task_id: str, progress: int, step: str, **data: object) -> str:
    """The exact JSON the gateway's progress update publishes."""
    update = registry_ops.task_progress(
        task_id, "u1", RegistryStatus.PROCESSING, progress, step, 600, data=dict(data)
    )
    return update.message


def finish_message(task_id: str, status: RegistryStatus, error: str | None = None) -> str:
    """The exact JSON the operator publishes when a task ends."""
    updates = registry_ops.finish_task(
        task_id, "u1", "acme", status, 600, unified=False, history_limit=10, error=error
    )
    assert updates[0].publish is not None
    return updates[0].publish[1]


def test_progress_events_of_the_watched_task_move_the_bar_others_do_not() -> None:
    state = WatchState("doc_analysis_a")
    change = state.apply_event(
        parse_event(progress_message("doc_analysis_a", 55, "entity_recognition", entities_found=4))
    )
    assert change is not None and change.source == "event"
    assert (state.status, state.progress, state.current_step) == (
        "processing",
        55,
        "entity_recognition",
    )
    assert change.data == {"entities_found": 4}
    assert state.apply_event(parse_event(progress_message("doc_analysis_b", 90, "x"))) is None
    assert state.progress == 55 and not state.finished

    assert state.apply_event(
        parse_event(finish_message("doc_analysis_a", RegistryStatus.COMPLETED))
    )
    assert state.finished and (state.status, state.progress) == ("completed", 100)
    # a late progress update cannot reopen a finished watch
    assert state.apply_event(parse_event(progress_message("doc_analysis_a", 60, "late"))) is None


def test_a_failed_end_keeps_the_progress_where_it_stopped() -> None:
    state = WatchState("t1")
    state.apply_event(parse_event(progress_message("t1", 40, "key_phrases")))
    state.apply_event(parse_event(finish_message("t1", RegistryStatus.FAILED, error="boom")))
    assert (state.status, state.progress, state.current_step) == ("failed", 40, "failed")
    assert state.data == {"error": "boom"}


def test_llm_events_are_matched_by_conversation_id() -> None:
    state = WatchState("llm_conv_1")
    state.apply_status(
        TaskStatus(
            task_id="llm_conv_1",
            task_type="llm_conversation",
            status="processing",
            progress=10,
            current_step="starting",
            conversation_id="conv_1",
        )
    )
    other = LlmConversationUpdateEvent(
        uid="u1",
        payload=LlmConversationUpdatePayload(conversation_id="conv_2", status="x", progress=0),
    )
    assert state.apply_event(other) is None
    update = LlmConversationUpdateEvent(
        uid="u1",
        payload=LlmConversationUpdatePayload(
            conversation_id="conv_1", status="calling_llm", progress=30
        ),
    )
    change = state.apply_event(parse_event(update.to_json()))
    assert change is not None and (state.progress, state.current_step) == (30, "calling_llm")
    complete = LlmConversationCompleteEvent(
        uid="u1",
        payload=LlmConversationCompletePayload(
            conversation_id="conv_1", response="x" * 500, tokens_used=12
        ),
    )
    change = state.apply_event(parse_event(complete.to_json()))
    assert change is not None and change.note == "conversation complete"
    assert change.data["tokens_used"] == 12 and len(change.data["response"]) < 200
    assert not state.finished  # the task's own end event (or a status read) ends the watch


def test_feed_is_subscribed_before_open_returns_and_skips_foreign_messages(
    redis_server: RedisServer,
) -> None:
    feed = EventFeed.open(redis_server.url, "u1")
    publisher = redis.Redis.from_url(redis_server.url)
    try:
        # published right after open(): already subscribed, so it cannot be missed
        assert publisher.publish("events:user:u1", "not json") == 1
        publisher.publish("events:user:u2", progress_message("t_other_user", 1, "x"))
        publisher.publish("events:user:u1", progress_message("t1", 25, "extracting_text"))
        event = feed.next(5.0)
        assert event is not None and event.payload.model_dump()["task_id"] == "t1"
        assert feed.next(0.2) is None
    finally:
        feed.close()
        publisher.close()


def test_redis_password_never_reaches_a_message() -> None:
    assert redact_url("redis://:s3cret@host:6380/0") == "redis://:***@host:6380/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
