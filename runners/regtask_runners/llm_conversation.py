"""``llm_conversation``: one prompt, a streamed answer, live events, the stored conversation.

The OpenAI SDK talks to the gateway (``base_url=<gateway>/v1/llm``) with the task token as its
API key: the provider key never reaches the runner, and every call is counted against the
company's hourly quota there. While tokens arrive, ``llm.conversation_update`` events (status
``calling_llm``, progress rising) go out at most every 0.5 s; at the end,
``llm.conversation_complete`` with the response and ``tokens_used`` (the provider's usage when
it streams it, else the number of streamed chunks), and the conversation is stored under the
contract's ``conversation:{company}:{user}:{conversation}`` key.

Inputs/parameters: the prompt is the input named ``prompt`` (or ``parameters.prompt``);
``system`` (optional system prompt), ``model``, ``temperature`` (default 0.7) and
``max_tokens`` (default 256) come from the parameters, else the user's ``model_preferences``.
"""

from __future__ import annotations

import time
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from regtask.events import EventType
from regtask.gateway_api import LLM_PREFIX
from regtask_runners.errors import LlmQuotaWait, PermanentError, RetryableError, retry_after_s
from regtask_runners.framework import (
    STOP_CALL_TIMEOUT_S,
    TaskContext,
    param_float,
    param_int,
    with_llm_quota,
)
from regtask_runners.textextract import input_bytes

EVENT_MIN_INTERVAL_S = 0.5
PARTIAL_RESPONSE_CHARS = 2000


def _prompt(ctx: TaskContext) -> str:
    item = ctx.task.input("prompt")
    if item is not None:
        try:
            text = input_bytes(item).decode()
        except UnicodeDecodeError as exc:
            raise PermanentError("the prompt is not UTF-8 text") from exc
    else:
        text = ctx.task.parameters.get("prompt", "")
    if not text.strip():
        raise PermanentError("llm_conversation needs a prompt (input or parameter 'prompt')")
    return text


def _setting(ctx: TaskContext, name: str) -> str | None:
    value = ctx.task.parameters.get(name)
    if value:
        return value
    preferred = ctx.task.model_preferences.get(name)
    return str(preferred) if preferred not in (None, "") else None


def _translate(exc: openai.OpenAIError) -> Exception:
    """SDK errors -> the runner's exit-code classes (quota and outages are worth a retry)."""
    if isinstance(exc, openai.APIStatusError):
        message = f"LLM call refused: HTTP {exc.status_code}: {exc.message}"
        if exc.status_code == 429:
            return LlmQuotaWait(message, retry_after_s(exc.response.headers.get("Retry-After")))
        if exc.status_code >= 500 or exc.status_code == 408:
            return RetryableError(message)
        return PermanentError(message)
    return RetryableError(f"LLM call failed: {type(exc).__name__}: {exc}")


async def run(ctx: TaskContext) -> dict[str, Any]:
    task = ctx.task
    conversation_id = task.conversation_id
    if not conversation_id:
        raise PermanentError("llm_conversation needs a conversation_id in its spec")
    prompt = _prompt(ctx)
    # A model the user prefers, else "" = the gateway's default model.
    model = _setting(ctx, "model") or ""
    preferred_temperature = _setting(ctx, "temperature")
    temperature = param_float(task, "temperature", float(preferred_temperature or 0.7), 0.0, 2.0)
    preferred_max = _setting(ctx, "max_tokens")
    max_tokens = param_int(task, "max_tokens", int(preferred_max or 256), 1, 8192)
    messages: list[ChatCompletionMessageParam] = []
    if task.parameters.get("system"):
        messages.append({"role": "system", "content": task.parameters["system"]})
    messages.append({"role": "user", "content": prompt})

    state: dict[str, Any] = {"progress": 5, "response": ""}

    async def publish_update(
        status: str, progress: int, data: dict[str, Any], stopping: bool = False
    ) -> None:
        await ctx.gateway.publish(
            EventType.LLM_CONVERSATION_UPDATE,
            {
                "conversation_id": conversation_id,
                "status": status,
                "progress": progress,
                "data": data,
            },
            timeout_s=STOP_CALL_TIMEOUT_S if stopping else None,
            attempts=1 if stopping else None,
        )

    async def on_stop(reason: str) -> None:
        await publish_update(
            reason,
            state["progress"],
            {"reason": reason, "partial_response": state["response"][-PARTIAL_RESPONSE_CHARS:]},
            stopping=True,
        )

    ctx.on_stop(on_stop)
    await ctx.progress.report(5, "calling_llm", {"conversation_id": conversation_id})
    await publish_update("calling_llm", 5, {})

    client = openai.AsyncOpenAI(
        base_url=f"{ctx.env.gateway_url}{LLM_PREFIX}",
        api_key=ctx.env.read_token(),  # valid past the Job's deadline
        max_retries=2,
        timeout=max(task.max_duration_seconds, 30),
    )
    pieces: list[str] = []
    chunks = 0
    usage_total: int | None = None
    answered_model = model
    finish_reason: str | None = None
    last_event = time.monotonic()

    async def start_stream() -> openai.AsyncStream[ChatCompletionChunk]:
        try:
            return await client.chat.completions.create(
                model=model,
                messages=messages,
                temperature=temperature,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc

    try:
        # A full window is waited for before the answer starts (a stream never gets a 429).
        stream = await with_llm_quota(ctx, start_stream)
        async with stream:
            async for chunk in stream:
                answered_model = chunk.model or answered_model
                if chunk.usage is not None:
                    usage_total = chunk.usage.total_tokens
                for choice in chunk.choices:
                    finish_reason = choice.finish_reason or finish_reason
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        chunks += 1
                state["response"] = "".join(pieces)
                state["progress"] = min(95, 10 + int(85 * chunks / max_tokens))
                if time.monotonic() - last_event >= EVENT_MIN_INTERVAL_S:
                    last_event = time.monotonic()
                    await publish_update(
                        "calling_llm",
                        state["progress"],
                        {
                            "tokens_received": chunks,
                            "partial_response": state["response"][-PARTIAL_RESPONSE_CHARS:],
                        },
                    )
                    await ctx.progress.report(
                        state["progress"], "calling_llm", {"tokens_received": chunks}
                    )
    except openai.OpenAIError as exc:
        raise _translate(exc) from exc
    finally:
        await client.close()

    response = "".join(pieces).strip()
    tokens_used = usage_total if usage_total is not None else chunks
    await ctx.progress.report(96, "storing_conversation", {"tokens_used": tokens_used})
    await ctx.gateway.publish(
        EventType.LLM_CONVERSATION_COMPLETE,
        {"conversation_id": conversation_id, "response": response, "tokens_used": tokens_used},
    )
    await ctx.gateway.store_conversation(
        {
            "conversation_id": conversation_id,
            "prompt": prompt,
            "response": response,
            "model": answered_model or "default",
            "temperature": temperature,
            "tokens_used": tokens_used,
        }
    )
    ctx.log.info("llm_conversation_done", tokens_used=tokens_used, finish_reason=finish_reason)
    return {
        "conversation_id": conversation_id,
        "response": response,
        "tokens_used": tokens_used,
        "model": answered_model,
        "finish_reason": finish_reason,
        "streamed_chunks": chunks,
    }
