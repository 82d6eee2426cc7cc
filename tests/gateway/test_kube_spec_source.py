"""The gateway's production spec source: the RegistryTask CR on the real kube-apiserver."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from regtask.crmodels import API_GROUP, API_VERSION, API_VERSION_FULL, TASK_PLURAL, TaskInput
from regtask.naming import task_resource_name
from regtask.tasktypes import TaskType
from regtask_dev.kind import KindCluster
from regtask_gateway.taskspec import KubeTaskSpecSource, TaskNotFound
from tests.gateway.helpers import make_spec

pytestmark = pytest.mark.kube


async def test_reads_the_spec_of_the_tasks_cr(
    cluster: KindCluster, kube_api: client.ApiClient, control_namespace: str
) -> None:
    spec = make_spec(
        "doc_analysis_Job_42",
        TaskType.DOCUMENT_ANALYSIS,
        user_id="user@example.com",
        inputs=[TaskInput(name="document", value="hello")],
        parameters={"summary": "true"},
        max_duration_seconds=120,
    )
    body: Any = {
        "apiVersion": API_VERSION_FULL,
        "kind": "RegistryTask",
        "metadata": {"name": task_resource_name(spec.task_id)},
        "spec": spec.to_wire(),
    }
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        API_GROUP, API_VERSION, control_namespace, TASK_PLURAL, body
    )
    source = await KubeTaskSpecSource.connect(control_namespace, str(cluster.kubeconfig_path))
    try:
        read = await source.get(spec.task_id)
        with pytest.raises(TaskNotFound):
            await source.get("doc_analysis_missing")
    finally:
        await source.close()
    assert read == spec
