"""The tenant namespace of one (user, company) pair and everything that fences it in.

Desired state only (plain dicts, pure functions); :mod:`regtask_operator.tenants` applies it
with server-side apply, which both creates and repairs drift, and decides when; :func:`holds`
tells a live object that still holds what was applied from one that drifted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from regtask import naming
from regtask_operator import quantity
from regtask_operator.config import OperatorSettings

RUNNER_SERVICE_ACCOUNT = naming.RUNNER_SERVICE_ACCOUNT
ANNOTATION_LAST_USED = "regtask.io/last-used"


def tenant_labels(user_id: str, company_id: str) -> dict[str, str]:
    return {
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        naming.LABEL_TENANT: naming.tenant_label(user_id, company_id),
        naming.LABEL_COMPANY: naming.company_label(company_id),
    }


def namespace_manifest(
    user_id: str,
    company_id: str,
    last_used: str,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The tenant namespace; ``extra_labels``: the operator's shard label."""
    labels = {**tenant_labels(user_id, company_id), **(extra_labels or {})}
    labels.update(
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": naming.tenant_namespace(user_id, company_id),
            "labels": labels,
            "annotations": {
                naming.ANNOTATION_USER: user_id,
                naming.ANNOTATION_COMPANY: company_id,
                ANNOTATION_LAST_USED: last_used,
            },
        },
    }


def tenant_quota(max_tasks: int, settings: OperatorSettings) -> dict[str, str]:
    """The tenant's ResourceQuota: room for ``max_tasks`` running runners (the company's
    maxTasksPerUser) and as many pods still terminating after a cancel, at the runners'
    requests and limits, so that no admitted task waits for a pod.

    No object count on Jobs: a finished Job counts until its ``ttlSecondsAfterFinished``
    removes it, so a count quota would refuse a tenant's Jobs after that many tasks per TTL
    (the operator's admission already bounds the running ones).
    """
    runners = 2 * max_tasks
    return {
        "pods": str(runners),
        "requests.cpu": quantity.times(settings.runner_cpu_request, runners),
        "limits.cpu": quantity.times(settings.runner_cpu_limit, runners),
        "requests.memory": quantity.times(settings.runner_memory_request, runners),
        "limits.memory": quantity.times(settings.runner_memory_limit, runners),
        "services": "0",
        "persistentvolumeclaims": "0",
    }


def namespaced_manifests(
    user_id: str, company_id: str, settings: OperatorSettings, max_tasks: int
) -> list[dict[str, Any]]:
    """NetworkPolicies, ResourceQuota, LimitRange and ServiceAccount of the tenant namespace;
    ``max_tasks``: the company's maxTasksPerUser (the quota's size)."""
    namespace = naming.tenant_namespace(user_id, company_id)
    labels = tenant_labels(user_id, company_id)

    def meta(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": labels}

    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(RUNNER_SERVICE_ACCOUNT),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta("default-deny-all"),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta("allow-dns-and-gateway"),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                                },
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [
                            {"protocol": "UDP", "port": 53},
                            {"protocol": "TCP", "port": 53},
                        ],
                    },
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {
                                        "kubernetes.io/metadata.name": settings.namespace
                                    }
                                },
                                "podSelector": {"matchLabels": dict(settings.gateway_pod_labels)},
                            },
                            *(
                                {"ipBlock": {"cidr": cidr}}
                                for cidr in settings.gateway_egress_cidrs
                            ),
                        ],
                        "ports": [{"protocol": "TCP", "port": settings.gateway_port}],
                    },
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": meta("tenant-quota"),
            "spec": {"hard": tenant_quota(max_tasks, settings)},
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": meta("tenant-limits"),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {
                            "cpu": settings.runner_cpu_limit,
                            "memory": settings.runner_memory_limit,
                        },
                        "defaultRequest": {
                            "cpu": settings.runner_cpu_request,
                            "memory": settings.runner_memory_request,
                        },
                        "max": {
                            "cpu": settings.runner_cpu_limit,
                            "memory": settings.runner_memory_limit,
                        },
                    }
                ]
            },
        },
    ]


def holds(manifest: dict[str, Any], live: dict[str, Any]) -> bool:
    """Whether a live object still holds what ``manifest`` applies. ``apiVersion`` and ``kind``
    are not compared: the items of a list come without them."""
    return conforms({k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}, live)


def conforms(desired: Any, live: Any, quantities: bool = False) -> bool:
    """Whether ``live`` still holds every field of ``desired`` with its value.

    Fields only the server or others set (uid, defaults, status) are not drift, so this is a
    subset test: maps by key, lists element by element and of the same length. Under ``spec``
    two strings that are the same quantity are equal ("1Gi" is "1024Mi"): the API server
    stores quantities in its own canonical form. Hazard: a field the operator stopped setting
    is not seen as drift here; server-side apply removes it at the next real apply.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            key in live and conforms(value, live[key], quantities or key == "spec")
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(conforms(d, v, quantities) for d, v in zip(desired, live, strict=True))
        )
    if desired == live and type(desired) is type(live):
        return True
    if quantities and isinstance(desired, str) and isinstance(live, str):
        try:
            return quantity.parse(desired) == quantity.parse(live)
        except ValueError:
            return False
    return False
