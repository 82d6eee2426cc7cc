"""What the operator's Jobs give a runner, and what a runner's exit code tells the Job.

One definition used by the Job builder (operator), the runners and the node stand-in tests.
"""

from __future__ import annotations

from enum import IntEnum

ENV_TASK_ID = "REGTASK_TASK_ID"
ENV_TASK_TYPE = "REGTASK_TASK_TYPE"
ENV_GATEWAY_URL = "REGTASK_GATEWAY_URL"
# Path of the task's ServiceAccount token, projected by the kubelet (see regtask.tokens); the
# runner reads the file for each request (the kubelet may rotate it). Never in the CR or the env.
ENV_TASK_TOKEN_FILE = "REGTASK_TASK_TOKEN_FILE"  # noqa: S105 - a variable name
TOKEN_VOLUME = "task-token"  # noqa: S105 - a volume name
TOKEN_MOUNT_PATH = "/var/run/secrets/regtask"  # noqa: S105 - a path
TOKEN_FILE_NAME = "token"  # noqa: S105 - a file name

RUNNER_MODULE = "regtask_runners"
# The step a runner reports last when its work fails, its data {"error", "retryable",
# "failed_at_step"}: the task's step history keeps it, and the console shows its error.
FAILURE_STEP = "failed"


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
