"""An operator shard admits only its own companies and touches only its own objects
(issue 19, item 3; regtask.shards). Driven through the real Controller with the lifecycle tests'
fake API server; the chart's rendering is tested in tests/packaging, the whole on kind in
tests/e2e."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from regtask import shards
from regtask.crmodels import CompanyQuotaSpec, Phase
from regtask_operator.admission import TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from regtask_operator.kube import Kube
from regtask_operator.tenants import Tenants
from tests.operator.test_lifecycle_races import FakeApi, FakeMirror, no_llm_use, phase, step
from tests.operator.test_tenants import FakeKube, namespace

pytestmark = pytest.mark.unit

SHARD_0 = "regtask-test-shard-0"
# Placed by SHA-256 (pinned in tests/common/test_shards.py): acme in shard 0, globex in 1.
MINE, THEIRS = "acme", "globex"


def shard_zero(api: FakeApi) -> Controller:
    settings = OperatorSettings(
        namespace="regtask-test", task_namespaces=SHARD_0, shard=0, shards=3
    )
    controller = Controller(settings, api, FakeMirror(), no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = True
    return controller


async def see(controller: Controller, task_id: str, company: str) -> TaskKey:
    key = TaskKey(SHARD_0, f"task-{task_id}")
    spec = {"taskId": task_id, "taskType": "document_analysis", "userId": "u1"}
    await controller.task_seen(
        key, f"uid-{task_id}", {**spec, "companyId": company}, {}, "2026-11-28T00:00:00Z"
    )
    return key


def test_the_companies_of_the_test_are_where_the_test_says() -> None:
    assert shards.shard_of(MINE, 3) == 0
    assert shards.shard_of(THEIRS, 3) == 1


async def test_a_shard_admits_its_companies_and_labels_their_jobs() -> None:
    api = FakeApi(random.Random(0))
    controller = shard_zero(api)
    key = await see(controller, "t1", MINE)
    [admitted] = (await step(controller)).admitted
    assert admitted.key == key
    assert phase(controller.tracker.tasks[key]) is Phase.RUNNING
    [job] = api.jobs.values()
    assert job["metadata"]["labels"][shards.LABEL_SHARD] == "0"


async def test_a_task_of_another_shards_company_is_refused_not_admitted() -> None:
    """Created by hand in the wrong namespace: admitting it would split the company's slots
    over two operators."""
    api = FakeApi(random.Random(0))
    controller = shard_zero(api)
    key = await see(controller, "t1", THEIRS)
    assert key not in controller.tracker.tasks
    assert (await step(controller)).admitted == []
    assert api.jobs == {}
    [written] = api.writes["task-t1"]
    assert written["phase"] == Phase.FAILED.value and written["reason"] == "InvalidSpec"
    assert "lives in shard 1 of 3 (namespace regtask-test-shard-1)" in written["message"]


async def test_a_company_quota_of_another_shards_company_is_ignored() -> None:
    controller = shard_zero(FakeApi(random.Random(0)))
    for company in (MINE, THEIRS):
        quota = CompanyQuotaSpec.model_validate({"companyId": company, "maxTasksPerUser": 3})
        await controller.quota_seen(TaskKey(SHARD_0, f"quota-{company}"), quota)
    assert set(controller.tracker.limits) == {MINE}


def test_selectors_name_the_shard_only_when_there_are_several() -> None:
    one = OperatorSettings()
    assert one.managed_selector == "app.kubernetes.io/managed-by=regtask-operator"
    assert one.handles_company(THEIRS)
    three = OperatorSettings(shard=2, shards=3)
    assert three.managed_selector == (
        "app.kubernetes.io/managed-by=regtask-operator,regtask.io/shard=2"
    )
    assert not three.handles_company(MINE)
    with pytest.raises(ValueError):
        OperatorSettings(shard=3, shards=3)


async def test_a_shards_idle_namespace_round_lists_only_its_own_namespaces() -> None:
    """Another shard's tenant namespaces are not this shard's to remove: the listing itself
    asks the API server for this shard's label."""
    kube = FakeKube([namespace("alice", MINE)])
    settings = OperatorSettings(namespace="regtask-test", shard=0, shards=3)
    tenants = Tenants(cast(Kube, kube), settings, lambda _company: 1)

    async def nothing_busy() -> set[str]:
        return set()

    await tenants.remove_idle(nothing_busy)
    assert kube.selectors == [settings.managed_selector]
    applied: Any = await tenants.ensure("alice", MINE)
    assert applied
    [ns] = [m for m in kube.applied if m["kind"] == "Namespace"]
    assert ns["metadata"]["labels"][shards.LABEL_SHARD] == "0"
