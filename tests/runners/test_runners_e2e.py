"""Each runner end to end, as its Job runs it: ``python -m regtask_runners <type>`` as a
subprocess, talking to a real gateway (uvicorn) backed by real Redis, the real llama.cpp model
and a real Chroma server.

Long (about 400 lines) for a reason: one scenario per runner and per way a run ends, on the
servers the session starts once; split, each part would repeat the same set-up.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import chromadb
import pytest
import redis.asyncio as aioredis
from chromadb.config import Settings as ChromaSettings

from regtask import keys
from regtask.crmodels import InputRef, TaskInput
from regtask.documents import ConversationDoc, Quotas, TaskDoc, UnifiedUserDoc
from regtask.events import EventType
from regtask.gateway_api import ResolvedInput
from regtask.ratelimit import LlmRateLimiter
from regtask.registry import Registry
from regtask.runner_contract import ExitCode
from regtask.storage import blob_key, blob_ref
from regtask.tasktypes import TaskType
from regtask_dev import design_calls
from regtask_dev.chroma_server import ChromaServer
from regtask_dev.llm_server import LlamaServer
from regtask_dev.procs import free_port
from regtask_runners.textextract import extract_text
from regtask_runners.vector_computation import chunk_text
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import make_spec
from tests.runners.helpers import (
    DATA,
    DOCX,
    PDF,
    file_input,
    payload,
    run_runner,
    wait_for_event,
    watch_events,
)

# The grace a Job gives a runner between SIGTERM and SIGKILL is 30 s by default
# (terminationGracePeriodSeconds); the runner must be well within it, even on a loaded machine.
GRACE_S = 10.0


async def _task_doc(client: aioredis.Redis, task_id: str) -> TaskDoc:
    raw = await client.hget(keys.task(task_id), keys.DATA_FIELD)
    assert raw is not None
    return TaskDoc.model_validate_json(raw)


async def _llm_count(client: aioredis.Redis, company_id: str) -> int:
    return (await LlmRateLimiter(client).usage(company_id)).requests


def _real_llm(llm_server: LlamaServer, **extra: Any) -> dict[str, Any]:
    return {
        "llm_base_url": llm_server.base_url,
        "llm_embeddings_base_url": llm_server.embeddings_base_url,
        "llm_embedding_model": llm_server.embedding_model,
        **extra,
    }


# ------------------------------------------------------------------ document analysis


@pytest.mark.llm
async def test_document_analysis_of_pdf_and_docx_invoices_with_summary(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway(**_real_llm(llm_server))
    spec = make_spec(
        "doc_analysis_job456",
        inputs=[file_input("invoice.pdf", PDF), file_input("invoice.docx", DOCX)],
        parameters={"summary": "true", "summary_max_tokens": "48"},
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events)
    assert run.returncode == ExitCode.SUCCESS, run.output

    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.result is not None
    documents = {d["name"]: d for d in doc.result["documents"]}
    assert set(documents) == {"invoice.pdf", "invoice.docx"}
    for analysis in documents.values():
        entities = analysis["entities"]
        assert {"value": "1250.00", "currency": "EUR", "text": "1 250,00 EUR"} in entities[
            "amounts"
        ]
        assert "2025-09-24" in [d["iso"] for d in entities["dates"]]
        assert [i["iban"] for i in entities["ibans"]] == ["FR7630006000011234567890189"]
        assert entities["emails"][0]["email"] == "facturation@acme-industries.fr"
        assert entities["phones"][0]["number"] == "+33142685300"
        assert "ACME Industries SAS" in [o["text"] for o in entities["organisations"]]
        assert analysis["language"]["code"] == "fr"
        assert analysis["key_phrases"]
        assert isinstance(analysis["summary"], str)
    assert any(d["summary"] for d in documents.values()), "the model summarised nothing"
    assert documents["invoice.pdf"]["counts"]["pages"] == 1
    assert await _llm_count(redis_async, "acme") == 2  # one summary per document

    steps = run.progress_steps()
    for step in ("extracting_text", "entity_recognition", "key_phrases", "summarizing"):
        assert step in steps
    assert steps[-1] == "completed"
    recognition = next(
        e
        for e in run.of_type(EventType.TASK_PROGRESS)
        if payload(e)["current_step"] == "entity_recognition"
    )
    assert payload(recognition)["data"]["entities_found"] == doc.result["entities_found"] > 10
    assert payload(run.events[-1])["progress"] == 100


async def test_document_analysis_reads_a_blob_reference(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    """A large Markdown report stored as the tenant's blob, passed by ``redis://`` reference."""
    gateway = make_gateway()
    await redis_async.set(blob_key("acme", "user123", "report"), (DATA / "report.md").read_bytes())
    spec = make_spec(
        "doc_analysis_report",
        inputs=[
            TaskInput(
                name="report.md",
                content_type="text/markdown",
                ref=InputRef(uri=blob_ref("acme", "user123", "report")),
            )
        ],
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events)
    assert run.returncode == ExitCode.SUCCESS, run.output
    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.result is not None
    (analysis,) = doc.result["documents"]
    assert analysis["kind"] == "markdown"
    assert analysis["counts"]["pages"] == 3 and analysis["counts"]["words"] > 1000
    assert analysis["language"]["code"] == "en"
    assert "summary" not in analysis
    assert len(analysis["entities"]["organisations"]) == 4
    assert await _llm_count(redis_async, "acme") == 0


