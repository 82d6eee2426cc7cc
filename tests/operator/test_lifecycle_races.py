"""Cancels, launches, waiting reports and Job events in every order: the lifecycle's guarantees.

The real Controller (scheduler, status writer, reconciler, tracker) runs against a fake API
server whose every call yields to the event loop a few times before and after it takes effect,
the number drawn by hypothesis: each example is one interleaving of the coroutines. What must
hold in all of them (issue 15, items 1 and 2):

- a cancel at any instant ends with no live Job and the slot free;
- nothing moves a task out of a terminal phase: not in memory, and not in what reaches the API
  server (no write after the final one);
- a Job found alive for a finished task is deleted by the reconcile loop.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regtask import naming
from regtask.crmodels import TERMINAL_PHASES, Phase, RegistryTaskSpec
from regtask.timeutil import parse_iso
from regtask_operator import jobs
from regtask_operator.admission import Decisions, TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from regtask_operator.kube import KubeError, Page

pytestmark = pytest.mark.unit

NAMESPACE = "regtask-test"


class FakeApi:
    """The API server as far as the operator's lifecycle uses it. Every call yields to the loop
    a drawn number of times before and after its effect (the interleavings)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.quotas: list[dict[str, Any]] = []  # CompanyQuota objects
        self.tasks: list[dict[str, Any]] = []  # RegistryTask objects (as listed)
        self.gone: list[dict[str, Any]] = []  # deleted Jobs whose DELETED event is owed
        self.writes: dict[str, list[dict[str, Any]]] = {}  # task name -> status patches

    async def _pause(self) -> None:
        for _ in range(self.rng.randint(0, 4)):
            await asyncio.sleep(0)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        await self._pause()
        return {}

    async def create(self, manifest: dict[str, Any]) -> bool:
        await self._pause()
        meta = manifest["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self.jobs:
            await self._pause()
            return False
        self.jobs[key] = {**manifest, "status": {}}
        await self._pause()
        return True

    async def get(self, path: str) -> dict[str, Any] | None:
        await self._pause()
        namespace, name = path.split("/namespaces/")[1].split("/jobs/")
        return self.jobs.get((namespace, name))

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        await self._pause()
        found = self.jobs.pop((namespace or "", name), None)
        if found is not None:
            self.gone.append(found)  # its DELETED event, for the test to deliver
        await self._pause()
        return found is not None

    async def patch_merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        await self._pause()
        name = path.split("/registrytasks/")[1].removesuffix("/status")
        self.writes.setdefault(name, []).append(dict(patch["status"]))
        await self._pause()
        return {}

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        await self._pause()
        if path.endswith("/companyquotas"):
            return list(self.quotas)
        if path.endswith("/registrytasks"):
            return list(self.tasks)
        if path.endswith("/pods"):
            return []  # a Job's pods (status.job): none in this fake
        return list(self.jobs.values())

    async def pages(self, path: str, label_selector: str | None = None) -> AsyncIterator[Page]:
        yield await self.list(path, label_selector)

    async def post_event(self, involved: Mapping[str, str], *args: Any) -> None:
        await self._pause()

    def complete(self, namespace: str, name: str) -> dict[str, Any]:
        """What the Job controller does when the runner succeeds."""
        job = self.jobs[(namespace, name)]
        job["status"] = {
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}],
            "startTime": "2026-11-28T00:00:00Z",
        }
        return job


class FakeRegistry:
    async def get_task(self, task_id: str) -> None:
        return None


class FakeMirror:
    registry = FakeRegistry()

    async def publish(self, snapshot: Any) -> None:
        await asyncio.sleep(0)

    async def publish_limits(self, *args: Any) -> bool:
        return True

    async def publish_defaults(self, *args: Any) -> bool:
        return True

    async def resync(self, ended: list[Any]) -> int:
        return 0


async def no_llm_use(company_id: str) -> tuple[int, int]:
    return 0, 3600


