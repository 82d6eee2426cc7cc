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
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from regtask_dev.procs import (
    LocalServer,
    free_port,
    port_open,
    start_process,
    stop_process,
    tail,
    wait_for,
)

EMULATOR_HOST_ENV = "FIRESTORE_EMULATOR_HOST"

_env_lock = threading.Lock()


@contextlib.contextmanager
def emulator_host_env(host: str) -> Iterator[None]:
    """Point ``FIRESTORE_EMULATOR_HOST`` at ``host`` while clients are built, then restore.

    google-cloud-firestore reads the variable only when a client is constructed, so this is
    how a second client (or FirestoreMirror) is aimed at another emulator in one process.
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


class FirestoreEmulator(LocalServer):
    def __init__(
        self,
        port: int | None = None,
        project_id: str = "regtask-test",
        *,
        workdir: Path | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.port = port or free_port()
        self.project_id = project_id
        self.start_timeout_s = start_timeout_s
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="regtask-firestore-"))
        self.log_path = self.workdir / "firestore-emulator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None  # how long the last start() waited for readiness

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _gcloud_env(self) -> dict[str, str]:
        return {
            "CLOUDSDK_CONFIG": str(self.workdir / "gcloud-config"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "CLOUDSDK_CORE_PROJECT": self.project_id,
        }

    def _request(self, method: str, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"firestore emulator exited with {self.proc.returncode}")
        try:
            status, _ = self._request("GET", "/", timeout_s=1.0)
        except OSError:
            return False
        return status == 200

    def start(self) -> FirestoreEmulator:
        if self.running:
            return self
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise RuntimeError("gcloud not found: install google-cloud-cli-firestore-emulator")
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        began = time.monotonic()
        self.proc = start_process(
            [
                gcloud,
                "emulators",
                "firestore",
                "start",
                f"--host-port={self.host}",
                f"--project={self.project_id}",
                "--quiet",
            ],
            self.log_path,
            env=self._gcloud_env(),
            cwd=self.workdir,
        )
        try:
            wait_for(
                self._ready,
                self.start_timeout_s,
                f"firestore emulator on {self.port}",
                interval_s=0.1,
            )
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{tail(self.log_path)}") from exc
        self.startup_s = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Terminate the gcloud + java process group; wait until the port is released."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        stop_process(self.proc, grace_s=10.0)
        self.proc = None
        # gcloud exits first and java is orphaned inside the same group: wait for all of it.
        try:
            wait_for(lambda: not _group_alive(pgid), 10, f"firestore emulator group {pgid} exit")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        wait_for(lambda: not port_open(self.port), 10, f"port {self.port} release")

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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
