"""What the operator's Jobs give a runner, and what a runner's exit code tells the Job.

One definition used by the Job builder (operator), the runners and the node stand-in tests.
"""

from __future__ import annotations

from enum import IntEnum

ENV_TASK_ID = "REGTASK_TASK_ID"
ENV_TASK_TYPE = "REGTASK_TASK_TYPE"
ENV_GATEWAY_URL = "REGTASK_GATEWAY_URL"
# Read from the per-task Secret (see regtask.tokens); never written into the CR.
ENV_TASK_TOKEN = "REGTASK_TASK_TOKEN"  # noqa: S105 - a variable name
TOKEN_SECRET_KEY = "token"  # noqa: S105 - a key name

RUNNER_MODULE = "regtask_runners"


class ExitCode(IntEnum):
    """Exit codes the Job's podFailurePolicy understands."""

    SUCCESS = 0
    # Worth another attempt (network hiccup, gateway 5xx): counted against backoffLimit.
    RETRYABLE = 75
    # Another attempt would fail the same way (bad input, unknown task type): FailJob at once.
    PERMANENT = 65
    # Stopped by SIGTERM (cancel or deadline) after recording why: FailJob, no retry.
    TERMINATED = 143


def runner_command(task_type: str) -> list[str]:
    return ["python", "-m", RUNNER_MODULE, task_type]
