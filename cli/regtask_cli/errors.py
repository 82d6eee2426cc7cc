"""The CLI's failures and exit codes: one line for a person, one number for a script."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in ``regtask --help``; scripts branch on these, so they never change."""

    OK = 0
    # ``watch`` (and ``submit --watch``): the task ended failed or cancelled.
    TASK_FAILED = 1
    # Bad flags or arguments (click's own code for usage errors).
    USAGE = 2
    # The shim, Redis or the Kubernetes API could not be reached (or answered 503).
    UNREACHABLE = 3
    # Credentials refused (401) or not authorized (403).
    DENIED = 4
    # Unknown task, conversation or user (404).
    NOT_FOUND = 5
    # Any other refusal: bad arguments (400), conflict (409), quota (429), server error.
    REFUSED = 6
    # ``watch --timeout`` elapsed before the task ended.
    TIMEOUT = 7


class CliError(Exception):
    """A failure the user can act on: printed as ``error: <message>``, exits with ``code``."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
