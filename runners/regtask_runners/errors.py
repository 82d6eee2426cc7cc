"""A runner's failures, by what another attempt would do: the exit code its Job reads.

The Job's podFailurePolicy fails the task at once on ``PERMANENT`` (65) and retries
``RETRYABLE`` (75) up to ``backoffLimit`` (:mod:`regtask.runner_contract`).
"""

from __future__ import annotations

from regtask.runner_contract import ExitCode


class RunnerError(Exception):
    exit_code: ExitCode = ExitCode.RETRYABLE


class PermanentError(RunnerError):
    """Another attempt would fail the same way: bad input, refused by the gateway."""

    exit_code = ExitCode.PERMANENT


class RetryableError(RunnerError):
    """Worth another attempt: gateway or provider unreachable, 5xx, quota window full."""

    exit_code = ExitCode.RETRYABLE


class LlmQuotaWait(RetryableError):
    """The company's LLM request window is full (429 with ``Retry-After``). Not a failure: the
    runner waits for the window (:func:`regtask_runners.framework.with_llm_quota`); only a
    caller that does not wait exits retryable."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after_s(value: str | None, default: float = 30.0) -> float:
    """A ``Retry-After`` header in seconds (HTTP dates are not sent by the gateway)."""
    try:
        return max(float(value), 0.0) if value else default
    except ValueError:
        return default
