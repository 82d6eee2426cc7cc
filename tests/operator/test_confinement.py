"""The operator's confinement (issue 16, item 1): with the operator's own ServiceAccount token,
what a thief would try is refused by the chart's ValidatingAdmissionPolicies, and what the
operator does still passes.

The operator's ClusterRole alone allows every attempt below (it needs cluster-wide namespaces
and Jobs); the policies, applied by the ``operator_kubeconfig`` fixture as the chart renders
them, are what refuses them. Writes that would start pods are sent as server-side dry runs:
admission runs in full, nothing is stored.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from regtask import naming
from regtask.crmodels import RegistryTaskSpec
from regtask_operator import isolation
from regtask_operator.config import OperatorSettings
from regtask_operator.jobs import build_job
from regtask_operator.kube import FIELD_MANAGER
from tests.fixtures.kube import KubeApiFactory, delete_namespace

pytestmark = pytest.mark.kube

POLICY = "ValidatingAdmissionPolicy"


def send(
    api: client.ApiClient,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    content_type: str = "application/json",
    query: str = "",
) -> tuple[int, dict[str, Any]]:
    """One raw request as the client's user (its bearer token: ``call_api`` adds none
    itself): (HTTP status, decoded answer)."""
    url = api.configuration.host + path + (f"?{query}" if query else "")
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    for auth in api.configuration.auth_settings().values():
        if auth["in"] == "header":
            headers[auth["key"]] = auth["value"]
    # The client serialises a dict for JSON types itself; apply-patch+yaml takes it as text.
    payload: Any = body if body is None or "json" in content_type else json.dumps(body)
    response = api.call_api(method, url, header_params=headers, body=payload)
    response.read()
    answer = json.loads(response.data or b"{}")
    return response.status, answer if isinstance(answer, dict) else {}


def apply(api: client.ApiClient, path: str, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Server-side apply, exactly as the operator's ``Kube.apply`` sends it."""
    return send(
        api,
        "PATCH",
        path,
        manifest,
        content_type="application/apply-patch+yaml",
        query=f"fieldManager={FIELD_MANAGER}&force=true",
    )


def assert_refused(answer: tuple[int, dict[str, Any]], words: str) -> None:
    status, body = answer
    message = str(body.get("message", ""))
    assert status == 403, (status, message)
    assert POLICY in message and words in message, message


def merge_patch(api: client.ApiClient, path: str, patch: dict[str, Any]) -> tuple[int, Any]:
    return send(api, "PATCH", path, patch, content_type="application/merge-patch+json")


@pytest.fixture
def operator_api(operator_kubeconfig: Path, make_kube_api: KubeApiFactory) -> client.ApiClient:
    return make_kube_api(operator_kubeconfig)


@pytest.fixture
def tenant(operator_api: client.ApiClient, kube_api: client.ApiClient) -> Iterator[str]:
    """A tenant namespace with its fences, applied with the operator's token exactly as
    admission applies them (the operator's own path, which the policies must let through)."""
    user, company = f"confined-{secrets.token_hex(3)}", "company_confinement"
    settings = OperatorSettings()
    manifest = isolation.namespace_manifest(user, company, "2026-01-01T00:00:00Z")
    name = manifest["metadata"]["name"]
    status, body = apply(operator_api, f"/api/v1/namespaces/{name}", manifest)
    assert status in (200, 201), body
    for fence in isolation.namespaced_manifests(user, company, settings, 3):
        kind = fence["kind"]
        prefix = "/api/v1" if fence["apiVersion"] == "v1" else f"/apis/{fence['apiVersion']}"
        plural = {"NetworkPolicy": "networkpolicies"}.get(kind, kind.lower() + "s")
        path = f"{prefix}/namespaces/{name}/{plural}/{fence['metadata']['name']}"
        status, body = apply(operator_api, path, fence)
        assert status in (200, 201), (kind, body)
    yield name
    delete_namespace(kube_api, name)


def runner_job(runner_image: str, namespace: str) -> dict[str, Any]:
    """The Job the operator would create for a task, moved into ``namespace``."""
    spec = RegistryTaskSpec.model_validate(
        {
            "taskId": f"confined_{secrets.token_hex(3)}",
            "taskType": "llm_conversation",
            "userId": "confined",
            "companyId": "company_confinement",
        }
    )
    job = build_job(
        spec, "task-x", "regtask-system", "uid-1", OperatorSettings(runner_image=runner_image)
    )
    job["metadata"]["namespace"] = namespace
    return job


