"""Configuration shared by every process, read from the environment.

Variable names without prefix are the contract's switches (``UNIFIED_REGISTRY_ENABLED``,
``REGISTRY_DEBUG``); the rest are ours and documented in the README.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    # Off: the legacy registries only, exactly as before. On: the unified registry is written
    # as well (dual write) and reads fall back to the legacy keys on error.
    unified_registry_enabled: bool = Field(default=False, alias="UNIFIED_REGISTRY_ENABLED")
    registry_debug: bool = Field(default=False, alias="REGISTRY_DEBUG")

    # Firestore (the operator's mirror of task states, the presence sweep). Unset project =
    # Firestore off. FIRESTORE_EMULATOR_HOST is read by firebase-admin itself.
    firestore_project_id: str | None = Field(default=None, alias="FIRESTORE_PROJECT_ID")
    firestore_tasks_collection: str = Field(
        default="registry_tasks", alias="FIRESTORE_TASKS_COLLECTION"
    )
    firestore_presence_collection: str = Field(
        default="listeners_registry", alias="FIRESTORE_PRESENCE_COLLECTION"
    )
    firestore_queue_size: int = Field(default=10_000, ge=1, alias="FIRESTORE_QUEUE_SIZE")

    # How many finished task ids a user document keeps in ``services.tasks.task_history``.
    task_history_limit: int = Field(default=50, ge=1, alias="TASK_HISTORY_LIMIT")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
