"""Issue 18, items 2, 5, 6: token budgets through the real gateway, reserve then settle.

Real Redis (the gateway's ACL user), the gateway over HTTP, the deterministic fake provider
(its usage is exact: one token per word) and the real llama.cpp model for what a real provider
reports.
"""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
import redis.asyncio as aioredis

from regtask.documents import Quotas
from regtask.ratelimit import LlmLimits, LlmRateLimiter
from regtask.registry import Registry
from regtask.tasktypes import TaskType
from regtask_dev.llm_server import LlamaServer
from regtask_dev.redis_server import RedisServer
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import client, make_spec

CHAT = "/v1/llm/chat/completions"
MESSAGES = [{"role": "user", "content": "one two three four"}]
# The gateway's reservation for MESSAGES with max_tokens=20: the prompt's JSON bytes + 20.
RESERVED = len(json.dumps(MESSAGES).encode()) + 20
# What the fake provider reports for it: 4 prompt words + "echo:" and the 4 words.
USED = 4 + 5


async def scrape(url: str) -> str:
    async with httpx.AsyncClient() as plain:
        return (await plain.get(url)).text


async def test_concurrent_calls_never_spend_more_than_the_budget_and_settle_gives_back(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    """16 streamed calls at once against a budget of 5 reservations: the reservations in
    flight fill it, the others get 429 with Retry-After; each call is then settled at its
    real usage (9), so the next calls fit again. Bound: the tokens spent never pass the
    budget, since every call's real usage is within its reservation."""
    budget = 5 * RESERVED
    await Registry(redis_async).set_company_quotas(
        "acme", Quotas(max_llm_tokens_per_hour=budget, max_llm_tokens_per_day=10 * budget)
    )
    fake_llm.state.chunk_delay_s = 0.2  # each stream in flight about 1 s
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    token = await gateway.add_task(make_spec("llm_t1", TaskType.LLM_CONVERSATION))
    body = {"messages": MESSAGES, "max_tokens": 20}
    async with client(gateway.url, token) as http:
        answers = await asyncio.gather(
            *(http.post(CHAT, json={**body, "stream": True}) for _ in range(16))
        )
        codes = sorted(a.status_code for a in answers)
        assert set(codes) <= {200, 429}, codes
        ok = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(ok) >= 5 and refused, codes
        for answer in refused:
            assert answer.json()["error"]["code"] == "llm_quota_exceeded"
            assert "tokens per hour" in answer.json()["error"]["message"]
            assert 1 <= int(answer.headers["retry-after"]) <= 3600
        spent = USED * len(ok)  # the fake's exact usage, one token per word
        assert spent <= budget
        usage = await LlmRateLimiter(redis_async).usage("acme")
        assert usage.tokens_hour == spent  # every reservation replaced by its real usage
        assert usage.requests == len(ok)
        # Settled at 9 instead of RESERVED: the budget has room again.
        after = await http.post(CHAT, json=body)
        assert after.status_code == 200, after.text
        assert int(after.headers["x-ratelimit-remaining-tokens"]) == budget - spent - RESERVED
    assert len(fake_llm.state.requests) == len(ok) + 1  # no refused call reached the provider
    scraped = await scrape(gateway.metrics_url)
    assert f'regtask_llm_tokens_total{{company="acme",kind="chat"}} {float(spent + USED)}' in (
        scraped
    )
    headroom = budget - spent - USED
    assert f'regtask_llm_headroom{{company="acme",resource="tokens_per_hour"}} {headroom}.0' in (
        scraped
    )


async def test_a_stream_is_settled_at_the_providers_usage_and_the_runner_sees_what_it_asked(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    await Registry(redis_async).set_company_quotas("acme", Quotas(max_llm_tokens_per_hour=10_000))
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    token = await gateway.add_task(make_spec("llm_s1", TaskType.LLM_CONVERSATION))
    limiter = LlmRateLimiter(redis_async)
    async with client(gateway.url, token) as http:
        plain = await http.post(CHAT, json={"messages": MESSAGES, "max_tokens": 20, "stream": True})
        assert plain.status_code == 200
        # The gateway asked the provider for usage, and hid its chunk from this runner.
        assert fake_llm.state.requests[-1].body["stream_options"] == {"include_usage": True}
        assert '"usage"' not in plain.text
        assert plain.text.rstrip().endswith("data: [DONE]")
        assert (await limiter.usage("acme")).tokens_hour == USED
        asked = await http.post(
            CHAT,
            json={
                "messages": MESSAGES,
                "max_tokens": 20,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert '"usage"' in asked.text  # asked for: relayed
    assert (await limiter.usage("acme")).tokens_hour == 2 * USED


async def test_refuse_policy_over_budget_calls_and_refund_when_never_sent(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    registry = Registry(redis_async)
    await registry.set_company_quotas(
        "acme", Quotas(max_llm_tokens_per_hour=RESERVED, rate_limit_policy="Refuse")
    )
    gateway = make_gateway(llm_base_url=fake_llm.base_url, llm_max_tokens=4096)
    token = await gateway.add_task(make_spec("llm_r1", TaskType.LLM_CONVERSATION))
    limiter = LlmRateLimiter(redis_async)
    body = {"messages": MESSAGES, "max_tokens": 20}
    async with client(gateway.url, token) as http:
        alone = await http.post(CHAT, json={"messages": MESSAGES, "max_tokens": 4000})
        assert alone.status_code == 400  # can never fit: no point waiting
        assert alone.json()["error"]["code"] == "llm_call_over_token_budget"
        first = await http.post(CHAT, json=body)
        assert first.status_code == 200
        # Settled at 9: a second reservation of RESERVED no longer fits; policy Refuse: 403.
        second = await http.post(CHAT, json=body)
        assert second.status_code == 403, second.text
        assert second.json()["error"]["code"] == "llm_quota_exceeded"
        assert int(second.headers["retry-after"]) >= 3590
    assert len(fake_llm.state.requests) == 1
    # A provider that cannot be reached: the call never left, everything comes back.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    await registry.set_company_quotas("globex", Quotas(max_llm_tokens_per_hour=10_000))
    down = make_gateway(llm_base_url=f"http://127.0.0.1:{closed_port}/v1")
    other = await down.add_task(make_spec("llm_r2", TaskType.LLM_CONVERSATION, company_id="globex"))
    async with client(down.url, other) as http:
        unreachable = await http.post(CHAT, json=body)
    assert unreachable.status_code == 502
    usage = await limiter.usage("globex")
    assert (usage.requests, usage.tokens_hour) == (0, 0)


async def test_redis_unreachable_fails_closed_and_says_so(
    make_gateway: GatewayFactory, fake_llm: FakeLlm
) -> None:
    """The gateway's Redis stops: LLM calls get 503 (never sent uncounted) and the counter
    ``regtask_llm_limiter_unavailable_total`` says why."""
    server = RedisServer().start()
    try:
        gateway = make_gateway(llm_base_url=fake_llm.base_url, redis_url=server.url)
        token = await gateway.add_task(make_spec("llm_d1", TaskType.LLM_CONVERSATION))
        async with client(gateway.url, token) as http:
            before = await http.post(CHAT, json={"messages": MESSAGES})
            assert before.status_code == 200
            server.stop()
            down = await http.post(CHAT, json={"messages": MESSAGES})
    finally:
        server.stop()
    assert down.status_code == 503, down.text
    assert down.json()["error"]["code"] == "llm_limiter_unavailable"
    assert down.headers["retry-after"] == "5"
    assert len(fake_llm.state.requests) == 1
    scraped = await scrape(gateway.metrics_url)
    assert 'regtask_llm_limiter_unavailable_total{operation="reserve"} 1.0' in scraped


@pytest.mark.llm
async def test_real_model_calls_are_settled_at_what_they_used(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    """llama.cpp reports usage for a plain answer (settled at it) and none in a stream (which
    is settled at the prompt bound plus one token per content chunk)."""
    await Registry(redis_async).set_company_quotas(
        "acme", Quotas(max_llm_tokens_per_hour=100_000, max_llm_tokens_per_day=100_000)
    )
    gateway = make_gateway(llm_base_url=llm_server.base_url, llm_max_tokens=16)
    token = await gateway.add_task(make_spec("llm_real_t", TaskType.LLM_CONVERSATION))
    limiter = LlmRateLimiter(redis_async)
    limits = LlmLimits(1000, 100_000, 100_000)
    question = [{"role": "user", "content": "Count from one to ten."}]
    async with client(gateway.url, token, timeout=120) as http:
        answer = await http.post(CHAT, json={"messages": question, "temperature": 0})
        assert answer.status_code == 200, answer.text
        total = answer.json()["usage"]["total_tokens"]
        assert (await limiter.usage("acme", limits)).tokens_hour == total
        streamed = await http.post(
            CHAT, json={"messages": question, "temperature": 0, "stream": True}
        )
        assert streamed.status_code == 200
    chunks = 0
    for line in streamed.text.splitlines():
        if line.startswith("data:") and "[DONE]" not in line:
            payload = json.loads(line[5:])
            chunks += sum(1 for c in payload["choices"] if c.get("delta", {}).get("content"))
    assert 1 <= chunks <= 16
    assert '"usage"' not in streamed.text  # this provider reports none in streams
    bound = len(json.dumps(question).encode())
    assert (await limiter.usage("acme", limits)).tokens_hour == total + bound + chunks


async def test_a_stream_the_client_leaves_early_gives_back_what_it_did_not_use(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    """The runner is cancelled mid-answer (it closes the stream): the call is settled at what
    was relayed (the prompt bound + one token per content chunk), not at its reservation."""
    await Registry(redis_async).set_company_quotas("acme", Quotas(max_llm_tokens_per_hour=10_000))
    fake_llm.state.chunk_delay_s = 0.3
    gateway = make_gateway(llm_base_url=fake_llm.base_url)
    token = await gateway.add_task(make_spec("llm_c1", TaskType.LLM_CONVERSATION))
    limiter = LlmRateLimiter(redis_async)
    words = " ".join(f"w{i}" for i in range(30))
    messages = [{"role": "user", "content": words}]
    reserved = len(json.dumps(messages).encode()) + 40
    body = {"messages": messages, "max_tokens": 40, "stream": True}
    async with client(gateway.url, token) as http, http.stream("POST", CHAT, json=body) as answer:
        assert answer.status_code == 200
        assert (await limiter.usage("acme")).tokens_hour == reserved  # held while it runs
        seen = 0
        async for line in answer.aiter_lines():
            seen += '"content": "' in line or '"content": " ' in line
            if seen >= 3:
                break  # the runner is cancelled: it closes the stream
    bound = len(json.dumps(messages).encode())
    for _ in range(50):
        held = (await limiter.usage("acme")).tokens_hour
        if held != reserved:
            break
        await asyncio.sleep(0.1)
    assert bound < held < reserved  # the unused part of max_tokens came back
    assert held - bound <= 10  # about the chunks relayed before the client left
