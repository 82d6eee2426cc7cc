"""Helpers to run local servers for tests and the demo: free ports, readiness, clean stops."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def start_process(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start in its own session so a stop can take the whole process group down."""
    log_file = log_path.open("ab")
    try:
        return subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        log_file.close()


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LocalServer(ABC):
    """A server process owned by a test or the demo: ``with Server() as s`` starts and cleans.

    Subclasses set ``workdir`` and ``_own_dir`` (a temp dir they made, removed by ``close``).
    """

    workdir: Path
    _own_dir: bool

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EmulatorServer(LocalServer):
    """An emulator of a Google service on loopback, in its own session (see ``start_process``).

    ``start()`` refuses ports already taken, runs ``_command()`` with ``_env()`` in ``workdir``,
    waits until ``_answers()`` (the process dying ends the wait) and records ``startup_s``; a
    failed start stops the process and puts the log's tail in the error. ``stop()`` takes the
    whole process group down, children a wrapper leaves behind too, and waits until every port
    of ``ports`` is free again (tests restart an emulator on the same port).

    Subclasses set ``name`` (in messages), ``dir_prefix`` (their temp work dir) and ``log_name``.
    """

    name: ClassVar[str]
    dir_prefix: ClassVar[str]
    log_name: ClassVar[str]
    ready_interval_s: ClassVar[float] = 0.1

    def __init__(
        self,
        port: int | None,
        project_id: str,
        *,
        workdir: Path | None,
        start_timeout_s: float,
        bind: str = "127.0.0.1",
    ) -> None:
        self.bind = bind
        self.port = port or free_port()
        self.project_id = project_id
        self.start_timeout_s = start_timeout_s
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=self.dir_prefix))
        self.log_path = self.workdir / self.log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None  # how long the last start() waited for readiness

    @property
    def host(self) -> str:
        """``<bind address>:<port>``, the value for the client libraries' ``*_EMULATOR_HOST``."""
        return f"{self.bind}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the emulator listens on."""
        return (self.port,)

    @abstractmethod
    def _command(self) -> list[str]:
        """The argv to run (may write config files into ``workdir`` first)."""

    def _env(self) -> dict[str, str]:
        """Variables added to this process's environment for the emulator."""
        return {}

    @abstractmethod
    def _answers(self) -> bool:
        """Whether the emulator answers as ready (False on connection errors)."""

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
        return self._answers()

    def start(self) -> Self:
        if self.running:
            return self
        argv = self._command()
        for port in self.ports:
            if port_open(port, self.bind):
                raise RuntimeError(f"port {port} is already in use")
        began = time.monotonic()
        self.proc = start_process(argv, self.log_path, env=self._env(), cwd=self.workdir)
        try:
            wait_for(
                self._ready,
                self.start_timeout_s,
                f"{self.name} on {self.port}",
                interval_s=self.ready_interval_s,
            )
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{tail(self.log_path)}") from exc
        self.startup_s = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Terminate the process group; wait until the group is gone and the ports released."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        stop_process(self.proc, grace_s=10.0)
        self.proc = None
        # A wrapper (gcloud, the firebase CLI) may exit before the children it orphans inside
        # the same group (java, ...): wait for all of it.
        try:
            wait_for(lambda: not _group_alive(pgid), 10, f"{self.name} group {pgid} exit")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for port in self.ports:
            wait_for(functools.partial(_port_free, port, self.bind), 10, f"port {port} release")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    return not port_open(port, host)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
