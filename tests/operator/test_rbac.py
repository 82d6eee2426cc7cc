"""The operator's shipped RBAC: what it may do, and what it is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.kube import KubeApiFactory

pytestmark = pytest.mark.kube


def can(
    api: client.ApiClient,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
    subresource: str | None = None,
) -> bool:
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                resource=resource,
                group=group,
                namespace=namespace,
                subresource=subresource,
            )
        )
    )
    answer = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return bool(answer.status.allowed)


def test_operator_identity_has_what_it_uses(
    operator_kubeconfig: Path, make_kube_api: KubeApiFactory
) -> None:
    api = make_kube_api(operator_kubeconfig)
    who = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
    assert who.status.user_info.username == "system:serviceaccount:regtask-system:regtask-operator"
    assert can(api, "patch", "registrytasks", "regtask.io", "any-ns", subresource="status")
    assert can(api, "create", "jobs", "batch", "rt-some-tenant")
    assert can(api, "patch", "networkpolicies", "networking.k8s.io", "rt-some-tenant")
    # Maintenance deletes a finished task past its ttlSecondsAfterFinished (delete_expired):
    # without this verb every expired task stayed, in etcd and in the operator's memory.
    assert can(api, "delete", "registrytasks", "regtask.io", "regtask-system")
    assert can(api, "list", "pods", "", "rt-some-tenant")  # a Job's pods, for status.job
    # The drift repair lists the fences cluster-wide and applies only what drifted.
    for resource, group in (
        ("serviceaccounts", ""),
        ("resourcequotas", ""),
        ("limitranges", ""),
        ("networkpolicies", "networking.k8s.io"),
    ):
        assert can(api, "list", resource, group, None), resource


@pytest.mark.parametrize(
    ("verb", "resource", "group"),
    [
        ("get", "secrets", ""),  # runners' tokens are projected by the kubelet: no Secrets
        ("list", "secrets", ""),
        ("create", "secrets", ""),
        ("create", "pods", ""),
        ("get", "pods", ""),  # pods are listed by their Job's UID, nothing more
        ("delete", "pods", ""),
        ("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
        ("delete", "customresourcedefinitions", "apiextensions.k8s.io"),
        ("update", "registrytasks", "regtask.io"),
        ("create", "registrytasks", "regtask.io"),
    ],
)
def test_requests_outside_the_rbac_are_refused(
    operator_kubeconfig: Path, make_kube_api: KubeApiFactory, verb: str, resource: str, group: str
) -> None:
    api = make_kube_api(operator_kubeconfig)
    assert not can(api, verb, resource, group, "regtask-system")


def test_reading_a_secret_is_forbidden_for_real(
    operator_kubeconfig: Path, make_kube_api: KubeApiFactory
) -> None:
    api = make_kube_api(operator_kubeconfig)
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(api).list_namespaced_secret("regtask-system")
    assert info.value.status == 403
