"""A task's status writes land in the order they were decided, and none after its end.

Under a burst the launch's ``Running`` write can wait for a connection while the Job already
finished; without the per-task lock and the terminal guard, it could land after ``Succeeded``
and leave a finished task looking alive (seen once in ``make bench-admission``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from regtask.crmodels import Phase, RegistryTaskSpec
from regtask_operator.admission import TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.status import StatusWriter
from regtask_operator.tasks import TaskTracker, TrackedTask

pytestmark = pytest.mark.unit


class SlowKube:
    """Records merge patches; the first call waits until released, later ones do not."""

    def __init__(self) -> None:
        self.patched: list[dict[str, Any]] = []
        self.calls = 0
        self.release_first = asyncio.Event()

    async def patch_merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            await self.release_first.wait()
        self.patched.append(patch["status"])
        return {}


def writer_and_task(kube: SlowKube) -> tuple[StatusWriter, TrackedTask]:
    tracker = TaskTracker(OperatorSettings(namespace="regtask-test"))
    writer = StatusWriter(kube, tracker, mirror=None)  # type: ignore[arg-type]
    spec = RegistryTaskSpec.model_validate(
        {"taskId": "t1", "taskType": "document_analysis", "userId": "u", "companyId": "c"}
    )
    task = TrackedTask(TaskKey("regtask-test", "t1"), "uid", spec, "2026-11-25T00:00:00Z")
    return writer, task


async def test_writes_of_one_task_land_in_decision_order() -> None:
    kube = SlowKube()
    writer, task = writer_and_task(kube)
    task.phase = Phase.RUNNING
    running = asyncio.create_task(writer.write(task, {"phase": "Running"}))
    await asyncio.sleep(0)  # the Running write holds the task's lock, waiting on the API
    task.phase = Phase.SUCCEEDED
    succeeded = asyncio.create_task(writer.write(task, {"phase": "Succeeded"}))
    await asyncio.sleep(0)
    kube.release_first.set()
    assert await running and await succeeded
    assert [p["phase"] for p in kube.patched] == ["Running", "Succeeded"]


async def test_nothing_but_the_final_write_once_the_task_ended() -> None:
    kube = SlowKube()
    kube.release_first.set()
    writer, task = writer_and_task(kube)
    task.phase = Phase.SUCCEEDED  # finish() decided while these writes were on their way
    assert not await writer.write(task, {"phase": "Running"})
    assert not await writer.write(task, {"progress": 40, "currentStep": "x"})
    assert await writer.write(task, {"phase": "Succeeded", "progress": 100})
    assert kube.patched == [{"phase": "Succeeded", "progress": 100}]
