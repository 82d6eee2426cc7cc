"""The gateway lets a runner reach its own task's records only (real Redis, real HTTP)."""

from __future__ import annotations

import secrets

import pytest
import redis.asyncio as aioredis

from regtask import keys, naming
from regtask.crmodels import InputRef, TaskInput
from regtask.documents import TaskDoc
from regtask.storage import blob_key, blob_ref
from regtask.tasktypes import TaskType
from tests.fixtures.gateway import GatewayFactory
from tests.gateway.helpers import bearer, client, make_spec

ENDPOINTS = [
    ("GET", "/v1/task", None),
    ("POST", "/v1/task/progress", {"progress": 10, "current_step": "x"}),
    ("POST", "/v1/task/result", {"result": {"a": 1}}),
    ("POST", "/v1/task/conversation", {"conversation_id": "c1"}),
    ("POST", "/v1/llm/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/llm/embeddings", {"input": "hi"}),
    ("POST", "/v1/vectors/upsert", {"collection": "c"}),
]


async def _task_doc(redis_async: aioredis.Redis, task_id: str) -> TaskDoc:
    raw = await redis_async.hget(keys.task(task_id), keys.DATA_FIELD)
    assert raw is not None
    return TaskDoc.model_validate_json(raw)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_runner_endpoint_requires_a_token(
    make_gateway: GatewayFactory, method: str, path: str, body: dict[str, object] | None
) -> None:
    gateway = make_gateway()
    await gateway.add_task(make_spec("doc_analysis_job1"))
    async with client(gateway.url) as http:
        missing = await http.request(method, path, json=body)
        basic = await http.request(
            method, path, json=body, headers={"Authorization": "Basic dXNlcjpwdw=="}
        )
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert basic.status_code == 401


