"""Issue 16 item 5: one tenant cannot starve the gateway for the others.

Over real HTTP (raw sockets where the client must stop mid-body): a body over the limit is
refused while it is still being sent (chunked included), an unauthenticated caller is refused
before its body is read, and a company holding its whole share of LLM connections waits then
gets 429 while another company's call goes through.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from regtask.tasktypes import TaskType
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.llm import FakeLlm
from tests.gateway.helpers import client, make_spec

LIMIT = 64 * 1024


async def send_partial(port: int, head: str, body_parts: list[bytes]) -> str:
    """Send the request head and some body, never the end of it; return the status line
    the server answers with meanwhile."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 20)
        return line.decode().strip()
    finally:
        writer.close()


def head(path: str, token: str | None, **headers: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", "Content-Type: application/json"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_chunked_body_over_the_limit_is_413_before_it_ends(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(max_body_bytes=LIMIT)
    token = await gateway.add_task(make_spec("doc_dos_1"))
    piece = b'{"result": {"x": "' + b"a" * 16 * 1024
    # 5 chunks of 16 KiB: past the 64 KiB limit, and the body is never terminated.
    status = await send_partial(
        gateway.port,
        head("/v1/task/result", token, Transfer_Encoding="chunked"),
        [chunk(piece)] + [chunk(b"a" * 16 * 1024)] * 4,
    )
    assert status.startswith("HTTP/1.1 413"), status
    # A declared Content-Length over the limit: refused before one body byte is sent.
    status = await send_partial(
        gateway.port, head("/v1/task/result", token, Content_Length=str(LIMIT + 1)), []
    )
    assert status.startswith("HTTP/1.1 413"), status
    # Under the limit, the same route works.
    async with client(gateway.url, token) as http:
        stored = await http.post("/v1/task/result", json={"result": {"x": "small"}})
    assert stored.status_code != 413


async def test_unauthenticated_big_body_is_401_before_it_is_read(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(max_body_bytes=LIMIT)
    for token in (None, "forged-token"):
        # Declares 50 MB (authentication comes before the size check) and sends
        # 1 KiB of it: the answer arrives without the rest.
        status = await send_partial(
            gateway.port,
            head("/v1/llm/chat/completions", token, Content_Length=str(50 * 1024 * 1024)),
            [b"{" + b" " * 1023],
        )
        assert status.startswith("HTTP/1.1 401"), status
        status = await send_partial(
            gateway.port,
            head("/v1/task/result", token, Transfer_Encoding="chunked"),
            [chunk(b" " * 1024)],
        )
        assert status.startswith("HTTP/1.1 401"), status


async def test_a_company_at_its_llm_share_waits_then_429_while_another_proceeds(
    make_gateway: GatewayFactory, fake_llm: FakeLlm, redis_async: aioredis.Redis
) -> None:
    """(``redis_async`` empties Redis: a limit another test left for acme must not count.)"""
    fake_llm.state.chunk_delay_s = 0.5  # slow streams hold their connections
    gateway = make_gateway(
        llm_base_url=fake_llm.base_url,
        llm_max_connections=4,
        llm_company_share=0.5,  # 2 connections per company
        llm_share_wait_s=0.5,
    )
    acme = await gateway.add_task(make_spec("llm_acme", TaskType.LLM_CONVERSATION))
    other = await gateway.add_task(
        make_spec("llm_other", TaskType.LLM_CONVERSATION, company_id="other")
    )
    slow = {
        "messages": [{"role": "user", "content": "one two three four five six"}],
        "stream": True,
    }
    quick = {"messages": [{"role": "user", "content": "hi"}]}
    async with client(gateway.url, acme) as http_a, client(gateway.url, other) as http_o:
        async with (
            http_a.stream("POST", "/v1/llm/chat/completions", json=slow) as first,
            http_a.stream("POST", "/v1/llm/chat/completions", json=slow) as second,
        ):
            assert first.status_code == second.status_code == 200
            third = await http_a.post("/v1/llm/chat/completions", json=quick)
            assert third.status_code == 429, third.text
            assert third.json()["error"]["code"] == "llm_connections_exhausted"
            assert third.headers["retry-after"] == "1"
            # Another company is not held up by acme's streams.
            theirs = await http_o.post("/v1/llm/chat/completions", json=quick)
            assert theirs.status_code == 200, theirs.text
            async for _ in first.aiter_bytes():
                pass
        # Acme's streams ended: its share is free again.
        again = await http_a.post("/v1/llm/chat/completions", json=quick)
        assert again.status_code == 200, again.text
