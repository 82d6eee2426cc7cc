"""The test cluster is a real Kubernetes, and the machine around it stays as it was.

These guard what every other test builds on: the pinned Kubernetes with its controllers, RBAC
enforced on real ServiceAccount tokens, Jobs run as pods of the project's own runner image with
tokens the kubelet projects, the host's kernel parameters untouched, and nothing a pod sends
leaving the machine.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regtask_dev import lockdown
from regtask_dev.kind import KindCluster, kind_dir
from tests.fixtures.kube import KubeApiFactory

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pinned_kubernetes_version() -> str:
    script = (REPO / "hack/install-k8s-tools.sh").read_text()
    match = re.search(r'^KUBERNETES_VERSION="(v[0-9.]+)"', script, re.M)
    assert match, "KUBERNETES_VERSION not found in hack/install-k8s-tools.sh"
    return match.group(1)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def k8s(obj: dict[str, Any]) -> Any:
    """Pass a plain dict as a request body (the client's hints name its models)."""
    return obj


def run_pod(
    api: client.ApiClient, namespace: str, name: str, image: str, script: str, **spec: Any
) -> str:
    """Run ``python -c script`` in a pod of ``image`` to its end; its log."""
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        namespace,
        k8s(
            {
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "command": ["python", "-c", script],
                            "securityContext": RESTRICTED,
                        }
                    ],
                    **spec,
                },
            }
        ),
    )

    def ended() -> bool:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase in ("Succeeded", "Failed")

    wait_until(ended, f"pod {name} finished", 120)
    pod = core.read_namespaced_pod(name, namespace)
    log = str(core.read_namespaced_pod_log(name, namespace))
    assert pod.status.phase == "Succeeded", log
    return log


def test_cluster_runs_the_pinned_kubernetes_with_its_controllers(
    cluster: KindCluster, kube_api: client.ApiClient
) -> None:
    readyz = cluster.get("/readyz?verbose").decode()
    assert readyz.rstrip().endswith("readyz check passed")
    assert client.VersionApi(kube_api).get_code().git_version == pinned_kubernetes_version()
    pods = client.CoreV1Api(kube_api).list_namespaced_pod("kube-system").items
    running = [p.metadata.name for p in pods if p.status.phase == "Running"]
    for component in (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "coredns",
        cluster.policy_engine,
    ):
        assert any(name.startswith(component) for name in running), (component, running)
    [node] = client.CoreV1Api(kube_api).list_node().items
    assert node.status.node_info.kubelet_version == pinned_kubernetes_version()
    assert node.status.node_info.container_runtime_version.startswith("containerd://")


def whoami(api: client.ApiClient) -> tuple[str | None, list[str]]:
    review = client.AuthenticationV1Api(api).create_self_subject_review(k8s({}))
    return review.status.user_info.username, list(review.status.user_info.groups or [])


def namespace_names_or_none(api: client.ApiClient) -> list[str] | None:
    try:
        return [str(ns.metadata.name) for ns in client.CoreV1Api(api).list_namespace().items]
    except ApiException as exc:
        if exc.status == 403:
            return None
        raise


def test_rbac_refuses_an_unbound_service_account_until_it_is_bound(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    make_kube_api: KubeApiFactory,
    namespace: str,
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, k8s({"metadata": {"name": "robot"}}))
    sa_user = f"system:serviceaccount:{namespace}:robot"
    with_token = make_kube_api(cluster.service_account_kubeconfig(namespace, "robot"))
    as_sa = make_kube_api(impersonate=sa_user)
    user, groups = whoami(with_token)
    assert (user, f"system:serviceaccounts:{namespace}" in groups) == (sa_user, True)
    for api in (with_token, as_sa):
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(api).list_namespace()
        assert refused.value.status == 403
        message = json.loads(refused.value.body or "{}")["message"]
        assert f'User "{sa_user}" cannot list resource "namespaces"' in message

    rbac = client.RbacAuthorizationV1Api(kube_api)
    role = f"namespace-reader-{secrets.token_hex(3)}"
    rbac.create_cluster_role(
        k8s(
            {
                "metadata": {"name": role},
                "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]}],
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
                "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
            }
        )
    )
    try:
        for api in (with_token, as_sa):
            names = wait_until(partial(namespace_names_or_none, api), "the binding", 20)
            assert namespace in names
        with pytest.raises(ApiException) as still_refused:  # reads only
            client.CoreV1Api(with_token).delete_namespace(namespace)
        assert still_refused.value.status == 403
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


