"""The runner's gateway client: which failures it retries, and which it must not resend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from regtask_dev.asgi_thread import ThreadedUvicorn
from regtask_runners import gateway_client
from regtask_runners.errors import PermanentError, RetryableError
from regtask_runners.gateway_client import GatewayClient

pytestmark = pytest.mark.unit


@pytest.fixture
def flaky_gateway() -> Iterator[tuple[str, dict[str, int]]]:
    """Progress fails twice with 503 then works; embeddings hang; results are refused."""
    calls = {"progress": 0, "embeddings": 0}
    app = FastAPI()

    @app.post("/v1/task/progress")
    async def progress() -> Any:
        calls["progress"] += 1
        if calls["progress"] <= 2:
            return JSONResponse({"detail": "busy"}, status_code=503)
        return {"accepted": True, "applied": True}

    @app.post("/v1/llm/embeddings")
    async def embeddings() -> Any:
        calls["embeddings"] += 1
        await asyncio.sleep(3)
        return {"data": []}

    @app.post("/v1/task/result")
    async def result() -> Any:
        return JSONResponse({"detail": "result too large"}, status_code=413)

    @app.post("/v1/llm/chat/completions")
    async def chat() -> Any:
        return JSONResponse({"error": {"message": "quota"}}, status_code=429)

    with ThreadedUvicorn(app) as server:
        yield server.url, calls


async def test_transient_5xx_is_retried(flaky_gateway: tuple[str, dict[str, int]]) -> None:
    url, calls = flaky_gateway
    client = GatewayClient(url, "token")
    try:
        assert await client.progress(10, "step") is True
    finally:
        await client.aclose()
    assert calls["progress"] == 3


async def test_an_llm_call_that_may_have_been_sent_is_not_resent(
    flaky_gateway: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, calls = flaky_gateway
    monkeypatch.setattr(gateway_client, "LLM_TIMEOUT_S", 0.5)
    client = GatewayClient(url, "token")
    try:
        with pytest.raises(RetryableError, match="ReadTimeout"):
            await client.embeddings(["a"])
    finally:
        await client.aclose()
    assert calls["embeddings"] == 1  # counted once against the quota, never twice


async def test_refusals_map_to_exit_classes(flaky_gateway: tuple[str, dict[str, int]]) -> None:
    url, _ = flaky_gateway
    client = GatewayClient(url, "token")
    try:
        with pytest.raises(PermanentError, match="413"):
            await client.store_result({"big": "x"})
        with pytest.raises(RetryableError, match="429"):
            await client.chat({"messages": []})
    finally:
        await client.aclose()


async def test_the_first_contact_waits_for_the_pods_network() -> None:
    """A brand-new pod's connections may be refused until its NetworkPolicy is programmed on
    the node (longer than the 3 quick attempts under load): the first call keeps retrying
    refused connections within its grace; other calls fail as before."""
    refused = {"left": 5}

    def handler(request: httpx.Request) -> httpx.Response:
        if refused["left"] > 0:
            refused["left"] -= 1
            raise httpx.ConnectError("Connection refused", request=request)
        return httpx.Response(200, json={})

    client = GatewayClient("http://gateway.invalid", "token")
    client.http = httpx.AsyncClient(
        base_url="http://gateway.invalid", transport=httpx.MockTransport(handler)
    )
    try:
        with pytest.raises(RetryableError, match="ConnectError"):
            await client.request("GET", "/v1/task")  # 3 attempts, all refused
        refused["left"] = 5
        response = await client.request("GET", "/v1/task", connect_grace_s=30.0)
        assert response.status_code == 200 and refused["left"] == 0
    finally:
        await client.aclose()
