"""The unified registry against a real redis-server: contract shapes, switch, races, cleanup."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from regtask import keys
from regtask.docstore import DocumentError
from regtask.documents import (
    ConversationDoc,
    Quotas,
    RegistryStatus,
    TaskDoc,
    TaskInfo,
    TaskIsolation,
    UserPresence,
)
from regtask.events import TaskProgressEvent, parse_event
from regtask.registry import Registry
from regtask.settings import Settings


def make_registry(client: aioredis.Redis, unified: bool) -> Registry:
    return Registry(client, Settings(UNIFIED_REGISTRY_ENABLED=unified))


def task_doc(task_id: str, user: str = "user123", company: str = "company_abc") -> TaskDoc:
    return TaskDoc(
        task_info=TaskInfo(
            task_id=task_id, task_type="llm_conversation", user_id=user, company_id=company
        ),
        isolation=TaskIsolation(namespace="rt-user123-company-abc-1a2b3c", max_duration=600),
    )


async def raw_doc(client: aioredis.Redis, key: str) -> dict[str, Any]:
    raw = await client.hget(key, keys.DATA_FIELD)
    assert raw is not None, key
    return json.loads(raw)  # type: ignore[no-any-return]


async def test_switch_off_writes_legacy_keys_only(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=False)
    await registry.register_user("user123", "session456", "/api/v1", company_id="company_abc")
    legacy = await raw_doc(redis_async, "registry:user:user123")
    assert set(legacy) == {"user_id", "session_id", "backend_route", "last_seen_at"}
    assert legacy["session_id"] == "session456"
    assert legacy["last_seen_at"].endswith("Z")
    assert 0 < await redis_async.ttl("registry:user:user123") <= 24 * 3600
    assert not await redis_async.exists("registry:unified:user123")
    assert not await redis_async.exists("registry:company:company_abc")
    await registry.register_collection("user123", "klk_space_id_002e0b", "session456")
    chroma = await raw_doc(redis_async, "registry:chroma:user123:klk_space_id_002e0b")
    assert set(chroma) == {
        "user_id",
        "collection_name",
        "session_id",
        "registered_at",
        "last_heartbeat",
    }
    assert 0 < await redis_async.ttl("registry:chroma:user123:klk_space_id_002e0b") <= 90
    assert await registry.unregister_session("session456") is True
    assert not await redis_async.exists("registry:user:user123")
    assert await registry.unregister_session("session456") is False


async def test_switch_on_dual_writes_contract_shapes(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=True)
    await registry.register_user(
        "user123",
        "session456",
        "/api/v1",
        company_id="company_abc",
        authorized_companies=["company_abc", "company_def"],
        company_roles={"company_abc": "admin", "company_def": "user"},
    )
    assert await redis_async.exists("registry:user:user123")
    unified = await raw_doc(redis_async, "registry:unified:user123")
    assert set(unified) == {"user_info", "companies", "services", "heartbeat"}
    assert set(unified["user_info"]) == {
        "user_id",
        "session_id",
        "backend_route",
        "last_seen_at",
        "status",
    }
    assert unified["user_info"]["status"] == "online"
    assert unified["companies"] == {
        "current_company_id": "company_abc",
        "authorized_companies_ids": ["company_abc", "company_def"],
        "company_roles": {"company_abc": "admin", "company_def": "user"},
    }
    assert unified["services"] == {
        "chroma": {"collections": [], "last_heartbeat": None},
        "llm": {"active_conversations": [], "model_preferences": {}},
        "tasks": {"active_tasks": [], "task_history": []},
    }
    assert unified["heartbeat"]["ttl_seconds"] == 90
    last_update = await redis_async.hget("registry:unified:user123", "last_update")
    assert last_update is not None and float(last_update) > 0
    company = await raw_doc(redis_async, "registry:company:company_abc")
    assert set(company) == {"company_info", "active_users", "services", "quotas"}
    assert company["active_users"]["user123"]["role"] == "admin"
    assert company["active_users"]["user123"]["session_id"] == "session456"
    assert company["quotas"] == {
        "max_tasks_per_user": 10,
        "max_llm_requests_per_hour": 1000,
        "storage_limit_mb": 5000,
    }
    assert await registry.get_company_active_users("company_abc") == ["user123"]

    await registry.register_collection("user123", "klk_space_id_002e0b", "session456")
    unified = await raw_doc(redis_async, "registry:unified:user123")
    assert unified["services"]["chroma"]["collections"] == ["klk_space_id_002e0b"]
    company = await raw_doc(redis_async, "registry:company:company_abc")
    assert company["services"]["chroma_collections"] == ["klk_space_id_002e0b"]

    assert await registry.unregister_session("session456") is True
    unified = await raw_doc(redis_async, "registry:unified:user123")
    assert unified["user_info"]["status"] == "offline"
    assert await registry.get_company_active_users("company_abc") == []


async def test_task_lifecycle_documents_and_events(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=True)
    pubsub = redis_async.pubsub()
    await pubsub.subscribe(keys.events_channel("user123"))
    await pubsub.get_message(timeout=1)

    await registry.register_task(task_doc("doc_analysis_job456"))
    task = await raw_doc(redis_async, "registry:task:doc_analysis_job456")
    assert set(task) >= {"task_info", "isolation", "progress", "resources"}
    assert task["task_info"]["status"] == "queued"
    assert task["progress"] == {
        "current_step": "queued",
        "progress_percent": 0,
        "estimated_completion": None,
    }
    assert task["resources"] == {"worker_id": None, "memory_usage": None, "cpu_usage": None}
    assert 600 < await redis_async.ttl("registry:task:doc_analysis_job456") <= 900
    assert await redis_async.hget("registry:task:doc_analysis_job456", "created_at") is not None

    applied = await registry.update_task_progress(
        "doc_analysis_job456",
        "user123",
        RegistryStatus.PROCESSING,
        75,
        "entity_recognition",
        600,
        data={"entities_found": 15},
    )
    assert applied
    message = None
    for _ in range(20):
        message = await pubsub.get_message(timeout=0.5, ignore_subscribe_messages=True)
        if message:
            break
    assert message is not None
    event = parse_event(message["data"])
    assert isinstance(event, TaskProgressEvent)
    wire = json.loads(message["data"])
    assert wire["type"] == "task.progress_update" and wire["uid"] == "user123"
    assert wire["payload"] == {
        "task_id": "doc_analysis_job456",
        "status": "processing",
        "progress": 75,
        "current_step": "entity_recognition",
        "data": {"entities_found": 15},
    }

    user = await raw_doc(redis_async, "registry:unified:user123")
    assert user["services"]["tasks"]["active_tasks"] == ["doc_analysis_job456"]
    recorded = await registry.finish_task(
        "doc_analysis_job456",
        "user123",
        "company_abc",
        RegistryStatus.COMPLETED,
        600,
        result={"entities_found": 15},
    )
    assert recorded is True
    again = await registry.finish_task(
        "doc_analysis_job456", "user123", "company_abc", RegistryStatus.FAILED, 600
    )
    assert again is False
    stored = await registry.get_task("doc_analysis_job456")
    assert stored is not None
    assert stored.task_info.status is RegistryStatus.COMPLETED
    assert stored.progress.progress_percent == 100
    assert stored.result == {"entities_found": 15}
    user = await raw_doc(redis_async, "registry:unified:user123")
    assert user["services"]["tasks"] == {
        "active_tasks": [],
        "task_history": ["doc_analysis_job456"],
    }
    company = await raw_doc(redis_async, "registry:company:company_abc")
    assert company["services"]["active_tasks"] == []
    # A late progress update must not reopen a finished task nor publish anything.
    late = await registry.update_task_progress(
        "doc_analysis_job456", "user123", RegistryStatus.PROCESSING, 80, "late", 600
    )
    assert late is False
    finished = await registry.get_task("doc_analysis_job456")
    assert finished is not None and finished.task_info.status == "completed"
    await pubsub.aclose()


async def test_step_history_is_recorded_atomically_capped_and_expires_with_the_task(
    redis_async: aioredis.Redis,
) -> None:
    """A runner's reports (record_step) join the history in the progress call itself; waiting
    reports do not; the ring keeps the last TASK_STEP_HISTORY_CAP in order; a late update to
    a finished task records nothing; the history lives in the task's key (its TTL)."""
    registry = make_registry(redis_async, unified=False)
    await registry.register_task(task_doc("steps_job1"))
    assert await registry.get_task_steps("steps_job1") == []
    await registry.update_task_progress(
        "steps_job1", "user123", RegistryStatus.QUEUED, 0, "waiting", 600, queue_position=2
    )
    cap = keys.TASK_STEP_HISTORY_CAP
    total = cap + 7
    for i in range(total):
        assert await registry.update_task_progress(
            "steps_job1",
            "user123",
            RegistryStatus.PROCESSING,
            min(99, i),
            f"step_{i}",
            600,
            data={"i": i},
            record_step=True,
        )
    steps = await registry.get_task_steps("steps_job1")
    assert [s.step for s in steps] == [f"step_{i}" for i in range(total - cap, total)]
    assert steps[-1].data == {"i": total - 1} and steps[-1].progress == min(99, total - 1)
    assert steps[0].at.endswith("Z")
    count = await redis_async.hget(keys.task("steps_job1"), keys.TASK_STEP_COUNT_FIELD)
    assert count is not None and int(count) == total
    assert await registry.finish_task(
        "steps_job1", "user123", "company_abc", RegistryStatus.COMPLETED, 600
    )
    assert not await registry.update_task_progress(
        "steps_job1", "user123", RegistryStatus.PROCESSING, 50, "late", 600, record_step=True
    )
    assert [s.step for s in await registry.get_task_steps("steps_job1")][-1] == f"step_{total - 1}"
    assert 600 < await redis_async.ttl(keys.task("steps_job1")) <= 900
    await redis_async.delete(keys.task("steps_job1"))
    assert await registry.get_task_steps("steps_job1") == []


