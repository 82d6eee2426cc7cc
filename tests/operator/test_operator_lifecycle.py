"""The operator process against the test cluster; its Jobs run as real pods of the runner image."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
import redis
from kubernetes import client

from regtask import keys, naming, tokens
from regtask.crmodels import API_GROUP, API_VERSION
from regtask.runner_contract import ExitCode
from regtask_dev.stack import ensure_namespace, scrape_metrics, wait_until
from tests.fixtures.platform import gateway_env

pytestmark = pytest.mark.kube


def new_task(
    api: client.ApiClient,
    namespace: str,
    task_id: str,
    *,
    preset_finalizer: bool = False,
    **spec: Any,
) -> str:
    """A task as `kubectl apply` creates it, or with the finalizer already set (as the shim)."""
    name = naming.task_resource_name(task_id)
    metadata: dict[str, Any] = {"name": name}
    if preset_finalizer:
        metadata["finalizers"] = [naming.TASK_FINALIZER]
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "RegistryTask",
        "metadata": metadata,
        "spec": {
            "taskId": task_id,
            "taskType": "document_analysis",
            "userId": "user123",
            "companyId": "company_abc",
            "inputs": [{"name": "document", "value": "Invoice 42"}],
            **spec,
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "registrytasks", body
    )
    return name


def as_dict(value: object) -> dict[str, Any]:
    """Custom-object calls answer plain JSON dicts (typed ``object`` by the client)."""
    assert isinstance(value, dict)
    return value


def get_task(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return as_dict(
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "registrytasks", name
        )
    )


def phase_of(api: client.ApiClient, namespace: str, name: str) -> str | None:
    return (get_task(api, namespace, name).get("status") or {}).get("phase")


def test_admitted_task_gets_an_isolated_namespace_and_a_hardened_job(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    redis_sync: redis.Redis,
) -> None:
    operator_factory()
    name = new_task(
        kube_api, control_namespace, "iso_task_1", userId="Jean.Dupont@ex", companyId="ACME.Corp_FR"
    )
    wait_until(lambda: phase_of(kube_api, control_namespace, name) == "Running", 30, "Running")
    tenant = naming.tenant_namespace("Jean.Dupont@ex", "ACME.Corp_FR")
    task = get_task(kube_api, control_namespace, name)
    assert task["status"]["namespace"] == tenant
    assert "regtask.io/finalizer" in task["metadata"]["finalizers"]

    core = client.CoreV1Api(kube_api)
    ns = core.read_namespace(tenant)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns.metadata.annotations[naming.ANNOTATION_USER] == "Jean.Dupont@ex"
    assert ns.metadata.annotations[naming.ANNOTATION_COMPANY] == "ACME.Corp_FR"
    sa = core.read_namespaced_service_account("regtask-runner", tenant)
    assert sa.automount_service_account_token is False
    policies = client.NetworkingV1Api(kube_api).list_namespaced_network_policy(tenant).items
    deny = next(p for p in policies if p.metadata.name == "default-deny-all")
    assert deny.spec.pod_selector.match_labels is None and set(deny.spec.policy_types or []) == {
        "Ingress",
        "Egress",
    }
    assert core.read_namespaced_resource_quota("tenant-quota", tenant).spec.hard["pods"]
    assert core.read_namespaced_limit_range("tenant-limits", tenant).spec.limits

    job = client.BatchV1Api(kube_api).read_namespaced_job(naming.job_name("iso_task_1"), tenant)
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    assert pod.automount_service_account_token is False
    assert job.spec.active_deadline_seconds == 1800  # document_analysis default
    ignore, fail = job.spec.pod_failure_policy.rules
    assert (ignore.action, ignore.on_pod_conditions[0].type) == ("Ignore", "DisruptionTarget")
    assert (fail.action, fail.on_exit_codes.values) == ("FailJob", [65, 143])
    env = {e.name: e for e in container.env}
    token_file = env["REGTASK_TASK_TOKEN_FILE"].value
    (volume,) = [v for v in pod.volumes or [] if v.projected is not None]
    (source,) = volume.projected.sources or []
    projected = source.service_account_token
    assert projected.audience == tokens.audience("iso_task_1")
    assert projected.expiration_seconds >= 1800
    mount = next(m for m in container.volume_mounts if m.name == volume.name)
    assert mount.read_only and token_file == f"{mount.mount_path}/{projected.path}"
    # never a secret in the CR
    assert "token" not in json.dumps(task["spec"]).lower()

    doc = json.loads(redis_sync.hget(keys.task("iso_task_1"), keys.DATA_FIELD) or b"{}")
    assert doc["task_info"]["status"] == "processing"
    assert doc["isolation"]["namespace"] == tenant


def test_failing_runner_is_retried_then_failed(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    redis_sync: redis.Redis,
) -> None:
    # The gateway address is unreachable: the runner cannot fetch its task and exits with a
    # retryable code, so the Job retries (backoffLimit=1) and then fails.
    operator = operator_factory()
    name = new_task(kube_api, control_namespace, "fail_task_1")
    wait_until(lambda: phase_of(kube_api, control_namespace, name) == "Failed", 90, "Failed")
    status = get_task(kube_api, control_namespace, name)["status"]
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["attempts"] == 2
    doc = json.loads(redis_sync.hget(keys.task("fail_task_1"), keys.DATA_FIELD) or b"{}")
    assert doc["task_info"]["status"] == "failed"
    # `kubectl describe` shows the decisions as Events on the task
    events = wait_until(
        lambda: (
            {
                e.reason
                for e in client.CoreV1Api(kube_api)
                .list_namespaced_event(
                    control_namespace, field_selector=f"involvedObject.name={name}"
                )
                .items
            }
            >= {"Admitted", "BackoffLimitExceeded"}
            and True
        ),
        30,
        "Admitted and BackoffLimitExceeded events",
    )
    assert events
    tenant = naming.tenant_namespace("user123", "company_abc")
    # The runner's credential was a token bound to its pod: no Secret was ever written. The
    # Job's two failed pods (one per attempt) stay until the Job goes, their tokens dead.
    core = client.CoreV1Api(kube_api)
    assert core.list_namespaced_secret(tenant).items == []
    pods = core.list_namespaced_pod(
        tenant, label_selector=f"batch.kubernetes.io/job-name={naming.job_name('fail_task_1')}"
    ).items
    assert [p.status.phase for p in pods] == ["Failed", "Failed"]
    # ... and the task's status shows the Job and both pods (the console's "Job and pod").
    job = status["job"]
    assert (job["name"], job["namespace"], job["state"]) == (
        naming.job_name("fail_task_1"),
        tenant,
        "Failed",
    )
    assert job["failed"] == 2
    assert sorted(p["name"] for p in job["pods"]) == sorted(str(p.metadata.name) for p in pods)
    for shown in job["pods"]:
        assert shown["phase"] == "Failed"
        assert shown["exitCode"] == ExitCode.RETRYABLE
        assert shown["node"] and shown["restarts"] == 0

    labels = 'company="company_abc",phase="Failed",task_type="document_analysis"'
    # The gauges come from a snapshot the event loop takes every status-sync interval.
    series = wait_until(
        lambda: (
            (found := scrape_metrics(operator.metrics_url)).get(f"regtask_tasks{{{labels}}}") == 1.0
            and found
        ),
        10,
        "the task gauge in a metrics snapshot",
    )
    assert series[f"regtask_tasks_finished_total{{{labels}}}"] == 1.0
    assert series['regtask_admission_wait_seconds_count{company="company_abc"}'] == 1.0
    assert series['regtask_quota_running_tasks{company="company_abc"}'] == 0.0


def test_cancel_and_delete(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    redis_sync: redis.Redis,
) -> None:
    operator_factory()
    api = client.CustomObjectsApi(kube_api)
    name = new_task(kube_api, control_namespace, "cancel_task_1")
    wait_until(lambda: phase_of(kube_api, control_namespace, name) == "Running", 30, "Running")
    api.patch_namespaced_custom_object(
        API_GROUP, API_VERSION, control_namespace, "registrytasks", name, {"spec": {"cancel": True}}
    )
    wait_until(lambda: phase_of(kube_api, control_namespace, name) == "Cancelled", 30, "Cancelled")
    tenant = naming.tenant_namespace("user123", "company_abc")
    batch = client.BatchV1Api(kube_api)
    jobs = {
        j.metadata.name
        for j in batch.list_namespaced_job(tenant).items
        if not j.metadata.deletion_timestamp
    }
    assert naming.job_name("cancel_task_1") not in jobs
    doc = json.loads(redis_sync.hget(keys.task("cancel_task_1"), keys.DATA_FIELD) or b"{}")
    assert doc["task_info"]["status"] == "cancelled"

    # Created as the shim creates tasks: the finalizer already set, no PATCH from the operator.
    other = new_task(kube_api, control_namespace, "delete_task_1", preset_finalizer=True)
    wait_until(lambda: phase_of(kube_api, control_namespace, other) == "Running", 30, "Running")
    api.delete_namespaced_custom_object(
        API_GROUP, API_VERSION, control_namespace, "registrytasks", other
    )

    def gone() -> bool:
        items = as_dict(
            api.list_namespaced_custom_object(
                API_GROUP, API_VERSION, control_namespace, "registrytasks"
            )
        )["items"]
        return other not in {i["metadata"]["name"] for i in items}

    wait_until(gone, 30, "task deleted (finalizer released)")
    doc = json.loads(redis_sync.hget(keys.task("delete_task_1"), keys.DATA_FIELD) or b"{}")
    assert doc["task_info"]["status"] == "cancelled"
    jobs = {
        j.metadata.name
        for j in batch.list_namespaced_job(tenant).items
        if not j.metadata.deletion_timestamp
    }
    assert naming.job_name("delete_task_1") not in jobs


def test_document_analysis_succeeds_end_to_end(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: Any,
    redis_sync: redis.Redis,
) -> None:
    operator_factory(**gateway_env(gateway))
    text = (
        "Facture 2025-042 de ACME Industries SAS, datée du 24/09/2025. "
        "Montant total: 1 250,00 EUR. IBAN FR76 3000 6000 0112 3456 7890 189. "
        "Contact: billing@acme.example"
    )
    name = new_task(
        kube_api, control_namespace, "doc_ok_1", inputs=[{"name": "document", "value": text}]
    )
    wait_until(lambda: phase_of(kube_api, control_namespace, name) == "Succeeded", 120, "Succeeded")
    status = get_task(kube_api, control_namespace, name)["status"]
    assert status["progress"] == 100
    assert status["attempts"] == 1
    doc = json.loads(redis_sync.hget(keys.task("doc_ok_1"), keys.DATA_FIELD) or b"{}")
    assert doc["task_info"]["status"] == "completed"
    assert "FR7630006000011234567890189" in json.dumps(doc["result"]).replace(" ", "")
    assert status.get("result") == doc["result"]
    job = status["job"]
    assert job["state"] == "Complete" and job["succeeded"] == 1
    assert job["name"] == naming.job_name("doc_ok_1")
    [pod] = job["pods"]
    assert pod["phase"] == "Succeeded" and pod["exitCode"] == ExitCode.SUCCESS and pod["node"]
    # The runner's reports went through the gateway into the task's step history.
    recorded = int(redis_sync.hget(keys.task("doc_ok_1"), keys.TASK_STEP_COUNT_FIELD) or 0)
    assert recorded >= 1


def test_an_operator_leaves_the_tasks_of_other_namespaces_alone(
    kube_api: client.ApiClient, control_namespace: str, operator_factory: Any
) -> None:
    """Kopf removes its finalizer from every object no handler of it requires, and a handler's
    scope (``when=``) counts there: watching every namespace, each shard's operator stripped
    the other shards' tasks of their finalizer (a task deleted then ends without its cleanup).
    With one task namespace the API server sends the operator that namespace's tasks only."""
    run = secrets.token_hex(3)
    other = f"regtask-{run}"
    ensure_namespace(kube_api, other)
    api = client.CustomObjectsApi(kube_api)
    theirs = new_task(kube_api, other, f"theirs_{run}", preset_finalizer=True)
    try:
        operator_factory()
        mine = new_task(kube_api, control_namespace, f"mine_{run}", preset_finalizer=True)
        wait_until(
            lambda: phase_of(kube_api, control_namespace, mine) == "Running", 60, "its own task"
        )
        time.sleep(3)  # the other namespace's task had long been seen by then on the old code
        task = get_task(kube_api, other, theirs)
        assert task["metadata"].get("finalizers") == [naming.TASK_FINALIZER]
        assert (task.get("status") or {}).get("phase") in (None, "Queued")
    finally:
        api.patch_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            other,
            "registrytasks",
            theirs,
            {"metadata": {"finalizers": None}},
        )
        client.CoreV1Api(kube_api).delete_namespace(other)
