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
