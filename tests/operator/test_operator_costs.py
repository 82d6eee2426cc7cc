"""Costs that must not grow with the queue or the number of unrelated tasks (issue 15, item 10).

The real Controller against the in-process fakes of ``test_lifecycle_races``; each test counts
the calls an event costs (Redis writes, round trips) rather than timing anything.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
from typing import Any, cast

import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from regtask import naming
from regtask.crmodels import Phase, Priority, RateLimitPolicy
from regtask.documents import Quotas
from regtask_operator import handlers, metrics, scheduler
from regtask_operator.admission import AdmissionState, Candidate, RateVerdict, TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from regtask_operator.kube import KubeError
from tests.operator.test_lifecycle_races import (
    NAMESPACE,
    FakeApi,
    FakeMirror,
    no_llm_use,
    see,
    step,
    yields,
)

pytestmark = pytest.mark.unit


class CountingRegistry:
    """Counts the round trips to Redis of the progress sync."""

    def __init__(self) -> None:
        self.round_trips = 0

    async def get_task(self, task_id: str) -> None:
        self.round_trips += 1

    async def get_tasks(self, task_ids: list[str]) -> list[None]:
        self.round_trips += 1
        return [None] * len(task_ids)


class CountingMirror(FakeMirror):
    """Counts the registry writes (one ``publish`` is one task document + its event)."""

    def __init__(self) -> None:
        self.registry = CountingRegistry()  # type: ignore[assignment]
        self.writes = 0

    async def publish(self, snapshot: Any) -> None:
        self.writes += 1

    def pending(self) -> int:
        return 0

    def firestore_stats(self) -> None:
        return None


def controller_with(mirror: CountingMirror, **overrides: Any) -> tuple[Controller, FakeApi]:
    api = FakeApi(random.Random(0))
    settings = OperatorSettings(namespace=NAMESPACE, default_max_tasks_per_user=1, **overrides)
    controller = Controller(settings, api, mirror, no_llm_use)  # type: ignore[arg-type]
    controller.tracker.ready = True  # as after prime()
    return controller, api


async def writes_per_admission(waiting: int, admissions: int = 20) -> float:
    """One user, room for one task, ``waiting`` + 1 tasks: the mean registry writes of one
    admission (the running task completes, the next one is admitted) once the queue is built."""
    mirror = CountingMirror()
    controller, api = controller_with(mirror)
    for i in range(waiting + 1):
        await see(controller, f"t{i}")
    await step(controller)
    await yields(20)
    before = mirror.writes
    for i in range(admissions):
        task = controller.tracker.tasks[TaskKey(NAMESPACE, f"task-t{i}")]
        await controller.job_seen(api.complete(task.tenant_namespace, naming.job_name(f"t{i}")))
        await step(controller)
        await yields(20)
        assert controller.tracker.tasks[task.key].phase is Phase.SUCCEEDED
    return (mirror.writes - before) / admissions


async def test_an_admission_costs_the_same_writes_with_twice_the_queue() -> None:
    small = await writes_per_admission(200)
    large = await writes_per_admission(400)
    # Before: every waiting task was republished at each admission (~200 vs ~400).
    assert large <= small + 2, (small, large)
    assert small <= scheduler.EXACT_POSITIONS + 10, small


def test_shown_position_is_exact_in_front_and_coarse_behind() -> None:
    assert [scheduler.shown_position(p) for p in range(1, scheduler.EXACT_POSITIONS + 1)] == list(
        range(1, scheduler.EXACT_POSITIONS + 1)
    )
    assert [scheduler.shown_position(p) for p in (11, 20, 21, 50, 51, 100, 101, 999, 1001)] == [
        20,
        20,
        50,
        50,
        100,
        100,
        200,
        1000,
        2000,
    ]
    # One admission moves every position by one: few of 10,000 tasks see their key change.
    changed = sum(
        scheduler.shown_position(p) != scheduler.shown_position(p - 1) for p in range(2, 10_001)
    )
    assert changed <= scheduler.EXACT_POSITIONS + 3 * 4


async def test_progress_sync_is_one_round_trip_whatever_the_running_tasks() -> None:
    mirror = CountingMirror()
    controller, _ = controller_with(mirror)
    for i in range(50):
        key = await see(controller, f"r{i}")
        controller.tracker.tasks[key].phase = Phase.RUNNING
    await controller.reconciler.sync_progress()
    assert mirror.registry.round_trips == 1  # type: ignore[attr-defined]


def test_a_scrape_never_walks_dicts_the_event_loop_is_changing() -> None:
    """The collector runs in the HTTP server's thread: a scrape while tasks come and go must
    not fail ("dictionary changed size during iteration")."""
    mirror = CountingMirror()
    controller, _ = controller_with(mirror)
    tracker = controller.tracker

    async def fill() -> None:
        for i in range(2000):
            await see(controller, f"m{i}")

    asyncio.run(fill())
    collector = metrics.OperatorCollector(tracker, mirror)
    collector.refresh()
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                list(collector.collect())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        keys = list(tracker.tasks)
        for _ in range(200):
            moved = {key: tracker.tasks.pop(key) for key in keys[:200]}
            tracker.tasks.update(moved)
            if errors:
                break
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert errors == []


class CountingDict(dict[Any, Any]):
    """A dict that counts the walks over its values."""

    walks = 0

    def values(self) -> Any:
        CountingDict.walks += 1
        return super().values()


async def test_quota_usage_reads_counts_without_walking_the_tasks() -> None:
    """publish_quota_usage runs every 2 s for every company: it must not walk every task of
    the operator for each company (O(companies x tasks))."""
    mirror = CountingMirror()
    controller, api = controller_with(mirror)
    patched: list[dict[str, Any]] = []

    async def patch_quota(path: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched.append(patch["status"])
        return {}

    for i in range(30):
        await see(controller, f"q{i}")
    await step(controller)
    await yields(20)
    state = controller.tracker.state
    state._running = CountingDict(state._running)
    state._queued = CountingDict(state._queued)
    for company in ("c1", "c2", "c3"):
        controller.tracker.show_usage_in(company, TaskKey(NAMESPACE, f"quota-{company}"))
    api.patch_merge = patch_quota  # type: ignore[method-assign]
    CountingDict.walks = 0
    await controller.reconciler.publish_quota_usage()
    assert CountingDict.walks == 0
    assert len(patched) == 3
    assert controller.tracker.queue_summary("c1") == {"activeTasks": 1, "waitingTasks": 29}


async def test_the_quota_usage_round_visits_only_the_companies_that_changed() -> None:
    """Issue 15, item 10: the round ran every 2 s over every company with a CompanyQuota
    (an O(1) lookup and a comparison each, 1,000 companies: 1,000 lookups for one change)."""
    controller, api = controller_with(CountingMirror(), quota_usage_interval_s=0.0)
    patched: list[str] = []

    async def patch_quota(path: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched.append(path.split("/companyquotas/")[1].removesuffix("/status"))
        return {}

    api.patch_merge = patch_quota  # type: ignore[method-assign]
    tracker = controller.tracker
    for c in range(1000):
        tracker.show_usage_in(f"c{c}", TaskKey(NAMESPACE, f"quota-c{c}"))
    await controller.reconciler.publish_quota_usage()
    assert len(patched) == 1000  # each new CompanyQuota gets its usage once

    looked_up: list[str] = []
    summary = tracker.queue_summary

    def counting_summary(company_id: str) -> dict[str, int]:
        looked_up.append(company_id)
        return summary(company_id)

    tracker.queue_summary = counting_summary  # type: ignore[method-assign]
    await see(controller, "late", companyId="c7")
    patched.clear()
    await controller.reconciler.publish_quota_usage()
    assert looked_up == ["c7"]
    assert patched == ["quota-c7"]
    looked_up.clear()
    await controller.reconciler.publish_quota_usage()
    assert looked_up == [], "nothing changed: nothing to look at"


async def test_a_failed_quota_usage_patch_is_owed_to_the_next_round() -> None:
    controller, api = controller_with(CountingMirror())
    tracker = controller.tracker
    tracker.show_usage_in("c1", TaskKey(NAMESPACE, "quota-c1"))
    calls: list[str] = []

    async def refusing(path: str, patch: dict[str, Any]) -> dict[str, Any]:
        calls.append(path)
        raise KubeError(503, "PATCH", path, "unavailable")

    api.patch_merge = refusing  # type: ignore[method-assign]
    with pytest.raises(KubeError):
        await controller.reconciler.publish_quota_usage()
    shown: list[dict[str, Any]] = []

    async def accepting(path: str, patch: dict[str, Any]) -> dict[str, Any]:
        shown.append(patch["status"])
        return {}

    api.patch_merge = accepting  # type: ignore[method-assign]
    assert await controller.reconciler.publish_quota_usage() == 1
    assert shown == [{"activeTasks": 0, "waitingTasks": 0}]


@given(st.lists(st.tuples(st.sampled_from("sqrd"), st.integers(0, 7), st.sampled_from("ab"))))
def test_the_per_company_counts_follow_every_change(ops: list[tuple[str, int, str]]) -> None:
    state = AdmissionState()
    for op, n, company in ops:
        candidate = Candidate(
            TaskKey(NAMESPACE, f"t{n}"), f"t{n}", "u1", "c" + company, Priority.NORMAL, float(n)
        )
        if op == "s":
            state.submit(candidate)
        elif op == "q":
            state.mark_running(candidate)
        elif op == "r":
            state.release(candidate.key)
        else:
            state.decide(lambda _: (Quotas(max_tasks_per_user=2), RateLimitPolicy.WAIT), allow)
        for c in ("ca", "cb"):
            running = sum(1 for x in state.running() if x.company_id == c)
            queued = sum(1 for _, x in state._queued.values() if x.company_id == c)
            assert (state.running_count(c), state.queued_count(c)) == (running, queued)
        assert state.companies() == {x.company_id for x in state.running()} | {
            x.company_id for _, x in state._queued.values()
        }


def allow(company_id: str, pending: int) -> RateVerdict:
    return RateVerdict(True)


def test_the_job_watch_is_filtered_by_the_api_server() -> None:
    """Kopf matches a handler's ``labels=`` on the client: the label selector it sends with
    the list and the watch comes from ``settings.watching.label_selectors`` only."""
    settings = kopf.OperatorSettings()
    handlers.filter_watches_on_the_server(settings)
    jobs_resource = kopf.Resource("batch", "v1", "jobs")
    # What kopf._cogs.clients.watching / fetching put into ``labelSelector``:
    assert settings.watching.label_selectors.collect(jobs_resource) == [
        f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    ]
    tasks_resource = kopf.Resource("regtask.io", "v1alpha1", "registrytasks")
    for other in (tasks_resource, kopf.Resource("", "v1", "pods")):
        assert settings.watching.label_selectors.collect(other) == []


@pytest.mark.parametrize(
    ("scope", "selector"),
    [
        ("regtask-system-shard-1", ["metadata.namespace=regtask-system-shard-1"]),
        (" ns-a ,", ["metadata.namespace=ns-a"]),
        ("ns-a,ns-b", []),  # no field selector names two namespaces
        ("", []),
    ],
)
def test_tasks_and_quotas_of_other_namespaces_are_filtered_by_the_api_server(
    monkeypatch: pytest.MonkeyPatch, scope: str, selector: list[str]
) -> None:
    """Seen by Kopf, another shard's task lost its finalizer to this operator (Kopf removes it
    where no handler requires it): with one task namespace, Kopf never sees the others."""
    monkeypatch.setattr(
        handlers,
        "get_operator_settings",
        lambda: OperatorSettings(namespace="regtask-system", task_namespaces=scope),
    )
    settings = kopf.OperatorSettings()
    handlers.filter_watches_on_the_server(settings)
    for plural in ("registrytasks", "companyquotas"):
        resource = kopf.Resource("regtask.io", "v1alpha1", plural)
        assert settings.watching.field_selectors.collect(resource) == selector
    assert settings.watching.field_selectors.collect(kopf.Resource("batch", "v1", "jobs")) == []


async def test_a_short_task_costs_two_status_writes_its_job_summary_comes_with_its_end() -> None:
    """Each change of a running task's Job (created, started, a pod ready) was one status write
    and one pod list; a task shorter than REGTASK_JOB_STATUS_INTERVAL_S now costs none for
    them, its end writes the Job's last summary."""
    controller, api = controller_with(CountingMirror())
    key = await see(controller, "short")
    await step(controller)
    await yields(20)
    task = controller.tracker.tasks[key]
    job = api.jobs[(task.tenant_namespace, naming.job_name("short"))]
    for status in ({"active": 1}, {"active": 1, "startTime": "2026-11-28T00:00:00Z", "ready": 1}):
        job["status"] = status
        await controller.job_seen(job)
        await controller.sync_status()  # the throttled loop runs meanwhile: not due yet
    await controller.job_seen(api.complete(task.tenant_namespace, naming.job_name("short")))
    writes = api.writes["task-short"]
    assert [w.get("phase") for w in writes] == ["Running", "Succeeded"], writes
    assert writes[-1]["job"]["state"] == "Complete"


