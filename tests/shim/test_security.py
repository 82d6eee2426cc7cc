"""Everything an attacker might try is refused: bad tokens, other users, other companies, names."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from kubernetes import client

from regtask import keys
from tests.fixtures.shim import SERVICE_TOKEN, Shim, ShimFactory
from tests.shim.helpers import ok, read_task_cr, refused, task_crs

pytestmark = pytest.mark.kube

ALICE, BOB = "alice", "bob"
ACME, EVIL = "acme", "evil_corp"


async def alice_shim(make_shim: ShimFactory, *, unified: bool = False) -> tuple[Shim, str]:
    shim = await make_shim(unified=unified)
    return shim, shim.user_token(ALICE, companies=[ACME])


async def test_no_token_is_401_with_a_bearer_challenge(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    response = await shim.rpc("TASK.get_task_status", ["x"], token=None)
    refused(response, 401, "missing credentials")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    basic = await shim.http.post(
        "/rpc",
        json={"method": "TASK.get_task_status", "args": ["x"]},
        headers={"Authorization": "Basic YWxpY2U6cHc="},
    )
    refused(basic, 401, "missing credentials")
    refused(await shim.http.get("/v1/tasks/x"), 401)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """Algorithm confusion: HMAC-signed with the RSA public key as the secret."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _forged(shim: Shim) -> dict[str, str]:
    keys_ = shim.keys
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": f"https://securetoken.google.com/{keys_.project_id}",
        "aud": keys_.project_id,
        "sub": ALICE,
        "iat": now,
        "exp": now + 600,
        "auth_time": now,
    }
    return {
        "expired": keys_.mint(ALICE, expires_in=-120),
        "rogue_signature": keys_.mint(ALICE, rogue=True),
        "unknown_kid": keys_.mint(ALICE, kid="not-a-known-key"),
        "wrong_audience": keys_.mint(ALICE, audience="another-project"),
        "wrong_issuer": keys_.mint(ALICE, issuer="https://evil.example/regtask-test"),
        "alg_none": jwt.encode(claims, "", algorithm="none", headers={"kid": keys_.kid}),
        "hs256_with_public_key": _hs256(claims, keys_.public_pem, keys_.kid),
        "garbage": "not.a.token",
        "wrong_service_token": SERVICE_TOKEN[:-1] + ("x" if SERVICE_TOKEN[-1] != "x" else "y"),
        "future_auth_time": keys_.mint(ALICE, auth_time=now + 3600),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "rogue_signature",
        "unknown_kid",
        "wrong_audience",
        "wrong_issuer",
        "alg_none",
        "hs256_with_public_key",
        "garbage",
        "wrong_service_token",
        "future_auth_time",
    ],
)
async def test_bad_tokens_are_401(make_shim: ShimFactory, kind: str) -> None:
    shim = await make_shim()
    token = _forged(shim)[kind]
    response = await shim.rpc("REGISTRY.register_user", [ALICE, "s1", "/"], token=token)
    message = refused(response, 401)
    if kind == "expired":
        assert "expired" in message