async def test_unknown_tokens_and_pods_of_other_jobs_are_refused(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    """Tokens the authenticator does not vouch for: 401; a pod that is not the task's: 403.

    (Forged, wrong-audience and deleted-pod tokens against the real API server's TokenReview:
    tests/gateway/test_gateway_tokenreview.py.)
    """
    gateway = make_gateway()
    spec = make_spec("doc_analysis_job1")
    good = await gateway.add_task(spec)
    other_job = gateway.token(spec, pod_name=naming.job_name("doc_analysis_job2") + "-abcde")
    other_account = gateway.token(spec, service_account="default")
    async with client(gateway.url) as http:
        ok = await http.get("/v1/task", headers=bearer(good))
        for token in (good[:-4] + "AAAA", "not-a-jwt", secrets.token_urlsafe(32)):
            response = await http.post(
                "/v1/task/progress",
                json={"progress": 50, "current_step": "forged"},
                headers=bearer(token),
            )
            assert response.status_code == 401, token
            assert response.json()["detail"] == "invalid or expired task token"
        for token in (other_job, other_account):
            response = await http.post(
                "/v1/task/progress",
                json={"progress": 50, "current_step": "forged"},
                headers=bearer(token),
            )
            assert response.status_code == 403
            assert response.json()["detail"] == "token does not match the task"
    assert ok.status_code == 200
    assert ok.json()["task_id"] == spec.task_id
    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.progress.current_step == "queued"  # nothing forged got through


async def test_task_a_token_cannot_write_task_b(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    """The body cannot name a task; a token standing for a pod of A cannot be taken for B."""
    gateway = make_gateway(progress_min_interval_s=0)
    spec_a = make_spec("doc_analysis_a", user_id="alice", company_id="acme")
    spec_b = make_spec("doc_analysis_b", user_id="bob", company_id="globex")
    token_a = await gateway.add_task(spec_a)
    await gateway.add_task(spec_b)
    # A's pod, in A's namespace, presenting a token whose audience names B.
    pod_a = gateway.authenticator.identities[token_a]
    token_a_for_b = gateway.token(spec_b, namespace=pod_a.namespace, pod_name=pod_a.pod_name)

    async with client(gateway.url) as http:
        named_b = await http.post(
            "/v1/task/progress",
            json={"task_id": spec_b.task_id, "progress": 99, "current_step": "hijack"},
            headers=bearer(token_a),
        )
        audience_b = await http.post(
            "/v1/task/progress",
            json={"progress": 99, "current_step": "hijack"},
            headers=bearer(token_a_for_b),
        )
        own = await http.post(
            "/v1/task/progress",
            json={"progress": 40, "current_step": "own_step"},
            headers=bearer(token_a),
        )
        result_b = await http.post(
            "/v1/task/result",
            json={"result": {"x": 1}, "task_id": spec_b.task_id},
            headers=bearer(token_a),
        )
    assert named_b.status_code == 422  # extra fields are refused, never interpreted
    assert audience_b.status_code == 403
    assert own.status_code == 200 and own.json() == {"accepted": True, "applied": True}
    assert result_b.status_code == 422
    doc_b = await _task_doc(redis_async, spec_b.task_id)
    assert doc_b.progress.current_step == "queued"
    assert doc_b.progress.progress_percent == 0
    assert doc_b.result is None
    doc_a = await _task_doc(redis_async, spec_a.task_id)
    assert (doc_a.progress.current_step, doc_a.progress.progress_percent) == ("own_step", 40)


async def test_a_spec_for_another_tenant_than_the_token_is_refused(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway()
    spec = make_spec("doc_analysis_job1", user_id="alice")
    token = await gateway.add_task(spec)
    # The CR changed owner under the token (or the token was minted for someone else).
    gateway.specs.put(spec.model_copy(update={"user_id": "mallory"}))
    async with client(gateway.url, token) as http:
        response = await http.get("/v1/task")
    assert response.status_code == 403


async def test_input_refs_are_confined_to_the_tenants_blobs(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway()
    await redis_async.set(blob_key("acme", "alice", "doc1"), "alice's text")
    await redis_async.set(blob_key("globex", "bob", "secret"), "bob's secret")
    own = make_spec(
        "doc_analysis_own",
        user_id="alice",
        inputs=[
            TaskInput(
                name="document",
                content_type="text/plain",
                ref=InputRef(uri=blob_ref("acme", "alice", "doc1")),
            )
        ],
    )
    foreign = make_spec(
        "doc_analysis_foreign",
        user_id="alice",
        inputs=[TaskInput(name="document", ref=InputRef(uri=blob_ref("globex", "bob", "secret")))],
    )
    raw_key = make_spec(
        "doc_analysis_raw",
        user_id="alice",
        inputs=[TaskInput(name="document", ref=InputRef(uri="redis://registry:company:globex"))],
    )
    async with client(gateway.url) as http:
        ok = await http.get("/v1/task", headers=bearer(await gateway.add_task(own)))
        refused = await http.get("/v1/task", headers=bearer(await gateway.add_task(foreign)))
        refused_raw = await http.get("/v1/task", headers=bearer(await gateway.add_task(raw_key)))
    assert ok.status_code == 200
    assert ok.json()["inputs"] == [
        {
            "name": "document",
            "content_type": "text/plain",
            "value": "alice's text",
            "encoding": "utf-8",
            "size_bytes": 12,
        }
    ]
    assert refused.status_code == 403
    assert "bob's secret" not in refused.text
    assert refused_raw.status_code == 403


async def test_events_and_conversations_only_for_the_tokens_conversation(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway()
    spec = make_spec("llm_c1", TaskType.LLM_CONVERSATION, conversation_id="conv_mine")
    token = await gateway.add_task(spec)
    no_conv = await gateway.add_task(make_spec("doc_analysis_x"))
    conversation = {
        "prompt": "p",
        "response": "r",
        "model": "m",
        "temperature": 0.5,
        "tokens_used": 3,
    }
    async with client(gateway.url) as http:
        other_event = await http.post(
            "/v1/task/events",
            json={
                "type": "llm.conversation_update",
                "payload": {
                    "conversation_id": "conv_other",
                    "status": "calling_llm",
                    "progress": 5,
                },
            },
            headers=bearer(token),
        )
        no_conv_event = await http.post(
            "/v1/task/events",
            json={
                "type": "llm.conversation_update",
                "payload": {"conversation_id": "conv_mine", "status": "calling_llm", "progress": 5},
            },
            headers=bearer(no_conv),
        )
        other_conv = await http.post(
            "/v1/task/conversation",
            json={"conversation_id": "conv_other", **conversation},
            headers=bearer(token),
        )
        forced_user = await http.post(
            "/v1/task/conversation",
            json={"conversation_id": "conv_mine", "user_id": "mallory", **conversation},
            headers=bearer(token),
        )
        mine = await http.post(
            "/v1/task/conversation",
            json={"conversation_id": "conv_mine", **conversation},
            headers=bearer(token),
        )
    assert other_event.status_code == 403
    assert no_conv_event.status_code == 403
    assert other_conv.status_code == 403
    assert forced_user.status_code == 422
    assert mine.status_code == 200
    stored = await redis_async.keys("conversation:*")
    assert stored == [keys.conversation("acme", "user123", "conv_mine").encode()]


async def test_refused_tokens_are_rate_limited_per_source(make_gateway: GatewayFactory) -> None:
    """Issue 16 item 11: a source sending bad tokens gets 429 without a review, over real HTTP;
    a token already accepted from the same address still passes."""
    gateway = make_gateway(token_failures_per_minute=5)
    good = await gateway.add_task(make_spec("doc_limit_1"))
    async with client(gateway.url, good) as http:
        assert (await http.get("/v1/task")).status_code == 200
        answers = [await http.get("/v1/task", headers=bearer(f"forged-{i}")) for i in range(7)]
        assert [a.status_code for a in answers] == [401] * 5 + [429] * 2
        assert 1 <= int(answers[5].headers["retry-after"]) <= 60
        assert (await http.get("/v1/task")).status_code == 200  # the known token passes


@pytest.mark.unit
def test_failure_limiter_window() -> None:
    from regtask_gateway.runnerauth import FailureLimiter

    now = [0.0]
    limiter = FailureLimiter(2, window_s=60, clock=lambda: now[0])
    assert limiter.blocked("10.0.0.1") is None
    limiter.failed("10.0.0.1")
    limiter.failed("10.0.0.1")
    assert limiter.blocked("10.0.0.1") == 60
    assert limiter.blocked("10.0.0.2") is None  # per source
    now[0] = 59.5
    assert limiter.blocked("10.0.0.1") == 0.5
    now[0] = 60.0
    assert limiter.blocked("10.0.0.1") is None  # a new window
    limiter.failed("10.0.0.1")
    assert limiter.blocked("10.0.0.1") is None
