"""The test control plane is a real Kubernetes API, and the node stand-in runs Jobs like one.

Everything here talks to a real kube-apiserver + etcd on loopback; these tests guard the
assumptions the operator's own tests build on (RBAC is enforced, schemas are validated,
Jobs get the status the Job controller would write, a lost node stops progress).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import regtask_dev
from regtask_dev.controlplane import ControlPlane
from regtask_dev.nodesim import DEFAULT_LABEL_SELECTOR, NodeSimulator
from tests.fixtures.kube import KubeApiFactory

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
MANAGED = dict([DEFAULT_LABEL_SELECTOR.split("=")])


def pinned_kubernetes_version() -> str:
    script = (REPO / "hack/install-k8s-tools.sh").read_text()
    match = re.search(r'^KUBERNETES_VERSION="(v[0-9.]+)"', script, re.M)
    assert match, "KUBERNETES_VERSION not found in hack/install-k8s-tools.sh"
    return match.group(1)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll until ``check()`` is truthy and return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def process_gone(pid: int) -> bool:
    """True once the pid has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def k8s(obj: dict[str, Any]) -> Any:
    """Pass a plain dict as a request body: the client sends it as it is (hints name models)."""
    return obj


def job_body(
    name: str,
    command: list[str],
    *,
    backoff_limit: int = 0,
    env: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": MANAGED},
        "spec": {
            "backoffLimit": backoff_limit,
            **spec,
            "template": {
                "metadata": {"labels": MANAGED},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": "regtask/runner:test",
                            "command": command,
                            "env": env or [],
                        }
                    ],
                },
            },
        },
    }


def create_job(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    client.BatchV1Api(api).create_namespaced_job(namespace, k8s(body))


def job_status(api: client.ApiClient, namespace: str, name: str) -> client.V1JobStatus:
    status = client.BatchV1Api(api).read_namespaced_job_status(name, namespace).status
    assert status is not None, f"Job {name} has no status"
    return status


def conditions(status: client.V1JobStatus) -> dict[str, client.V1JobCondition]:
    """The conditions that are True, by type."""
    return {c.type: c for c in status.conditions or [] if c.status == "True"}


def wait_job(
    api: client.ApiClient, namespace: str, name: str, condition: str, timeout: float = 20.0
) -> client.V1JobStatus:
    def reached() -> client.V1JobStatus | None:
        status = job_status(api, namespace, name)
        return status if condition in conditions(status) else None

    status: client.V1JobStatus = wait_until(reached, f"Job {name} {condition}", timeout)
    return status


def whoami(api: client.ApiClient) -> tuple[str | None, list[str]]:
    """(username, groups) the apiserver authenticated ``api`` as."""
    review = client.AuthenticationV1Api(api).create_self_subject_review(k8s({}))
    assert review.status is not None and review.status.user_info is not None
    return review.status.user_info.username, list(review.status.user_info.groups or [])


# -- the API server itself -------------------------------------------------------------------


def test_apiserver_is_ready_and_runs_the_pinned_version(
    control_plane: ControlPlane, kube_api: client.ApiClient
) -> None:
    readyz = control_plane.get("/readyz?verbose").decode()
    assert readyz.rstrip().endswith("readyz check passed")
    assert "[+]etcd ok" in readyz
    assert client.VersionApi(kube_api).get_code().git_version == pinned_kubernetes_version()


def test_rbac_refuses_an_unbound_service_account_until_it_is_bound(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    make_kube_api: KubeApiFactory,
    namespace: str,
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, k8s({"metadata": {"name": "robot"}}))
    sa_user = f"system:serviceaccount:{namespace}:robot"
    as_sa = make_kube_api(impersonate=sa_user)
    with_token = make_kube_api(control_plane.service_account_kubeconfig(namespace, "robot"))
    with_cert = make_kube_api(control_plane.kubeconfig_for("alice", ["regtask-devs"]))

    user, groups = whoami(with_token)
    assert (user, f"system:serviceaccounts:{namespace}" in groups) == (sa_user, True)
    user, groups = whoami(with_cert)
    assert (user, "regtask-devs" in groups) == ("alice", True)

    for api, user in ((as_sa, sa_user), (with_token, sa_user), (with_cert, "alice")):
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(api).list_namespace()
        assert refused.value.status == 403
        message = json.loads(refused.value.body or "{}")["message"]
        assert f'User "{user}" cannot list resource "namespaces"' in message

    rbac = client.RbacAuthorizationV1Api(kube_api)
    role = f"namespace-reader-{secrets.token_hex(3)}"
    rbac.create_cluster_role(
        k8s(
            {
                "metadata": {"name": role},
                "rules": [
                    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list"]}
                ],
            }
        )
    )
    rbac.create_cluster_role_binding(
        k8s(
            {
                "metadata": {"name": role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "robot", "namespace": namespace},
                    {
                        "kind": "Group",
                        "name": "regtask-devs",
                        "apiGroup": "rbac.authorization.k8s.io",
                    },
                ],
            }
        )
    )
    try:
        for api in (as_sa, with_token, with_cert):
            names = wait_until(partial(namespace_names_or_none, api), "the binding to take effect")
            assert namespace in names
        with pytest.raises(ApiException) as still_refused:  # the binding grants reads only
            client.CoreV1Api(as_sa).delete_namespace(namespace)
        assert still_refused.value.status == 403
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