async def test_eight_writers_register_2000_tasks_and_lose_none(
    redis_server: Any, redis_async: aioredis.Redis
) -> None:
    writers, per_writer = 8, 250
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(writers)]

    async def writer(index: int) -> None:
        registry = make_registry(clients[index], unified=True)
        for n in range(per_writer):
            await registry.register_task(task_doc(f"t{index}_{n}", user=f"user{index}"))

    await asyncio.gather(*(writer(i) for i in range(writers)))
    company = await raw_doc(redis_async, "registry:company:company_abc")
    assert len(company["services"]["active_tasks"]) == writers * per_writer
    assert len(set(company["services"]["active_tasks"])) == writers * per_writer
    for index in range(writers):
        user = await raw_doc(redis_async, f"registry:unified:user{index}")
        assert len(user["services"]["tasks"]["active_tasks"]) == per_writer
    for client in clients:
        await client.aclose()


async def test_progress_racing_with_terminal_status_never_reopens(
    redis_server: Any, redis_async: aioredis.Redis
) -> None:
    tasks = [f"race_{n}" for n in range(100)]
    registry = make_registry(redis_async, unified=True)
    for task_id in tasks:
        await registry.register_task(task_doc(task_id))
    progress_client = aioredis.Redis.from_url(redis_server.url)
    status_client = aioredis.Redis.from_url(redis_server.url)
    progress_registry = make_registry(progress_client, unified=True)
    status_registry = make_registry(status_client, unified=True)

    async def progress_storm() -> None:
        for step in range(10):
            for task_id in tasks:
                await progress_registry.update_task_progress(
                    task_id, "user123", RegistryStatus.PROCESSING, step * 10, f"step{step}", 600
                )

    async def finisher() -> None:
        for task_id in tasks:
            await status_registry.finish_task(
                task_id, "user123", "company_abc", RegistryStatus.COMPLETED, 600
            )
            await asyncio.sleep(0)

    await asyncio.gather(progress_storm(), finisher())
    for task_id in tasks:
        stored = await registry.get_task(task_id)
        assert stored is not None
        assert stored.task_info.status is RegistryStatus.COMPLETED
        assert stored.progress.progress_percent == 100
    user = await raw_doc(redis_async, "registry:unified:user123")
    assert user["services"]["tasks"]["active_tasks"] == []
    assert len(user["services"]["tasks"]["task_history"]) == 50  # capped
    await progress_client.aclose()
    await status_client.aclose()