async def test_a_valid_user_token_is_accepted(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    shim, token = await alice_shim(make_shim)
    ok(await shim.rpc("REGISTRY.register_user", [ALICE, "s1", "/"], token=token))
    assert await redis_async.exists(keys.legacy_user(ALICE))


async def test_a_user_acts_only_as_itself(
    make_shim: ShimFactory,
    redis_async: aioredis.Redis,
    kube_api: client.ApiClient,
    shim_namespace: str,
) -> None:
    shim, alice = await alice_shim(make_shim)
    # Bob's things, created by the service.
    ok(await shim.rpc("REGISTRY.register_user", [BOB, "bob-session", "/"]))
    ok(
        await shim.rpc(
            "TASK.start_document_analysis", [BOB, {"company_id": ACME, "content": "x"}, "bobjob"]
        )
    )
    conv = ok(await shim.rpc("TASK.start_llm_conversation", [BOB, ACME, "secret"]))

    attempts: list[tuple[str, list[Any]]] = [
        ("REGISTRY.register_user", [BOB, "stolen", "/"]),
        ("REGISTRY.unregister_session", ["bob-session"]),
        ("CHROMA_VECTOR.register_collection_user", [BOB, "c", "s"]),
        ("CHROMA_VECTOR.heartbeat_collection", [BOB, "c"]),
        ("TASK.start_document_analysis", [BOB, {"company_id": ACME, "content": "x"}, "as_bob"]),
        ("TASK.start_llm_conversation", [BOB, ACME, "p"]),
        ("TASK.start_vector_computation", [BOB, ACME, ["d"], "c"]),
        ("LLM.start_conversation", [BOB, ACME, "p", "m", 0.1]),
        ("TASK.list_user_tasks", [BOB]),
        ("UNIFIED_REGISTRY.get_user_registry", [BOB]),
    ]
    for method, args in attempts:
        response = await shim.rpc(method, args, token=alice)
        refused(response, 403, "not authorized")
    # Another user's task or conversation is "unknown", exactly as one that does not exist.
    for method, args in [
        ("TASK.get_task_status", ["doc_analysis_bobjob"]),
        ("TASK.cancel_task", ["doc_analysis_bobjob"]),
        ("LLM.get_conversation_status", [conv["conversation_id"]]),
    ]:
        refused(await shim.rpc(method, args, token=alice), 404, "unknown")
    legacy = await redis_async.hget(keys.legacy_user(BOB), keys.DATA_FIELD)
    assert legacy is not None and b"bob-session" in legacy
    cr = read_task_cr(kube_api, shim_namespace, "doc_analysis_bobjob")
    assert cr is not None and not cr["spec"].get("cancel", False)
    assert task_crs(kube_api, shim_namespace, "doc_analysis_as_bob") == []
    # REST too.
    refused(await shim.http.get("/v1/tasks/doc_analysis_bobjob", headers=shim.auth(alice)), 404)
    refused(await shim.http.get(f"/v1/users/{BOB}/registry", headers=shim.auth(alice)), 403)


async def test_a_user_acts_only_for_authorized_companies(
    make_shim: ShimFactory, kube_api: client.ApiClient, shim_namespace: str
) -> None:
    shim, alice = await alice_shim(make_shim)
    ok(await shim.rpc("TASK.start_llm_conversation", [ALICE, ACME, "ok"], token=alice))
    refused(
        await shim.rpc("TASK.start_llm_conversation", [ALICE, EVIL, "p"], token=alice),
        403,
        "not authorized for company 'evil_corp'",
    )
    refused(
        await shim.rpc(
            "TASK.start_document_analysis",
            [ALICE, {"company_id": EVIL, "content": "x"}, "evil1"],
            token=alice,
        ),
        403,
        "company",
    )
    refused(
        await shim.rpc("UNIFIED_REGISTRY.get_company_active_users", [EVIL], token=alice),
        403,
        "company",
    )
    ok(await shim.rpc("UNIFIED_REGISTRY.get_company_active_users", [ACME], token=alice))
    assert task_crs(kube_api, shim_namespace, "doc_analysis_evil1") == []


async def test_without_a_claim_the_registry_grants_no_company(make_shim: ShimFactory) -> None:
    """The token's claim, or its absence, is the truth (issue 16 item 8; before: 200)."""
    shim = await make_shim(unified=True)
    no_claim = shim.user_token(ALICE)
    refused(await shim.rpc("TASK.start_llm_conversation", [ALICE, ACME, "p"], token=no_claim), 403)
    # The microservice (service token) records Alice's companies in her registry: still no.
    ok(
        await shim.rpc(
            "REGISTRY.register_user",
            [ALICE, "s1", "/"],
            {"company_id": ACME, "authorized_companies_ids": [ACME]},
        )
    )
    refused(await shim.rpc("TASK.start_llm_conversation", [ALICE, ACME, "p"], token=no_claim), 403)
    refused(await shim.rpc("TASK.start_llm_conversation", [ALICE, EVIL, "p"], token=no_claim), 403)
    with_claim = shim.user_token(ALICE, companies=[ACME])
    ok(await shim.rpc("TASK.start_llm_conversation", [ALICE, ACME, "p"], token=with_claim))


async def test_a_user_cannot_grant_itself_companies(make_shim: ShimFactory) -> None:
    shim, alice = await alice_shim(make_shim, unified=True)
    response = await shim.rpc(
        "REGISTRY.register_user",
        [ALICE, "s1", "/"],
        {"authorized_companies_ids": [EVIL]},
        token=alice,
    )
    refused(response, 403, "only the service credential")


@pytest.mark.parametrize(
    "name",
    [
        "__class__",
        "TASK.__init__",
        "TASK.__class__",
        "TASK._start",
        "TASK._count_start",
        "REGISTRY.__dict__",
        "TASK.start_document_analysis.__globals__",
        "ShimService.register_user",
        "registry.register_user",
        "TASK.get_task_status\x00",
        " TASK.get_task_status",
        "TASK.health",
        "REGISTRY.registry",
        "",
        "os.system",
    ],
)
async def test_method_injection_names_are_unknown_methods(
    make_shim: ShimFactory, name: str
) -> None:
    shim = await make_shim()
    response = await shim.rpc(name, ["doc_analysis_x"])
    refused(response, 404, "unknown method")


async def test_an_overlong_method_name_is_a_bad_request(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    refused(await shim.rpc("TASK." + "a" * 500, []), 400, "method")


async def test_error_messages_do_not_echo_huge_values(make_shim: ShimFactory) -> None:
    shim = await make_shim()
    response = await shim.rpc("X" * 190, [])
    assert len(refused(response, 404, "unknown method")) < 200


async def test_a_session_id_belongs_to_the_user_who_registered_it(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    """Issue 16 item 9: Alice cannot re-point Bob's session to herself (and so block his logout)."""
    shim, alice = await alice_shim(make_shim, unified=True)
    bob = shim.user_token(BOB, companies=[ACME])
    ok(await shim.rpc("REGISTRY.register_user", [BOB, "bob-session", "/"], token=bob))
    refused(
        await shim.rpc("REGISTRY.register_user", [ALICE, "bob-session", "/"], token=alice),
        409,
        "registered by another user",
    )
    index = await redis_async.hget(keys.session("bob-session"), keys.DATA_FIELD)
    assert index is not None and json.loads(index)["user_id"] == BOB
    # Nothing of Alice's registration was written.
    assert not await redis_async.exists(keys.legacy_user(ALICE))
    assert not await redis_async.exists(keys.unified_user(ALICE))
    # Not even the service credential re-points it.
    refused(await shim.rpc("REGISTRY.register_user", [ALICE, "bob-session", "/"]), 409)
    # Bob re-registers his own session and logs out; then the id is free again.
    ok(await shim.rpc("REGISTRY.register_user", [BOB, "bob-session", "/b"], token=bob))
    answer = ok(await shim.rpc("REGISTRY.unregister_session", ["bob-session"], token=bob))
    assert answer["unregistered"] is True
    ok(await shim.rpc("REGISTRY.register_user", [ALICE, "bob-session", "/"], token=alice))
    index = await redis_async.hget(keys.session("bob-session"), keys.DATA_FIELD)
    assert index is not None and json.loads(index)["user_id"] == ALICE


async def test_not_yours_answers_exactly_as_not_there(make_shim: ShimFactory) -> None:
    """Issue 16 item 10: no 403-vs-404 oracle on another user's task or conversation ids."""
    shim, alice = await alice_shim(make_shim)
    ok(
        await shim.rpc(
            "TASK.start_document_analysis", [BOB, {"company_id": ACME, "content": "x"}, "bobjob"]
        )
    )
    conv = ok(await shim.rpc("TASK.start_llm_conversation", [BOB, ACME, "secret"]))
    pairs = [
        ("TASK.get_task_status", "doc_analysis_bobjob", "doc_analysis_nobody"),
        ("TASK.cancel_task", "doc_analysis_bobjob", "doc_analysis_nobody"),
        ("LLM.get_conversation_status", conv["conversation_id"], "conv_000000000000"),
    ]
    for method, bobs, absent in pairs:
        theirs = await shim.rpc(method, [bobs], token=alice)
        missing = await shim.rpc(method, [absent], token=alice)
        assert theirs.status_code == missing.status_code == 404, (method, theirs.text)
        assert theirs.json()["error"].replace(bobs, "ID") == missing.json()["error"].replace(
            absent, "ID"
        ), method
    rest_theirs = await shim.http.get("/v1/tasks/doc_analysis_bobjob", headers=shim.auth(alice))
    rest_missing = await shim.http.get("/v1/tasks/doc_analysis_nobody", headers=shim.auth(alice))
    assert rest_theirs.status_code == rest_missing.status_code == 404
