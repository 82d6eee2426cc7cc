"""A throwaway ChromaDB server (``chroma run`` from the chromadb package) on a loopback port.

The gateway writes embeddings through Chroma's HTTP API exactly as in production; tests read
them back with ``chromadb.HttpClient``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from regtask_dev.procs import LocalServer, free_port, start_process, stop_process, tail, wait_for


def _chroma_binary() -> str:
    """The ``chroma`` CLI installed beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "chroma"
    if beside.exists():
        return str(beside)
    found = shutil.which("chroma")
    if found is None:
        raise RuntimeError("the chroma CLI is missing (pip package chromadb)")
    return found


class ChromaServer(LocalServer):
    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        start_timeout_s: float = 60,
        host: str = "127.0.0.1",
    ) -> None:
        """``host``: the address to listen on (a cluster's ``host_address`` for pods)."""
        self.host = host
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="regtask-chroma-"))
        self.log_path = self.workdir / "chroma.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1) as resp:  # noqa: S310
                return "nanosecond heartbeat" in json.loads(resp.read())
        except (OSError, ValueError):
            return False

    def start(self) -> ChromaServer:
        argv = [
            _chroma_binary(),
            "run",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--path",
            str(self.workdir / "data"),
        ]
        self.proc = start_process(argv, self.log_path, env={"ANONYMIZED_TELEMETRY": "False"})
        proc = self.proc
        try:
            wait_for(
                lambda: proc.poll() is not None or self.healthy(),
                self.start_timeout_s,
                f"chroma on {self.port}",
                interval_s=0.2,
            )
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{tail(self.log_path)}") from exc
        if proc.poll() is not None:
            raise RuntimeError(f"chroma exited\n{tail(self.log_path)}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
