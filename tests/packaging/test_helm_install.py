"""`helm install` / `helm upgrade` against the real apiserver (no kubelet: no pod runs).

What only a real install shows: CRDs from crds/ are installed before the templates are mapped
(the HA set's ClusterKopfPeering needs its CRD), and the generated token Secret survives
upgrades (a new one would void the tokens of running tasks).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regtask_dev.controlplane import ControlPlane
from tests.packaging.chart import CHART, VALUES_DIR, HelmResult, helm

pytestmark = pytest.mark.kube

Helm = Callable[..., HelmResult]


@pytest.fixture
def release(
    control_plane: ControlPlane, kube_api: client.ApiClient, crds: list[str]
) -> Iterator[tuple[str, str, Helm]]:
    """A release name and namespace of its own (cluster-scoped names differ per release), and
    helm bound to the admin kubeconfig; uninstalled afterwards."""
    name = f"pkg{secrets.token_hex(3)}"
    namespace = f"{name}-ns"
    kubeconfig = str(control_plane.kubeconfig_path)

    def run(*args: str) -> HelmResult:
        return helm(*args, "--kubeconfig", kubeconfig, "--namespace", namespace)

    yield name, namespace, run
    run("uninstall", name, "--ignore-not-found")
    with contextlib.suppress(ApiException):  # absent when the install failed early
        client.CoreV1Api(kube_api).delete_namespace(namespace)


def token(api: client.ApiClient, namespace: str, secret: str) -> str:
    data = client.CoreV1Api(api).read_namespaced_secret(secret, namespace).data
    return base64.b64decode(data["token"]).decode()


def test_generated_token_survives_upgrades(
    release: tuple[str, str, Helm], kube_api: client.ApiClient
) -> None:
    name, namespace, run = release
    installed = run("install", name, str(CHART), "--create-namespace")
    assert installed.returncode == 0, installed.stderr
    secret = f"{name}-regtask-token"
    first = token(kube_api, namespace, secret)
    assert len(first) == 64
    upgraded = run("upgrade", name, str(CHART), "--set", "operator.quotas.rateLimitPolicy=Refuse")
    assert upgraded.returncode == 0, upgraded.stderr
    assert token(kube_api, namespace, secret) == first
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment(
        f"{name}-regtask-operator", namespace
    )
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["REGTASK_RATE_LIMIT_POLICY"] == "Refuse"


def test_ha_install_maps_the_peering_object(
    release: tuple[str, str, Helm], kube_api: client.ApiClient
) -> None:
    name, namespace, run = release
    values: Path = VALUES_DIR / "ha-peering.yaml"
    installed = run("install", name, str(CHART), "--create-namespace", "-f", str(values))
    assert installed.returncode == 0, installed.stderr
    peering = client.CustomObjectsApi(kube_api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", "regtask-ha"
    )
    assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == name
    budgets = client.PolicyV1Api(kube_api).list_namespaced_pod_disruption_budget(namespace)
    assert len(budgets.items) == 3
