"""Issue 19, item 4: a finished task leaves the operator's memory once nothing can concern it.

The operator used to keep every finished task (its spec, lock and counters) until its TTL
deleted it (7 days by default): memory grew with the history, and every walk over the tracker
(scheduler step, reconcile, scrapes) with it. Now it leaves when its end is back from the API
server and its slot is free; one small entry (its TTL deadline, shared gauge labels) remains
until it is deleted. The hazards kept: an older watch event arriving after the end must not
track it anew (it stays until its end is seen), and a cancelled task keeps its slot until its
Job is gone.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from regtask import naming
from regtask.crmodels import Phase
from regtask_operator.admission import TaskKey
from regtask_operator.controller import Controller
from tests.operator.test_lifecycle_races import (
    NAMESPACE,
    FakeApi,
    deliver_deletions,
    make,
    phase,
    see,
    spec,
    step,
    yields,
)

pytestmark = pytest.mark.unit


def shown(api: FakeApi, key: TaskKey) -> dict[str, Any]:
    """The task's status as the API server has it now (every status patch merged)."""
    status: dict[str, Any] = {}
    for patch in api.writes.get(key.name, []):
        status.update(patch)
    return status


async def event(controller: Controller, key: TaskKey, status: dict[str, Any], **extra: Any) -> None:
    """A watch event of the task carrying ``status``."""
    task_id = key.name.removeprefix("task-")
    await controller.task_seen(
        key, f"uid-{task_id}", spec(task_id, **extra), status, "2026-11-28T00:00:00Z"
    )


async def run_to_success(controller: Controller, api: FakeApi, key: TaskKey) -> None:
    await step(controller)
    await yields(30)
    task = controller.tracker.tasks[key]
    assert phase(task) is Phase.RUNNING
    job = api.complete(task.tenant_namespace, naming.job_name(task.task_id))
    await controller.job_seen(job)
    assert phase(task) is Phase.SUCCEEDED


async def test_a_finished_task_leaves_memory_once_the_api_server_shows_its_end() -> None:
    api = FakeApi(random.Random(0))
    controller = make(api)
    tracker = controller.tracker
    key = await see(controller, "t1", ttlSecondsAfterFinished=60)
    await run_to_success(controller, api, key)
    assert key in tracker.tasks  # its end is not back from the API server yet

    # An older event (its Running write) arrives after the end: nothing is queued again.
    await event(controller, key, {"phase": "Running"}, ttlSecondsAfterFinished=60)
    assert key in tracker.tasks
    assert not tracker.state.is_queued(key) and not tracker.state.is_running(key)

    # The end, back from the API server: the task leaves memory; its gauge stays.
    await event(controller, key, shown(api, key), ttlSecondsAfterFinished=60)
    assert key not in tracker.tasks
    assert set(tracker.ended) == {key}
    assert tracker.task_counts() == {("Succeeded", "document_analysis", "c1"): 1}

    # A re-list shows it again: it is not tracked anew.
    await event(controller, key, shown(api, key), ttlSecondsAfterFinished=60)
    assert key not in tracker.tasks
    assert tracker.active_namespaces() == set()

    # Its TTL still deletes it, once; the delete handler then forgets it entirely.
    assert tracker.expired(time.time()) == []
    assert tracker.expired(time.time() + 61) == [key]
    deleted: list[str] = []

    async def delete(api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        deleted.append(name)
        return True

    api.delete = delete  # type: ignore[method-assign,assignment]
    tracker.ended[key] = (time.time() - 1, tracker.ended[key][1])
    assert await controller.delete_expired() == 1
    assert await controller.delete_expired() == 0
    assert deleted == [key.name]
    await controller.task_deleted(
        key, "uid-t1", spec("t1"), shown(api, key), "2026-11-28T00:00:00Z"
    )
    assert tracker.ended == {} and tracker.task_counts() == {}


async def test_a_cancelled_task_stays_in_memory_until_its_job_is_gone() -> None:
    api = FakeApi(random.Random(1))
    controller = make(api)
    tracker = controller.tracker
    first = await see(controller, "t1")
    second = await see(controller, "t2")
    await step(controller)
    await yields(30)
    task = tracker.tasks[first]
    await controller.status.cancel(task, "CancelRequested", "cancelled by request")
    await event(controller, first, shown(api, first))
    assert first in tracker.tasks  # its pods are still terminating: its slot is held
    assert (await step(controller)).admitted == []
    deliver_deletions(controller, api)
    assert first not in tracker.tasks
    [admitted] = (await step(controller)).admitted
    assert admitted.key == second


async def test_no_finished_task_stays_in_memory_after_a_run() -> None:
    """Memory at rest: 300 tasks of 30 users, all run to their end: none is left in play."""
    api = FakeApi(random.Random(2))
    controller = make(api)
    tracker = controller.tracker
    keys = []
    for n in range(300):
        key = TaskKey(NAMESPACE, f"task-t{n}")
        await controller.task_seen(
            key, f"uid-t{n}", spec(f"t{n}", userId=f"u{n % 30}"), {}, "2026-11-28T00:00:00Z"
        )
        keys.append(key)
    for _round in range(40):  # 30 users, one slot each (the default here): 10 rounds
        if all(tracker.tasks[k].phase is Phase.SUCCEEDED for k in tracker.tasks):
            break
        await step(controller)
        await yields(30)
        for key, task in list(tracker.tasks.items()):
            if task.phase is Phase.RUNNING:
                job = api.complete(task.tenant_namespace, naming.job_name(task.task_id))
                await controller.job_seen(job)
            if task.phase is Phase.SUCCEEDED:
                await controller.task_seen(
                    key,
                    task.uid,
                    spec(task.task_id, userId=task.user_id),
                    shown(api, key),
                    task.created,
                )
    assert tracker.tasks == {}
    assert set(tracker.ended) == set(keys)
    assert tracker.task_counts() == {("Succeeded", "document_analysis", "c1"): 300}


async def test_the_finished_tasks_listed_at_start_leave_memory_after_the_prime() -> None:
    api = FakeApi(random.Random(3))
    api.tasks = [
        {
            "metadata": {
                "namespace": NAMESPACE,
                "name": f"task-old{n}",
                "uid": f"uid-old{n}",
                "creationTimestamp": "2026-11-01T00:00:00Z",
            },
            "spec": spec(f"old{n}"),
            "status": {"phase": "Succeeded", "completionTime": "2026-11-02T00:00:00Z"},
        }
        for n in range(5)
    ] + [
        {
            "metadata": {
                "namespace": NAMESPACE,
                "name": "task-new",
                "uid": "uid-new",
                "creationTimestamp": "2026-11-28T00:00:00Z",
            },
            "spec": spec("new"),
            "status": {},
        }
    ]
    controller = make(api, primed=False)
    await controller.prime()
    tracker = controller.tracker
    assert set(tracker.tasks) == {TaskKey(NAMESPACE, "task-new")}
    assert len(tracker.ended) == 5
    assert tracker.task_counts()[("Succeeded", "document_analysis", "c1")] == 5
