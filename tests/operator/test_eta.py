"""The ETA the operator publishes for a waiting task (issue 17, item 4): the slot model of
:mod:`regtask.eta` over the user's running and waiting tasks and recent run times."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from regtask.crmodels import Phase
from regtask.eta import Busy, Queued, RunHistory, schedule
from regtask.timeutil import parse_iso
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from tests.operator.test_lifecycle_races import NAMESPACE, FakeApi, FakeMirror, see, step, yields

pytestmark = pytest.mark.unit


class Snapshots(FakeMirror):
    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish(self, snapshot: Any) -> None:
        self.published.append(snapshot)


async def no_llm_use(company_id: str) -> tuple[int, int]:
    return 0, 3600


def test_the_slot_model() -> None:
    medians = {"a": 10.0}
    # two slots, one busy for 4 more seconds: the first waits 0, the second 4, the third 10
    etas = schedule(
        [Queued("w1", "a"), Queued("w2", "a"), Queued("w3", "a")], [Busy("a", 6.0)], medians, 2
    )
    assert [(e.start_in_s, e.done_in_s) for e in etas] == [(0.0, 10.0), (4.0, 14.0), (10.0, 20.0)]
    history = RunHistory(size=3)
    for seconds in (100, 1, 2, 3):
        history.record("a", seconds)
    assert history.medians() == {"a": 2}  # the last 3 only


async def test_waiting_tasks_get_their_start_and_end_published() -> None:
    mirror = Snapshots()
    settings = OperatorSettings(namespace=NAMESPACE, default_max_tasks_per_user=1)
    controller = Controller(settings, FakeApi(random.Random(1)), mirror, no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = True
    for _ in range(5):
        controller.tracker.runs.record("document_analysis", 60.0)
    for n in range(3):
        await see(controller, f"t{n}")
    before = time.time()
    await step(controller)
    await yields(50)
    waiting = {s.task_id: s for s in mirror.published if s.phase is Phase.WAITING}
    assert sorted(waiting) == ["t1", "t2"]
    assert [waiting[t].queue_position for t in ("t1", "t2")] == [1, 2]
    for task_id, slots_ahead in (("t1", 1), ("t2", 2)):
        start = parse_iso(waiting[task_id].estimated_start).timestamp()
        done = parse_iso(waiting[task_id].estimated_completion).timestamp()
        # whole seconds in ISO-8601: within 2 s of the model
        assert abs(start - (before + 60 * slots_ahead)) <= 2, task_id
        assert abs(done - start - 60) <= 2, task_id
    [running] = [s for s in mirror.published if s.phase is Phase.RUNNING]
    assert abs(parse_iso(running.estimated_completion).timestamp() - (before + 60)) <= 2


async def test_no_history_no_eta() -> None:
    mirror = Snapshots()
    settings = OperatorSettings(namespace=NAMESPACE, default_max_tasks_per_user=1)
    controller = Controller(settings, FakeApi(random.Random(1)), mirror, no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = True
    for n in range(2):
        await see(controller, f"t{n}")
    await step(controller)
    await yields(50)
    [waiting] = [s for s in mirror.published if s.phase is Phase.WAITING]
    assert (waiting.queue_position, waiting.estimated_start) == (1, None)


async def test_a_succeeded_run_feeds_the_history() -> None:
    settings = OperatorSettings(namespace=NAMESPACE, default_max_tasks_per_user=1)
    api = FakeApi(random.Random(1))
    controller = Controller(settings, api, Snapshots(), no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = True
    key = await see(controller, "t0")
    await step(controller)
    await yields(50)
    task = controller.tracker.tasks[key]
    task.admitted_at = time.time() - 42
    await controller.status.finish(task, Phase.SUCCEEDED, "Completed", "done")
    assert round(controller.tracker.runs.medians()["document_analysis"]) == 42
