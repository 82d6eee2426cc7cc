"""Configuration of the runner gateway, read once from the environment at start-up.

``REDIS_URL`` and the contract's switches come from :class:`regtask.settings.Settings`, as in
every process; the rest is the gateway's own: the LLM provider (its key is held here and never
handed to a runner), Chroma, where the RegistryTask CRs live, its addresses (API and metrics
apart) and its body limits.
Settings are frozen: changing one takes a restart.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from regtask.settings import Settings
from regtask.shards import MAX_SHARDS
from regtask.storage import MAX_INLINE_RESULT_BYTES


class GatewaySettings(Settings):
    # populate_by_name: harnesses and tests pass field names (redis_url=...), the environment
    # the aliases.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, populate_by_name=True
    )

    # OpenAI-compatible provider, e.g. https://api.openai.com/v1 or a local llama.cpp server.
    llm_base_url: str = Field(default="http://127.0.0.1:8080/v1", alias="LLM_BASE_URL")
    # The real provider key: held here only, never handed to a runner.
    llm_api_key: SecretStr = Field(default=SecretStr(""), alias="LLM_API_KEY")
    llm_default_model: str = Field(default="gemma-3-270m", alias="LLM_DEFAULT_MODEL")
    # Embeddings may come from another endpoint/model than chat (unset = the same as chat).
    llm_embeddings_base_url: str | None = Field(default=None, alias="LLM_EMBEDDINGS_BASE_URL")
    llm_embedding_model: str | None = Field(default=None, alias="LLM_EMBEDDING_MODEL")
    llm_timeout_s: float = Field(default=300.0, gt=0, alias="LLM_TIMEOUT_S")
    # What one chat request may cost: max_tokens above this is refused (400), and a request
    # without it is sent with it; at most this many choices (``n``).
    llm_max_tokens: int = Field(default=8192, ge=1, alias="LLM_MAX_TOKENS")
    llm_max_n: int = Field(default=1, ge=1, alias="LLM_MAX_N")
    chroma_url: str = Field(default="http://127.0.0.1:8000", alias="CHROMA_URL")
    # Where the RegistryTask CRs live; kubeconfig unset = in-cluster service account.
    namespace: str = Field(default="regtask-system", alias="REGTASK_NAMESPACE")
    # Operator shards (regtask.shards): tasks live in "{namespace}-shard-{i}" when several.
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS, alias="REGTASK_SHARDS")
    kubeconfig: str | None = Field(default=None, alias="KUBECONFIG")
    host: str = Field(default="0.0.0.0", alias="REGTASK_GATEWAY_HOST")
    port: int = Field(default=8081, alias="REGTASK_GATEWAY_PORT")
    # /metrics (every company's LLM usage) is served on this port only, never on ``port``: the
    # tenant NetworkPolicy lets runners reach ``port`` alone. 0 = no metrics server.
    metrics_port: int = Field(default=9092, ge=0, le=65535, alias="REGTASK_GATEWAY_METRICS_PORT")
    # /docs, /redoc and /openapi.json describe the runner surface to whoever asks: off unless
    # switched on (development).
    docs_enabled: bool = Field(default=False, alias="REGTASK_GATEWAY_DOCS")
    # One progress write per task per interval (unless the step changes or progress hits 100).
    progress_min_interval_s: float = Field(
        default=0.2, ge=0, alias="REGTASK_PROGRESS_MIN_INTERVAL_S"
    )
    # Refused runner tokens per source address per minute before 429 (no TokenReview); 0 = off.
    token_failures_per_minute: int = Field(
        default=30, ge=0, alias="REGTASK_GATEWAY_TOKEN_FAILURES_PER_MINUTE"
    )
    # Any runner request body (chunked included) is refused past this, before it is read in full.
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, alias="REGTASK_GATEWAY_MAX_BODY_BYTES"
    )
    # The LLM connection pool, and the share of it one company may hold at once; a request
    # over its company's share waits up to llm_share_wait_s, then 429.
    llm_max_connections: int = Field(default=200, ge=1, alias="LLM_MAX_CONNECTIONS")
    llm_company_share: float = Field(default=0.25, gt=0, le=1, alias="LLM_COMPANY_SHARE")
    llm_share_wait_s: float = Field(default=5.0, ge=0, alias="LLM_SHARE_WAIT_S")
    max_result_bytes: int = Field(default=MAX_INLINE_RESULT_BYTES, gt=0)
    max_input_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
