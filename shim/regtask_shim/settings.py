"""Configuration of the RPC shim, read once from the environment at start-up.

The contract's switches (``UNIFIED_REGISTRY_ENABLED``, ``REGISTRY_DEBUG``) and ``REDIS_URL`` come
from :class:`regtask.settings.Settings`; everything else is the shim's own. Settings are frozen:
flipping a switch takes a restart, never a request.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from regtask.settings import Settings
from regtask.shards import MAX_SHARDS

# A service token shorter than this is a configuration mistake, not a secret.
MIN_SERVICE_TOKEN_LENGTH = 32
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class ShimSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    # Control namespace where the shim creates RegistryTasks (the operator watches it).
    namespace: str = Field(
        default="regtask-system", alias="REGTASK_NAMESPACE", pattern=DNS_LABEL_PATTERN
    )
    # Operator shards (regtask.shards): with several, a company's tasks go to the namespace
    # "{namespace}-shard-{i}" of its shard. Must equal the chart's operator.shards.
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS, alias="REGTASK_SHARDS")
    # One kubeconfig file (dev, tests); unset = the pod's in-cluster service account.
    kubeconfig: Path | None = Field(default=None, alias="KUBECONFIG")
    kube_timeout_s: float = Field(default=10.0, gt=0, alias="SHIM_KUBE_TIMEOUT_SECONDS")
    redis_timeout_s: float = Field(default=3.0, gt=0, alias="SHIM_REDIS_TIMEOUT_SECONDS")

    # Firebase ID tokens are accepted only when a project is configured.
    firebase_project_id: str | None = Field(default=None, alias="FIREBASE_PROJECT_ID")
    # Service-account JSON for firebase-admin; unset = Application Default Credentials.
    firebase_credentials_file: Path | None = Field(default=None, alias="FIREBASE_CREDENTIALS_FILE")
    # One Auth API call per request: off by default, tokens expire within the hour anyway.
    # On by default (issue 16, item 11): a revoked token, a disabled or deleted account is
    # refused at once. Cost: one Firebase Auth lookup per call (make bench-revocation).
    firebase_check_revoked: bool = Field(default=True, alias="FIREBASE_CHECK_REVOKED")
    firebase_clock_skew_s: int = Field(default=5, ge=0, le=60, alias="FIREBASE_CLOCK_SKEW_SECONDS")
    # FIREBASE_AUTH_EMULATOR_HOST makes firebase-admin accept unsigned tokens: refused unless
    # this is explicitly set (local runs against the Auth emulator only).
    allow_auth_emulator: bool = Field(default=False, alias="SHIM_ALLOW_AUTH_EMULATOR")

    # Shared secret of the microservice calling server-to-server (from a Secret). The file form
    # may hold several tokens, one per line, so a rotation can overlap old and new.
    service_token: SecretStr | None = Field(default=None, alias="SHIM_SERVICE_TOKEN")
    service_token_file: Path | None = Field(default=None, alias="SHIM_SERVICE_TOKEN_FILE")

    host: str = Field(default="0.0.0.0", alias="SHIM_HOST")
    port: int = Field(default=8080, ge=1, le=65535, alias="SHIM_PORT")
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, alias="SHIM_MAX_REQUEST_BYTES")
    # New tasks one user may start per minute (0 = unlimited); the operator's admission queue
    # handles concurrency, this only stops a runaway client from flooding the control plane.
    task_starts_per_minute: int = Field(default=120, ge=0, alias="SHIM_TASK_STARTS_PER_MINUTE")
    # The web console under /console (same credentials; see regtask_shim.console).
    console_enabled: bool = Field(default=True, alias="SHIM_CONSOLE_ENABLED")
    # Reading listeners_registry/{uid} (Firestore, when FIRESTORE_PROJECT_ID is set) to pick the
    # company of a call that names none: past this, that rung is skipped, the call goes on.
    presence_timeout_s: float = Field(
        default=2.0, gt=0, le=30, alias="SHIM_PRESENCE_TIMEOUT_SECONDS"
    )
    list_tasks_limit: int = Field(default=200, ge=1, le=1000, alias="SHIM_LIST_TASKS_LIMIT")

    def auth_project_id(self) -> str | None:
        """The Firebase project whose ID tokens are accepted (Firestore's when unset)."""
        return self.firebase_project_id or self.firestore_project_id

    def service_tokens(self) -> list[SecretStr]:
        """Every accepted service token; refuses short ones so a typo cannot weaken auth."""
        tokens: list[SecretStr] = []
        if self.service_token is not None and self.service_token.get_secret_value():
            tokens.append(self.service_token)
        if self.service_token_file is not None:
            for line in self.service_token_file.read_text().splitlines():
                if line.strip():
                    tokens.append(SecretStr(line.strip()))
        for token in tokens:
            if len(token.get_secret_value()) < MIN_SERVICE_TOKEN_LENGTH:
                raise ValueError(
                    f"service tokens must be at least {MIN_SERVICE_TOKEN_LENGTH} characters"
                )
        return tokens
