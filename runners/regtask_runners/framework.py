"""What every runner shares: its environment, parameters, progress, stop and exit codes.

A runner is an ``async def run(ctx: TaskContext) -> dict`` registered in
:mod:`regtask_runners.catalog`; :func:`main` does the rest:

- reads the Job's environment (:mod:`regtask.runner_contract`); a missing variable is a
  permanent failure (exit 65: the Job is misbuilt, a retry would not help);
- fetches the task (inputs resolved, parameters) from the gateway
  (:class:`~regtask_runners.gateway_client.GatewayClient`), runs the work, stores its result
  through the gateway and reports ``completed`` (exit 0);
- on SIGTERM (cancel, deadline, node drain) or past the task's max duration, cancels the work,
  reports why (``cancelled``, ``deadline`` or ``terminated`` as the step, with the step it was
  in) within a few seconds and exits 143 (``ExitCode.TERMINATED``);
- maps failures to exit codes the Job's podFailurePolicy reads: bad input or a refusal by the
  gateway (4xx) -> 65 ``PERMANENT``; gateway unreachable, 5xx -> 75 ``RETRYABLE``;
- waits for the company's LLM window when the gateway answers 429 (:func:`with_llm_quota`):
  a full window never spends the Job's retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog

from regtask.gateway_api import RunnerTask
from regtask.logconfig import configure_logging
from regtask.runner_contract import (
    ENV_GATEWAY_URL,
    ENV_TASK_ID,
    ENV_TASK_TOKEN_FILE,
    ENV_TASK_TYPE,
    FAILURE_STEP,
    ExitCode,
)
from regtask_runners.errors import LlmQuotaWait, PermanentError, RetryableError, RunnerError
from regtask_runners.gateway_client import FIRST_CONTACT_GRACE_S, GatewayClient

log = structlog.get_logger(__name__)

# Runner-side progress pace; the gateway drops writes closer than its own interval (200 ms).
PROGRESS_MIN_INTERVAL_S = 0.25
# How long a stopping runner spends telling why before it exits: well inside the Job's grace
# period (30 s by default), even on a loaded node; each call gets a few seconds.
STOP_REPORT_BUDGET_S = 8.0
STOP_CALL_TIMEOUT_S = 3.0
# A runner waiting for its company's LLM window asks again at least this often (a refused call
# costs nothing: the quota counts only what it lets through), so a window that reopens early
# (a raised quota) is seen. Tests set it low.
ENV_LLM_QUOTA_POLL_S = "REGTASK_LLM_QUOTA_POLL_S"
DEFAULT_LLM_QUOTA_POLL_S = 30.0
# The progress step a waiting task shows (registry, events, CR status).
WAITING_LLM_QUOTA_STEP = "waiting_llm_quota"


# ------------------------------------------------------------------ environment


@dataclass(frozen=True)
class RunnerEnv:
    task_id: str
    task_type: str
    gateway_url: str
    token_file: Path

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> RunnerEnv:
        source = os.environ if environ is None else environ
        names = (ENV_TASK_ID, ENV_TASK_TYPE, ENV_GATEWAY_URL, ENV_TASK_TOKEN_FILE)
        missing = [name for name in names if not source.get(name)]
        if missing:
            raise PermanentError(f"missing environment: {', '.join(missing)}")
        return cls(
            task_id=source[ENV_TASK_ID],
            task_type=source[ENV_TASK_TYPE],
            gateway_url=source[ENV_GATEWAY_URL].rstrip("/"),
            token_file=Path(source[ENV_TASK_TOKEN_FILE]),
        )

    def read_token(self) -> str:
        """The pod's projected token, read on each use: the kubelet may have rotated it."""
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise PermanentError(f"cannot read the task token: {exc}") from exc
        if not token:
            raise PermanentError(f"the task token file {self.token_file} is empty")
        return token


# ------------------------------------------------------------------ parameters


