"""Issue 16 item 6: what one runner's LLM request may cost is decided by the gateway.

A company's model allow-list (CompanyQuota ``allowedModels``; empty = the configured default
model only), caps on ``max_tokens`` and ``n``, and unknown request fields dropped before the
provider sees them. The fake provider records exactly what was forwarded; the real llama.cpp
server shows the same rules on a real model.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from regtask.documents import Quotas
from regtask.ratelimit import LlmRateLimiter
from regtask.registry import Registry
from regtask.tasktypes import TaskType
from regtask_dev.llm_server import LlamaServer
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import client, make_spec

CHAT = "/v1/llm/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


async def test_model_allow_list_caps_and_unknown_fields(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    registry = Registry(redis_async)
    await registry.set_company_quotas("acme", Quotas(allowed_models=["big-model"]))
    gateway = make_gateway(llm_base_url=fake_llm.base_url, llm_max_tokens=512, llm_max_n=1)
    acme = await gateway.add_task(make_spec("llm_a", TaskType.LLM_CONVERSATION))
    other = await gateway.add_task(
        make_spec("llm_o", TaskType.LLM_CONVERSATION, company_id="other")
    )
    limiter = LlmRateLimiter(redis_async)
    async with client(gateway.url, other) as http:
        # No CompanyQuota: the default model only.
        expensive = await http.post(CHAT, json={"model": "big-model", "messages": HELLO})
        assert expensive.status_code == 403, expensive.text
        assert expensive.json()["error"]["code"] == "model_not_allowed"
        for body, code in [
            ({"messages": HELLO, "max_tokens": 513}, "max_tokens_over_cap"),
            (
                {"messages": HELLO, "max_completion_tokens": 10_000},
                "max_completion_tokens_over_cap",
            ),
            ({"messages": HELLO, "n": 8}, "n_over_cap"),
        ]:
            over = await http.post(CHAT, json=body)
            assert over.status_code == 400, over.text
            assert over.json()["error"]["code"] == code
        assert fake_llm.state.requests == []  # nothing refused reached the provider
        assert (await limiter.usage("other")).requests == 0  # nor was counted
        sneaky = {
            "messages": HELLO,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "logit_bias": {"50256": 100},
            "functions": [{"name": "f"}],
            "temperature": 0.1,
        }
        allowed = await http.post(CHAT, json=sneaky)
        assert allowed.status_code == 200, allowed.text
    forwarded = fake_llm.state.requests[-1].body
    assert forwarded["model"] == gateway.settings.llm_default_model
    assert forwarded["max_tokens"] == 512  # bounded even when the runner does not ask
    assert forwarded["temperature"] == 0.1
    assert not {"tools", "tool_choice", "logit_bias", "functions"} & set(forwarded)
    async with client(gateway.url, acme) as http:
        mine = await http.post(CHAT, json={"model": "big-model", "messages": HELLO})
        assert mine.status_code == 200, mine.text
        refused = await http.post(CHAT, json={"model": "gpt-ultra", "messages": HELLO})
        assert refused.status_code == 403
    assert fake_llm.state.requests[-1].body["model"] == "big-model"
    assert len(fake_llm.state.requests) == 2


@pytest.mark.llm
async def test_cost_rules_on_the_real_model(
    make_gateway: GatewayFactory, llm_server: LlamaServer, redis_async: aioredis.Redis
) -> None:
    gateway = make_gateway(
        llm_base_url=llm_server.base_url,
        llm_embeddings_base_url=llm_server.embeddings_base_url,
        llm_max_tokens=16,
    )
    token = await gateway.add_task(make_spec("llm_real", TaskType.LLM_CONVERSATION))
    async with client(gateway.url, token, timeout=120) as http:
        refused = await http.post(CHAT, json={"model": "gpt-4-32k", "messages": HELLO})
        assert refused.status_code == 403
        over = await http.post(CHAT, json={"messages": HELLO, "max_tokens": 4096})
        assert over.status_code == 400
        answer = await http.post(
            CHAT,
            json={
                "messages": [{"role": "user", "content": "Count from one to fifty."}],
                "temperature": 0,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "logit_bias": {"1": 100},
            },
        )
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert 1 <= usage["completion_tokens"] <= 16  # the gateway's cap, not the provider's default