def make(api: FakeApi, primed: bool = True) -> Controller:
    """The controller as after :meth:`Controller.prime` (or before it: ``primed=False``)."""
    settings = OperatorSettings(
        namespace=NAMESPACE, default_max_tasks_per_user=1, launch_retry_s=0.01
    )
    controller = Controller(settings, api, FakeMirror(), no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = primed
    return controller


def spec(task_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "taskId": task_id,
        "taskType": "document_analysis",
        "userId": "u1",
        "companyId": "c1",
        **extra,
    }


async def see(controller: Controller, task_id: str, **extra: Any) -> TaskKey:
    key = TaskKey(NAMESPACE, f"task-{task_id}")
    await controller.task_seen(
        key, f"uid-{task_id}", spec(task_id, **extra), {}, "2026-11-28T00:00:00Z"
    )
    return key


async def step(controller: Controller) -> Decisions:
    """One scheduler step and the launches and refusals it started (they run beside it)."""
    decisions = await controller.scheduler.step()
    await controller.launcher.settle()
    return decisions


async def yields(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def deliver_deletions(controller: Controller, api: FakeApi) -> None:
    """The Job watch's DELETED events (a foreground deletion: once the pods are gone)."""
    while api.gone:
        controller.job_gone(api.gone.pop(0))


def phase(task: Any) -> Phase:
    """Read the phase anew (a bare attribute read is narrowed by mypy across awaits)."""
    found: Phase = task.phase
    return found


def assert_terminal_is_final(controller: Controller, api: FakeApi) -> None:
    """No write after a terminal one changes the phase; memory agrees with the last write."""
    for name, written in api.writes.items():
        phases = [w["phase"] for w in written if "phase" in w]
        ended = [i for i, p in enumerate(phases) if Phase(p) in TERMINAL_PHASES]
        if ended:
            assert all(p == phases[ended[0]] for p in phases[ended[0] :]), (name, phases)
            assert [w for w in written[ended[0] + 1 :] if "phase" not in w] == [], (name, written)
        task = controller.tracker.tasks[TaskKey(NAMESPACE, name)]
        if phases:
            assert task.phase.value == phases[-1], (name, task.phase, phases)


RACE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RACE
@given(seed=st.integers(0, 2**32 - 1), cancel_after=st.integers(0, 60))
def test_a_cancel_at_any_instant_leaves_no_job_and_no_slot(seed: int, cancel_after: int) -> None:
    async def scenario() -> None:
        api = FakeApi(random.Random(seed))
        controller = make(api)
        key = await see(controller, "t1")
        task = controller.tracker.tasks[key]

        async def cancel_later() -> None:
            await yields(cancel_after)
            await controller.status.cancel(task, "CancelRequested", "cancelled by request")

        await asyncio.gather(step(controller), cancel_later())
        await yields(50)  # let every launch and event coroutine finish
        assert phase(task) is Phase.CANCELLED
        assert (task.tenant_namespace, naming.job_name("t1")) not in api.jobs, "live Job left"
        deliver_deletions(controller, api)  # the Job (and its pods) gone: the slot comes back
        assert not controller.tracker.state.is_running(key)
        assert not controller.tracker.state.is_queued(key)
        assert_terminal_is_final(controller, api)

    asyncio.run(scenario())


@RACE
@given(
    seed=st.integers(0, 2**32 - 1),
    cancel_after=st.integers(0, 80),
    complete_after=st.integers(0, 80),
)
def test_nothing_leaves_a_terminal_phase(seed: int, cancel_after: int, complete_after: int) -> None:
    """Two tasks of one user with room for one: the first runs and its Job completes, the
    second waits (its waiting report races a cancel); steps keep coming meanwhile."""

    async def scenario() -> None:
        api = FakeApi(random.Random(seed))
        controller = make(api)
        first = await see(controller, "t1")
        second = await see(controller, "t2")

        async def cancel_second() -> None:
            await yields(cancel_after)
            await controller.status.cancel(
                controller.tracker.tasks[second], "CancelRequested", "by request"
            )

        async def complete_first() -> None:
            await yields(complete_after)
            job_key = (controller.tracker.tasks[first].tenant_namespace, naming.job_name("t1"))
            if job_key in api.jobs:
                await controller.job_seen(api.complete(*job_key))

        async def steps() -> None:
            for _ in range(4):
                await step(controller)
                await yields(3)

        await asyncio.gather(steps(), cancel_second(), complete_first())
        await yields(50)
        assert controller.tracker.tasks[second].phase is Phase.CANCELLED
        assert (controller.tracker.tasks[second].tenant_namespace, naming.job_name("t2")) not in (
            api.jobs
        )
        assert_terminal_is_final(controller, api)

    asyncio.run(scenario())


async def running(api: FakeApi, task_id: str) -> tuple[Controller, Any]:
    """A controller on ``api`` with one task admitted and launched (its Job made)."""
    controller = make(api)
    key = await see(controller, task_id)
    await step(controller)
    await yields(50)
    task = controller.tracker.tasks[key]
    assert phase(task) is Phase.RUNNING
    return controller, task


async def test_a_live_job_of_a_finished_task_is_deleted_by_reconcile() -> None:
    """(The API refused the cancel's delete: the reconcile loop finishes the job.)"""
    api = FakeApi(random.Random(0))
    controller, task = await running(api, "t1")
    job = api.jobs[(task.tenant_namespace, naming.job_name("t1"))]

    async def refuse(*args: Any, **kwargs: Any) -> bool:
        raise TimeoutError("no answer")

    api.delete = refuse  # type: ignore[method-assign]
    await controller.status.cancel(task, "CancelRequested", "by request")
    assert api.jobs, "the delete was refused: the Job is still there"
    del api.delete  # the API server answers again
    await controller.reconciler.reconcile([job], listed_at=time.monotonic())  # listed now
    assert api.jobs == {}


async def test_a_job_listed_before_its_tasks_end_is_not_deleted_by_that_reconcile() -> None:
    """CI: a task's Job completed, its task ended, and a reconcile whose list was taken just
    before saw the Job still running for an ended task and deleted it, within its TTL."""
    api = FakeApi(random.Random(0))
    controller, task = await running(api, "t1")
    job_key = (task.tenant_namespace, naming.job_name("t1"))
    listed_at = time.monotonic()
    stale = copy.deepcopy(api.jobs[job_key])  # listed while it ran
    await asyncio.sleep(0.01)
    await controller.job_seen(api.complete(*job_key))
    assert phase(task) is Phase.SUCCEEDED
    await controller.reconciler.reconcile([stale], listed_at=listed_at)
    assert job_key in api.jobs, "a Complete Job was deleted by a reconcile older than its end"


class FlakyApi(FakeApi):
    """Refuses status writes (HTTP 503) until told otherwise."""

    def __init__(self) -> None:
        super().__init__(random.Random(0))
        self.refusing = True

    async def patch_merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        if self.refusing:
            raise KubeError(503, "PATCH", path, "the server is currently unable to handle it")
        return await super().patch_merge(path, patch)


class RecordingMirror(FakeMirror):
    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, snapshot: Any) -> None:
        self.published.append(snapshot.phase.value)


async def test_a_refused_final_write_still_ends_the_task_and_is_retried_until_it_lands() -> None:
    """Issue 15, item 3: the registry, the slot and the Event do not wait for the API server;
    the CR status gets the end as soon as the API server takes it."""
    api = FlakyApi()
    api.refusing = False
    mirror = RecordingMirror()
    settings = OperatorSettings(namespace=NAMESPACE, default_max_tasks_per_user=1)
    controller = Controller(settings, api, mirror, no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = True  # as after prime()
    key = await see(controller, "t1")
    await step(controller)
    task = controller.tracker.tasks[key]
    assert phase(task) is Phase.RUNNING
    api.refusing = True
    job = api.complete(task.tenant_namespace, naming.job_name("t1"))
    await controller.job_seen(job)  # the Job succeeded; the API server refuses the write
    assert phase(task) is Phase.SUCCEEDED
    assert mirror.published[-1] == "Succeeded"  # the web app's registry has the end
    assert not controller.tracker.state.is_running(key)  # the slot is free
    assert [w.get("phase") for w in api.writes.get(key.name, [])][-1] == "Running"
    assert await controller.status.retry_final_writes() == 0  # too early: backoff
    controller.status.pending_final[key].next_at = 0.0
    assert await controller.status.retry_final_writes() == 0  # still refused
    api.refusing = False
    controller.status.pending_final[key].next_at = 0.0
    assert await controller.status.retry_final_writes() == 1
    assert api.writes[key.name][-1]["phase"] == "Succeeded"
    assert controller.status.pending_final == {}


async def test_a_running_task_whose_job_vanished_fails_as_job_lost() -> None:
    """Issue 15, item 6: deleted by hand, or by its TTL while the operator was away: the work
    is not started again from scratch."""
    api = FakeApi(random.Random(0))
    controller = make(api)
    key = await see(controller, "t1")
    await step(controller)
    await yields(20)
    task = controller.tracker.tasks[key]
    assert phase(task) is Phase.RUNNING
    api.jobs.clear()  # kubectl delete job
    task.launched_mono = 0.0  # launched before this reconcile's listing
    await controller.reconciler.reconcile([], listed_at=1.0)
    assert phase(task) is Phase.FAILED
    assert api.writes[key.name][-1]["reason"] == "JobLost"
    assert not controller.tracker.state.is_queued(key)
    await step(controller)
    assert api.jobs == {}, "not run again"


async def test_a_job_left_by_an_earlier_task_with_the_same_task_id_is_not_adopted() -> None:
    """Issue 15, item 7: the derived name is taken by the Job of a deleted task (same taskId,
    another UID, already Succeeded): the new task must run, not inherit that outcome."""
    api = FakeApi(random.Random(0))
    controller = make(api)
    earlier = jobs.build_job(
        RegistryTaskSpec.model_validate(spec("t1")),
        "task-t1",
        NAMESPACE,
        "uid-old",
        OperatorSettings(),
    )
    api.jobs[(earlier["metadata"]["namespace"], earlier["metadata"]["name"])] = earlier
    api.complete(earlier["metadata"]["namespace"], earlier["metadata"]["name"])
    key = await see(controller, "t1")
    await step(controller)  # finds the old Job: deletes it, retries
    await yields(20)
    task = controller.tracker.tasks[key]
    assert phase(task) is not Phase.SUCCEEDED
    await step(controller)
    await yields(20)
    assert phase(task) is Phase.RUNNING
    live = api.jobs[(earlier["metadata"]["namespace"], earlier["metadata"]["name"])]
    assert jobs.belongs_to(live, "uid-t1")
    # And a Job that is not the task's own decides nothing about it.
    completed = api.complete(live["metadata"]["namespace"], live["metadata"]["name"])
    forged = {**completed, "metadata": {**completed["metadata"], "annotations": {}}}
    await controller.job_seen(forged)
    assert phase(task) is Phase.RUNNING


async def test_finished_tasks_are_deleted_after_their_ttl() -> None:
    """Issue 15, item 9: etcd and the operator's memory stay bounded. The spec's
    ttlSecondsAfterFinished wins over the operator's default (REGTASK_TASK_TTL_...)."""
    api = FakeApi(random.Random(0))
    deleted: list[str] = []

    async def delete(
        api_version: str, kind: str, namespace: str | None, name: str, **_: Any
    ) -> bool:
        deleted.append(f"{kind}/{name}")
        return True

    api.delete = delete  # type: ignore[method-assign,assignment]
    settings = OperatorSettings(namespace=NAMESPACE, task_ttl_seconds_after_finished=3600)
    controller = Controller(settings, api, FakeMirror(), no_llm_use)  # type: ignore[arg-type]
    quick = await see(controller, "quick", ttlSecondsAfterFinished=0)
    slow = await see(controller, "slow")
    running = await see(controller, "running")
    tracker = controller.tracker
    for key in (quick, slow):
        await controller.status.finish(tracker.tasks[key], Phase.SUCCEEDED, "Completed", "")
    assert tracker.expired(time.time()) == [quick]
    assert await controller.delete_expired() == 1
    assert deleted == ["RegistryTask/task-quick"]
    assert await controller.delete_expired() == 0  # asked once; its delete handler forgets it
    later = time.time() + 3600
    assert set(tracker.expired(later)) == {slow}
    assert running not in tracker.expired(later + 10**6)


def test_a_task_listed_finished_keeps_its_completion_time() -> None:
    tracker = controller_for_listing().tracker
    key = TaskKey(NAMESPACE, "task-old")
    task, _ = tracker.track(
        key,
        "uid-old",
        RegistryTaskSpec.model_validate(spec("old")),
        "2026-11-01T00:00:00Z",
        {"phase": "Succeeded", "completionTime": "2026-11-02T00:00:00Z"},
    )
    assert task.finished_at == parse_iso("2026-11-02T00:00:00Z").timestamp()
    assert tracker.expired(parse_iso("2026-11-10T00:00:00Z").timestamp()) == [key]


def controller_for_listing() -> Controller:
    return make(FakeApi(random.Random(0)))


async def test_no_admission_before_the_company_quotas_are_listed() -> None:
    """Issue 15, item 5: at start-up the tasks arrive before (or with) their CompanyQuota; the
    defaults must not admit meanwhile. The company allows 3 per user (the default here is 1):
    nothing is admitted before prime(), then exactly 3."""
    api = FakeApi(random.Random(5))
    api.quotas = [
        {
            "metadata": {"namespace": NAMESPACE, "name": "c1"},
            "spec": {"companyId": "c1", "maxTasksPerUser": 3},
        },
        {  # another operator's namespace: not this one's business
            "metadata": {"namespace": "elsewhere", "name": "c1"},
            "spec": {"companyId": "c1", "maxTasksPerUser": 50},
        },
    ]
    controller = make(api, primed=False)
    controller.settings = controller.tracker.settings = OperatorSettings(
        namespace=NAMESPACE, task_namespaces=NAMESPACE, default_max_tasks_per_user=1
    )
    for n in range(5):  # the tasks' watch events come first
        await see(controller, f"t{n}")
        api.tasks.append(
            {
                "metadata": {
                    "namespace": NAMESPACE,
                    "name": f"task-t{n}",
                    "uid": f"uid-t{n}",
                    "creationTimestamp": "2026-11-28T00:00:00Z",
                },
                "spec": spec(f"t{n}"),
            }
        )
    assert (await step(controller)).admitted == []
    assert api.jobs == {}
    await controller.prime()
    decisions = await step(controller)
    await yields(50)
    assert len(decisions.admitted) == 3
    assert len(api.jobs) == 3
    assert controller.tracker.company_limits("c1")[0].max_tasks_per_user == 3


async def test_a_cancelled_task_keeps_its_slot_until_its_job_is_gone() -> None:
    """The smaller finding: a cancel freed the slot at once, and the user's next task started
    beside pods still terminating (up to their grace period). Now the slot comes back with the
    Job's DELETED event (a foreground deletion: after the pods), or the next reconcile."""
    api = FakeApi(random.Random(2))
    controller = make(api)  # one task per user
    first = await see(controller, "t1")
    await see(controller, "t2")
    await step(controller)
    await yields(30)
    task = controller.tracker.tasks[first]
    assert phase(task) is Phase.RUNNING
    await controller.status.cancel(task, "CancelRequested", "cancelled by request")
    assert phase(task) is Phase.CANCELLED
    assert (await step(controller)).admitted == []  # pods still terminating
    deliver_deletions(controller, api)
    [admitted] = (await step(controller)).admitted
    assert admitted.task_id == "t2"


async def test_a_reconcile_frees_a_cancelled_tasks_slot_once_its_job_is_gone() -> None:
    """The DELETED event missed (a watch gap, a restart): the Job list decides."""
    api = FakeApi(random.Random(3))
    controller = make(api)
    first = await see(controller, "t1")
    await step(controller)
    await yields(30)
    task = controller.tracker.tasks[first]
    job = dict(api.jobs[(task.tenant_namespace, naming.job_name("t1"))])
    await controller.status.cancel(task, "CancelRequested", "cancelled by request")
    api.jobs[(task.tenant_namespace, naming.job_name("t1"))] = {  # still deleting
        **job,
        "metadata": {**job["metadata"], "deletionTimestamp": "2026-11-28T00:00:05Z"},
    }
    await controller.reconcile()
    assert controller.tracker.state.is_running(first)
    api.jobs.clear()
    await controller.reconcile()
    assert not controller.tracker.state.is_running(first)
    assert first not in controller.tracker.draining
