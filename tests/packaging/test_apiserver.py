"""Everything the chart renders and everything in manifests/ is accepted by the real apiserver.

Server-side apply with ``dryRun=All``: the apiserver runs defaulting, validation (CRD schemas and
CEL rules included) and admission, and persists nothing. CRDs are applied for real first: the
project's (``crds`` fixture), Kopf's peering CRDs from the chart, and a minimal stand-in for the
Prometheus Operator's ServiceMonitor CRD. The platform's pods are also dry-run as Pods in a
namespace enforcing the restricted Pod Security Standard.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from regtask_dev.stack import apply_crds, ensure_namespace
from tests.packaging.chart import (
    CHART,
    MANIFESTS,
    Obj,
    find,
    kustomization_resources,
    load_docs,
    manifests_objects,
    render,
    value_set_id,
    value_sets,
)

pytestmark = pytest.mark.kube

FIELD_MANAGER = "regtask-packaging-test"
# Where value sets are rendered: another namespace than manifests/ uses, to prove templating.
CHART_NAMESPACE = "regtask-pkg"

# Enough of monitoring.coreos.com's CRD for the apiserver to serve ServiceMonitors; the real one
# comes with the Prometheus Operator.
SERVICE_MONITOR_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
            "listKind": "ServiceMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def dynamic(
    kube_api: client.ApiClient, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DynamicClient]:
    """A dynamic client once every CRD the rendered objects need is served."""
    # apply_crds reads one document per file.
    extra = tmp_path_factory.mktemp("crds")
    peering = load_docs(CHART / "crds" / "kopf-peering.yaml")
    for doc in [*peering, SERVICE_MONITOR_CRD]:
        (extra / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    apply_crds(kube_api, extra)
    for namespace in ("regtask-system", CHART_NAMESPACE):
        ensure_namespace(kube_api, namespace)
    yield DynamicClient(kube_api)


def dry_run_apply(dyn: DynamicClient, obj: Obj) -> str | None:
    """None when the apiserver accepts the object, else its answer."""
    try:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        dyn.server_side_apply(
            resource,
            body=obj,
            namespace=obj["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            dry_run="All",
        )
    except (DynamicApiError, ApiException) as exc:
        return f"{obj['kind']}/{obj['metadata']['name']}: {exc}"
    except Exception as exc:  # noqa: BLE001 - discovery errors name the missing kind
        return f"{obj['kind']}/{obj['metadata']['name']}: {type(exc).__name__}: {exc}"
    return None


def assert_accepted(dyn: DynamicClient, objects: list[Obj]) -> None:
    refused = [answer for obj in objects if (answer := dry_run_apply(dyn, obj)) is not None]
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("values", value_sets(), ids=value_set_id)
def test_chart_objects_are_accepted(dynamic: DynamicClient, values: Path | None) -> None:
    objects = render(values, namespace=CHART_NAMESPACE)
    assert objects
    # The namespaces the chart itself creates (operator.shards' control namespaces): a dry run
    # of their Namespace objects creates nothing, and the objects inside them need them.
    for obj in objects:
        if obj["kind"] == "Namespace":
            ensure_namespace(dynamic.client, obj["metadata"]["name"])
    assert_accepted(dynamic, objects)


def test_manifests_are_accepted(dynamic: DynamicClient) -> None:
    objects = manifests_objects()
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "ClusterRole"} <= kinds
    assert_accepted(dynamic, objects)


def test_samples_are_accepted(dynamic: DynamicClient) -> None:
    samples = [
        doc for path in kustomization_resources(MANIFESTS / "samples") for doc in load_docs(path)
    ]
    assert len(samples) == 4
    assert_accepted(dynamic, samples)


@pytest.fixture(scope="module")
def restricted_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    name = f"pkg-restricted-{secrets.token_hex(3)}"
    body: Any = {
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        }
    }
    client.CoreV1Api(kube_api).create_namespace(body)
    yield name
    client.CoreV1Api(kube_api).delete_namespace(name)


def pods_of(objects: list[Obj], namespace: str, api: client.ApiClient) -> list[Obj]:
    """The Deployments' pods, in ``namespace``, with their ServiceAccounts created there (the
    ServiceAccount admission plugin refuses a pod whose account does not exist)."""
    for deployment in find(objects, "Deployment"):
        account = deployment["spec"]["template"]["spec"].get("serviceAccountName")
        if account:
            body: Any = {"metadata": {"name": account}}
            try:
                client.CoreV1Api(api).create_namespaced_service_account(namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": deployment["metadata"]["name"], "namespace": namespace},
            "spec": deployment["spec"]["template"]["spec"],
        }
        for deployment in find(objects, "Deployment")
    ]


@pytest.mark.parametrize("values", value_sets(), ids=value_set_id)
def test_platform_pods_pass_restricted_pod_security(
    dynamic: DynamicClient,
    kube_api: client.ApiClient,
    restricted_namespace: str,
    values: Path | None,
) -> None:
    """Pod Security admission enforces on Pods (not Deployments): dry-run the pods themselves."""
    pods = pods_of(render(values, namespace=CHART_NAMESPACE), restricted_namespace, kube_api)
    assert len(pods) >= 2
    assert_accepted(dynamic, pods)


def test_restricted_namespace_does_refuse_a_privileged_pod(
    dynamic: DynamicClient, kube_api: client.ApiClient, restricted_namespace: str
) -> None:
    """The check above would pass vacuously if Pod Security admission were off."""
    pod = pods_of(render(None, namespace=CHART_NAMESPACE), restricted_namespace, kube_api)[0]
    pod["spec"]["securityContext"] = {}
    for container in pod["spec"]["containers"]:
        container["securityContext"] = {"privileged": True}
    answer = dry_run_apply(dynamic, pod)
    assert answer is not None and "PodSecurity" in answer, answer


def test_dry_run_really_validates(dynamic: DynamicClient) -> None:
    """The acceptance above would pass vacuously if the dry run skipped validation."""
    deployment = find(render(None, namespace=CHART_NAMESPACE), "Deployment")[0]
    deployment["spec"]["replicas"] = -1
    answer = dry_run_apply(dynamic, deployment)
    assert answer is not None and "replicas" in answer, answer
    task = load_docs(MANIFESTS / "samples" / "registrytask-llm-conversation.yaml")[0]
    task["spec"]["taskType"] = "mining_bitcoin"
    answer = dry_run_apply(dynamic, task)
    assert answer is not None and "taskType" in answer, answer
