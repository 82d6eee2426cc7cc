"""Task specs and clients shared by the gateway tests."""

from __future__ import annotations

from typing import Any

import httpx

from regtask.crmodels import RegistryTaskSpec, TaskInput
from regtask.tasktypes import TaskType


def make_spec(
    task_id: str,
    task_type: TaskType = TaskType.DOCUMENT_ANALYSIS,
    user_id: str = "user123",
    company_id: str = "acme",
    *,
    inputs: list[TaskInput] | None = None,
    parameters: dict[str, str] | None = None,
    conversation_id: str | None = None,
    **extra: Any,
) -> RegistryTaskSpec:
    return RegistryTaskSpec(
        task_id=task_id,
        task_type=task_type,
        user_id=user_id,
        company_id=company_id,
        inputs=inputs or [],
        parameters=parameters or {},
        conversation_id=conversation_id,
        **extra,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client(base_url: str, token: str | None = None, timeout: float = 60) -> httpx.AsyncClient:
    headers = bearer(token) if token else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
