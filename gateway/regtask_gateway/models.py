"""The bodies of the LLM routes: OpenAI's, reduced to the fields the gateway forwards.

Everything else the gateway reads and answers is the runner contract in
:mod:`regtask.gateway_api`, shared with the runners' client; these two are OpenAI's. Only the
fields declared here are forwarded: anything else a runner adds (``tools``, ``logit_bias``,
``functions``...) is dropped before the provider sees it (issue 16, item 6: what a request may
cost is decided here, not by the runner). ``n`` and ``max_tokens`` are bounded by the gateway's
settings in :mod:`regtask_gateway.llm`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatCompletionIn(BaseModel):
    """The OpenAI chat request; unknown fields are dropped (never forwarded)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    response_format: dict[str, Any] | None = None


class EmbeddingsIn(BaseModel):
    """The OpenAI embeddings request; unknown fields are dropped."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str | None = None
    dimensions: int | None = Field(default=None, ge=1)
