"""Jobs that claim a task but are not its own (issue 16, item 2): anyone who may create a Job
somewhere can copy the operator's labels and annotations. Such a Job decides no task's outcome
and eats no user's slot; the task's Events say it was ignored."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from regtask import naming
from regtask.crmodels import Phase
from tests.operator.test_lifecycle_races import FakeApi, make, phase, see, step, yields

pytestmark = pytest.mark.unit


def recorded_events(controller: Any) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    controller.status.emit = lambda task, kind, reason, message: seen.append((task.task_id, reason))
    return seen


@pytest.mark.parametrize(
    "forgery",
    [
        {"namespace": "attacker-ns"},  # another namespace
        {"name": "rt-not-the-derived-name"},  # another name in the tenant namespace
        {"uid": "uid-of-someone-else"},  # the right place, another task's UID
    ],
)
async def test_a_forged_job_decides_nothing_and_is_reported(forgery: dict[str, str]) -> None:
    api = FakeApi(random.Random(7))
    controller = make(api)
    events = recorded_events(controller)
    key = await see(controller, "t1")
    await step(controller)
    await yields(40)
    task = controller.tracker.tasks[key]
    assert phase(task) is Phase.RUNNING
    real = api.jobs[(task.tenant_namespace, naming.job_name("t1"))]
    forged = copy.deepcopy(real)
    meta = forged["metadata"]
    meta["namespace"] = forgery.get("namespace", meta["namespace"])
    meta["name"] = forgery.get("name", meta["name"])
    if "uid" in forgery:
        meta["annotations"][naming.ANNOTATION_TASK_UID] = forgery["uid"]
    forged["status"] = {"failed": 3, "conditions": [{"type": "Failed", "status": "True"}]}
    await controller.job_seen(forged)
    await controller.job_seen(forged)  # reported once
    assert phase(task) is Phase.RUNNING  # before: Failed, by the forged Job
    assert events.count(("t1", "ForeignJobIgnored")) == 1


async def test_a_forged_live_job_for_no_known_task_takes_no_slot() -> None:
    """A Job naming a task that does not exist, with a victim's user and company in its
    annotations: the victim's next task still starts (one task per user here)."""
    api = FakeApi(random.Random(8))
    controller = make(api)
    key = await see(controller, "t1")
    task = controller.tracker.tasks[key]
    api.jobs[("attacker-ns", "rt-ghost")] = {
        "metadata": {
            "namespace": "attacker-ns",
            "name": "rt-ghost",
            "labels": {
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                naming.LABEL_TASK: "task-ghost",
            },
            "annotations": {
                naming.ANNOTATION_TASK_NAMESPACE: task.key.namespace,
                naming.ANNOTATION_TASK: "ghost",
                naming.ANNOTATION_USER: task.user_id,
                naming.ANNOTATION_COMPANY: task.company_id,
            },
        },
        "status": {},
    }
    await controller.reconcile()
    [admitted] = (await step(controller)).admitted  # before: waiting behind the ghost
    assert admitted.task_id == "t1"
