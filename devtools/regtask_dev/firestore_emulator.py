"""A throwaway Firestore emulator (``gcloud emulators firestore start``) on loopback.

gcloud runs a Python wrapper that spawns java; both live in the process group started here,
so ``stop()`` takes the whole group down and waits until the port is free again, which lets
tests restart an emulator on the same port to simulate "Firestore down, then back".
gcloud gets a private config dir and every prompt/update check/usage report switched off:
the machine has loopback only.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from regtask_dev.procs import EmulatorServer

EMULATOR_HOST_ENV = "FIRESTORE_EMULATOR_HOST"

_env_lock = threading.Lock()


@contextlib.contextmanager
def emulator_host_env(host: str) -> Iterator[None]:
    """Point ``FIRESTORE_EMULATOR_HOST`` at ``host`` while clients are built, then restore.

    google-cloud-firestore reads the variable only when a client is constructed, so this is
    how a second client (or FirestoreWriter) is aimed at another emulator in one process.
    """
    with _env_lock:
        previous = os.environ.get(EMULATOR_HOST_ENV)
        os.environ[EMULATOR_HOST_ENV] = host
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(EMULATOR_HOST_ENV, None)
            else:
                os.environ[EMULATOR_HOST_ENV] = previous


class FirestoreEmulator(EmulatorServer):
    name = "firestore emulator"
    dir_prefix = "regtask-firestore-"
    log_name = "firestore-emulator.log"

    def __init__(
        self,
        port: int | None = None,
        project_id: str = "regtask-test",
        *,
        workdir: Path | None = None,
        start_timeout_s: float = 60.0,
        bind: str = "127.0.0.1",
    ) -> None:
        """``bind``: the address to listen on (a cluster's ``host_address`` for pods)."""
        super().__init__(
            port, project_id, workdir=workdir, start_timeout_s=start_timeout_s, bind=bind
        )

    def _command(self) -> list[str]:
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise RuntimeError("gcloud not found: install google-cloud-cli-firestore-emulator")
        return [
            gcloud,
            "emulators",
            "firestore",
            "start",
            f"--host-port={self.host}",
            f"--project={self.project_id}",
            "--quiet",
        ]

    def _env(self) -> dict[str, str]:
        return {
            "CLOUDSDK_CONFIG": str(self.workdir / "gcloud-config"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "CLOUDSDK_CORE_PROJECT": self.project_id,
        }

    def _request(self, method: str, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.bind, self.port, timeout=timeout_s)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _answers(self) -> bool:
        try:
            status, _ = self._request("GET", "/", timeout_s=1.0)
        except OSError:
            return False
        return status == 200

    def clear(self) -> None:
        """Delete every document of the project (between tests)."""
        path = f"/emulator/v1/projects/{self.project_id}/databases/(default)/documents"
        status, body = self._request("DELETE", path, timeout_s=10.0)
        if status != 200:
            raise RuntimeError(f"emulator clear failed: HTTP {status} {body[:200]!r}")

    def client(self) -> Any:
        """A google-cloud-firestore client on this emulator, for assertions in tests."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import firestore

        with emulator_host_env(self.host):
            return firestore.Client(
                project=self.project_id,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