async def test_unreadable_input_exits_permanent_and_reports_why(
    make_gateway: GatewayFactory, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway()
    spec = make_spec(
        "doc_analysis_broken",
        inputs=[
            TaskInput(
                name="broken.pdf", content_type=PDF, value="JVBERi0xLjQgYnJva2Vu", encoding="base64"
            )
        ],
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events)
    assert run.returncode == ExitCode.PERMANENT, run.output
    last = payload(run.events[-1])
    assert last["current_step"] == "failed"
    assert last["data"]["retryable"] is False
    assert "broken.pdf" in last["data"]["error"]
    assert (await _task_doc(redis_async, spec.task_id)).result is None


async def test_gateway_unreachable_exits_retryable(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    spec = make_spec("doc_analysis_nogw", inputs=[TaskInput(name="a.txt", value="hello")])
    token = await gateway.add_task(spec)
    run = await run_runner(
        gateway,
        spec,
        token,
        [],
        env={"REGTASK_GATEWAY_URL": f"http://127.0.0.1:{free_port()}"},
        timeout_s=60,
    )
    assert run.returncode == ExitCode.RETRYABLE, run.output
    assert "runner_failed" in run.output


async def test_a_forged_token_exits_permanent(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    spec = make_spec("doc_analysis_forged", inputs=[TaskInput(name="a.txt", value="hello")])
    await gateway.add_task(spec)
    run = await run_runner(gateway, spec, "eyJhbGciOiJIUzI1NiJ9.e30.forged", [], timeout_s=60)
    assert run.returncode == ExitCode.PERMANENT, run.output
    assert "401" in run.output


# ------------------------------------------------------------------ vector computation


@pytest.mark.llm
async def test_vector_computation_stores_embeddings_in_chroma(
    make_gateway: GatewayFactory,
    llm_server: LlamaServer,
    chroma_server: ChromaServer,
    redis_async: aioredis.Redis,
) -> None:
    gateway = make_gateway(
        **_real_llm(llm_server), chroma_url=chroma_server.url, unified_registry_enabled=True
    )
    spec = make_spec(
        "vector_job1",
        TaskType.VECTOR_COMPUTATION,
        inputs=[
            TaskInput(
                name="report.md",
                content_type="text/markdown",
                value=(DATA / "report.md").read_text(),
            ),
            file_input("invoice.pdf", PDF),
        ],
        parameters={
            "collection": "kb",
            "chunk_size": "600",
            "chunk_overlap": "80",
            "batch_size": "8",
        },
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events)
    assert run.returncode == ExitCode.SUCCESS, run.output

    expected = sum(
        len(
            chunk_text(
                extract_text(ResolvedInput.model_validate(i.model_dump(exclude_none=True))).text,
                600,
                80,
            )
        )
        for i in spec.inputs
    )
    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.result is not None
    result = doc.result
    assert result["count"] == expected > 8
    assert result["dimension"] == 384  # all-MiniLM-L6-v2
    assert result["requested_collection"] == "kb"

    chroma = chromadb.HttpClient(
        host="127.0.0.1",
        port=chroma_server.port,
        settings=ChromaSettings(anonymized_telemetry=False),
    )
    collection = chroma.get_collection(result["collection"])
    assert collection.count() == expected
    stored = collection.get(
        ids=["vector_job1:report.md:0"], include=["embeddings", "documents", "metadatas"]
    )
    assert stored["embeddings"] is not None and len(stored["embeddings"][0]) == 384
    assert stored["documents"] is not None and stored["documents"][0].startswith(
        "Quarterly Operations"
    )
    assert stored["metadatas"] is not None and stored["metadatas"][0]["source"] == "report.md"
    assert collection.metadata is not None and collection.metadata["user_id"] == "user123"

    batches = -(-expected // 8)
    assert await _llm_count(redis_async, "acme") == batches
    embedding_events = [
        payload(e)
        for e in run.of_type(EventType.TASK_PROGRESS)
        if payload(e)["current_step"] == "embedding"
    ]
    assert embedding_events[-1]["data"]["batch"] == batches
    raw_user = await redis_async.hget(keys.unified_user("user123"), keys.DATA_FIELD)
    assert raw_user is not None
    user = UnifiedUserDoc.model_validate_json(raw_user)
    assert user.services.chroma.collections == [result["collection"]]


# ------------------------------------------------------------------ LLM conversation


@pytest.mark.llm
async def test_llm_conversation_streams_publishes_and_stores(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway(**_real_llm(llm_server), unified_registry_enabled=True)
    spec = make_spec(
        "llm_conv_abc123",
        TaskType.LLM_CONVERSATION,
        conversation_id="conv_abc123",
        inputs=[TaskInput(name="prompt", value="What is the capital of France?")],
        parameters={"max_tokens": "64", "temperature": "0.2"},
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events)
    assert run.returncode == ExitCode.SUCCESS, run.output

    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.result is not None
    assert doc.result["response"].strip()
    assert doc.result["tokens_used"] > 0
    assert doc.result["streamed_chunks"] >= 1

    conversation = await redis_async.hget(
        keys.conversation("acme", "user123", "conv_abc123"), keys.DATA_FIELD
    )
    assert conversation is not None
    stored = ConversationDoc.model_validate_json(conversation)
    assert stored.prompt == "What is the capital of France?"
    assert stored.response == doc.result["response"]
    assert stored.tokens_used == doc.result["tokens_used"]
    assert stored.temperature == 0.2
    assert stored.model == "gemma-3-270m"

    updates = run.of_type(EventType.LLM_CONVERSATION_UPDATE)
    completes = run.of_type(EventType.LLM_CONVERSATION_COMPLETE)
    assert updates and all(payload(u)["conversation_id"] == "conv_abc123" for u in updates)
    assert payload(updates[0])["status"] == "calling_llm"
    progress = [payload(u)["progress"] for u in updates]
    assert progress == sorted(progress)
    (complete,) = completes
    assert payload(complete)["response"] == doc.result["response"]
    assert payload(complete)["tokens_used"] == doc.result["tokens_used"] > 0
    assert {e.uid for e in run.events} == {"user123"}
    assert await _llm_count(redis_async, "acme") == 1


@pytest.mark.llm
async def test_the_demos_llm_answer_invents_no_dialogue_turns(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    """The demo's question with the shim's parameters (none: temperature 0.7, 256 tokens).

    Before (``--chat_format vicuna``): the answer went on with "USER: ..." turns (issue 17).
    """
    gateway = make_gateway(**_real_llm(llm_server))
    spec = make_spec(
        "llm_conv_demo1",
        TaskType.LLM_CONVERSATION,
        conversation_id="conv_demo1",
        inputs=[TaskInput(name="prompt", value=design_calls.PROMPT)],
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events)
    assert run.returncode == ExitCode.SUCCESS, run.output
    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.result is not None
    response = doc.result["response"]
    assert response.strip()
    for marker in ("USER:", "ASSISTANT:", "<start_of_turn>", "<end_of_turn>"):
        assert marker not in response, (marker, response)


async def _cancel_when_streaming(
    gateway_specs: Any, spec_id: str, events: list[Any], set_cancel: bool
) -> Any:
    async def action(proc: asyncio.subprocess.Process) -> None:
        await wait_for_event(
            events,
            lambda e: (
                e.type == EventType.LLM_CONVERSATION_UPDATE
                and payload(e)["data"].get("tokens_received", 0) >= 2
            ),
            60,
        )
        if set_cancel:  # what the operator does on RPC cancel: spec.cancel, then the Job goes
            spec = gateway_specs.specs[spec_id]
            gateway_specs.put(spec.model_copy(update={"cancel": True}))
        signalled_at.append(time.monotonic())
        proc.send_signal(signal.SIGTERM)

    signalled_at: list[float] = []
    return action, signalled_at


@pytest.mark.parametrize(("set_cancel", "reason"), [(True, "cancelled"), (False, "terminated")])
async def test_sigterm_during_a_streaming_answer_stops_and_reports(
    make_gateway: GatewayFactory,
    fake_llm: FakeLlm,
    redis_async: aioredis.Redis,
    set_cancel: bool,
    reason: str,
) -> None:
    fake_llm.state.chunk_delay_s = 0.2  # a long answer, streamed slowly
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    spec = make_spec(
        "llm_conv_cancel",
        TaskType.LLM_CONVERSATION,
        conversation_id="conv_cancel",
        inputs=[TaskInput(name="prompt", value=" ".join(f"w{i}" for i in range(300)))],
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        action, signalled_at = await _cancel_when_streaming(
            gateway.specs, spec.task_id, events, set_cancel
        )
        run = await run_runner(gateway, spec, token, events, while_running=action, timeout_s=90)
        exited_after = time.monotonic() - signalled_at[0]
    assert run.returncode == ExitCode.TERMINATED, run.output
    assert exited_after < GRACE_S
    stop = [
        payload(e)
        for e in run.of_type(EventType.TASK_PROGRESS)
        if payload(e)["current_step"] == reason
    ]
    assert stop and stop[-1]["data"] == {"reason": reason, "stopped_at_step": "calling_llm"}
    final_update = payload(run.of_type(EventType.LLM_CONVERSATION_UPDATE)[-1])
    assert final_update["status"] == reason
    assert final_update["data"]["partial_response"].startswith("echo: w0")
    assert run.of_type(EventType.LLM_CONVERSATION_COMPLETE) == []
    assert await redis_async.exists(keys.conversation("acme", "user123", "conv_cancel")) == 0
    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.progress.current_step == reason and doc.result is None


async def test_max_duration_stops_the_runner_as_deadline(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    fake_llm.state.chunk_delay_s = 0.2
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    spec = make_spec(
        "llm_conv_deadline",
        TaskType.LLM_CONVERSATION,
        conversation_id="conv_deadline",
        max_duration_seconds=4,
        inputs=[TaskInput(name="prompt", value=" ".join(f"w{i}" for i in range(300)))],
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events, timeout_s=60)
    assert run.returncode == ExitCode.TERMINATED, run.output
    # The whole answer would take 60 s (300 words, 0.2 s each): the runner stopped itself.
    assert run.elapsed_s < 30
    doc = await _task_doc(redis_async, spec.task_id)
    assert doc.progress.current_step == "deadline"
    assert payload(run.of_type(EventType.LLM_CONVERSATION_UPDATE)[-1])["status"] == "deadline"


# ------------------------------------------------------------ the LLM window (issue 15, item 8)


async def fill_llm_window(client: aioredis.Redis, company_id: str) -> None:
    """The company's one request per hour used up now (its rolling hour full)."""
    assert (await LlmRateLimiter(client).hit(company_id, limit=1)).allowed


@pytest.mark.llm
async def test_a_full_llm_window_is_waited_for_not_failed(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    """The company's hour is used up when the task starts: the runner shows
    ``waiting_llm_quota`` with when it resumes, waits, and answers once the window has room.
    Before: the gateway's 429 made it exit 75 at once, spending the Job's backoffLimit."""
    gateway = make_gateway(**_real_llm(llm_server))
    await Registry(redis_async).set_company_quotas("acme", Quotas(max_llm_requests_per_hour=1))
    limiter = LlmRateLimiter(redis_async)
    await fill_llm_window(redis_async, "acme")  # another task used the hour's only request
    spec = make_spec(
        "llm_conv_wait01",
        TaskType.LLM_CONVERSATION,
        conversation_id="conv_wait01",
        inputs=[TaskInput(name="prompt", value="Say hello.")],
        parameters={"max_tokens": "16"},
        max_duration_seconds=2 * 3600,  # room to wait for the next hour
    )
    token = await gateway.add_task(spec)

    async def reopen_the_window(proc: asyncio.subprocess.Process) -> None:
        event = await wait_for_event(
            events,
            lambda e: (
                e.type == EventType.TASK_PROGRESS
                and payload(e).get("current_step") == "waiting_llm_quota"
            ),
            60,
        )
        assert int(payload(event)["data"]["retry_after_s"]) > 0
        assert proc.returncode is None  # waiting, not failed
        await asyncio.sleep(1.5)  # a few refused polls: they cost nothing
        assert await _llm_count(redis_async, "acme") == 1
        await redis_async.delete(*limiter.keys("acme"))  # the hour's call has left the window

    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(
            gateway,
            spec,
            token,
            events,
            env={"REGTASK_LLM_QUOTA_POLL_S": "0.3"},
            while_running=reopen_the_window,
        )
    assert run.returncode == ExitCode.SUCCESS, run.output
    steps = run.progress_steps()
    assert "waiting_llm_quota" in steps and steps[-1] == "completed", steps
    assert (await _task_doc(redis_async, spec.task_id)).result is not None
    assert await _llm_count(redis_async, "acme") == 1  # the answer's own request, new window


@pytest.mark.llm
async def test_a_window_that_reopens_after_the_deadline_fails_with_that_reason(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    """Waiting past its own deadline would end in a bare DeadlineExceeded: the task fails at
    once, permanently (no Job retry would help), saying why."""
    gateway = make_gateway(**_real_llm(llm_server))
    await Registry(redis_async).set_company_quotas("acme", Quotas(max_llm_requests_per_hour=1))
    await fill_llm_window(redis_async, "acme")
    spec = make_spec(
        "llm_conv_late01",
        TaskType.LLM_CONVERSATION,
        conversation_id="conv_late01",
        inputs=[TaskInput(name="prompt", value="Say hello.")],
        max_duration_seconds=60,
    )
    token = await gateway.add_task(spec)
    async with watch_events(redis_async, spec.user_id) as events:
        run = await run_runner(gateway, spec, token, events)
    assert run.returncode == ExitCode.PERMANENT, run.output
    [failed] = [
        e for e in run.of_type(EventType.TASK_PROGRESS) if payload(e)["current_step"] == "failed"
    ]
    error = payload(failed)["data"]["error"]
    assert "LLM quota" in error and "deadline" in error, error
    assert payload(failed)["data"]["retryable"] is False
