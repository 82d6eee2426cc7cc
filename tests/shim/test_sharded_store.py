"""The shim's task store and the gateway's spec source over three operator shards, on the kind
cluster's API server: a task is created in its company's shard namespace; reads, cancels, a
user's listing and the gateway's read for a runner find it whichever shard holds it (issue 19,
item 3; regtask.shards)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from kubernetes import client

from regtask import shards
from regtask.crmodels import API_GROUP, API_VERSION, TASK_KIND, RegistryTaskSpec
from regtask.registry import Registry
from regtask.tasktypes import TaskType
from regtask_dev.kind import KindCluster
from regtask_gateway.taskspec import KubeTaskSpecSource, TaskNotFound
from regtask_shim.console.source import ConsoleSource
from regtask_shim.taskstore import KubeTaskStore
from tests.fixtures.kube import create_namespace, delete_namespace
from tests.operator.test_shards import MINE, THEIRS

pytestmark = pytest.mark.kube


@pytest.fixture
def shard_base(kube_api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    """A base name whose three shard namespaces exist (and are deleted afterwards)."""
    base = create_namespace(kube_api, "shards")
    made = []
    for namespace in shards.all_control_namespaces(base, 3):
        client.CoreV1Api(kube_api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        made.append(namespace)
    yield base
    for namespace in [*made, base]:
        delete_namespace(kube_api, namespace)


def spec(task_id: str, company: str) -> RegistryTaskSpec:
    return RegistryTaskSpec(
        task_id=task_id,
        task_type=TaskType.DOCUMENT_ANALYSIS,
        user_id="shared_user",
        company_id=company,
    )


async def test_tasks_go_to_their_companys_shard_and_are_found_from_any(
    cluster: KindCluster, kube_api: client.ApiClient, shard_base: str
) -> None:
    store = KubeTaskStore(shard_base, cluster.kubeconfig_path, shards=3)
    try:
        assert (await store.create(spec("doc_analysis_s1", MINE))).created
        assert (await store.create(spec("doc_analysis_s2", THEIRS))).created
        again = await store.create(spec("doc_analysis_s2", THEIRS))
        assert not again.created and again.task.spec.company_id == THEIRS

        objects = client.CustomObjectsApi(kube_api)
        for task_id, company in (("doc_analysis_s1", MINE), ("doc_analysis_s2", THEIRS)):
            home = shards.company_namespace(shard_base, company, 3)
            listed = objects.list_namespaced_custom_object(
                API_GROUP, API_VERSION, home, "registrytasks"
            )["items"]
            assert [i["spec"]["taskId"] for i in listed] == [task_id]
            found = await store.get(task_id)
            assert found is not None and found.spec.company_id == company

        cancelled = await store.request_cancel("doc_analysis_s2")
        assert cancelled is not None and cancelled.spec.cancel
        assert await store.get("doc_analysis_nowhere") is None
        assert await store.request_cancel("doc_analysis_nowhere") is None
        listed_ids = {t.spec.task_id for t in await store.list_for_user("shared_user", 10)}
        assert listed_ids == {"doc_analysis_s1", "doc_analysis_s2"}
        await store.ping()
        source = await KubeTaskSpecSource.connect(
            shard_base, str(cluster.kubeconfig_path), shards=3
        )
        try:
            assert (await source.get("doc_analysis_s2")).company_id == THEIRS
            with pytest.raises(TaskNotFound):
                await source.get("doc_analysis_nowhere")
        finally:
            await source.close()
    finally:
        await store.close()


async def test_the_console_reads_tasks_and_their_events_in_every_shard(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    shard_base: str,
    redis_async: aioredis.Redis,
) -> None:
    """The console (its ConsoleSource) over three shards: every shard's tasks listed, each task
    found in its own shard's namespace, and its Events read there (where its operator posts
    them), not in the base namespace."""
    store = KubeTaskStore(shard_base, cluster.kubeconfig_path, shards=3)
    source = ConsoleSource(store, Registry(redis_async), timeout_s=10)
    core = client.CoreV1Api(kube_api)
    try:
        for task_id, company in (("doc_analysis_c1", MINE), ("doc_analysis_c2", THEIRS)):
            assert (await store.create(spec(task_id, company))).created
        listed = {o["spec"]["taskId"] for o in await source.tasks()}
        assert listed == {"doc_analysis_c1", "doc_analysis_c2"}
        for task_id, company in (("doc_analysis_c1", MINE), ("doc_analysis_c2", THEIRS)):
            home = shards.company_namespace(shard_base, company, 3)
            found = await source.task(task_id)
            assert found is not None and found["metadata"]["namespace"] == home
            core.create_namespaced_event(
                home,
                client.CoreV1Event(
                    metadata=client.V1ObjectMeta(generate_name="console-"),
                    involved_object=client.V1ObjectReference(
                        kind=TASK_KIND, name=found["metadata"]["name"], namespace=home
                    ),
                    reason="Admitted",
                    message=f"admitted {task_id}",
                    type="Normal",
                ),
            )
            events = await source.events(found)
            assert [e["message"] for e in events] == [f"admitted {task_id}"]
        assert await source.task("doc_analysis_nowhere") is None
    finally:
        await store.close()
