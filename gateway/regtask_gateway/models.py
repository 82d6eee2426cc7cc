"""The bodies of the LLM routes: OpenAI's own, passed through to the provider as sent.

Everything else the gateway reads and answers is the runner contract in
:mod:`regtask.gateway_api`, shared with the runners' client; these two are OpenAI's, so only
what the gateway itself looks at is declared (extra fields are kept and forwarded).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatCompletionIn(BaseModel):
    """The OpenAI request, passed through as sent (extra fields kept)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