def param_int(task: RunnerTask, name: str, default: int, low: int, high: int) -> int:
    raw = task.parameters.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PermanentError(f"parameter {name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise PermanentError(f"parameter {name}={value} is outside {low}..{high}")
    return value


def param_float(task: RunnerTask, name: str, default: float, low: float, high: float) -> float:
    raw = task.parameters.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PermanentError(f"parameter {name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise PermanentError(f"parameter {name}={value} is outside {low}..{high}")
    return value


def param_bool(task: RunnerTask, name: str, default: bool = False) -> bool:
    raw = task.parameters.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes", "on"):
        return True
    if raw.lower() in ("false", "0", "no", "off"):
        return False
    raise PermanentError(f"parameter {name}={raw!r} is not a boolean")


# ------------------------------------------------------------------ progress


class ProgressReporter:
    """Throttled progress: a new step or 100 % always goes out, the rest at most every 250 ms."""

    def __init__(
        self, gateway: GatewayClient, min_interval_s: float = PROGRESS_MIN_INTERVAL_S
    ) -> None:
        self.gateway = gateway
        self.min_interval_s = min_interval_s
        self.progress = 0
        self.step = "starting"
        self._sent_at = -1e9
        self._sent_step: str | None = None

    async def report(
        self, progress: int, step: str, data: dict[str, Any] | None = None, force: bool = False
    ) -> bool:
        progress = max(0, min(100, progress))
        self.progress, self.step = progress, step
        now = time.monotonic()
        due = now - self._sent_at >= self.min_interval_s
        if not (force or due or step != self._sent_step or progress == 100):
            return False
        self._sent_at, self._sent_step = now, step
        return await self.gateway.progress(progress, step, data)


# ------------------------------------------------------------------ the context a runner gets

StopHook = Callable[[str], Awaitable[None]]


@dataclass
class TaskContext:
    env: RunnerEnv
    gateway: GatewayClient
    task: RunnerTask
    progress: ProgressReporter
    started_at: float = field(default_factory=time.monotonic)
    # Called with the stop reason when the task is stopped (e.g. publish a final LLM event).
    stop_hooks: list[StopHook] = field(default_factory=list)
    log: Any = field(default_factory=lambda: log)

    def on_stop(self, hook: StopHook) -> None:
        self.stop_hooks.append(hook)


Runner = Callable[[TaskContext], Coroutine[Any, Any, dict[str, Any]]]
T = TypeVar("T")


async def with_llm_quota(ctx: TaskContext, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` (an LLM request through the gateway), waiting while the company's window is
    full instead of failing: the task shows the step ``waiting_llm_quota`` with when it resumes,
    and resumes where it was. Bounded by the task's own deadline only: a window that reopens
    after it fails the task with that reason, not a silent timeout."""
    poll_s = float(os.environ.get(ENV_LLM_QUOTA_POLL_S) or DEFAULT_LLM_QUOTA_POLL_S)
    resume_progress, resume_step = ctx.progress.progress, ctx.progress.step
    waited = False
    while True:
        try:
            result = await call()
        except LlmQuotaWait as wait:
            left = ctx.task.max_duration_seconds - (time.monotonic() - ctx.started_at)
            if wait.retry_after_s >= left:
                raise PermanentError(
                    f"the company's LLM quota is used up until its window reopens in "
                    f"{wait.retry_after_s:.0f} s, after this task's deadline ({left:.0f} s left)"
                ) from wait
            resume_at = datetime.now(UTC) + timedelta(seconds=wait.retry_after_s)
            if not waited:
                ctx.log.info("llm_quota_wait", retry_after_s=wait.retry_after_s)
            await ctx.progress.report(
                resume_progress,
                WAITING_LLM_QUOTA_STEP,
                {
                    "retry_after_s": round(wait.retry_after_s),
                    "resume_at": resume_at.isoformat(timespec="seconds"),
                },
                force=not waited,
            )
            waited = True
            await asyncio.sleep(min(wait.retry_after_s, poll_s))
            continue
        if waited:
            ctx.log.info("llm_quota_wait_over")
            await ctx.progress.report(resume_progress, resume_step, force=True)
        return result


# ------------------------------------------------------------------ running one task


async def _stop_reason(ctx: TaskContext, deadline_hit: bool) -> str:
    """``deadline`` (max duration), ``cancelled`` (spec.cancel) or ``terminated`` (else)."""
    if deadline_hit:
        return "deadline"
    elapsed = time.monotonic() - ctx.started_at
    if elapsed >= ctx.task.max_duration_seconds - 1:
        return "deadline"
    with contextlib.suppress(RunnerError, httpx.HTTPError):
        task = await ctx.gateway.get_task(timeout_s=STOP_CALL_TIMEOUT_S, attempts=1)
        if task.cancel:
            return "cancelled"
    return "terminated"


async def _report_stop(ctx: TaskContext, deadline_hit: bool) -> str:
    """The registry record first (what the web app polls), then the runner's own hooks."""
    reason = await _stop_reason(ctx, deadline_hit)
    log.warning("runner_stopping", task_id=ctx.env.task_id, reason=reason, step=ctx.progress.step)
    with contextlib.suppress(RunnerError, httpx.HTTPError):
        await ctx.gateway.progress(
            ctx.progress.progress,
            reason,
            {"reason": reason, "stopped_at_step": ctx.progress.step},
            timeout_s=STOP_CALL_TIMEOUT_S,
            attempts=1,
        )
    for hook in ctx.stop_hooks:
        with contextlib.suppress(Exception):
            await hook(reason)
    return reason


async def _report_failure(ctx: TaskContext, error: RunnerError) -> None:
    with contextlib.suppress(RunnerError, httpx.HTTPError):
        await ctx.gateway.progress(
            ctx.progress.progress,
            FAILURE_STEP,
            {
                "error": str(error)[:500],
                "retryable": error.exit_code is ExitCode.RETRYABLE,
                "failed_at_step": ctx.progress.step,
            },
            timeout_s=2.0,
            attempts=1,
        )


async def supervise(ctx: TaskContext, runner: Runner) -> ExitCode:
    """Run the work until it ends, a stop signal arrives, or the max duration passes."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    work = asyncio.create_task(runner(ctx), name="runner-work")
    stopped = asyncio.create_task(stop.wait(), name="stop-signal")
    remaining = max(ctx.task.max_duration_seconds - (time.monotonic() - ctx.started_at), 1)
    try:
        done, _ = await asyncio.wait(
            {work, stopped}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        if work not in done:
            work.cancel()
            async with asyncio.timeout(STOP_REPORT_BUDGET_S):
                await _report_stop(ctx, deadline_hit=stopped not in done)
            await asyncio.wait({work}, timeout=1.0)
            return ExitCode.TERMINATED
        try:
            result = work.result()
        except RunnerError as exc:
            log.error(
                "runner_failed",
                task_id=ctx.env.task_id,
                error=str(exc),
                exit_code=int(exc.exit_code),
            )
            await _report_failure(ctx, exc)
            return exc.exit_code
        except Exception as exc:
            # Unforeseen: logged with its traceback; another attempt may meet better luck.
            log.exception("runner_crashed", task_id=ctx.env.task_id)
            await _report_failure(ctx, RetryableError(f"{type(exc).__name__}: {exc}"))
            return ExitCode.RETRYABLE
        await ctx.gateway.store_result(result)
        await ctx.progress.report(100, "completed", force=True)
        log.info("runner_completed", task_id=ctx.env.task_id)
        return ExitCode.SUCCESS
    except TimeoutError:
        log.warning("runner_stop_report_timeout", task_id=ctx.env.task_id)
        return ExitCode.TERMINATED
    finally:
        stopped.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def run_task(task_type: str, environ: dict[str, str] | None = None) -> ExitCode:
    from regtask_runners.catalog import lookup

    env = RunnerEnv.from_environ(environ)
    if env.task_type != task_type:
        raise PermanentError(f"runner for {task_type} started for a {env.task_type} task")
    runner = lookup(task_type)
    structlog.contextvars.bind_contextvars(task_id=env.task_id, task_type=task_type)
    gateway = GatewayClient(env.gateway_url, env.read_token)
    try:
        task = await gateway.get_task(connect_grace_s=FIRST_CONTACT_GRACE_S)
        ctx = TaskContext(env=env, gateway=gateway, task=task, progress=ProgressReporter(gateway))
        log.info("runner_started", inputs=[i.name for i in task.inputs])
        return await supervise(ctx, runner)
    finally:
        await gateway.aclose()


def main(argv: list[str] | None = None) -> int:
    """``python -m regtask_runners <task_type>``; the exit code is the contract's."""
    configure_logging(os.environ.get("REGISTRY_DEBUG", "").lower() == "true")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        log.error("runner_usage", usage="python -m regtask_runners <task_type>", args=args)
        return int(ExitCode.PERMANENT)
    try:
        return int(asyncio.run(run_task(args[0])))
    except RunnerError as exc:
        log.error("runner_failed", error=str(exc), exit_code=int(exc.exit_code))
        return int(exc.exit_code)
    except Exception:
        # An unforeseen failure: logged with its traceback; a retry may meet better luck.
        log.exception("runner_crashed")
        return int(ExitCode.RETRYABLE)
