"""The RPC shim as a child process (``python -m regtask_shim``), for tests and local runs.

It is the production entry point with the production collaborators (Redis, the Kubernetes API
through a kubeconfig, service tokens), bound to loopback on a free port. Firebase is switched
off whatever the caller's environment says, so only the service token is accepted.
"""

from __future__ import annotations

from pathlib import Path

from regtask_dev.stack import ServiceProcess


class ShimProcess(ServiceProcess):
    """``python -m regtask_shim`` on 127.0.0.1; ``/healthz`` (Redis and Kubernetes) is its
    readiness, so ``start()`` returns once both answer."""

    def __init__(
        self,
        *,
        redis_url: str,
        kubeconfig: Path,
        namespace: str,
        service_token: str,
        workdir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__("shim", ["regtask_shim"], {}, workdir)
        self.service_token = service_token
        self.env = {
            "REDIS_URL": redis_url,
            "REGTASK_NAMESPACE": namespace,
            "KUBECONFIG": str(kubeconfig),
            "SHIM_SERVICE_TOKEN": service_token,
            "SHIM_HOST": "127.0.0.1",
            "SHIM_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            "FIREBASE_PROJECT_ID": "",
            "FIRESTORE_PROJECT_ID": "",
            "FIREBASE_AUTH_EMULATOR_HOST": "",
            **(env or {}),
        }
