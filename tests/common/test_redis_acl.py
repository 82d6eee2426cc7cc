"""The components' Redis ACL users (issue 16, item 11), on a real redis-server: what each may
not do is refused with NOPERM. That each component's normal paths pass under its user is shown
by the component tests themselves: the shim, gateway and operator fixtures connect as these
users (tests/fixtures/redis.py ``redis_acl_urls``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from regtask import keys, redis_acl
from regtask.documents import Quotas
from regtask.registry import Registry
from regtask.settings import Settings

QUOTA_WRITERS = [redis_acl.OPERATOR]
NOT_QUOTA_WRITERS = [redis_acl.SHIM, redis_acl.GATEWAY]


async def set_quotas(url: str, company: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await Registry(client, Settings()).set_company_quotas(
            company, Quotas(max_llm_requests_per_hour=10**9, storage_limit_mb=10**9)
        )
    finally:
        await client.aclose()


@pytest.mark.usefixtures("expect_acl_refusals")
@pytest.mark.parametrize("component", NOT_QUOTA_WRITERS)
async def test_only_the_operator_writes_company_quotas(
    redis_acl_urls: dict[str, str], redis_sync: redis.Redis, component: str
) -> None:
    """The attack: a stolen shim or gateway credential raising a company's quotas. Refused
    (NOPERM), by the registry's own script and by a plain HSET alike; the key stays as the
    operator wrote it."""
    company = "acme"
    await set_quotas(redis_acl_urls[redis_acl.OPERATOR], company)
    before = redis_sync.hget(keys.company(company), keys.DATA_FIELD)
    assert before is not None
    with pytest.raises(NoPermissionError):
        await set_quotas(redis_acl_urls[component], company)
    thief = redis.Redis.from_url(redis_acl_urls[component])
    try:
        with pytest.raises(NoPermissionError):
            thief.hset(keys.company(company), keys.DATA_FIELD, '{"quotas": {}}')
        with pytest.raises(NoPermissionError):
            thief.delete(keys.company(company))
        # Reading the quotas is what they need, and allowed.
        assert thief.hget(keys.company(company), keys.DATA_FIELD) == before
    finally:
        thief.close()
    assert redis_sync.hget(keys.company(company), keys.DATA_FIELD) == before


@pytest.mark.usefixtures("expect_acl_refusals")
@pytest.mark.parametrize("component", redis_acl.COMPONENTS)
def test_no_component_may_administer_redis(
    redis_acl_urls: dict[str, str], redis_sync: redis.Redis, component: str
) -> None:
    redis_sync.set("unrelated:key", "kept")
    client = redis.Redis.from_url(redis_acl_urls[component])
    try:
        for command in (
            ("FLUSHALL",),
            ("CONFIG", "SET", "dir", "/tmp"),
            ("ACL", "SETUSER", "evil", "on", ">x", "+@all", "~*"),
            ("KEYS", "*"),
            ("GET", "unrelated:key"),  # a key outside its patterns
            ("SUBSCRIBE", "events:user:someone"),
        ):
            with pytest.raises(NoPermissionError):
                client.execute_command(*command)
    finally:
        client.close()
    assert redis_sync.get("unrelated:key") == b"kept"


@pytest.mark.unit
def test_rules_are_what_redis_takes() -> None:
    shim = redis_acl.user(redis_acl.SHIM).rules("pw")
    assert shim[:3] == ["reset", "on", ">pw"]
    assert f"%R~{keys.COMPANY_PREFIX}*" in shim
    assert f"~{keys.COMPANY_PREFIX}*" not in shim
    assert f"~{keys.COMPANY_PREFIX}*" in redis_acl.user(redis_acl.SHIM, unified=True).rules("pw")
    assert f"~{keys.COMPANY_PREFIX}*" in redis_acl.user(redis_acl.OPERATOR).rules("pw")
    assert "-@all" in shim
    with pytest.raises(ValueError, match="unknown component"):
        redis_acl.user("runner")
    with pytest.raises(ValueError, match="password"):
        redis_acl.user(redis_acl.SHIM).rules("has space")


@pytest.mark.unit
def test_the_command_prints_one_setuser_per_component(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files: list[str] = []
    for component in redis_acl.COMPONENTS:
        path = tmp_path / component
        path.write_text(f"pw-{component}\n")
        files += ["--password-file", f"{component}={path}"]
    assert redis_acl.main(files) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["ACL", "SETUSER", f"regtask-{c}"] for c in redis_acl.COMPONENTS
    ]
    assert all(f">pw-{c}" in line for c, line in zip(redis_acl.COMPONENTS, lines, strict=True))


async def test_each_component_uses_the_llm_log_as_it_needs_and_only_so(
    redis_acl_urls: dict[str, str], redis_sync: redis.Redis
) -> None:
    """Issue 18: the gateway reserves, settles and refunds in the LLM log; the operator
    (admission) and the shim (console) read it, without NOPERM (found on the real cluster: the
    operator's read-only key pattern refused the script's EVALSHA, whose keys count as
    written; the peek runs as EVALSHA_RO)."""
    from regtask.ratelimit import LlmLimits, LlmRateLimiter

    limits = LlmLimits(10, tokens_per_hour=1000, tokens_per_day=5000)
    gateway = aioredis.Redis.from_url(redis_acl_urls[redis_acl.GATEWAY])
    try:
        limiter = LlmRateLimiter(gateway)
        held = await limiter.reserve("acme", limits, 200)
        assert held.allowed
        assert await limiter.settle("acme", held.call_id, 50)
        second = await limiter.reserve("acme", limits, 100)
        assert await limiter.refund("acme", second.call_id)
    finally:
        await gateway.aclose()
    for component in (redis_acl.OPERATOR, redis_acl.SHIM):
        reader = aioredis.Redis.from_url(redis_acl_urls[component])
        try:
            usage = await LlmRateLimiter(reader).usage("acme", limits)
            assert (usage.requests, usage.tokens_hour) == (1, 50)
            with pytest.raises(NoPermissionError):  # reading is all they may do
                await LlmRateLimiter(reader).reserve("acme", limits, 1)
        finally:
            await reader.aclose()
    redis_sync.execute_command("ACL", "LOG", "RESET")  # the two refusals above were expected
