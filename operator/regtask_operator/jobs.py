"""The Job that runs one task, and how its status reads as a task phase. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from regtask import naming, runner_contract, tokens
from regtask.crmodels import MAX_POD_SUMMARIES, JobSummary, Phase, PodSummary, RegistryTaskSpec
from regtask.runner_contract import ExitCode
from regtask_operator.config import OperatorSettings
from regtask_operator.isolation import RUNNER_SERVICE_ACCOUNT

CONTAINER_NAME = "runner"
RUNNER_UID = 10001


def job_labels(spec: RegistryTaskSpec, task_name: str) -> dict[str, str]:
    return {
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        naming.LABEL_TASK: task_name,
        naming.LABEL_TASK_TYPE: spec.task_type.value,
        naming.LABEL_TENANT: naming.tenant_label(spec.user_id, spec.company_id),
    }


def job_annotations(spec: RegistryTaskSpec, task_namespace: str, task_uid: str) -> dict[str, str]:
    """Raw ids and the way back to the task (cross-namespace owner references do not exist);
    the task's UID tells this task's Job from one an earlier task of the same taskId left."""
    return {
        naming.ANNOTATION_TASK_UID: task_uid,
        naming.ANNOTATION_TASK: spec.task_id,
        naming.ANNOTATION_TASK_NAMESPACE: task_namespace,
        naming.ANNOTATION_USER: spec.user_id,
        naming.ANNOTATION_COMPANY: spec.company_id,
    }


def belongs_to(job: dict[str, Any], task_uid: str) -> bool:
    """Whether the Job was created for the task with this UID (its annotation says so)."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return bool(task_uid) and annotations.get(naming.ANNOTATION_TASK_UID) == task_uid


def build_job(
    spec: RegistryTaskSpec,
    task_name: str,
    task_namespace: str,
    task_uid: str,
    settings: OperatorSettings,
) -> dict[str, Any]:
    labels = {**job_labels(spec, task_name), **settings.shard_labels}
    container_security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUNNER_UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    env = [
        {"name": runner_contract.ENV_TASK_ID, "value": spec.task_id},
        {"name": runner_contract.ENV_TASK_TYPE, "value": spec.task_type.value},
        {"name": runner_contract.ENV_GATEWAY_URL, "value": settings.gateway_url},
        {
            "name": runner_contract.ENV_TASK_TOKEN_FILE,
            "value": f"{runner_contract.TOKEN_MOUNT_PATH}/{runner_contract.TOKEN_FILE_NAME}",
        },
    ]
    # The runner's credential: a ServiceAccount token the kubelet mints for this pod, bound to
    # it and scoped to this task (regtask.tokens). No Secret, nothing for the operator to write.
    token_volume = {
        "name": runner_contract.TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": tokens.audience(spec.task_id),
                        "expirationSeconds": tokens.token_lifetime(spec.effective_max_duration_s),
                        "path": runner_contract.TOKEN_FILE_NAME,
                    }
                }
            ]
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": naming.job_name(spec.task_id),
            "namespace": naming.tenant_namespace(spec.user_id, spec.company_id),
            "labels": labels,
            "annotations": job_annotations(spec, task_namespace, task_uid),
        },
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "activeDeadlineSeconds": spec.effective_max_duration_s,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            # Rules are evaluated in order, first match wins. A pod drained or evicted gets
            # SIGTERM and exits 143 with the DisruptionTarget condition: Ignore (a new pod,
            # not counted against backoffLimit) must come before FailJob on 143, or every
            # eviction would fail the task.
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER_NAME,
                            "operator": "In",
                            "values": [ExitCode.PERMANENT.value, ExitCode.TERMINATED.value],
                        },
                    },
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": RUNNER_SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": settings.termination_grace_period_s,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUNNER_UID,
                        "runAsGroup": RUNNER_UID,
                        "fsGroup": RUNNER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": CONTAINER_NAME,
                            "image": settings.image_for(spec.task_type),
                            "imagePullPolicy": settings.image_pull_policy,
                            "command": runner_contract.runner_command(spec.task_type.value),
                            "env": env,
                            "resources": {
                                "requests": {
                                    "cpu": settings.runner_cpu_request,
                                    "memory": settings.runner_memory_request,
                                },
                                "limits": {
                                    "cpu": settings.runner_cpu_limit,
                                    "memory": settings.runner_memory_limit,
                                },
                            },
                            "securityContext": container_security,
                            "volumeMounts": [
                                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                                {
                                    "name": runner_contract.TOKEN_VOLUME,
                                    "mountPath": runner_contract.TOKEN_MOUNT_PATH,
                                    "readOnly": True,
                                },
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                        token_volume,
                    ],
                },
            },
        },
    }


@dataclass(frozen=True)
class JobOutcome:
    """What a Job's status means for its task; ``phase`` None = still running."""

    phase: Phase | None
    reason: str = ""
    message: str = ""
    attempts: int = 0
    start_time: str | None = None
    completion_time: str | None = None


def read_job_status(status: dict[str, Any] | None) -> JobOutcome:
    status = status or {}
    attempts = int(status.get("succeeded") or 0) + int(status.get("failed") or 0)
    attempts += int(status.get("active") or 0)
    conditions = {
        c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"
    }
    start = status.get("startTime")
    if "Complete" in conditions:
        return JobOutcome(
            Phase.SUCCEEDED, "Completed", "", attempts, start, status.get("completionTime")
        )
    if "Failed" in conditions:
        failed = conditions["Failed"]
        return JobOutcome(
            Phase.FAILED,
            str(failed.get("reason") or "JobFailed"),
            str(failed.get("message") or ""),
            attempts,
            start,
            failed.get("lastTransitionTime"),
        )
    return JobOutcome(None, "", "", attempts, start)


# ------------------------------------------------------------------ the Job and its pods, shown


POD_CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"


def pods_selector(job: dict[str, Any]) -> str | None:
    """The label selector of this Job's own pods (its UID, which the Job controller stamps on
    them: never a same-named earlier Job's pods); None for a Job without a UID."""
    uid = (job.get("metadata") or {}).get("uid")
    return f"{POD_CONTROLLER_UID_LABEL}={uid}" if uid else None


def pod_summary(pod: dict[str, Any]) -> PodSummary:
    """Name, phase, node, restarts, and the runner container's exit code once it ended."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    runner: dict[str, Any] = next(
        (c for c in status.get("containerStatuses") or [] if c.get("name") == CONTAINER_NAME),
        {},
    )
    ended = (runner.get("state") or {}).get("terminated") or (runner.get("lastState") or {}).get(
        "terminated"
    )
    return PodSummary(
        name=str(meta.get("name") or ""),
        phase=status.get("phase"),
        node=(pod.get("spec") or {}).get("nodeName"),
        restarts=int(runner.get("restartCount") or 0),
        exit_code=int(ended["exitCode"]) if ended and ended.get("exitCode") is not None else None,
        reason=(ended or {}).get("reason") or status.get("reason"),
        started_at=status.get("startTime"),
    )


def job_summary(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The status field ``job``: the Job's counts and condition and its newest pods."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    outcome = read_job_status(status)
    state = {Phase.SUCCEEDED: "Complete", Phase.FAILED: "Failed"}.get(
        outcome.phase or Phase.RUNNING, "Running"
    )
    newest = sorted(
        pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or "")
    )[::-1][:MAX_POD_SUMMARIES]
    return JobSummary(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        state=state,
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        start_time=status.get("startTime"),
        completion_time=outcome.completion_time,
        pods=[pod_summary(p) for p in newest],
    ).to_wire()