def create_job(api: client.ApiClient, job: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    namespace = job["metadata"]["namespace"]
    return send(api, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job, query="dryRun=All")


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


# ------------------------------------------------------------------ what still passes


def test_the_operators_own_calls_pass(
    operator_api: client.ApiClient, tenant: str, runner_image: str
) -> None:
    status, body = create_job(operator_api, runner_job(runner_image, tenant))
    assert status == 201, body
    # The last-used refresh and a drift repair are applies on an existing tenant namespace.
    manifest = isolation.namespace_manifest(
        *_tenant_ids(operator_api, tenant), "2026-02-01T00:00:00Z"
    )
    status, body = apply(operator_api, f"/api/v1/namespaces/{tenant}", manifest)
    assert status == 200, body
    # Idle removal.
    status, body = send(operator_api, "DELETE", f"/api/v1/namespaces/{tenant}")
    assert status == 200, body


def _tenant_ids(api: client.ApiClient, namespace: str) -> tuple[str, str]:
    """The tenant's raw ids, from its namespace's annotations (the operator may list
    namespaces, not get one)."""
    _, listed = send(api, "GET", "/api/v1/namespaces")
    [body] = [n for n in listed["items"] if n["metadata"]["name"] == namespace]
    annotations = body["metadata"]["annotations"]
    return annotations[naming.ANNOTATION_USER], annotations[naming.ANNOTATION_COMPANY]


# ------------------------------------------------------------------ Jobs


def test_a_job_in_kube_system_is_refused(operator_api: client.ApiClient, runner_image: str) -> None:
    assert_refused(
        create_job(operator_api, runner_job(runner_image, "kube-system")),
        "only create or delete Jobs inside its tenant namespaces",
    )


def test_a_job_in_an_unmanaged_namespace_is_refused(
    operator_api: client.ApiClient, runner_image: str, namespace: str
) -> None:
    assert_refused(
        create_job(operator_api, runner_job(runner_image, namespace)),
        "only create or delete Jobs inside its tenant namespaces",
    )


def _other_account(job: dict[str, Any]) -> None:
    pod_spec(job)["serviceAccountName"] = "default"


def _api_token(job: dict[str, Any]) -> None:
    pod_spec(job)["automountServiceAccountToken"] = True


def _other_image(job: dict[str, Any]) -> None:
    pod_spec(job)["containers"][0]["image"] = "docker.io/library/busybox:1.37"


def _init_container(job: dict[str, Any]) -> None:
    runner = copy.deepcopy(pod_spec(job)["containers"][0])
    runner["name"] = "init"
    pod_spec(job)["initContainers"] = [runner]


def _privileged(job: dict[str, Any]) -> None:
    context = pod_spec(job)["containers"][0]["securityContext"]
    context["privileged"] = True
    context["allowPrivilegeEscalation"] = True  # the API server refuses privileged without it


def _escalation(job: dict[str, Any]) -> None:
    pod_spec(job)["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _root(job: dict[str, Any]) -> None:
    pod_spec(job)["securityContext"]["runAsNonRoot"] = False
    pod_spec(job)["containers"][0]["securityContext"]["runAsNonRoot"] = False


def _capability(job: dict[str, Any]) -> None:
    pod_spec(job)["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]


def _host_network(job: dict[str, Any]) -> None:
    pod_spec(job)["hostNetwork"] = True


def _host_path(job: dict[str, Any]) -> None:
    pod_spec(job)["volumes"].append({"name": "host", "hostPath": {"path": "/"}})


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (_other_account, "runs as the ServiceAccount regtask-runner"),
        (_api_token, "runs as the ServiceAccount regtask-runner"),
        (_other_image, "runs the configured runner image only"),
        (_init_container, "runs the configured runner image only"),
        (_privileged, "restricted securityContext"),
        (_escalation, "restricted securityContext"),
        (_root, "restricted securityContext"),
        (_capability, "restricted securityContext"),
        (_host_network, "restricted securityContext"),
        (_host_path, "restricted securityContext"),
    ],
    ids=lambda value: getattr(value, "__name__", "").strip("_") or None,
)
def test_a_job_not_as_the_operator_builds_it_is_refused_in_a_tenant_namespace(
    operator_api: client.ApiClient, tenant: str, runner_image: str, tamper: Any, words: str
) -> None:
    job = runner_job(runner_image, tenant)
    tamper(job)
    assert_refused(create_job(operator_api, job), words)


# ------------------------------------------------------------------ namespaces


@pytest.mark.parametrize("level", ["enforce", "warn", "audit"])
def test_a_tenant_namespace_relabelled_privileged_is_refused(
    operator_api: client.ApiClient, tenant: str, level: str
) -> None:
    patch = {"metadata": {"labels": {f"pod-security.kubernetes.io/{level}": "privileged"}}}
    assert_refused(
        merge_patch(operator_api, f"/api/v1/namespaces/{tenant}", patch),
        "may only set Pod Security restricted",
    )


def test_removing_a_tenant_namespaces_enforce_label_is_refused(
    operator_api: client.ApiClient, tenant: str
) -> None:
    patch = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": None}}}
    assert_refused(
        merge_patch(operator_api, f"/api/v1/namespaces/{tenant}", patch),
        "may only set Pod Security restricted",
    )


@pytest.mark.parametrize("target", ["kube-system", "test-namespace"])
def test_an_unmanaged_namespace_cannot_be_patched(
    operator_api: client.ApiClient, namespace: str, target: str
) -> None:
    name = namespace if target == "test-namespace" else target
    for labels in (
        {"pod-security.kubernetes.io/enforce": "privileged"},
        {naming.LABEL_MANAGED_BY: naming.MANAGED_BY},  # adopting it
    ):
        assert_refused(
            merge_patch(
                operator_api, f"/api/v1/namespaces/{name}", {"metadata": {"labels": labels}}
            ),
            "only create, change or delete its tenant namespaces",
        )


def test_an_unmanaged_namespace_named_like_a_tenant_cannot_be_adopted(
    operator_api: client.ApiClient, kube_api: client.ApiClient
) -> None:
    """``rt-...`` without the managed-by label (someone else's): giving it the label, Pod
    Security restricted and all, is refused."""
    name = f"rt-someone-else-{secrets.token_hex(3)}"
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    try:
        manifest = isolation.namespace_manifest("someone", "else", "2026-01-01T00:00:00Z")
        manifest["metadata"]["name"] = name
        assert_refused(
            apply(operator_api, f"/api/v1/namespaces/{name}", manifest),
            "may not take over a namespace it does not manage",
        )
    finally:
        delete_namespace(kube_api, name)


def test_an_unmanaged_namespace_cannot_be_deleted(
    operator_api: client.ApiClient, namespace: str
) -> None:
    assert_refused(
        send(operator_api, "DELETE", f"/api/v1/namespaces/{namespace}"),
        "only create, change or delete its tenant namespaces",
    )


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("evil-{}", {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}),  # no prefix
        ("rt-evil-{}", {}),  # no managed-by label
    ],
    ids=["without-prefix", "without-label"],
)
def test_a_namespace_outside_the_tenant_shape_cannot_be_created(
    operator_api: client.ApiClient, name: str, labels: dict[str, str]
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name.format(secrets.token_hex(3)),
            "labels": {**labels, "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    assert_refused(
        send(operator_api, "POST", "/api/v1/namespaces", body, query="dryRun=All"),
        "only create, change or delete its tenant namespaces",
    )


def test_a_tenant_namespace_cannot_be_created_without_restricted_pod_security(
    operator_api: client.ApiClient,
) -> None:
    manifest = isolation.namespace_manifest("confined", "company_x", "2026-01-01T00:00:00Z")
    manifest["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "privileged"
    assert_refused(
        send(operator_api, "POST", "/api/v1/namespaces", manifest, query="dryRun=All"),
        "may only set Pod Security restricted",
    )


# ------------------------------------------------------------------ fences


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/apis/networking.k8s.io/v1/namespaces/kube-system/networkpolicies",
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "deny-everything"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            },
        ),
        (
            "/api/v1/namespaces/kube-system/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "stolen"}},
        ),
        (
            "/api/v1/namespaces/kube-system/resourcequotas",
            {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "starve"},
                "spec": {"hard": {"pods": "0"}},
            },
        ),
    ],
    ids=["networkpolicy", "serviceaccount", "resourcequota"],
)
def test_fences_outside_tenant_namespaces_are_refused(
    operator_api: client.ApiClient, path: str, body: dict[str, Any]
) -> None:
    assert_refused(
        send(operator_api, "POST", path, body, query="dryRun=All"),
        "only write inside its tenant namespaces",
    )


def test_the_policies_type_check_without_warnings(
    operator_kubeconfig: Path, kube_api: client.ApiClient
) -> None:
    """A typo in a field name would only show as a type-check warning (and a policy that
    never matches what it should): the API server's own checker finds none."""
    admission = client.AdmissionregistrationV1Api(kube_api)
    policies = [
        p
        for p in admission.list_validating_admission_policy().items
        if p.metadata.name.startswith("regtask-operator-")
    ]
    assert sorted(str(p.metadata.name) for p in policies) == [
        "regtask-operator-fences",
        "regtask-operator-jobs",
        "regtask-operator-namespaces",
    ]
    for policy in policies:
        checking = policy.status.type_checking if policy.status else None
        warnings = (checking.expression_warnings if checking else None) or []
        assert not warnings, (policy.metadata.name, warnings)
