"""`helm install` / `helm upgrade` against the real apiserver (no kubelet: no pod runs).

What only a real install shows: CRDs from crds/ are installed before the templates are mapped
(the HA set's ClusterKopfPeering needs its CRD), the API server's own authorizer grants the
gateway's ServiceAccount TokenReview (how runners' tokens are checked), and an upgrade applies
new values.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regtask_dev.kind import KindCluster
from tests.packaging.chart import CHART, VALUES_DIR, HelmResult, helm

pytestmark = pytest.mark.kube

Helm = Callable[..., HelmResult]


@pytest.fixture
def release(
    cluster: KindCluster, kube_api: client.ApiClient, crds: list[str]
) -> Iterator[tuple[str, str, Helm]]:
    """A release name and namespace of its own (cluster-scoped names differ per release), and
    helm bound to the admin kubeconfig; uninstalled afterwards."""
    name = f"pkg{secrets.token_hex(3)}"
    namespace = f"{name}-ns"
    kubeconfig = str(cluster.kubeconfig_path)

    def run(*args: str) -> HelmResult:
        return helm(*args, "--kubeconfig", kubeconfig, "--namespace", namespace)

    yield name, namespace, run
    run("uninstall", name, "--ignore-not-found")
    with contextlib.suppress(ApiException):  # absent when the install failed early
        client.CoreV1Api(kube_api).delete_namespace(namespace)


def allowed(api: client.ApiClient, user: str, verb: str, resource: str, group: str) -> bool:
    """The API server's RBAC answer for a ServiceAccount (SubjectAccessReview, as admin)."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group
            ),
        )
    )
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


def test_install_grants_token_review_and_upgrade_applies_values(
    release: tuple[str, str, Helm], kube_api: client.ApiClient
) -> None:
    name, namespace, run = release
    installed = run("install", name, str(CHART), "--create-namespace")
    assert installed.returncode == 0, installed.stderr
    gateway = f"system:serviceaccount:{namespace}:{name}-regtask-gateway"
    operator = f"system:serviceaccount:{namespace}:{name}-regtask-operator"
    assert allowed(kube_api, gateway, "create", "tokenreviews", "authentication.k8s.io")
    assert not allowed(kube_api, operator, "create", "tokenreviews", "authentication.k8s.io")
    assert not allowed(kube_api, gateway, "list", "secrets", "")
    upgraded = run("upgrade", name, str(CHART), "--set", "operator.quotas.rateLimitPolicy=Refuse")
    assert upgraded.returncode == 0, upgraded.stderr
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
