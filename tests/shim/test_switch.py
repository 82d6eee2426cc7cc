"""UNIFIED_REGISTRY_ENABLED through the shim: off = legacy only, on = dual write, restart flips."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from regtask import keys
from tests.fixtures.shim import ShimFactory
from tests.shim.helpers import ok, raw_doc

pytestmark = pytest.mark.kube

USER, COMPANY = "user123", "company_abc"


async def _keys(redis: aioredis.Redis) -> set[str]:
    return {key.decode() for key in await redis.keys("*")}


async def _register_everything(shim_rpc: ShimFactory, unified: bool | None) -> None:
    shim = await shim_rpc(unified=unified)
    ok(
        await shim.rpc(
            "REGISTRY.register_user", [USER, "session456", "/api/v1"], {"company_id": COMPANY}
        )
    )
    ok(await shim.rpc("CHROMA_VECTOR.register_collection_user", [USER, "coll", "session456"]))
    ok(await shim.rpc("CHROMA_VECTOR.heartbeat_collection", [USER, "coll"]))


async def test_switch_off_writes_exactly_the_legacy_keys(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    await _register_everything(make_shim, unified=False)
    assert await _keys(redis_async) == {
        keys.legacy_user(USER),
        keys.legacy_chroma(USER, "coll"),
        keys.session("session456"),
    }
    legacy = await raw_doc(redis_async, keys.legacy_user(USER))
    assert legacy is not None
    assert set(legacy) == {"user_id", "session_id", "backend_route", "last_seen_at"}
    chroma = await raw_doc(redis_async, keys.legacy_chroma(USER, "coll"))
    assert chroma is not None
    assert set(chroma) == {
        "user_id",
        "collection_name",
        "session_id",
        "registered_at",
        "last_heartbeat",
    }


async def test_switch_on_writes_legacy_and_unified(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    await _register_everything(make_shim, unified=True)
    assert await _keys(redis_async) >= {
        keys.legacy_user(USER),
        keys.legacy_chroma(USER, "coll"),
        keys.unified_user(USER),
        keys.company(COMPANY),
    }
    unified = await raw_doc(redis_async, keys.unified_user(USER))
    assert unified is not None
    assert unified["user_info"]["session_id"] == "session456"
    assert unified["services"]["chroma"]["collections"] == ["coll"]
    company = await raw_doc(redis_async, keys.company(COMPANY))
    assert company is not None and USER in company["active_users"]


async def test_tasks_are_registered_whatever_the_switch(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    shim = await make_shim(unified=False)
    ok(
        await shim.rpc(
            "TASK.start_document_analysis", [USER, {"company_id": COMPANY, "content": "x"}, "sw1"]
        )
    )
    assert await redis_async.exists(keys.task("doc_analysis_sw1"))
    assert not await redis_async.exists(keys.unified_user(USER))
    shim_on = await make_shim(unified=True)
    ok(
        await shim_on.rpc(
            "TASK.start_document_analysis", [USER, {"company_id": COMPANY, "content": "x"}, "sw2"]
        )
    )
    unified = await raw_doc(redis_async, keys.unified_user(USER))
    assert unified is not None
    assert unified["services"]["tasks"]["active_tasks"] == ["doc_analysis_sw2"]


async def test_only_a_restart_flips_the_switch(
    make_shim: ShimFactory, redis_async: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIFIED_REGISTRY_ENABLED", "false")
    running = await make_shim(unified=None)
    monkeypatch.setenv("UNIFIED_REGISTRY_ENABLED", "true")  # flipped while running
    ok(await running.rpc("REGISTRY.register_user", [USER, "s1", "/"]))
    assert not await redis_async.exists(keys.unified_user(USER))
    restarted = await make_shim(unified=None)
    ok(await restarted.rpc("REGISTRY.register_user", [USER, "s2", "/"]))
    unified = await raw_doc(redis_async, keys.unified_user(USER))
    assert unified is not None and unified["user_info"]["session_id"] == "s2"


async def test_unified_read_falls_back_to_legacy(
    make_shim: ShimFactory, redis_async: aioredis.Redis
) -> None:
    off = await make_shim(unified=False)
    ok(await off.rpc("REGISTRY.register_user", [USER, "s1", "/api/v1"]))
    on = await make_shim(unified=True)
    answer = ok(await on.rpc("UNIFIED_REGISTRY.get_user_registry", [USER]))
    assert answer["registry"]["user_info"]["session_id"] == "s1"
    assert answer["registry"]["user_info"]["backend_route"] == "/api/v1"
    await redis_async.hset(keys.unified_user(USER), keys.DATA_FIELD, "not json")
    again = ok(await on.rpc("UNIFIED_REGISTRY.get_user_registry", [USER]))
    assert again["registry"]["user_info"]["session_id"] == "s1"
