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


def pod(name: str, created: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"nodeName": "node-1"},
        "status": status,
    }


def test_job_summary_shows_counts_state_and_the_newest_pods_with_their_exit_codes() -> None:
    job = {
        "metadata": {"name": "rt-job-t1", "namespace": "rt-u-c-1", "uid": "abc"},
        "status": {
            "failed": 1,
            "active": 1,
            "ready": 1,
            "startTime": "2026-11-28T10:00:00Z",
        },
    }
    runner_ended = {
        "name": jobs.CONTAINER_NAME,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": ExitCode.RETRYABLE, "reason": "Error"}},
    }
    runner_restarted = {
        "name": jobs.CONTAINER_NAME,
        "restartCount": 2,
        "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    }
    pods = [
        pod(f"old-{i}", f"2026-11-28T09:0{i}:00Z", phase="Failed", containerStatuses=[])
        for i in range(5)
    ]
    pods += [
        pod("first", "2026-11-28T10:00:01Z", phase="Failed", containerStatuses=[runner_ended]),
        pod(
            "second", "2026-11-28T10:01:00Z", phase="Running", containerStatuses=[runner_restarted]
        ),
    ]
    summary = jobs.job_summary(job, pods)
    assert jobs.pods_selector(job) == "batch.kubernetes.io/controller-uid=abc"
    assert (summary["name"], summary["namespace"], summary["state"]) == (
        "rt-job-t1",
        "rt-u-c-1",
        "Running",
    )
    assert (summary["active"], summary["ready"], summary["failed"]) == (1, 1, 1)
    names = [p["name"] for p in summary["pods"]]
    assert names == ["second", "first", "old-4", "old-3", "old-2"]  # newest first, at most 5
    assert summary["pods"][0] == {
        "name": "second",
        "phase": "Running",
        "node": "node-1",
        "restarts": 2,
        "exitCode": 137,
        "reason": "OOMKilled",
    }
    assert summary["pods"][1]["exitCode"] == ExitCode.RETRYABLE
    assert "exitCode" not in summary["pods"][2]
    done = {
        **job,
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }
    assert jobs.job_summary(done, [])["state"] == "Complete"
    assert jobs.pods_selector({"metadata": {}}) is None
