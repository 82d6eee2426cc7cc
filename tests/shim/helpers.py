"""Small helpers shared by the shim tests."""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import redis.asyncio as aioredis
from kubernetes import client

from regtask import keys
from regtask.naming import task_resource_name

GROUP, VERSION, PLURAL = "regtask.io", "v1alpha1", "registrytasks"


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    """The JSON answer of a successful call (fails with the body otherwise)."""
    assert response.status_code == status, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert body["success"] is True, body
    return body


def refused(response: httpx.Response, status: int, *fragments: str) -> str:
    """Assert the error shape ``{"success": false, "error": ...}`` and return the message."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"success", "error"}, body
    assert body["success"] is False
    message: str = body["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def read_task_cr(api: client.ApiClient, namespace: str, task_id: str) -> dict[str, Any] | None:
    try:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, task_resource_name(task_id)
        )
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cast(dict[str, Any], obj)


def task_crs(api: client.ApiClient, namespace: str, task_id: str) -> list[dict[str, Any]]:
    """Every RegistryTask in the namespace whose spec carries ``task_id``."""
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )["items"]
    return [item for item in items if item["spec"]["taskId"] == task_id]


def set_cr_status(api: client.ApiClient, namespace: str, task_id: str, **status: Any) -> None:
    """What the operator does: write the status subresource."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, task_resource_name(task_id), {"status": status}
    )


async def raw_doc(redis: aioredis.Redis, key: str) -> dict[str, Any] | None:
    raw = await redis.hget(key, keys.DATA_FIELD)
    return None if raw is None else json.loads(raw)
