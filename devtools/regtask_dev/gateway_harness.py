"""The runner gateway served by uvicorn on a loopback port, with task specs held in memory.

For tests, the benchmark and local runs without a cluster: the harness plays the operator's
and the kubelet's part for the gateway (it registers the task document, holds the spec a
RegistryTask would carry, and hands out a token standing for one pod of the task's Job, checked
by a :class:`~regtask_gateway.runnerauth.StaticAuthenticator` instead of a TokenReview), so a runner
started as a subprocess talks to a real HTTP gateway backed by real Redis, LLM and Chroma
servers. The TokenReview path itself is tested against the real API server.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import string
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from regtask.crmodels import RegistryTaskSpec
from regtask.documents import TaskDoc, TaskInfo, TaskIsolation
from regtask.naming import RUNNER_SERVICE_ACCOUNT, job_name, tenant_namespace
from regtask.registry import Registry
from regtask.runner_contract import (
    ENV_GATEWAY_URL,
    ENV_TASK_ID,
    ENV_TASK_TOKEN_FILE,
    ENV_TASK_TYPE,
    runner_command,
)
from regtask.settings import Settings
from regtask.tokens import PodIdentity
from regtask_dev.asgi_thread import ThreadedUvicorn
from regtask_dev.procs import free_port
from regtask_gateway.app import create_gateway_app, create_metrics_app
from regtask_gateway.runnerauth import StaticAuthenticator
from regtask_gateway.settings import GatewaySettings
from regtask_gateway.taskspec import InMemoryTaskSpecSource


class GatewayHarness:
    """``with GatewayHarness(redis_url=..., llm_base_url=...) as gw: token = gw.add_task(spec)``."""

    def __init__(
        self, port: int | None = None, *, review_tokens: bool = False, **settings: Any
    ) -> None:
        """``review_tokens``: the production TokenReview path (needs ``kubeconfig=``) instead of
        the harness's own tokens."""
        self.port = port or free_port()
        self.settings = GatewaySettings.model_validate(settings)
        self.specs = InMemoryTaskSpecSource()
        self.authenticator = StaticAuthenticator()
        self.app = create_gateway_app(
            self.settings,
            spec_source=self.specs,
            authenticator=None if review_tokens else self.authenticator,
        )
        self._server = ThreadedUvicorn(self.app, self.port)
        # /metrics on a port of its own, as ``python -m regtask_gateway`` serves it.
        self._metrics = ThreadedUvicorn(create_metrics_app(self.app))
        self._token_dir = Path(tempfile.mkdtemp(prefix="regtask-gw-tokens-"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self._metrics.url}/metrics"

    def start(self) -> GatewayHarness:
        self._server.start()
        self._metrics.start()
        return self

    def stop(self) -> None:
        self._metrics.stop()
        self._server.stop()
        shutil.rmtree(self._token_dir, ignore_errors=True)

    def __enter__(self) -> GatewayHarness:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ the operator's part

    def token(self, spec: RegistryTaskSpec, **identity: str) -> str:
        """A token standing for a pod of the task's Job (``identity`` overrides, e.g. another
        ``namespace``, to stand for a pod somewhere else)."""
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        fields = {
            "task_id": spec.task_id,
            "namespace": tenant_namespace(spec.user_id, spec.company_id),
            "service_account": RUNNER_SERVICE_ACCOUNT,
            "pod_name": f"{job_name(spec.task_id)}-{suffix}",
            **identity,
        }
        token = secrets.token_urlsafe(32)
        self.authenticator.add(token, PodIdentity.model_validate(fields))
        return token

    async def register(self, spec: RegistryTaskSpec) -> None:
        """Write the task document the operator would have written at creation."""
        doc = TaskDoc(
            task_info=TaskInfo(
                task_id=spec.task_id,
                task_type=spec.task_type.value,
                user_id=spec.user_id,
                company_id=spec.company_id,
            ),
            isolation=TaskIsolation(
                namespace=tenant_namespace(spec.user_id, spec.company_id),
                priority=spec.priority.value,
                max_duration=spec.effective_max_duration_s,
            ),
        )
        client = aioredis.Redis.from_url(self.settings.redis_url)
        try:
            settings = Settings.model_validate(
                {
                    "REDIS_URL": self.settings.redis_url,
                    "UNIFIED_REGISTRY_ENABLED": self.settings.unified_registry_enabled,
                }
            )
            await Registry(client, settings).register_task(doc)
        finally:
            await client.aclose()

    async def add_task(self, spec: RegistryTaskSpec) -> str:
        """Register the task, hold its spec, return its runner token."""
        await self.register(spec)
        self.specs.put(spec)
        return self.token(spec)

    def add_task_sync(self, spec: RegistryTaskSpec) -> str:
        return asyncio.run(self.add_task(spec))

    def runner_env(self, spec: RegistryTaskSpec, token: str) -> dict[str, str]:
        """The variables the operator's Job gives a runner (regtask.runner_contract); the token
        goes in a file, as the kubelet projects it."""
        token_file = self._token_dir / f"{secrets.token_hex(8)}.token"
        token_file.write_text(token)
        return {
            ENV_TASK_ID: spec.task_id,
            ENV_TASK_TYPE: spec.task_type.value,
            ENV_GATEWAY_URL: self.url,
            ENV_TASK_TOKEN_FILE: str(token_file),
        }

    @staticmethod
    def runner_argv(spec: RegistryTaskSpec, python: str | Path) -> list[str]:
        """The Job's command, with this interpreter instead of the image's ``python``."""
        command = runner_command(spec.task_type.value)
        return [str(python), *command[1:]]
