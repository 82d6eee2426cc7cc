"""Every RPC method as the web app calls it, answers compared field by field (CONTRACT.md §3).

Real Redis, real kube-apiserver: a started task is a real RegistryTask in the control namespace.

Long (about 500 lines) for a reason: one test per RPC method of the contract, compared field by
field, on one shim and one cluster; the contract reads top to bottom here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis.asyncio as aioredis
from kubernetes import client
from structlog.testing import capture_logs

from regtask import keys, storage
from regtask.crmodels import MAX_INLINE_INPUT_BYTES
from regtask.documents import ConversationDoc, RegistryStatus
from regtask.naming import task_resource_name, tenant_namespace
from regtask_shim.rpc import METHODS
from tests.fixtures.shim import ShimFactory
from tests.shim.helpers import ok, raw_doc, read_task_cr, refused, set_cr_status, task_crs

pytestmark = pytest.mark.kube

USER, COMPANY = "user123", "company_abc"


async def test_register_user_answers_and_writes_the_legacy_key(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    shim = await make_shim()
    answer = ok(await shim.rpc("REGISTRY.register_user", [USER, "session456", "/api/v1"]))
    assert answer == {"success": True, "user_id": USER, "session_id": "session456"}
    legacy = await raw_doc(redis_async, keys.legacy_user(USER))
    assert legacy is not None
    assert (legacy["user_id"], legacy["session_id"], legacy["backend_route"]) == (
        USER,
        "session456",
        "/api/v1",
    )


async def test_unregister_session_answers_whether_it_was_known(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    shim = await make_shim()
    ok(await shim.rpc("REGISTRY.register_user", [USER, "session456", "/api/v1"]))
    first = ok(await shim.rpc("REGISTRY.unregister_session", ["session456"]))
    assert first == {"success": True, "session_id": "session456", "unregistered": True}
    assert not await redis_async.exists(keys.legacy_user(USER))
    again = ok(await shim.rpc("REGISTRY.unregister_session", ["session456"]))
    assert again == {"success": True, "session_id": "session456", "unregistered": False}


async def test_collection_register_and_heartbeat(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    shim = await make_shim()
    args = [USER, "klk_space_id_002e0b", "session456"]
    answer = ok(await shim.rpc("CHROMA_VECTOR.register_collection_user", args))
    assert answer == {"success": True, "user_id": USER, "collection_name": "klk_space_id_002e0b"}
    key = keys.legacy_chroma(USER, "klk_space_id_002e0b")
    assert 0 < await redis_async.ttl(key) <= 90
    beat = ok(await shim.rpc("CHROMA_VECTOR.heartbeat_collection", [USER, "klk_space_id_002e0b"]))
    assert beat == answer
    missing = await shim.rpc("CHROMA_VECTOR.heartbeat_collection", [USER, "never_registered"])
    refused(missing, 404, "not registered", "register it again")


async def test_start_document_analysis_creates_the_resource_and_answers_queued(
    make_shim: ShimFactory,
    redis_async: aioredis.Redis,
    kube_api: client.ApiClient,
    shim_namespace: str,
) -> None:
    shim = await make_shim()
    document = {"company_id": COMPANY, "filename": "invoice.pdf", "content": "Total: 42 EUR"}
    with capture_logs() as logs:
        response = await shim.rpc("TASK.start_document_analysis", [USER, document, "job456"])
    assert ok(response) == {"success": True, "task_id": "doc_analysis_job456", "status": "queued"}

    cr = read_task_cr(kube_api, shim_namespace, "doc_analysis_job456")
    assert cr is not None
    assert cr["metadata"]["name"] == task_resource_name("doc_analysis_job456")
    spec = cr["spec"]
    assert (spec["taskId"], spec["taskType"], spec["userId"], spec["companyId"]) == (
        "doc_analysis_job456",
        "document_analysis",
        USER,
        COMPANY,
    )
    assert spec["parameters"] == {"job_id": "job456", "filename": "invoice.pdf"}
    [document_input] = spec["inputs"]
    assert document_input["name"] == "document"
    assert document_input["contentType"] == "text/plain"
    assert document_input["value"] == "Total: 42 EUR"

    doc = await raw_doc(redis_async, keys.task("doc_analysis_job456"))
    assert doc is not None
    assert doc["task_info"]["status"] == "queued"
    assert doc["task_info"]["user_id"] == USER
    assert doc["isolation"]["namespace"] == tenant_namespace(USER, COMPANY)

    [started] = [entry for entry in logs if entry["event"] == "task_started"]
    assert started["task_id"] == "doc_analysis_job456"
    assert started["task_type"] == "document_analysis"
    assert started["user_id"] == USER
    assert started["company_id"] == COMPANY
    assert started["isolation_namespace"] == tenant_namespace(USER, COMPANY)
    assert started["timestamp"].endswith("Z")


async def test_get_task_status_answers_at_once_then_follows_progress(
    make_shim: ShimFactory,
) -> None:
    shim = await make_shim()
    document = {"company_id": COMPANY, "content": "x"}
    ok(await shim.rpc("TASK.start_document_analysis", [USER, document, "job_status"]))
    first = ok(await shim.rpc("TASK.get_task_status", ["doc_analysis_job_status"]))
    assert {k: first[k] for k in ("success", "task_id", "status", "progress", "current_step")} == {
        "success": True,
        "task_id": "doc_analysis_job_status",
        "status": "queued",
        "progress": 0,
        "current_step": "queued",
    }
    assert first["task_type"] == "document_analysis"

    await shim.registry.update_task_progress(
        "doc_analysis_job_status", USER, RegistryStatus.PROCESSING, 45, "analysis", 1800
    )
    answer = ok(await shim.rpc("TASK.get_task_status", ["doc_analysis_job_status"]))
    # The contract's example answer, field by field.
    contract = {"status": "processing", "progress": 45, "current_step": "analysis"}
    assert {k: answer[k] for k in contract} == contract
    assert answer["success"] is True
    assert "error" not in answer and "result" not in answer


async def test_get_task_status_shows_a_waiting_tasks_place_and_eta(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    """Issue 17, item 4: the operator's queue position and ETA reach the web app's status call
    (and its events: the same progress script publishes them in ``data``); they go once the task
    runs."""
    shim = await make_shim()
    ok(
        await shim.rpc(
            "TASK.start_document_analysis", [USER, {"text": "x", "company_id": COMPANY}, "eta1"]
        )
    )
    await shim.registry.update_task_progress(
        "doc_analysis_eta1",
        USER,
        RegistryStatus.WAITING_QUOTA,
        0,
        "waiting_quota",
        1800,
        data={"queue_position": 3},
        estimated_completion="2026-11-28T10:20:00Z",
        queue_position=3,
        estimated_start="2026-11-28T10:15:00Z",
    )
    answer = ok(await shim.rpc("TASK.get_task_status", ["doc_analysis_eta1"]))
    assert (answer["status"], answer["queue_position"]) == ("waiting_quota", 3)
    assert answer["estimated_start"] == "2026-11-28T10:15:00Z"
    assert answer["estimated_completion"] == "2026-11-28T10:20:00Z"
    await shim.registry.update_task_progress(
        "doc_analysis_eta1", USER, RegistryStatus.PROCESSING, 10, "analysis", 1800
    )
    answer = ok(await shim.rpc("TASK.get_task_status", ["doc_analysis_eta1"]))
    assert "queue_position" not in answer and "estimated_start" not in answer
    assert answer["estimated_completion"] == "2026-11-28T10:20:00Z"  # kept until replaced


async def test_get_task_status_falls_back_to_the_resource_status(
    make_shim: ShimFactory,
    redis_async: aioredis.Redis,
    kube_api: client.ApiClient,
    shim_namespace: str,
) -> None:
    shim = await make_shim()
    ok(
        await shim.rpc(
            "TASK.start_document_analysis",
            [USER, {"company_id": COMPANY, "content": "x"}, "job_cr"],
        )
    )
    set_cr_status(
        kube_api,
        shim_namespace,
        "doc_analysis_job_cr",
        phase="Running",
        progress=30,
        currentStep="ocr",
    )
    await redis_async.delete(keys.task("doc_analysis_job_cr"))
    answer = ok(await shim.rpc("TASK.get_task_status", ["doc_analysis_job_cr"]))
    assert {k: answer[k] for k in ("status", "progress", "current_step")} == {
        "status": "processing",
        "progress": 30,
        "current_step": "ocr",
    }
    refused(await shim.rpc("TASK.get_task_status", ["doc_analysis_nope"]), 404, "unknown task")


async def test_start_llm_conversation_answers_conversation_and_task_ids(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim()
    answer = ok(await shim.rpc("TASK.start_llm_conversation", [USER, COMPANY, "Bonjour ?"]))
    assert set(answer) == {"success", "conversation_id", "task_id", "status"}
    assert answer["status"] == "queued"
    assert re.fullmatch(r"conv_[0-9a-f]{12}", answer["conversation_id"])
    assert answer["task_id"] == f"llm_{answer['conversation_id']}"
    cr = read_task_cr(kube_api, shim_namespace, answer["task_id"])
    assert cr is not None
    assert cr["spec"]["taskType"] == "llm_conversation"
    assert cr["spec"]["conversationId"] == answer["conversation_id"]
    assert cr["spec"]["inputs"] == [
        {"name": "prompt", "contentType": "text/plain", "value": "Bonjour ?", "encoding": "utf-8"}
    ]


async def test_llm_start_conversation_passes_model_and_temperature(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim()
    args = [USER, COMPANY, "Résume ce texte", "gpt-4", 0.7]
    answer = ok(await shim.rpc("LLM.start_conversation", args))
    assert set(answer) == {"success", "conversation_id", "task_id", "status"}
    cr = read_task_cr(kube_api, shim_namespace, answer["task_id"])
    assert cr is not None
    assert cr["spec"]["parameters"] == {"model": "gpt-4", "temperature": "0.7"}


async def test_get_conversation_status_follows_the_task_then_shows_the_response(
    make_shim: ShimFactory,
) -> None:
    shim = await make_shim()
    started = ok(await shim.rpc("LLM.start_conversation", [USER, COMPANY, "Hi", "gpt-4", 0.2]))
    conv = started["conversation_id"]
    status = ok(await shim.rpc("LLM.get_conversation_status", [conv]))
    assert status["status"] == "queued"
    assert status["progress"] == {"current_step": "queued", "progress_percent": 0}
    assert (status["conversation_id"], status["task_id"]) == (conv, started["task_id"])

    await shim.registry.store_conversation(
        ConversationDoc(
            conversation_id=conv,
            user_id=USER,
            company_id=COMPANY,
            prompt="Hi",
            response="Hello!",
            model="gpt-4",
            temperature=0.2,
            tokens_used=150,
        )
    )
    await shim.registry.finish_task(
        started["task_id"], USER, COMPANY, RegistryStatus.COMPLETED, 300
    )
    done = ok(await shim.rpc("LLM.get_conversation_status", [conv]))
    assert (done["status"], done["response"], done["tokens_used"]) == ("completed", "Hello!", 150)
    assert done["progress"]["progress_percent"] == 100
    refused(await shim.rpc("LLM.get_conversation_status", ["conv_unknown"]), 404, "conversation")


async def test_start_vector_computation(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim()
    documents = [{"id": "d1", "text": "alpha"}, {"id": "d2", "text": "beta"}]
    args = [USER, COMPANY, documents, "klk_space_id_002e0b", "vec42"]
    answer = ok(await shim.rpc("TASK.start_vector_computation", args))
    assert answer == {
        "success": True,
        "task_id": "vector_vec42",
        "status": "queued",
        "collection_name": "klk_space_id_002e0b",
    }
    cr = read_task_cr(kube_api, shim_namespace, "vector_vec42")
    assert cr is not None
    assert cr["spec"]["parameters"] == {"collection": "klk_space_id_002e0b", "job_id": "vec42"}
    minted = ok(await shim.rpc("TASK.start_vector_computation", args[:4]))
    assert re.fullmatch(r"vector_[0-9a-f]{16}", minted["task_id"])


async def test_cancel_task_sets_spec_cancel_and_refuses_finished_tasks(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim()
    ok(
        await shim.rpc(
            "TASK.start_document_analysis", [USER, {"company_id": COMPANY, "content": "x"}, "job_c"]
        )
    )
    answer = ok(await shim.rpc("TASK.cancel_task", ["doc_analysis_job_c"]))
    assert answer == {
        "success": True,
        "task_id": "doc_analysis_job_c",
        "status": "queued",
        "cancel_requested": True,
    }
    cr = read_task_cr(kube_api, shim_namespace, "doc_analysis_job_c")
    assert cr is not None and cr["spec"]["cancel"] is True
    ok(await shim.rpc("TASK.cancel_task", ["doc_analysis_job_c"]))  # asking twice is fine

    ok(
        await shim.rpc(
            "TASK.start_document_analysis", [USER, {"company_id": COMPANY, "content": "x"}, "job_d"]
        )
    )
    await shim.registry.finish_task(
        "doc_analysis_job_d", USER, COMPANY, RegistryStatus.COMPLETED, 60
    )
    refused(await shim.rpc("TASK.cancel_task", ["doc_analysis_job_d"]), 409, "already finished")
    refused(await shim.rpc("TASK.cancel_task", ["doc_analysis_none"]), 404, "unknown task")


async def test_list_user_tasks_lists_only_that_users_tasks(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    for job in ("l1", "l2"):
        ok(
            await shim.rpc(
                "TASK.start_document_analysis", [USER, {"company_id": COMPANY, "content": "x"}, job]
            )
        )
    ok(
        await shim.rpc(
            "TASK.start_document_analysis", ["other", {"company_id": COMPANY, "content": "x"}, "l3"]
        )
    )
    await shim.registry.update_task_progress(
        "doc_analysis_l2", USER, RegistryStatus.PROCESSING, 10, "ocr", 1800
    )
    answer = ok(await shim.rpc("TASK.list_user_tasks", [USER]))
    by_id = {task["task_id"]: task for task in answer["tasks"]}
    assert {"doc_analysis_l1", "doc_analysis_l2"} <= set(by_id)
    assert "doc_analysis_l3" not in by_id
    assert answer["count"] == len(answer["tasks"])
    assert by_id["doc_analysis_l2"]["status"] == "processing"
    assert by_id["doc_analysis_l1"]["status"] == "queued"


async def test_unified_registry_reads(make_shim: ShimFactory) -> None:
    shim = await make_shim(unified=True)
    ok(
        await shim.rpc(
            "REGISTRY.register_user",
            [USER, "session456", "/api/v1"],
            {"company_id": COMPANY, "authorized_companies_ids": [COMPANY, "company_def"]},
        )
    )
    answer = ok(await shim.rpc("UNIFIED_REGISTRY.get_user_registry", [USER]))
    assert answer["user_id"] == USER
    registry = answer["registry"]
    assert registry["user_info"]["session_id"] == "session456"
    assert registry["user_info"]["status"] == "online"
    assert registry["companies"]["current_company_id"] == COMPANY
    assert registry["companies"]["authorized_companies_ids"] == [COMPANY, "company_def"]
    assert registry["heartbeat"]["ttl_seconds"] == 90
    users = ok(await shim.rpc("UNIFIED_REGISTRY.get_company_active_users", [COMPANY]))
    assert users == {"success": True, "company_id": COMPANY, "active_users": [USER], "count": 1}
    refused(await shim.rpc("UNIFIED_REGISTRY.get_user_registry", ["ghost"]), 404, "not registered")


async def test_document_company_comes_from_the_users_current_company(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim(unified=True)
    refused(
        await shim.rpc("TASK.start_document_analysis", [USER, {"content": "x"}, "nocomp"]),
        400,
        "company_id unknown",
    )
    ok(await shim.rpc("REGISTRY.register_user", [USER, "s1", "/"], {"company_id": COMPANY}))
    ok(await shim.rpc("TASK.start_document_analysis", [USER, {"content": "x"}, "fromreg"]))
    cr = read_task_cr(kube_api, shim_namespace, "doc_analysis_fromreg")
    assert cr is not None and cr["spec"]["companyId"] == COMPANY
    refused(
        await shim.rpc("TASK.start_document_analysis", [USER, {"company_id": "a:b"}, "badc"]),
        400,
        "document_data.company_id",
    )


async def test_large_input_goes_to_a_tenant_blob(
    make_shim: ShimFactory,
    redis_async: aioredis.Redis,
    kube_api: client.ApiClient,
    shim_namespace: str,
) -> None:
    shim = await make_shim()
    big = "é" * (MAX_INLINE_INPUT_BYTES // 2 + 10)  # few characters, more than 64 KiB of UTF-8
    ok(
        await shim.rpc(
            "TASK.start_llm_conversation", [USER, COMPANY, big], {"conversation_id": "conv_big"}
        )
    )
    cr = read_task_cr(kube_api, shim_namespace, "llm_conv_big")
    assert cr is not None
    [prompt] = cr["spec"]["inputs"]
    assert "value" not in prompt
    uri = prompt["ref"]["uri"]
    prefix = storage.REDIS_REF_SCHEME + storage.blob_prefix(COMPANY, USER)
    assert uri.startswith(prefix)
    blob = await redis_async.get(uri.removeprefix(storage.REDIS_REF_SCHEME))
    assert blob is not None and blob.decode() == big
    assert prompt["ref"]["sizeBytes"] == len(big.encode())
    assert int(await redis_async.get(storage.storage_key(COMPANY)) or 0) == len(big.encode())


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "message"),
    [
        ("TASK.start_document_analysis", [USER, {}], None, "missing argument 'job_id'"),
        ("TASK.get_task_status", ["a", "b"], None, "takes at most 1 arguments"),
        ("TASK.start_document_analysis", [USER, "not a dict", "j"], None, "'document_data'"),
        ("TASK.start_document_analysis", [USER, {}, "bad id!"], None, "'job_id'"),
        ("TASK.get_task_status", [], {"task": "x"}, "unexpected argument 'task'"),
        ("TASK.get_task_status", ["x"], {"task_id": "x"}, "given both by position and by name"),
        ("LLM.start_conversation", [USER, COMPANY, "p", "m", 9.5], None, "'temperature'"),
        ("REGISTRY.register_user", ["user:1", "s", "/"], None, "'user_id'"),
    ],
)
async def test_bad_arguments_are_400_naming_the_parameter(
    make_shim: ShimFactory,
    method: str,
    args: list[Any],
    kwargs: dict[str, Any] | None,
    message: str,
) -> None:
    shim = await make_shim()
    refused(await shim.rpc(method, args, kwargs), 400, message)


async def test_the_published_method_table(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    response = await shim.http.get("/rpc/methods")
    assert response.status_code == 200
    table = {entry["name"]: entry for entry in response.json()}
    assert (
        set(table)
        == set(METHODS)
        == {
            "REGISTRY.register_user",
            "REGISTRY.unregister_session",
            "CHROMA_VECTOR.register_collection_user",
            "CHROMA_VECTOR.heartbeat_collection",
            "TASK.start_document_analysis",
            "TASK.start_vector_computation",
            "TASK.start_llm_conversation",
            "TASK.get_task_status",
            "TASK.cancel_task",
            "TASK.list_user_tasks",
            "LLM.start_conversation",
            "LLM.get_conversation_status",
            "UNIFIED_REGISTRY.get_user_registry",
            "UNIFIED_REGISTRY.get_company_active_users",
        }
    )
    assert table["TASK.start_document_analysis"]["params"] == ["user_id", "document_data", "job_id"]
    assert table["LLM.start_conversation"]["params"][:5] == [
        "user_id",
        "company_id",
        "prompt",
        "model",
        "temperature",
    ]


async def test_rest_routes_give_the_same_answers(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim = await make_shim(unified=True)
    auth = shim.auth()
    http = shim.http
    reg = await http.post(
        "/v1/registry/users",
        json={"user_id": USER, "session_id": "s9", "backend_route": "/r", "company_id": COMPANY},
        headers=auth,
    )
    assert ok(reg) == {"success": True, "user_id": USER, "session_id": "s9"}
    body = {
        "user_id": USER,
        "document_data": {"company_id": COMPANY, "content": "x"},
        "job_id": "rest1",
    }
    started = await http.post("/v1/tasks/document-analysis", json=body, headers=auth)
    assert ok(started, 202) == {
        "success": True,
        "task_id": "doc_analysis_rest1",
        "status": "queued",
    }
    status = ok(await http.get("/v1/tasks/doc_analysis_rest1", headers=auth))
    assert (status["status"], status["progress"]) == ("queued", 0)
    listed = ok(await http.get(f"/v1/users/{USER}/tasks", headers=auth))
    assert "doc_analysis_rest1" in {task["task_id"] for task in listed["tasks"]}
    cancel = ok(await http.post("/v1/tasks/doc_analysis_rest1/cancel", headers=auth))
    assert cancel["cancel_requested"] is True
    llm = {"user_id": USER, "company_id": COMPANY, "prompt": "p", "model": "m", "temperature": 1}
    conv = ok(await http.post("/v1/llm/conversations", json=llm, headers=auth), 202)
    conv_status = ok(
        await http.get(f"/v1/llm/conversations/{conv['conversation_id']}", headers=auth)
    )
    assert conv_status["task_id"] == conv["task_id"]
    vec = {"user_id": USER, "company_id": COMPANY, "documents": ["a"], "collection_name": "c1"}
    ok(await http.post("/v1/tasks/vector-computation", json=vec, headers=auth), 202)
    chat = {"user_id": USER, "company_id": COMPANY, "prompt": "p"}
    ok(await http.post("/v1/tasks/llm-conversation", json=chat, headers=auth), 202)
    coll = {"user_id": USER, "collection_name": "c1", "session_id": "s9"}
    ok(await http.post("/v1/chroma/collections", json=coll, headers=auth))
    beat = {"user_id": USER, "collection_name": "c1"}
    ok(await http.post("/v1/chroma/collections/heartbeat", json=beat, headers=auth))
    registry = ok(await http.get(f"/v1/users/{USER}/registry", headers=auth))
    assert registry["registry"]["user_info"]["session_id"] == "s9"
    users = ok(await http.get(f"/v1/companies/{COMPANY}/active-users", headers=auth))
    assert users["active_users"] == [USER]
    gone = ok(await http.delete("/v1/registry/sessions/s9", headers=auth))
    assert gone == {"success": True, "session_id": "s9", "unregistered": True}
    refused(await http.get("/v1/tasks/bad%20id", headers=auth), 400, "task_id")
    assert len(task_crs(kube_api, shim_namespace, "doc_analysis_rest1")) == 1


async def test_openapi_describes_the_routes(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    doc = (await shim.http.get("/openapi.json")).json()
    assert {"/rpc", "/v1/tasks/document-analysis", "/v1/tasks/{task_id}", "/healthz"} <= set(
        doc["paths"]
    )
    get_status = doc["paths"]["/v1/tasks/{task_id}"]["get"]
    assert set(get_status["responses"]) >= {"200", "400", "401", "403", "404", "503"}
    assert "422" not in get_status["responses"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_healthz_reports_redis_and_kubernetes(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    response = await shim.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"redis": "ok", "kubernetes": "ok"}}


async def test_rpc_calls_are_counted_in_metrics(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    ok(await shim.rpc("REGISTRY.register_user", [USER, "s-metrics", "/"]))
    await shim.rpc("NOPE.__class__", [])
    scraped = (await shim.http.get("/metrics")).text
    assert 'regtask_rpc_calls_total{method="REGISTRY.register_user",status="200"} 1.0' in scraped
    assert 'regtask_rpc_calls_total{method="unknown",status="404"} 1.0' in scraped
