"""Idle tenant namespaces against the real API server: what it guarantees, not a fake.

The operator's own client (``regtask_operator.kube``) logged in with Kopf's kubeconfig login,
as the operator process does outside a pod.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import kopf
import pytest
from kubernetes import client

from regtask import naming
from regtask.timeutil import iso_z, utc_now
from regtask_dev.kind import KindCluster
from regtask_operator import isolation
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, default_login
from regtask_operator.tenants import Tenants

pytestmark = pytest.mark.kube

SETTINGS = OperatorSettings(namespace="regtask-test", namespace_idle_seconds=600)


@pytest.fixture
async def operator_kube(
    cluster: KindCluster, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Kube]:
    monkeypatch.setenv("KUBECONFIG", str(Path(cluster.kubeconfig_path)))
    kube = await Kube.connect(default_login(kopf.OperatorSettings()))
    try:
        yield kube
    finally:
        await kube.close()


def tenant_namespace(api: client.ApiClient, user_id: str, last_used: str) -> str:
    name = naming.tenant_namespace(user_id, "idleco")
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
                annotations={
                    naming.ANNOTATION_USER: user_id,
                    naming.ANNOTATION_COMPANY: "idleco",
                    isolation.ANNOTATION_LAST_USED: last_used,
                },
            )
        )
    )
    return name


def alive(api: client.ApiClient, name: str) -> bool:
    found = client.CoreV1Api(api).read_namespace(name)
    return found.metadata.deletion_timestamp is None


async def test_a_namespace_used_after_the_idle_check_is_not_deleted(
    kube_api: client.ApiClient, operator_kube: Kube
) -> None:
    """Another replica's admission marks the namespace used between the listing and the
    DELETE: the delete carries the listed resourceVersion, the API server refuses it (409), the
    namespace lives. Before: deleted under the new task."""
    old = iso_z(utc_now() - timedelta(hours=2))
    user = f"idle{secrets.token_hex(3)}"
    name = tenant_namespace(kube_api, user, old)

    async def busy_and_meanwhile_used() -> set[str]:
        client.CoreV1Api(kube_api).patch_namespace(
            name,
            {"metadata": {"annotations": {isolation.ANNOTATION_LAST_USED: iso_z(utc_now())}}},
        )
        return set()

    owner = Tenants(operator_kube, SETTINGS, lambda _: 10)
    assert name not in await owner.remove_idle(busy_and_meanwhile_used)
    assert alive(kube_api, name)

    async def not_busy() -> set[str]:
        return set()

    # Unchanged since listed, and idle: removed (the precondition holds).
    client.CoreV1Api(kube_api).patch_namespace(
        name, {"metadata": {"annotations": {isolation.ANNOTATION_LAST_USED: old}}}
    )
    assert name in await owner.remove_idle(not_busy)
    assert not alive(kube_api, name)


async def test_a_task_admitted_after_the_idle_check_keeps_its_namespace(
    kube_api: client.ApiClient, operator_kube: Kube
) -> None:
    """This process admitted a task into the namespace after `busy` was read: checked again
    just before the DELETE."""
    user = f"idle{secrets.token_hex(3)}"
    name = tenant_namespace(kube_api, user, iso_z(utc_now() - timedelta(hours=2)))
    active: set[str] = set()

    async def busy_then_admitted() -> set[str]:
        active.add(name)  # the scheduler admits a task of this tenant right now
        return set()

    owner = Tenants(operator_kube, SETTINGS, lambda _: 10, lambda: set(active))
    assert name not in await owner.remove_idle(busy_then_admitted)
    assert alive(kube_api, name)
    client.CoreV1Api(kube_api).delete_namespace(name)