def test_a_job_runs_as_a_pod_of_the_runner_image_with_a_kubelet_projected_token(
    kube_api: client.ApiClient, namespace: str, runner_image: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, k8s({"metadata": {"name": "worker"}}))
    core.create_namespaced_secret(
        namespace, k8s({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    )
    script = (
        "import os, sys\n"
        "token = open('/var/run/secrets/t/token').read()\n"
        "print(os.environ['TOKEN'], os.environ['POD'], sys.version.split()[0], token)\n"
    )
    client.BatchV1Api(kube_api).create_namespaced_job(
        namespace,
        k8s(
            {
                "metadata": {"name": "hello"},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "serviceAccountName": "worker",
                            "automountServiceAccountToken": False,
                            "containers": [
                                {
                                    "name": "main",
                                    "image": runner_image,
                                    "command": ["python", "-c", script],
                                    "securityContext": RESTRICTED,
                                    "env": [
                                        {
                                            "name": "TOKEN",
                                            "valueFrom": {
                                                "secretKeyRef": {"name": "creds", "key": "token"}
                                            },
                                        },
                                        {
                                            "name": "POD",
                                            "valueFrom": {
                                                "fieldRef": {"fieldPath": "metadata.name"}
                                            },
                                        },
                                    ],
                                    "volumeMounts": [
                                        {"name": "t", "mountPath": "/var/run/secrets/t"}
                                    ],
                                }
                            ],
                            "volumes": [
                                {
                                    "name": "t",
                                    "projected": {
                                        "sources": [
                                            {
                                                "serviceAccountToken": {
                                                    "audience": "aud-x",
                                                    "path": "token",
                                                }
                                            }
                                        ]
                                    },
                                }
                            ],
                        }
                    },
                },
            }
        ),
    )
    batch = client.BatchV1Api(kube_api)

    def complete() -> bool:
        conditions = batch.read_namespaced_job_status("hello", namespace).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    wait_until(complete, "Job Complete (the real Job controller)", 120)
    [pod] = core.list_namespaced_pod(namespace, label_selector="job-name=hello").items
    secret, pod_name, version, token = core.read_namespaced_pod_log(
        str(pod.metadata.name), namespace
    ).split()
    assert (secret, pod_name, version.rsplit(".", 1)[0]) == ("s3cret", pod.metadata.name, "3.11")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == ["aud-x"]
    assert claims["kubernetes.io"]["pod"]["name"] == pod.metadata.name
    assert claims["kubernetes.io"]["node"]["name"]  # minted by the kubelet for its node


def test_the_host_is_locked_down_and_its_kernel_parameters_untouched(
    cluster: KindCluster,
) -> None:
    """The guard chain holds its rules while the cluster runs; the kubelet's kernel parameters
    were shielded inside the node (the host keeps the values recorded before the first
    cluster)."""
    if cluster.provider != "podman":
        pytest.skip("the lock-down is the podman path's (this machine's) own")
    rules = lockdown.run(["iptables", "-S", lockdown.GUARD_CHAIN]).stdout
    for uplink in lockdown.uplinks():
        for target in (lockdown.POD_RANGE, lockdown.SERVICE_RANGE, lockdown.NETWORK_SUBNET):
            assert f"-A {lockdown.GUARD_CHAIN} -d {target} -o {uplink} -j DROP" in rules, rules
    for hook in ("OUTPUT", "FORWARD"):
        assert (
            f"-A {hook} -j {lockdown.GUARD_CHAIN}" in lockdown.run(["iptables", "-S", hook]).stdout
        )
    recorded = json.loads((kind_dir() / "host-changes.json").read_text())["sysctls"]
    for name in ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory"):
        assert lockdown.read_sysctl(name) == recorded[name], name
    inside = cluster.node_exec("cat", "/proc/sys/kernel/panic_on_oops").strip()
    assert inside == "1"  # what the kubelet wants, in the node's private copy


def test_pods_reach_the_host_address_and_nothing_outside_the_machine(
    cluster: KindCluster, kube_api: client.ApiClient, namespace: str, runner_image: str
) -> None:
    """From a pod: a server on the host's kind address answers; the machine's own uplink
    gateway, a public address and names outside the cluster do not."""
    outside = [*lockdown.default_gateways(), "192.0.2.1", "198.51.100.7"]
    server = socket.create_server((cluster.host_address, 0))
    port = server.getsockname()[1]
    accepted: list[str] = []

    def accept() -> None:
        connection, peer = server.accept()
        accepted.append(peer[0])
        connection.close()

    threading.Thread(target=accept, daemon=True).start()
    script = f"""
import socket
def connects(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
print("host", connects({cluster.host_address!r}, {port}))
print("outside", any(connects(h, 53) or connects(h, 443) for h in {outside!r}))
try:
    socket.gethostbyname("pypi.org")
    print("resolved True")
except OSError:
    print("resolved False")
print("cluster-dns", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
"""
    try:
        log = run_pod(kube_api, namespace, "probe", runner_image, script)
    finally:
        server.close()
    assert "host True" in log, log
    assert accepted == [cluster.node_address]  # pod traffic leaves the node masqueraded
    assert "outside False" in log, log
    assert "resolved False" in log, log
    assert "cluster-dns 10.96.0.1" in log, log
