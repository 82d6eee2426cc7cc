"""Launches run beside the scheduler's step, a bounded number at once (issue 15, item 10,
point 5): one tenant's slow or failing API calls hold neither the step nor the other tenants.

Driven through the real Controller with the lifecycle tests' fake API server; a hang of the old
code (the step awaited every launch) shows as the step not returning within a generous bound.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from regtask.crmodels import Phase
from regtask_operator.admission import TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from regtask_operator.kube import KubeError
from tests.operator.test_lifecycle_races import (
    NAMESPACE,
    FakeApi,
    FakeMirror,
    no_llm_use,
    phase,
    see,
    yields,
)

pytestmark = pytest.mark.unit

# Far longer than a step over a handful of tasks with the fake API (milliseconds): reaching it
# means the step waited for a launch that cannot end.
HANG_S = 10.0


class GatedApi(FakeApi):
    """Job creates in the namespaces named in ``held`` wait for ``release``; creates in
    ``failing`` ones are refused (500). Counts the creates in flight."""

    def __init__(self) -> None:
        super().__init__(random.Random(0))
        self.held: set[str] = set()
        self.failing: set[str] = set()
        self.release = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.creates_tried: dict[str, int] = {}

    async def create(self, manifest: dict[str, Any]) -> bool:
        namespace = manifest["metadata"]["namespace"]
        self.creates_tried[namespace] = self.creates_tried.get(namespace, 0) + 1
        if namespace in self.failing:
            raise KubeError(500, "POST", "/jobs", "etcd is having a bad day")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if namespace in self.held:
                await self.release.wait()
            return await super().create(manifest)
        finally:
            self.in_flight -= 1


def make(api: GatedApi, **settings: Any) -> Controller:
    merged: dict[str, Any] = {
        "namespace": NAMESPACE,
        "default_max_tasks_per_user": 1,
        **settings,
    }
    controller = Controller(OperatorSettings(**merged), api, FakeMirror(), no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = True  # as after prime()
    return controller


def task(controller: Controller, key: TaskKey) -> Any:
    return controller.tracker.tasks[key]


async def test_a_slow_tenant_holds_neither_the_step_nor_another_tenants_launch() -> None:
    api = GatedApi()
    controller = make(api)
    slow = await see(controller, "slow", userId="u-slow")
    fast = await see(controller, "fast", userId="u-fast")
    api.held.add(task(controller, slow).tenant_namespace)

    decisions = await asyncio.wait_for(controller.scheduler.step(), HANG_S)
    assert {c.key for c in decisions.admitted} == {slow, fast}
    for _ in range(200):
        if phase(task(controller, fast)) is Phase.RUNNING:
            break
        await yields(1)
    assert phase(task(controller, fast)) is Phase.RUNNING, "the other tenant waited"
    assert phase(task(controller, slow)) is Phase.QUEUED  # its Job create still hangs
    assert slow in controller.tracker.launching, "its slot must stay counted while it launches"

    api.release.set()
    await asyncio.wait_for(controller.launcher.settle(), HANG_S)
    assert phase(task(controller, slow)) is Phase.RUNNING
    assert controller.tracker.launching == set()


async def test_a_failed_launch_backs_off_beside_the_step_and_keeps_its_users_slot() -> None:
    api = GatedApi()
    controller = make(api, launch_retry_s=3600.0, launch_retry_max_s=3600.0)
    broken = await see(controller, "broken", userId="u-broken")
    api.failing.add(task(controller, broken).tenant_namespace)
    await see(controller, "next", userId="u-broken")  # the same user's next task

    await asyncio.wait_for(controller.scheduler.step(), HANG_S)
    await yields(50)
    assert api.creates_tried[task(controller, broken).tenant_namespace] == 1
    # Backing off for an hour: the step is free, other users are admitted and launched...
    other = await see(controller, "other", userId="u-other")
    decisions = await asyncio.wait_for(controller.scheduler.step(), HANG_S)
    assert [c.key for c in decisions.admitted] == [other]
    for _ in range(200):
        if phase(task(controller, other)) is Phase.RUNNING:
            break
        await yields(1)
    assert phase(task(controller, other)) is Phase.RUNNING
    # ...while the failing task still holds its user's one slot (no second task of u-broken).
    assert controller.tracker.state.is_running(broken)
    assert controller.tracker.state.running_count("c1") == 2
    await controller.launcher.cancel()


async def test_a_failed_launch_is_tried_again_after_its_back_off() -> None:
    api = GatedApi()
    controller = make(api, launch_retry_s=0.01)
    flaky = await see(controller, "flaky")
    namespace = task(controller, flaky).tenant_namespace
    api.failing.add(namespace)
    await controller.scheduler.step()
    await asyncio.wait_for(controller.launcher.settle(), HANG_S)
    assert controller.tracker.state.is_queued(flaky), "back in the queue after its back-off"
    api.failing.discard(namespace)
    await controller.scheduler.step()
    await asyncio.wait_for(controller.launcher.settle(), HANG_S)
    assert phase(task(controller, flaky)) is Phase.RUNNING
    assert api.creates_tried[namespace] == 2


async def test_launches_in_flight_are_bounded() -> None:
    api = GatedApi()
    controller = make(api, launch_concurrency=4)
    keys = [await see(controller, f"t{n}", userId=f"u{n}") for n in range(20)]
    api.held.update(task(controller, key).tenant_namespace for key in keys)

    decisions = await asyncio.wait_for(controller.scheduler.step(), HANG_S)
    assert len(decisions.admitted) == 20
    await yields(200)
    assert api.max_in_flight == 4
    api.release.set()
    await asyncio.wait_for(controller.launcher.settle(), HANG_S)
    assert api.max_in_flight == 4
    assert all(phase(task(controller, key)) is Phase.RUNNING for key in keys)


@pytest.mark.parametrize(("failures", "expected"), [(1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0)])
def test_back_off_doubles_up_to_its_cap(failures: int, expected: float) -> None:
    controller = make(GatedApi(), launch_retry_s=1.0, launch_retry_max_s=30.0)
    assert controller.launcher.retry_delay_s(failures) == expected
