"""Where the gateway reads a task's spec: the RegistryTask CR, or memory in tests.

The spec is the only source of a runner's inputs and parameters; the runner never reads the
CR itself (its namespace has no API access), it asks the gateway, which reads the CR named
:func:`regtask.naming.task_resource_name` in the control namespace (with several operator
shards, in each shard's at once: a runner's token names its task, not its company).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from regtask.crmodels import API_GROUP, API_VERSION, TASK_PLURAL, RegistryTaskSpec
from regtask.kubeclient import async_api_client
from regtask.naming import task_resource_name
from regtask.shards import all_control_namespaces

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

    def __init__(self, api: client.ApiClient, namespaces: Sequence[str]) -> None:
        self.api = api
        self.namespaces = list(namespaces)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    async def connect(
        cls, namespace: str, kubeconfig: str | None = None, shards: int = 1
    ) -> KubeTaskSpecSource:
        """A kubeconfig file when one is given (dev, tests); else in-cluster."""
        return cls(await async_api_client(kubeconfig), all_control_namespaces(namespace, shards))

    async def get(self, task_id: str) -> RegistryTaskSpec:
        name = task_resource_name(task_id)
        answers = await asyncio.gather(
            *(
                self.custom.get_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, TASK_PLURAL, name
                )
                for namespace in self.namespaces
            ),
            return_exceptions=True,
        )
        obj: Any = None
        for answer in answers:
            if isinstance(answer, ApiException) and answer.status == 404:
                continue
            if isinstance(answer, BaseException):
                raise answer
            obj = answer
        if obj is None:
            raise TaskNotFound(task_id)
        spec = RegistryTaskSpec.model_validate(obj.get("spec") or {})
        if spec.task_id != task_id:
            # A derived-name collision is impossible by construction; refuse rather than guess.
            log.error("task_spec_mismatch", task_id=task_id, cr=name, spec_task_id=spec.task_id)
            raise TaskNotFound(task_id)
        return spec

    async def close(self) -> None:
        await self.api.close()
