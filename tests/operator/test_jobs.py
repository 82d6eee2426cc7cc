"""The Job a task runs as: how its podFailurePolicy reads a failed pod.

``policy_action`` evaluates the rules as the Job controller documents it (Kubernetes 1.37,
"Pod failure policy"): in order, the first rule that matches decides; no match counts the
failure against ``backoffLimit``. The real controller is exercised on the test cluster
(tests/operator/test_operator_real_cluster.py evicts a running runner).
"""

from __future__ import annotations

from typing import Any

import pytest

from regtask.crmodels import RegistryTaskSpec
from regtask.runner_contract import ExitCode
from regtask_operator import jobs
from regtask_operator.config import OperatorSettings

pytestmark = pytest.mark.unit

SPEC = RegistryTaskSpec.model_validate(
    {"taskId": "t1", "taskType": "document_analysis", "userId": "u", "companyId": "c"}
)


def policy_action(rules: list[dict[str, Any]], exit_code: int, conditions: list[str]) -> str:
    for rule in rules:
        on_codes = rule.get("onExitCodes")
        if on_codes is not None:
            inside = exit_code in on_codes["values"]
            if inside == (on_codes["operator"] == "In"):
                return str(rule["action"])
        on_conditions = rule.get("onPodConditions")
        if on_conditions is not None and any(
            c["type"] in conditions and c.get("status", "True") == "True" for c in on_conditions
        ):
            return str(rule["action"])
    return "Count"


@pytest.mark.parametrize(
    ("exit_code", "conditions", "action"),
    [
        (143, ["DisruptionTarget"], "Ignore"),  # drained or evicted: SIGTERM, a new pod
        (137, ["DisruptionTarget"], "Ignore"),  # killed after the grace period
        (143, [], "FailJob"),  # cancel or deadline: the runner's own SIGTERM exit
        (ExitCode.PERMANENT.value, [], "FailJob"),  # bad input: no retry
        (ExitCode.RETRYABLE.value, [], "Count"),  # counted against backoffLimit
        (1, [], "Count"),
    ],
)
def test_an_evicted_runner_is_retried_and_a_permanent_failure_is_not(
    exit_code: int, conditions: list[str], action: str
) -> None:
    job = jobs.build_job(SPEC, "task-t1", "regtask-system", "uid-1", OperatorSettings())
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert policy_action(rules, exit_code, conditions) == action
