"""What an LLM call may use (its reservation) and what it did use (its settlement).

A call reserves, before it is sent, a bound on its tokens (prompt + completion, as providers
bill them): the completion's ``max_tokens`` (always set and capped by the gateway) times ``n``,
plus a bound on the prompt: the byte length of its JSON (every token of a byte-level tokenizer
is at least one byte; a message's JSON framing, 28 bytes or more, covers the chat template's
few tokens per message). After the answer the reservation is replaced by the provider's
``usage.total_tokens``; a stream whose provider reported none (llama.cpp's server does not
honour ``stream_options``) or that the client left early is settled at the prompt bound plus
one token per content chunk relayed (providers stream one token per chunk).

Hazard: these bounds hold for providers that honour ``max_tokens`` and tokenize at one byte or
more per token; a call that uses more is settled at what it used, and the excess is the
overspend (see :mod:`regtask.ratelimit`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from regtask_gateway.models import ChatCompletionIn, EmbeddingsIn

# Special tokens an embedding model adds around each input (BERT: [CLS] ... [SEP]).
EMBEDDING_SPECIAL_TOKENS = 2


def prompt_bound(body: ChatCompletionIn | EmbeddingsIn) -> int:
    """An upper bound on the prompt's tokens."""
    if isinstance(body, ChatCompletionIn):
        return len(json.dumps(body.messages).encode())
    inputs = body.input
    if isinstance(inputs, str):
        return len(inputs.encode()) + EMBEDDING_SPECIAL_TOKENS
    total = 0
    for item in inputs:
        if isinstance(item, str):
            total += len(item.encode()) + EMBEDDING_SPECIAL_TOKENS
        elif isinstance(item, list):
            total += len(item) + EMBEDDING_SPECIAL_TOKENS
        else:  # one token id of a single tokenized input
            total += 1
    if inputs and isinstance(inputs[0], int):
        total += EMBEDDING_SPECIAL_TOKENS
    return total


def reservation(body: ChatCompletionIn | EmbeddingsIn) -> int:
    """The tokens a call holds while it is in flight: prompt bound + max completion."""
    if isinstance(body, ChatCompletionIn):
        completion = (body.max_tokens or body.max_completion_tokens or 0) * (body.n or 1)
        return prompt_bound(body) + completion
    return prompt_bound(body)


def usage_total(payload: Any) -> int | None:
    """``usage.total_tokens`` of a provider's answer or chunk, when it reports one."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and total >= 0:
        return total
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt + completion
    return None


def body_usage(content: bytes) -> int | None:
    try:
        return usage_total(json.loads(content))
    except ValueError:
        return None


@dataclass
class StreamMeter:
    """Reads a relayed server-sent-event stream event by event: counts content chunks, keeps
    the provider's usage, and tells which events to drop (the usage-only chunk the gateway
    asked for when the runner did not)."""

    prompt_bound: int
    drop_usage_chunk: bool
    chunks: int = 0
    reported: int | None = None
    _pending: bytes = field(default=b"", repr=False)

    def feed(self, data: bytes) -> list[bytes]:
        """The complete events in ``data`` (and what came before), each with its separator;
        a partial event is held until its end arrives."""
        self._pending += data
        events: list[bytes] = []
        while True:
            ends = [
                (i, len(sep))
                for sep in (b"\r\n\r\n", b"\n\n")
                if (i := self._pending.find(sep)) >= 0
            ]
            if not ends:
                return events
            at, size = min(ends)
            event, self._pending = self._pending[: at + size], self._pending[at + size :]
            if self._keep(event):
                events.append(event)

    def rest(self) -> bytes:
        """Whatever is left when the upstream ends (an event without its separator)."""
        rest, self._pending = self._pending, b""
        return rest

    def _keep(self, event: bytes) -> bool:
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return True
            try:
                payload = json.loads(data)
            except ValueError:
                return True
            total = usage_total(payload)
            if total is not None:
                self.reported = total
            choices = payload.get("choices") if isinstance(payload, dict) else None
            if isinstance(choices, list):
                self.chunks += sum(1 for c in choices if _has_content(c))
                if total is not None and not choices and self.drop_usage_chunk:
                    return False
        return True

    @property
    def used(self) -> int:
        """The provider's usage, else the prompt bound plus one token per content chunk."""
        if self.reported is not None:
            return self.reported
        return self.prompt_bound + self.chunks


def _has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    return isinstance(delta, dict) and bool(delta.get("content"))
