"""Serve an ASGI app with uvicorn in a background thread on a loopback port (tests, bench).

An in-process server lets a test hold the app's objects (a spec source, a fake's request log)
while separate processes (runners) reach it over real HTTP.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import uvicorn

from regtask_dev.procs import free_port, port_open, wait_for


class ThreadedUvicorn:
    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                log_config=None,
                lifespan="on",
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedUvicorn:
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self._thread.start()
        thread = self._thread
        wait_for(
            lambda: not thread.is_alive() or (self.server.started and port_open(self.port)),
            20,
            f"uvicorn on {self.port}",
        )
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn on {self.port} exited during start-up")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ThreadedUvicorn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