async def test_a_long_task_shows_its_job_once_per_interval_and_only_when_it_changed() -> None:
    controller, api = controller_with(CountingMirror(), job_status_interval_s=0.0)
    key = await see(controller, "long")
    await step(controller)
    await yields(20)
    task = controller.tracker.tasks[key]
    job = api.jobs[(task.tenant_namespace, naming.job_name("long"))]
    job["status"] = {"active": 1, "startTime": "2026-11-28T00:00:00Z"}
    await controller.job_seen(job)
    await controller.job_seen(job)  # the same again: one summary owed
    assert await controller.reconciler.sync_jobs() == 1
    assert await controller.reconciler.sync_jobs() == 0  # nothing new
    await controller.job_seen(job)  # an event that changes nothing shown
    assert await controller.reconciler.sync_jobs() == 0
    shown = [w["job"] for w in api.writes["task-long"] if "job" in w]
    assert [j["state"] for j in shown] == ["Running"], shown


async def test_quota_usage_changing_and_changing_back_within_the_interval_costs_no_write() -> None:
    """At 1,000 companies nearly every task moved its company's count twice (admitted, ended):
    1.3 CompanyQuota writes per task in bench-scale. A change is now written an interval after
    it happened, with the usage of then: a short task's changes cancel out."""
    controller, api = controller_with(CountingMirror(), quota_usage_interval_s=0.05)
    patched: list[dict[str, int]] = []
    patch_task = api.patch_merge

    async def patch(path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        if "/companyquotas/" not in path:
            return await patch_task(path, patch)
        patched.append(patch["status"])
        return {}

    api.patch_merge = patch  # type: ignore[method-assign]
    tracker = controller.tracker
    tracker.show_usage_in("c1", TaskKey(NAMESPACE, "quota-c1"))
    assert await controller.reconciler.publish_quota_usage() == 1  # a new quota: at once
    patched.clear()
    key = await see(controller, "quick", companyId="c1")
    await step(controller)
    await yields(20)
    assert tracker.queue_summary("c1") == {"activeTasks": 1, "waitingTasks": 0}
    assert await controller.reconciler.publish_quota_usage() == 0  # not yet: within the interval
    task = controller.tracker.tasks[key]
    await controller.job_seen(api.complete(task.tenant_namespace, naming.job_name("quick")))
    await asyncio.sleep(0.06)
    assert await controller.reconciler.publish_quota_usage() == 0  # back to what is shown
    assert patched == []

    await see(controller, "slow", companyId="c1")
    await step(controller)
    await yields(20)
    assert await controller.reconciler.publish_quota_usage() == 0
    await asyncio.sleep(0.06)
    assert await controller.reconciler.publish_quota_usage() == 1  # shown, an interval late
    assert patched[-1] == {"activeTasks": 1, "waitingTasks": 0}


def test_kopf_copies_no_event_body_for_a_diff_nobody_reads() -> None:
    """Kopf builds a deep copy of every watched object's body per event for its diff-base (and
    copies that again): 10 % of the operator's CPU in bench-scale. Nothing here reads it."""
    raw: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "n", "labels": {"a": "b"}},
        "spec": {"template": {"spec": {"containers": [{"name": "c"}] * 3}}},
        "status": {"active": 1},
    }
    storage = handlers._NoDiffBase()
    body = kopf.Body(cast(kopf.RawBody, raw))
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
