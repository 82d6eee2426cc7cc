"""The gateway's task endpoints and LLM pass-through (real Redis; fake and real LLMs)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from regtask import keys
from regtask.crmodels import TaskInput
from regtask.documents import ConversationDoc, Quotas, TaskDoc
from regtask.events import EventType, parse_event
from regtask.naming import tenant_namespace
from regtask.ratelimit import LlmRateLimiter
from regtask.registry import Registry
from regtask.settings import Settings
from regtask.storage import StorageAccounting
from regtask.tasktypes import TaskType
from regtask_dev.llm_server import LlamaServer
from regtask_dev.procs import free_port
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import client, make_spec

PROVIDER_KEY = "sk-provider-" + "x" * 24


async def _doc(redis_async: aioredis.Redis, task_id: str) -> TaskDoc:
    raw = await redis_async.hget(keys.task(task_id), keys.DATA_FIELD)
    assert raw is not None
    return TaskDoc.model_validate_json(raw)


async def _collect(pubsub: Any, count: int, timeout_s: float = 5) -> list[Any]:
    events: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(events) < count and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            events.append(parse_event(message["data"]))
    return events


async def test_task_view_resolves_inline_inputs_and_defaults(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    registry = Registry(redis_async)
    gateway = make_gateway()
    spec = make_spec(
        "doc_analysis_v",
        inputs=[
            TaskInput(name="document", value="aGVsbG8=", encoding="base64"),
            TaskInput(name="note", value="plain"),
        ],
        parameters={"summary": "true"},
    )
    token = await gateway.add_task(spec)
    await registry.apply([])  # registry usable on this client
    async with client(gateway.url, token) as http:
        view = (await http.get("/v1/task")).json()
        health = await http.get("/healthz")
    assert health.json() == {"status": "ok"}
    assert view["max_duration_seconds"] == 1800  # the task type's default
    assert view["parameters"] == {"summary": "true"}
    assert [(i["name"], i["encoding"], i["size_bytes"]) for i in view["inputs"]] == [
        ("document", "base64", 5),
        ("note", "utf-8", 5),
    ]


async def test_progress_is_throttled_per_task_and_published(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway(progress_min_interval_s=0.5)
    spec = make_spec("doc_analysis_p")
    token = await gateway.add_task(spec)
    pubsub = redis_async.pubsub()
    await pubsub.subscribe(keys.events_channel(spec.user_id))
    async with client(gateway.url, token) as http:

        async def post(progress: int, step: str, **extra: Any) -> httpx.Response:
            body = {"progress": progress, "current_step": step, **extra}
            return await http.post("/v1/task/progress", json=body)

        first = await post(10, "extracting_text")
        burst = [await post(11 + i, "extracting_text") for i in range(5)]
        new_step = await post(40, "entity_recognition", data={"entities_found": 15})
        done = await post(100, "entity_recognition")
        bad_status = await post(50, "x", status="completed")
        out_of_range = await post(101, "x")
        await asyncio.sleep(0.55)
        later = await post(55, "entity_recognition")
    events = await _collect(pubsub, 4)
    await pubsub.aclose()

    assert first.status_code == 200 and first.json() == {"accepted": True, "applied": True}
    assert {r.status_code for r in burst} == {202}
    assert all(r.json() == {"accepted": False, "applied": False} for r in burst)
    assert new_step.status_code == 200
    assert done.status_code == 200  # 100 % always passes
    assert bad_status.status_code == 422  # only the operator records an end
    assert out_of_range.status_code == 422
    assert later.status_code == 200
    assert [(e.payload.progress, e.payload.current_step) for e in events] == [
        (10, "extracting_text"),
        (40, "entity_recognition"),
        (100, "entity_recognition"),
        (55, "entity_recognition"),
    ]
    assert events[1].type is EventType.TASK_PROGRESS
    assert events[1].payload.data == {"entities_found": 15}
    assert events[1].payload.status == "processing"
    doc = await _doc(redis_async, spec.task_id)
    assert (doc.progress.progress_percent, doc.task_info.status) == (55, "processing")
    # The task's step history holds what was applied, with its data; the throttled burst is not.
    steps = await Registry(redis_async).get_task_steps(spec.task_id)
    assert [(s.progress, s.step, s.data) for s in steps] == [
        (10, "extracting_text", {}),
        (40, "entity_recognition", {"entities_found": 15}),
        (100, "entity_recognition", {}),
        (55, "entity_recognition", {}),
    ]


async def test_result_size_limit_and_company_storage_quota(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    await Registry(redis_async).set_company_quotas("tiny", Quotas(storage_limit_mb=1))
    gateway = make_gateway()
    big_token = await gateway.add_task(make_spec("doc_analysis_big"))
    small_token = await gateway.add_task(make_spec("doc_analysis_s", company_id="tiny"))
    storage = StorageAccounting(redis_async)
    async with client(gateway.url) as http:
        too_big = await http.post(
            "/v1/task/result",
            json={"result": {"text": "x" * (70 * 1024)}},
            headers={"Authorization": f"Bearer {big_token}"},
        )
        result = {"amount": "1 250,00 EUR", "entities": ["ACME"]}
        stored = await http.post(
            "/v1/task/result",
            json={"result": result},
            headers={"Authorization": f"Bearer {small_token}"},
        )
        used_after_first = await storage.used("tiny")
        await redis_async.set("quota:storage:tiny", 1024 * 1024 - 10)  # the company is full
        full = await http.post(
            "/v1/task/result",
            json={"result": result},
            headers={"Authorization": f"Bearer {small_token}"},
        )
    assert too_big.status_code == 413
    assert "blob" in too_big.json()["detail"]
    assert stored.status_code == 200
    size = len(json.dumps(result, separators=(",", ":")).encode())
    assert stored.json() == {"stored": True, "size_bytes": size, "storage_used_bytes": size}
    assert used_after_first == size
    assert full.status_code == 507
    assert (await _doc(redis_async, "doc_analysis_s")).result == result
    assert (await _doc(redis_async, "doc_analysis_big")).result is None


async def test_result_of_a_finished_task_is_refused_and_not_counted(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway()
    spec = make_spec("doc_analysis_done")
    token = await gateway.add_task(spec)
    from regtask.documents import RegistryStatus

    await Registry(redis_async).finish_task(
        spec.task_id, spec.user_id, spec.company_id, RegistryStatus.CANCELLED, 1800
    )
    async with client(gateway.url, token) as http:
        late = await http.post("/v1/task/result", json={"result": {"a": 1}})
        late_progress = await http.post(
            "/v1/task/progress", json={"progress": 90, "current_step": "late"}
        )
    assert late.status_code == 409
    assert late_progress.json() == {"accepted": True, "applied": False}
    assert await StorageAccounting(redis_async).used(spec.company_id) == 0
    doc = await _doc(redis_async, spec.task_id)
    assert (doc.task_info.status, doc.result) == ("cancelled", None)


async def test_conversation_events_are_published_with_the_tokens_uid(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway(unified_registry_enabled=True)
    spec = make_spec(
        "llm_e", TaskType.LLM_CONVERSATION, user_id="u1", company_id="c1", conversation_id="conv_1"
    )
    token = await gateway.add_task(spec)
    pubsub = redis_async.pubsub()
    await pubsub.subscribe(keys.events_channel("u1"))
    async with client(gateway.url, token) as http:
        update = await http.post(
            "/v1/task/events",
            json={
                "type": "llm.conversation_update",
                "payload": {"conversation_id": "conv_1", "status": "calling_llm", "progress": 30},
            },
        )
        complete = await http.post(
            "/v1/task/events",
            json={
                "type": "llm.conversation_complete",
                "payload": {"conversation_id": "conv_1", "response": "Paris.", "tokens_used": 4},
            },
        )
        invalid = await http.post(
            "/v1/task/events",
            json={
                "type": "llm.conversation_complete",
                "payload": {"conversation_id": "conv_1", "response": "x", "tokens_used": -1},
            },
        )
        wrong_type = await http.post(
            "/v1/task/events",
            json={"type": "task.progress_update", "payload": {"conversation_id": "conv_1"}},
        )
        stored = await http.post(
            "/v1/task/conversation",
            json={
                "conversation_id": "conv_1",
                "prompt": "Capital of France?",
                "response": "Paris.",
                "model": "gemma-3-270m",
                "temperature": 0.2,
                "tokens_used": 4,
            },
        )
    events = await _collect(pubsub, 2)
    await pubsub.aclose()
    assert (update.status_code, complete.status_code) == (200, 200)
    assert update.json() == {"published": True, "receivers": 1}
    assert invalid.status_code == 422
    assert wrong_type.status_code == 422
    assert stored.status_code == 200
    assert [e.type for e in events] == [
        EventType.LLM_CONVERSATION_UPDATE,
        EventType.LLM_CONVERSATION_COMPLETE,
    ]
    assert {e.uid for e in events} == {"u1"}
    conversation = await Registry(redis_async).get_conversation("c1", "u1", "conv_1")
    assert isinstance(conversation, ConversationDoc)
    assert (conversation.response, conversation.tokens_used) == ("Paris.", 4)
    assert await redis_async.ttl(keys.conversation("c1", "u1", "conv_1")) > 0
    unified = Registry(redis_async, Settings.model_validate({"UNIFIED_REGISTRY_ENABLED": True}))
    user = await unified.get_user_registry("u1")
    assert user is not None and "conv_1" in user.services.llm.active_conversations


async def test_llm_passthrough_holds_the_key_and_forces_the_user(
    make_gateway: GatewayFactory, fake_llm: FakeLlm
) -> None:
    gateway = make_gateway(
        llm_base_url=fake_llm.base_url,
        llm_api_key=PROVIDER_KEY,
        llm_default_model="default-m",
        llm_embedding_model="embed-m",  # a model the company may use (issue 16, item 6)
    )
    spec = make_spec("llm_p", TaskType.LLM_CONVERSATION, conversation_id="conv_p")
    token = await gateway.add_task(spec)
    async with client(gateway.url, token) as http:
        chat = await http.post(
            "/v1/llm/chat/completions",
            json={
                "messages": [{"role": "user", "content": "bonjour le monde"}],
                "user": "someone-else",
                "max_tokens": 7,
                "seed": 3,
            },
        )
        emb = await http.post("/v1/llm/embeddings", json={"input": ["a", "b"], "model": "embed-m"})
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "echo: bonjour le monde"
    assert emb.json()["data"][1]["index"] == 1
    sent_chat, sent_emb = fake_llm.state.requests
    assert sent_chat.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert token not in json.dumps(sent_chat.headers)  # the runner's token stays here
    assert sent_chat.body["user"] == tenant_namespace("user123", "acme")
    assert sent_chat.body["model"] == "default-m"
    assert (sent_chat.body["max_tokens"], sent_chat.body["seed"]) == (7, 3)
    assert (sent_emb.path, sent_emb.body["model"]) == ("/v1/embeddings", "embed-m")


async def test_upstream_errors_are_relayed_and_unreachable_is_502(
    make_gateway: GatewayFactory, fake_llm: FakeLlm
) -> None:
    fake_llm.state.fail_status = 503
    relayed = make_gateway(llm_base_url=fake_llm.base_url)
    down = make_gateway(llm_base_url=f"http://127.0.0.1:{free_port()}/v1")
    spec = make_spec("llm_err", TaskType.LLM_CONVERSATION, conversation_id="c")
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client(relayed.url, await relayed.add_task(spec)) as http:
        failed = await http.post("/v1/llm/chat/completions", json=body)
    async with client(down.url, await down.add_task(spec)) as http:
        unreachable = await http.post("/v1/llm/chat/completions", json=body)
    assert failed.status_code == 503
    assert failed.json()["error"]["message"] == "fake failure"
    assert unreachable.status_code == 502
    assert unreachable.json()["error"]["code"] == "unreachable"


async def _timed_chunks(response: httpx.Response) -> AsyncIterator[tuple[float, bytes]]:
    async for chunk in response.aiter_raw():
        yield time.monotonic(), chunk


async def test_streaming_is_relayed_chunk_by_chunk(
    make_gateway: GatewayFactory, fake_llm: FakeLlm
) -> None:
    """Chunks 0.3 s apart upstream arrive 0.3 s apart downstream: nothing is buffered."""
    fake_llm.state.chunk_delay_s = 0.3
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    token = await gateway.add_task(make_spec("llm_s", TaskType.LLM_CONVERSATION))
    body = {"messages": [{"role": "user", "content": "one two three four"}], "stream": True}
    arrivals: list[tuple[float, bytes]] = []
    async with client(gateway.url, token) as http:
        start = time.monotonic()
        async with http.stream("POST", "/v1/llm/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            arrivals = [item async for item in _timed_chunks(response)]
    text = b"".join(chunk for _, chunk in arrivals).decode()
    assert text.count("data: ") == 8  # role, 5 words, stop, [DONE]
    first_word_at = next(t for t, c in arrivals if b"echo:" in c) - start
    last_at = arrivals[-1][0] - start
    assert first_word_at < 0.9  # one upstream delay, not the whole answer
    assert last_at >= 1.4  # five delays of 0.3 s
    assert last_at - first_word_at >= 1.1


@pytest.mark.llm
async def test_streaming_passthrough_with_the_real_model(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway(
        llm_base_url=llm_server.base_url,
        llm_embeddings_base_url=llm_server.embeddings_base_url,
        llm_embedding_model=llm_server.embedding_model,
    )
    token = await gateway.add_task(make_spec("llm_real", TaskType.LLM_CONVERSATION))
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "stream": True,
        "max_tokens": 24,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    pieces: list[str] = []
    chunk_times: list[float] = []
    async with (
        client(gateway.url, token, timeout=120) as http,
        http.stream("POST", "/v1/llm/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk_times.append(time.monotonic())
            data = json.loads(line[6:])
            for choice in data.get("choices", []):
                pieces.append(choice.get("delta", {}).get("content") or "")
    answer = "".join(pieces)
    assert answer.strip(), "the model answered nothing"
    assert len(chunk_times) >= 5  # token by token, not one buffered blob
    assert chunk_times[-1] - chunk_times[0] > 0
    async with client(gateway.url, token, timeout=120) as http:
        emb = await http.post("/v1/llm/embeddings", json={"input": ["hello", "world"]})
    vectors = [item["embedding"] for item in emb.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 384  # all-MiniLM-L6-v2
    assert isinstance(vectors[0][0], float)
    assert (await LlmRateLimiter(redis_async).usage("acme")).requests == 2
