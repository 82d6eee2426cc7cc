"""Where the gateway reads a task's spec: the RegistryTask CR, or memory in tests.

The spec is the only source of a runner's inputs and parameters; the runner never reads the
CR itself (its namespace has no API access), it asks the gateway, which reads the CR named
:func:`regtask.naming.task_resource_name` in the control namespace.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from regtask.crmodels import API_GROUP, API_VERSION, TASK_PLURAL, RegistryTaskSpec
from regtask.kubeclient import async_api_client
from regtask.naming import task_resource_name

log = structlog.get_logger(__name__)


class TaskNotFound(LookupError):
    """No RegistryTask carries this task id (deleted, or never created)."""


class TaskSpecSource(Protocol):
    async def get(self, task_id: str) -> RegistryTaskSpec: ...

    async def close(self) -> None: ...


class InMemoryTaskSpecSource:
    """Specs held in a dict: tests and local runs without a cluster."""

    def __init__(self, specs: dict[str, RegistryTaskSpec] | None = None) -> None:
        self.specs: dict[str, RegistryTaskSpec] = dict(specs or {})

    def put(self, spec: RegistryTaskSpec) -> None:
        self.specs[spec.task_id] = spec

    async def get(self, task_id: str) -> RegistryTaskSpec:
        try:
            return self.specs[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    async def close(self) -> None:
        return None


class KubeTaskSpecSource:
    """Reads ``spec`` of the task's RegistryTask with ``kubernetes_asyncio``."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    async def connect(cls, namespace: str, kubeconfig: str | None = None) -> KubeTaskSpecSource:
        """A kubeconfig file when one is given (dev, tests); else in-cluster."""
        return cls(await async_api_client(kubeconfig), namespace)

    async def get(self, task_id: str) -> RegistryTaskSpec:
        name = task_resource_name(task_id)
        try:
            obj: Any = await self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, TASK_PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise TaskNotFound(task_id) from exc
            raise
        spec = RegistryTaskSpec.model_validate(obj.get("spec") or {})
        if spec.task_id != task_id:
            # A derived-name collision is impossible by construction; refuse rather than guess.
            log.error("task_spec_mismatch", task_id=task_id, cr=name, spec_task_id=spec.task_id)
            raise TaskNotFound(task_id)
        return spec

    async def close(self) -> None:
        await self.api.close()
