"""Run a runner as the Job would (a subprocess, env from the contract) and watch its events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from regtask import keys
from regtask.crmodels import RegistryTaskSpec, TaskInput
from regtask.events import AnyEvent, TaskProgressEvent, parse_event
from regtask_dev.gateway_harness import GatewayHarness

DATA = Path(__file__).resolve().parents[1] / "data"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def file_input(name: str, content_type: str, input_name: str | None = None) -> TaskInput:
    import base64

    raw = (DATA / name).read_bytes()
    return TaskInput(
        name=input_name or name,
        content_type=content_type,
        value=base64.b64encode(raw).decode(),
        encoding="base64",
    )


@dataclass
class RunnerRun:
    returncode: int
    output: str
    events: list[AnyEvent] = field(default_factory=list)
    elapsed_s: float = 0.0

    def progress_steps(self) -> list[str]:
        return [e.payload.current_step for e in self.events if isinstance(e, TaskProgressEvent)]

    def of_type(self, kind: str) -> list[AnyEvent]:
        return [e for e in self.events if e.type == kind]


@contextlib.asynccontextmanager
async def watch_events(client: aioredis.Redis, user_id: str) -> AsyncIterator[list[AnyEvent]]:
    """Collect the user's events while the block runs (and briefly after)."""
    events: list[AnyEvent] = []
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.events_channel(user_id))

    async def pump() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                events.append(parse_event(message["data"]))

    task = asyncio.create_task(pump())
    try:
        yield events
    finally:
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()


async def run_runner(
    gateway: GatewayHarness,
    spec: RegistryTaskSpec,
    token: str,
    events: list[AnyEvent],
    *,
    timeout_s: float = 240,
    env: dict[str, str] | None = None,
    while_running: Callable[[asyncio.subprocess.Process], Awaitable[None]] | None = None,
) -> RunnerRun:
    """``python -m regtask_runners <type>`` with the Job's env; returns its exit and output."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *gateway.runner_argv(spec, sys.executable),
        env={**os.environ, **gateway.runner_env(spec, token), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        if while_running is not None:
            await while_running(proc)
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        raise
    await asyncio.sleep(0.3)  # the last events are in flight on pub/sub
    assert proc.returncode is not None
    return RunnerRun(
        proc.returncode, stdout.decode(errors="replace"), events, time.monotonic() - started
    )


async def wait_for_event(
    events: list[AnyEvent], predicate: Callable[[AnyEvent], bool], timeout_s: float
) -> AnyEvent:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in list(events):
            if predicate(event):
                return event
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no matching event in {timeout_s}s; got {[e.type for e in events]}")


def payload(event: AnyEvent) -> dict[str, Any]:
    return event.payload.model_dump()
