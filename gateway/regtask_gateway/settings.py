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
    chroma_url: str = Field(default="http://127.0.0.1:8000", alias="CHROMA_URL")
    # Where the RegistryTask CRs live; kubeconfig unset = in-cluster service account.
    namespace: str = Field(default="regtask-system", alias="REGTASK_NAMESPACE")
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
    max_result_bytes: int = Field(default=MAX_INLINE_RESULT_BYTES, gt=0)
    max_input_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
