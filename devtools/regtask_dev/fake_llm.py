"""A tiny deterministic OpenAI-compatible server, for assertions a real model cannot give.

What it answers is a pure function of the request (the chat reply spells out the last user
message; an embedding is derived from a hash of the text), and it records every request it
received (headers and body), so tests can check exactly what the gateway forwarded: the real
provider key, the forced ``user``, the default model. ``chunk_delay_s`` spaces streamed chunks
in time, which makes buffering by a proxy measurable. The real model (``llm_server``) is what
the runner and streaming tests use; this fake is for quota and pass-through details.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

EMBEDDING_DIMENSION = 8


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeLlmState:
    requests: list[RecordedRequest] = field(default_factory=list)
    chunk_delay_s: float = 0.0
    # When set, every request fails with this HTTP status (upstream error relay tests).
    fail_status: int | None = None


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = None
    stream_options: dict[str, Any] | None = None


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str]


def reply_words(messages: list[dict[str, Any]], max_tokens: int | None) -> list[str]:
    """The reply, one word per "token": ``echo: <last message words>``."""
    last = str(messages[-1].get("content", ""))
    words = ["echo:", *last.split()]
    return words[:max_tokens] if max_tokens else words


def fake_embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 6) for b in digest[:EMBEDDING_DIMENSION]]


def create_fake_llm_app(state: FakeLlmState | None = None) -> FastAPI:
    app = FastAPI(title="fake OpenAI-compatible LLM")
    app.state.fake = state or FakeLlmState()

    def fake(request: Request) -> FakeLlmState:
        return app.state.fake  # type: ignore[no-any-return]

    async def record(request: Request) -> FakeLlmState | Response:
        current = fake(request)
        current.requests.append(
            RecordedRequest(
                request.url.path, dict(request.headers), json.loads(await request.body())
            )
        )
        if current.fail_status is not None:
            return JSONResponse(
                {"error": {"message": "fake failure", "type": "server_error"}},
                status_code=current.fail_status,
            )
        return current

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatIn, request: Request) -> Response | dict[str, Any]:
        current = await record(request)
        if isinstance(current, Response):
            return current
        words = reply_words(body.messages, body.max_tokens)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        created = int(time.time())
        model = body.model or "fake-model"
        if not body.stream:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        delay = current.chunk_delay_s

        async def events() -> AsyncIterator[bytes]:
            def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
                payload = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                return f"data: {json.dumps(payload)}\n\n".encode()

            yield chunk({"role": "assistant", "content": ""}, None)
            for i, word in enumerate(words):
                if delay:
                    await asyncio.sleep(delay)
                yield chunk({"content": word if i == 0 else f" {word}"}, None)
            yield chunk({}, "stop")
            if include_usage:
                final = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(body: EmbeddingsIn, request: Request) -> Response | dict[str, Any]:
        current = await record(request)
        if isinstance(current, Response):
            return current
        texts = [body.input] if isinstance(body.input, str) else body.input
        tokens = sum(len(t.split()) for t in texts)
        return {
            "object": "list",
            "model": body.model or "fake-model",
            "data": [
                {"object": "embedding", "index": i, "embedding": fake_embedding(text)}
                for i, text in enumerate(texts)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app
