"""Which replica acts (issue 15, item 4): distinct priorities, Kopf's pause rule read the same way,
the operator's own loops stopped while paused, its memory rebuilt when it becomes active.

The chart with three replicas on the real cluster is in ``tests/e2e/test_chart_on_kind.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from typing import Any

import pytest

from regtask import naming
from regtask.crmodels import Phase
from regtask_operator.admission import TaskKey
from regtask_operator.peering import Leadership, is_paused, priority_of
from tests.operator.test_lifecycle_races import NAMESPACE, FakeApi, make, see, spec, yields

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 28, 6, 0, tzinfo=datetime.UTC)


def peer(priority: int, seen_s_ago: float = 1, lifetime: int = 60) -> dict[str, Any]:
    lastseen = NOW - datetime.timedelta(seconds=seen_s_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": lastseen.isoformat()}


def test_replicas_of_one_deployment_get_distinct_stable_priorities() -> None:
    """Before: every replica had priority 0, and Kopf pauses all peers of equal priority."""
    names = [f"rel-regtask-operator-6d9f8b7c5-{s}" for s in ("x7k2p", "b4mzq", "t9hwc", "a1b2c")]
    priorities = [priority_of(n) for n in names]
    assert len(set(priorities)) == len(names)
    assert all(0 < p < 2**31 for p in priorities)
    assert priorities == [priority_of(n) for n in names]  # stable across restarts


@pytest.mark.parametrize(
    ("others", "paused"),
    [
        ({}, False),
        ({"b": peer(5)}, False),  # lower: we act
        ({"b": peer(20)}, True),  # higher and live: we wait
        ({"b": peer(10)}, True),  # equal: Kopf pauses both
        ({"b": peer(20, seen_s_ago=61)}, False),  # higher but dead (lastseen + lifetime passed)
        ({"b": peer(5), "c": peer(30, seen_s_ago=10, lifetime=5)}, False),
        ({"b": peer(5), "c": peer(30, seen_s_ago=10, lifetime=300)}, True),
    ],
)
def test_kopfs_pause_rule(others: dict[str, Any], paused: bool) -> None:
    peers = {"a": peer(10), **others}
    assert is_paused(peers, "a", 10, NOW) is paused


class PeeringApi(FakeApi):
    """The API server with a ClusterKopfPeering object whose status the test writes."""

    def __init__(self) -> None:
        super().__init__(random.Random(4))
        self.peers: dict[str, Any] = {}

    async def get(self, path: str) -> dict[str, Any] | None:
        if "/clusterkopfpeerings/" in path:
            return {"status": dict(self.peers)}
        return await super().get(path)


def live(priority: int) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    return {"priority": priority, "lifetime": 60, "lastseen": now.isoformat()}


def listed(task_id: str, phase: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": NAMESPACE,
            "name": f"task-{task_id}",
            "uid": f"uid-{task_id}",
            "creationTimestamp": "2026-11-28T00:00:00Z",
        },
        "spec": spec(task_id),
        "status": {"phase": phase} if phase else {},
    }


async def test_a_paused_replica_launches_nothing_and_rebuilds_its_memory_when_it_takes_over() -> (
    None
):
    api = PeeringApi()
    controller = make(api, primed=False)
    leadership = Leadership(api, "regtask-operator", "me", 10, 0.01, controller.prime)  # type: ignore[arg-type]
    api.peers = {"me": live(10), "other": live(20)}
    await see(controller, "t1")  # Kopf listed it before it paused
    api.tasks = [listed("t1")]
    assert await leadership.check() is False

    stop = asyncio.Event()
    loop = asyncio.create_task(controller.scheduler.run(stop, leadership.active))
    controller.tracker.kick()
    await asyncio.sleep(0.05)
    assert api.jobs == {}, "a paused replica launched"

    # Meanwhile the active replica ran t1 to its end and t2 came and went: the API server has
    # t1 Succeeded and a new t3; this replica's memory still says t1 is queued.
    api.tasks = [listed("t1", "Succeeded"), listed("t3")]
    api.peers = {"me": live(10), "other": {**live(20), "lastseen": "2026-01-01T00:00:00+00:00"}}
    assert await leadership.check() is True
    controller.tracker.kick()
    await asyncio.sleep(0.05)
    await yields(50)
    stop.set()
    controller.tracker.kick()
    await loop
    # t1 is known as ended (out of play, awaiting its TTL: issue 19, item 4), not as queued.
    t1 = TaskKey(NAMESPACE, "task-t1")
    assert t1 not in controller.tracker.tasks
    assert controller.tracker.ended[t1][1][0] == Phase.SUCCEEDED.value
    assert [name for _, name in api.jobs] == [naming.job_name("t3")]  # t1 not run again


async def test_standalone_is_active_at_once_and_primed() -> None:
    api = PeeringApi()
    controller = make(api, primed=False)
    leadership = Leadership(None, "regtask-operator", "me", 0, 1.0, controller.prime)
    assert await leadership.check() is True
    assert controller.tracker.ready


async def test_not_announced_yet_means_paused() -> None:
    """Kopf writes its own entry before it handles anything: until it is there, this replica
    cannot know who else is running."""
    api = PeeringApi()
    controller = make(api, primed=False)
    leadership = Leadership(api, "regtask-operator", "me", 10, 1.0, controller.prime)  # type: ignore[arg-type]
    api.peers = {}
    assert await leadership.check() is False
    api.peers = {"me": live(10)}
    assert await leadership.check() is True
