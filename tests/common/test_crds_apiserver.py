"""The generated CRDs on the real kube-apiserver: schema validation, status, CEL, columns."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regtask.crmodels import API_GROUP, API_VERSION
from regtask_dev.stack import apply_crds
from tests.operator.test_operator_lifecycle import as_dict

pytestmark = pytest.mark.kube

VALID: dict[str, Any] = {
    "taskId": "doc_analysis_job456",
    "taskType": "document_analysis",
    "userId": "user123",
    "companyId": "company_abc",
    "inputs": [{"name": "document", "value": "Invoice 42"}],
}


def task_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "RegistryTask",
        "metadata": {"name": name},
        "spec": spec,
    }


def create(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> Any:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "registrytasks", task_body(name, spec)
    )


def rejection(api: client.ApiClient, namespace: str, spec: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as info:
        create(api, namespace, "bad", spec)
    assert info.value.status == 422, info.value.body
    return str(json.loads(info.value.body or "{}")["message"])


def test_valid_task_is_accepted_with_defaults(
    kube_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    created = create(kube_api, namespace, "ok", VALID)
    assert created["spec"]["priority"] == "normal"  # defaulted by the apiserver
    assert created["spec"]["cancel"] is False


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"userId": None}, "spec.userId"),
        ({"taskType": "mining_bitcoin"}, "spec.taskType"),
        ({"maxDurationSeconds": -5}, "spec.maxDurationSeconds"),
        ({"inputs": [{"name": "document", "value": "x" * 70_000}]}, "spec.inputs[0].value"),
        ({"companyId": "acme:corp"}, "spec.companyId"),
        ({"inputs": [{"name": "document"}]}, "exactly one of value or ref"),
    ],
)
def test_invalid_tasks_are_rejected_naming_the_field(
    kube_api: client.ApiClient,
    crds: list[str],
    namespace: str,
    change: dict[str, Any],
    field: str,
) -> None:
    spec = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    assert field in rejection(kube_api, namespace, spec)


def test_identity_is_immutable_and_cancel_is_final(
    kube_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    api = client.CustomObjectsApi(kube_api)
    create(kube_api, namespace, "imm", VALID)
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "registrytasks", "imm", {"spec": {"userId": "eve"}}
        )
    assert info.value.status == 422 and "immutable" in info.value.body
    api.patch_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "registrytasks", "imm", {"spec": {"cancel": True}}
    )
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "registrytasks", "imm", {"spec": {"cancel": False}}
        )
    assert "cannot be resumed" in info.value.body


def test_status_is_a_subresource(
    kube_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    api = client.CustomObjectsApi(kube_api)
    create(kube_api, namespace, "st", VALID)
    # status in a main-resource patch is ignored ...
    api.patch_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "registrytasks", "st", {"status": {"phase": "Running"}}
    )
    body = as_dict(
        api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "registrytasks", "st")
    )
    # (the apiserver shows the CRD's status default, never the patched phase)
    assert body["status"] == {"phase": "Queued"}
    # ... and validated through /status
    api.patch_namespaced_custom_object_status(
        API_GROUP,
        API_VERSION,
        namespace,
        "registrytasks",
        "st",
        {"status": {"phase": "Running", "progress": 45}},
    )
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            namespace,
            "registrytasks",
            "st",
            {"status": {"progress": 150}},
        )
    assert info.value.status == 422 and "status.progress" in info.value.body


def test_printer_columns_as_kubectl_sees_them(
    kube_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    create(kube_api, namespace, "cols", VALID)
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/registrytasks"
    # The admin kubeconfig authenticates with a client certificate: no header to add.
    raw = kube_api.call_api(
        "GET",
        kube_api.configuration.host + path,
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    raw.read()
    response = json.loads(raw.data or b"{}")
    columns = [c["name"] for c in response["columnDefinitions"]]
    assert columns[:7] == ["Name", "Phase", "Type", "User", "Company", "Progress", "Queue"]
    row = response["rows"][0]["cells"]
    assert row[0] == "cols" and row[2] == "document_analysis" and row[3] == "user123"


def test_short_name_and_category(kube_api: client.ApiClient, crds: list[str]) -> None:
    resources = client.CustomObjectsApi(kube_api).get_api_resources(API_GROUP, API_VERSION)
    by_name = {r.name: r for r in resources.resources}
    assert "rt" in by_name["registrytasks"].short_names
    assert "regtask" in by_name["registrytasks"].categories
    assert "cq" in by_name["companyquotas"].short_names


def test_applying_the_crds_again_replaces_them(kube_api: client.ApiClient, crds: list[str]) -> None:
    """A second apply (a cluster where the chart installed them first) replaces, not fails."""
    assert apply_crds(kube_api) == crds


def test_company_quota_token_budgets_are_optional_and_validated(
    kube_api: client.ApiClient, crds: list[str], namespace: str
) -> None:
    """Issue 18: maxLlmTokensPerHour/PerDay are additions: absent is valid (no limit), set
    they are kept, negative is refused by the apiserver naming the field."""
    api = client.CustomObjectsApi(kube_api)

    def quota(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "CompanyQuota",
            "metadata": {"name": name},
            "spec": {"companyId": name, **spec},
        }

    plain = api.create_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "companyquotas", quota("plain")
    )
    assert "maxLlmTokensPerHour" not in plain["spec"]
    assert plain["spec"]["maxLlmRequestsPerHour"] == 1000
    budgets = api.create_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        namespace,
        "companyquotas",
        quota("budgets", maxLlmTokensPerHour=50_000, maxLlmTokensPerDay=400_000),
    )
    assert (budgets["spec"]["maxLlmTokensPerHour"], budgets["spec"]["maxLlmTokensPerDay"]) == (
        50_000,
        400_000,
    )
    with pytest.raises(ApiException) as info:
        api.create_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "companyquotas", quota("bad", maxLlmTokensPerDay=-1)
        )
    assert info.value.status == 422
    assert "spec.maxLlmTokensPerDay" in str(json.loads(info.value.body or "{}")["message"])