def namespace_names_or_none(api: client.ApiClient) -> list[str] | None:
    try:
        items = client.CoreV1Api(api).list_namespace().items
        return [ns.metadata.name for ns in items if ns.metadata and ns.metadata.name]
    except ApiException as exc:
        if exc.status == 403:
            return None
        raise


@pytest.fixture
def widget_crd(kube_api: client.ApiClient) -> Iterator[str]:
    """A small namespaced CRD with a status subresource; yields its plural."""
    ext = client.ApiextensionsV1Api(kube_api)
    plural = f"widgets{secrets.token_hex(3)}"
    name = f"{plural}.cptest.regtask.io"
    ext.create_custom_resource_definition(
        k8s(
            {
                "metadata": {"name": name},
                "spec": {
                    "group": "cptest.regtask.io",
                    "scope": "Namespaced",
                    "names": {"plural": plural, "singular": plural[:-1], "kind": f"W{plural}"},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "subresources": {"status": {}},
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "spec": {
                                            "type": "object",
                                            "required": ["image"],
                                            "properties": {
                                                "image": {"type": "string"},
                                                "replicas": {"type": "integer", "minimum": 1},
                                            },
                                        },
                                        "status": {
                                            "type": "object",
                                            "properties": {"phase": {"type": "string"}},
                                        },
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    )

    def established() -> bool:
        status = ext.read_custom_resource_definition_status(name).status
        return status is not None and any(
            c.type == "Established" and c.status == "True" for c in status.conditions or []
        )

    wait_until(established, f"CRD {name} Established")
    yield plural
    ext.delete_custom_resource_definition(name)


def test_crd_schema_is_enforced_and_status_is_a_subresource(
    kube_api: client.ApiClient, namespace: str, widget_crd: str
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    args = ("cptest.regtask.io", "v1", namespace, widget_crd)

    def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "cptest.regtask.io/v1",
            "kind": f"W{widget_crd}",
            "metadata": {"name": name},
            "spec": spec,
            "status": {"phase": "Sneaky"},
        }

    created = cast(
        dict[str, Any], custom.create_namespaced_custom_object(*args, widget("ok", {"image": "x"}))
    )
    assert "status" not in created, "status must be ignored on create with a status subresource"

    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(*args, widget("bad", {"image": "x", "replicas": 0}))
    assert rejected.value.status == 422
    assert "spec.replicas" in (rejected.value.body or "")
    with pytest.raises(ApiException) as missing:
        custom.create_namespaced_custom_object(*args, widget("bad", {"replicas": 2}))
    assert missing.value.status == 422
    assert "spec.image" in (missing.value.body or "")

    patched = cast(
        dict[str, Any],
        custom.patch_namespaced_custom_object_status(*args, "ok", {"status": {"phase": "Ready"}}),
    )
    assert patched["status"] == {"phase": "Ready"}
    assert patched["metadata"]["generation"] == created["metadata"]["generation"]


def test_updating_with_a_stale_resource_version_is_a_conflict(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    stale = core.create_namespaced_config_map(
        namespace, k8s({"metadata": {"name": "cm"}, "data": {"v": "1"}})
    )
    core.patch_namespaced_config_map("cm", namespace, k8s({"data": {"v": "2"}}))
    stale.data = {"v": "lost update"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("cm", namespace, stale)
    assert conflict.value.status == 409
    assert core.read_namespaced_config_map("cm", namespace).data == {"v": "2"}


# -- Jobs run by the node stand-in ------------------------------------------------------------


def test_job_runs_to_complete_with_env_from_secret_and_fields(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator
) -> None:
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace, k8s({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    )
    env: list[dict[str, Any]] = [
        {"name": "GREETING", "value": "hello"},
        {"name": "MESSAGE", "value": "$(GREETING) world"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    script = "import os; print(*(os.environ[k] for k in ('MESSAGE', 'TOKEN', 'POD', 'NS')))"
    create_job(kube_api, namespace, job_body("ok", [sys.executable, "-c", script], env=env))

    status = wait_job(kube_api, namespace, "ok", "Complete")
    assert set(conditions(status)) == {"SuccessCriteriaMet", "Complete"}
    assert conditions(status)["Complete"].reason == "CompletionsReached"
    assert (status.succeeded, status.failed, status.active) == (1, None, None)
    assert status.start_time is not None and status.completion_time is not None
    assert status.start_time <= status.completion_time
    [attempt] = node_sim.attempts(namespace, "ok")
    assert attempt.exit_code == 0
    assert attempt.output().split() == ["hello", "world", "s3cret", attempt.pod_name, namespace]
    assert attempt.pod_name.startswith("ok-")


def test_a_projected_token_is_bound_to_a_pod_object_that_ends_with_the_process(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator
) -> None:
    """What a kubelet does for a projected ServiceAccount token, and the quota controller for
    the namespace's ResourceQuota (admission refuses pods while it has no status)."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, k8s({"metadata": {"name": "worker"}}))
    core.create_namespaced_resource_quota(
        namespace, k8s({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}})
    )
    body = job_body(
        "tok",
        [
            sys.executable,
            "-c",
            "import os, time; print(open(os.environ['TOKEN_FILE']).read(), flush=True); "
            "time.sleep(5)",
        ],
        env=[{"name": "TOKEN_FILE", "value": "/var/run/secrets/t/token"}],
    )
    pod_spec = body["spec"]["template"]["spec"]
    pod_spec["serviceAccountName"] = "worker"
    pod_spec["volumes"] = [
        {
            "name": "t",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"audience": "aud-x", "path": "token"}},
                ]
            },
        }
    ]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "t", "mountPath": "/var/run/secrets/t"}]
    create_job(kube_api, namespace, body)

    attempt = node_sim.wait_for_attempt(namespace, "tok")
    live = core.read_namespaced_pod(attempt.pod_name, namespace)
    assert live.spec.service_account_name == "worker"
    assert live.metadata.labels["batch.kubernetes.io/job-name"] == "tok"
    quota = core.read_namespaced_resource_quota("q", namespace)
    assert quota.status.hard == {"pods": "1"} and quota.status.used == {"pods": "1"}
    token = wait_until(lambda: attempt.output().strip(), "the token printed by the process")

    def review(audience: str) -> client.V1TokenReviewStatus | None:
        spec = client.V1TokenReviewSpec(token=token, audiences=[audience])
        answer = client.AuthenticationV1Api(kube_api).create_token_review(
            client.V1TokenReview(spec=spec)
        )
        return answer.status

    alive = review("aud-x")
    assert alive is not None and alive.authenticated
    assert alive.user.username == f"system:serviceaccount:{namespace}:worker"
    assert alive.user.extra["authentication.kubernetes.io/pod-name"] == [attempt.pod_name]
    other_audience = review("aud-y")
    assert other_audience is not None and not other_audience.authenticated
    wait_job(kube_api, namespace, "tok", "Complete")
    assert core.list_namespaced_pod(namespace).items == []  # deleted with its process
    # Bound to the pod: with the pod gone, the token is refused even for its own audience (once
    # the API server's 10 s cache of successful authentications has let go of it).
    wait_until(lambda: not (review("aud-x") or alive).authenticated, "the token refused", 30)


def test_job_fails_after_backoff_limit_retries(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator
) -> None:
    create_job(
        kube_api,
        namespace,
        job_body("flaky", ["sh", "-c", "echo broken >&2; exit 3"], backoff_limit=2),
    )

    status = wait_job(kube_api, namespace, "flaky", "Failed")
    assert conditions(status)["Failed"].reason == "BackoffLimitExceeded"
    assert conditions(status)["FailureTarget"].reason == "BackoffLimitExceeded"
    assert (status.failed, status.active, status.completion_time) == (3, None, None)
    attempts = node_sim.attempts(namespace, "flaky")
    assert [a.exit_code for a in attempts] == [3, 3, 3]
    assert all(a.output() == "broken\n" for a in attempts)


def test_active_deadline_kills_the_process_and_fails_the_job(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator
) -> None:
    create_job(
        kube_api,
        namespace,
        job_body("slow", ["sleep", "60"], backoff_limit=3, activeDeadlineSeconds=2),
    )
    attempt = node_sim.wait_for_attempt(namespace, "slow")

    status = wait_job(kube_api, namespace, "slow", "Failed", timeout=60)
    assert conditions(status)["Failed"].reason == "DeadlineExceeded"
    assert conditions(status)["Failed"].message == "Job was active longer than specified deadline"
    assert (status.failed, status.active, status.terminating) == (1, None, 0)
    assert process_gone(attempt.pid)
    [finished] = node_sim.attempts(namespace, "slow")
    assert finished.exit_code == 128 + signal.SIGTERM


def test_pod_failure_policy_ignores_and_fails_the_job_on_exit_codes(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator, tmp_path: Path
) -> None:
    marker = tmp_path / "first-attempt-done"
    script = f"if [ -e {marker} ]; then exit 42; fi; touch {marker}; exit 7"
    policy = {
        "rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [7]}},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]},
            },
        ]
    }
    create_job(
        kube_api,
        namespace,
        job_body("policy", ["sh", "-c", script], backoff_limit=5, podFailurePolicy=policy),
    )

    status = wait_job(kube_api, namespace, "policy", "Failed")
    failed = conditions(status)["Failed"]
    assert failed.reason == "PodFailurePolicy"
    attempts = node_sim.attempts(namespace, "policy")
    assert [a.exit_code for a in attempts] == [7, 42]
    assert failed.message == (
        f"Container main for pod {namespace}/{attempts[1].pod_name} failed "
        "with exit code 42 matching FailJob rule at index 1"
    )
    assert status.failed == 1, "the Ignored failure must not count"


def test_suspended_job_waits_and_runs_when_resumed(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator
) -> None:
    create_job(kube_api, namespace, job_body("later", ["true"], suspend=True))
    status = wait_job(kube_api, namespace, "later", "Suspended")
    assert (status.start_time, node_sim.attempts(namespace, "later")) == (None, [])

    client.BatchV1Api(kube_api).patch_namespaced_job(
        "later", namespace, k8s({"spec": {"suspend": False}})
    )
    status = wait_job(kube_api, namespace, "later", "Complete")
    [suspended] = [c for c in status.conditions or [] if c.type == "Suspended"]
    assert (suspended.status, suspended.reason) == ("False", "JobResumed")
    assert status.start_time is not None


def test_deleting_a_running_job_terminates_its_process(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator
) -> None:
    create_job(kube_api, namespace, job_body("doomed", ["sleep", "60"]))
    attempt = node_sim.wait_for_attempt(namespace, "doomed")

    client.BatchV1Api(kube_api).delete_namespaced_job(
        "doomed", namespace, body=client.V1DeleteOptions(propagation_policy="Background")
    )
    wait_until(lambda: process_gone(attempt.pid), "the process to be terminated", timeout=30)
    [finished] = node_sim.attempts(namespace, "doomed")
    assert finished.exit_code == 128 + signal.SIGTERM


# -- node loss ---------------------------------------------------------------------------------


def assert_still_active_without_progress(api: client.ApiClient, namespace: str, name: str) -> None:
    time.sleep(1.0)  # give a wrongly surviving runner the time to write something
    status = job_status(api, namespace, name)
    assert (status.active, status.ready) == (1, 1)
    assert (status.succeeded, status.failed, status.conditions) == (None, None, None)


def test_stopping_the_stand_in_is_a_node_loss(
    kube_api: client.ApiClient, namespace: str, node_sim: NodeSimulator
) -> None:
    create_job(kube_api, namespace, job_body("lost", ["sleep", "60"]))
    attempt = node_sim.wait_for_attempt(namespace, "lost")
    wait_until(lambda: job_status(kube_api, namespace, "lost").ready == 1, "the pod to be ready")

    node_sim.stop()

    assert process_gone(attempt.pid)
    assert_still_active_without_progress(kube_api, namespace, "lost")


def test_sigkilled_stand_in_process_takes_its_children_along(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(regtask_dev.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    with (tmp_path / "nodesim.log").open("wb") as stand_in_log:
        stand_in = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "regtask_dev.nodesim",
                "--log-dir",
                str(tmp_path / "logs"),
                "--kubeconfig",
                str(control_plane.kubeconfig_path),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stand_in_log,
            start_new_session=True,
        )
    try:
        create_job(
            kube_api,
            namespace,
            job_body(
                "orphan",
                [
                    "sh",
                    "-c",
                    f"echo $$$$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 60",
                ],
            ),
        )
        child = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), "child pid"))
        wait_until(
            lambda: job_status(kube_api, namespace, "orphan").ready == 1, "the pod to be ready"
        )
        assert not process_gone(child)

        stand_in.kill()
        stand_in.wait()

        wait_until(lambda: process_gone(child), "the child to die with the stand-in", timeout=30)
        assert_still_active_without_progress(kube_api, namespace, "orphan")
    finally:
        stand_in.kill()
        stand_in.wait()
