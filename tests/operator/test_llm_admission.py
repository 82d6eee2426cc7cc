"""The LLM window at admission (issue 15, item 8): what was admitted lately counts.

The gateway's counter sees a task only once its runner makes its first request, seconds after
its Job is created. Every scheduler step reads the counter; without counting its own recent
admissions, a step near the end of a window admitted as many tasks as the counter still had
room for, and the next step as many again.
"""

from __future__ import annotations

import random

import pytest

from regtask_operator.admission import TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from tests.operator.test_lifecycle_races import NAMESPACE, FakeApi, FakeMirror, step, yields

pytestmark = pytest.mark.unit

LIMIT = 10
USED = 6  # requests already in this hour's counter


async def window(company_id: str) -> tuple[int, int]:
    """The gateway's counter: 6 used, 30 minutes to go; runners never call in this test."""
    return USED, 1800


def controller(grace_s: float) -> Controller:
    settings = OperatorSettings(
        namespace=NAMESPACE,
        default_max_tasks_per_user=100,
        default_max_llm_requests_per_hour=LIMIT,
        llm_admission_grace_s=grace_s,
    )
    made = Controller(settings, FakeApi(random.Random(8)), FakeMirror(), window)  # type: ignore[arg-type]
    made.tracker.ready = True
    return made


async def queue(made: Controller, count: int) -> None:
    for n in range(count):
        await made.task_seen(
            TaskKey(NAMESPACE, f"task-llm{n}"),
            f"uid-llm{n}",
            {
                "taskId": f"llm_{n}",
                "taskType": "llm_conversation",
                "userId": f"u{n}",
                "companyId": "c1",
                "conversationId": f"conv{n}",
            },
            {},
            f"2026-11-28T00:00:{n:02d}Z",
        )


async def test_steps_in_a_row_admit_only_the_windows_room() -> None:
    made = controller(grace_s=120)
    await queue(made, 20)
    first = await step(made)
    await yields(50)
    second = await step(made)
    await yields(50)
    assert len(first.admitted) == LIMIT - USED
    assert second.admitted == []  # before: 4 more, then 4 more at each step
    assert {w.reason.value for w in second.waiting} == {"LlmRateQuota"}


async def test_admissions_older_than_the_grace_are_left_to_the_counter() -> None:
    """Past the grace the counter is the truth again (the runner has called by then)."""
    made = controller(grace_s=0)
    await queue(made, 20)
    first = await step(made)
    await yields(50)
    second = await step(made)
    assert len(first.admitted) == len(second.admitted) == LIMIT - USED


async def test_a_task_that_ends_before_calling_gives_its_room_back() -> None:
    """Issue 18, item 5: two of the four admitted LLM tasks are cancelled before their runners
    call; their room is free at the next step (before: held for the whole grace)."""
    made = controller(grace_s=120)
    await queue(made, 20)
    first = await step(made)
    await yields(50)
    assert len(first.admitted) == LIMIT - USED
    for candidate in first.admitted[:2]:
        await made.tracker.release(candidate.key)  # what a cancel or a Job's end does
    second = await step(made)
    await yields(50)
    assert len(second.admitted) == 2
    third = await step(made)
    assert third.admitted == []  # the two new ones hold the room again
