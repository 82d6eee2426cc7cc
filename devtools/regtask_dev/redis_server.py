"""A throwaway Debian ``redis-server`` on a free loopback port (tests, demo)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from regtask_dev.procs import (
    LocalServer,
    free_port,
    port_open,
    start_process,
    stop_process,
    tail,
    wait_for,
)


class RedisServer(LocalServer):
    def __init__(
        self, port: int | None = None, workdir: Path | None = None, host: str = "127.0.0.1"
    ) -> None:
        """``host``: the address to bind (a cluster's ``host_address`` for pods to reach). Off
        loopback the server requires a password (in ``url``): Redis' protected mode refuses
        other clients without one, and only the platform's pods should get in."""
        self.host = host
        self.password = None if host.startswith("127.") else secrets.token_urlsafe(24)
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="regtask-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: run `bash .ci/run` or apt-get install redis-server"
            )
        log = self.workdir / "redis.log"
        self.proc = start_process(
            [
                binary,
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
                *(["--requirepass", self.password] if self.password else []),
            ],
            log,
        )
        try:
            wait_for(lambda: port_open(self.port, self.host), 10, f"redis-server on {self.port}")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{tail(log)}") from exc
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
