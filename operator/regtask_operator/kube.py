"""The operator's Kubernetes calls, over one shared ``kubernetes_asyncio`` session.

Idempotent by construction: server-side apply for objects the operator owns the shape of
(tenant namespace and its policies: applying again repairs drift), ``create`` tolerating
"already exists" for Jobs and Secrets (derived names make a second create harmless), ``delete``
tolerating "not found".
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from regtask.crmodels import API_GROUP, API_VERSION
from regtask.kubeclient import async_api_client

FIELD_MANAGER = "regtask-operator"
TASK_PLURAL = "registrytasks"
QUOTA_PLURAL = "companyquotas"

_PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "NetworkPolicy": "networkpolicies",
    "ResourceQuota": "resourcequotas",
    "LimitRange": "limitranges",
    "Secret": "secrets",
    "Job": "jobs",
    "Event": "events",
}


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = _PLURALS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


def task_path(namespace: str, name: str | None = None, status: bool = False) -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{TASK_PLURAL}"
    if name:
        path += f"/{name}"
    return path + "/status" if status else path


def quota_path(namespace: str, name: str, status: bool = False) -> str:
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{QUOTA_PLURAL}/{name}"
    return path + "/status" if status else path


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.writes = 0  # counted for the admission benchmark (API writes per task)

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> Kube:
        return cls(await async_api_client(kubeconfig))

    async def close(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if method != "GET":
            self.writes += 1
        result = await self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            response_types_map={200: "object", 201: "object", 202: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        return result if isinstance(result, dict) else {}

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = object_path(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        return await self.request(
            "PATCH",
            path,
            manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create; False when it already existed (the derived name makes that the same object)."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            await self.request("POST", path, manifest, query=[("fieldManager", FIELD_MANAGER)])
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        try:
            await self.request(
                "DELETE",
                object_path(api_version, kind, namespace, name),
                {"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def post_event(
        self, involved: dict[str, str], kind: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event on ``involved`` (apiVersion, kind, name, namespace, uid)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{secrets.token_hex(8)}",
                "namespace": involved["namespace"],
            },
            "involvedObject": involved,
            "type": kind,
            "reason": reason[:128],
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request("POST", object_path("v1", "Event", involved["namespace"]), body)

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self.request(
                "GET", path, query=[*query, ("limit", "500"), ("continue", token)]
            )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def patch_merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch; None when the object is gone."""
        try:
            return await self.request(
                "PATCH", path, patch, content_type="application/merge-patch+json"
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