async def test_reads_fall_back_to_legacy_on_malformed_unified(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=True)
    await registry.register_user("user123", "session456", "/api/v1")
    await redis_async.hset("registry:unified:user123", keys.DATA_FIELD, "{not json")
    doc = await registry.get_user_registry("user123")
    assert doc is not None
    assert doc.user_info.session_id == "session456"
    # the malformed bytes are left for inspection, not overwritten by a blind write
    with pytest.raises(DocumentError, match="registry:unified:user123"):
        await registry.register_collection("user123", "c1", "session456")
    assert await redis_async.hget("registry:unified:user123", keys.DATA_FIELD) == b"{not json"


async def test_wrong_shape_is_a_clear_error(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=True)
    await redis_async.hset(
        "registry:task:broken", keys.DATA_FIELD, json.dumps({"task_info": {"task_id": "broken"}})
    )
    with pytest.raises(DocumentError, match="isolation"):
        await registry.get_task("broken")


async def test_conversation_and_quotas(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=True)
    await registry.set_company_quotas(
        "company_abc", Quotas(max_tasks_per_user=3), company_name="ACME Corp"
    )
    company = await raw_doc(redis_async, "registry:company:company_abc")
    assert company["quotas"]["max_tasks_per_user"] == 3
    assert company["company_info"]["company_name"] == "ACME Corp"
    conv = ConversationDoc(
        conversation_id="conv_abc123",
        user_id="user123",
        company_id="company_abc",
        prompt="Hi",
        response="Hello",
        model="gemma",
        temperature=0.7,
        tokens_used=12,
    )
    await registry.store_conversation(conv)
    stored = await raw_doc(redis_async, "conversation:company_abc:user123:conv_abc123")
    assert set(stored) == {
        "conversation_id",
        "user_id",
        "company_id",
        "prompt",
        "response",
        "model",
        "temperature",
        "timestamp",
        "tokens_used",
    }
    assert stored["temperature"] == 0.7
    assert await redis_async.hget("conversation:company_abc:user123:conv_abc123", "created_at")
    user = await raw_doc(redis_async, "registry:unified:user123")
    assert user["services"]["llm"]["active_conversations"] == ["conv_abc123"]


async def test_cleanup_prunes_expired_references(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=True)
    await registry.register_user("user123", "s1", "/", company_id="company_abc")
    for task_id in ["alive", "gone"]:
        await registry.register_task(task_doc(task_id))
    await redis_async.delete("registry:task:gone")  # as if its TTL had run out
    report = await registry.cleanup_expired_entries()
    assert report.company_tasks_pruned == 1
    assert report.user_tasks_pruned == 1
    company = await raw_doc(redis_async, "registry:company:company_abc")
    assert company["services"]["active_tasks"] == ["alive"]
    user = await raw_doc(redis_async, "registry:unified:user123")
    assert user["services"]["tasks"]["active_tasks"] == ["alive"]


async def test_heartbeat_sweep_marks_stale_users_offline(redis_async: aioredis.Redis) -> None:
    registry = make_registry(redis_async, unified=True)
    await registry.register_user("fresh", "s1", "/")
    await registry.register_user("stale", "s2", "/")
    raw = await raw_doc(redis_async, "registry:unified:stale")
    raw["heartbeat"]["last_heartbeat"] = "2020-01-01T00:00:00Z"
    await redis_async.hset("registry:unified:stale", keys.DATA_FIELD, json.dumps(raw))
    assert await registry.sweep_heartbeats() == ["stale"]
    stale = await registry.get_user_registry("stale")
    fresh = await registry.get_user_registry("fresh")
    assert stale is not None and stale.user_info.status is UserPresence.OFFLINE
    assert fresh is not None and fresh.user_info.status is UserPresence.ONLINE
