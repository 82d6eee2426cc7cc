"""The operator's per-event costs against the size of the queue (issue 15, item 10).

``make bench-operator-costs``: in-process, no server: the real Controller against a fake API
server and a counting registry that answer at once, so what is measured is what the operator
asks for (Redis writes, round trips, walks over its tasks), as ratios between two sizes measured
in the same run, never absolute times. One JSON line, copied to bench/results/.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import kopf

from bench.common import emit
from regtask import naming
from regtask.crmodels import Phase
from regtask_operator import handlers, metrics
from regtask_operator.admission import TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from regtask_operator.kube import Page

NAMESPACE = "regtask-bench"


class Api:
    """The API server as far as launching and finishing use it; every call succeeds at once."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def create(self, manifest: dict[str, Any]) -> bool:
        meta = manifest["metadata"]
        self.jobs[(meta["namespace"], meta["name"])] = {**manifest, "status": {}}
        return True

    async def get(self, path: str) -> dict[str, Any] | None:
        return None

    async def delete(self, *args: Any, **kwargs: Any) -> bool:
        return True

    async def patch_merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        return {}

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return []

    async def pages(self, path: str, label_selector: str | None = None) -> AsyncIterator[Page]:
        yield []

    async def post_event(self, *args: Any) -> None:
        return

    def complete(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.jobs[(namespace, name)]
        job["status"] = {
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}],
            "startTime": "2026-11-28T00:00:00Z",
        }
        return job


class Registry:
    def __init__(self) -> None:
        self.round_trips = 0

    async def get_task(self, task_id: str) -> None:
        self.round_trips += 1

    async def get_tasks(self, task_ids: list[str]) -> list[None]:
        self.round_trips += 1
        return [None] * len(task_ids)


class Mirror:
    def __init__(self) -> None:
        self.registry = Registry()
        self.writes = 0

    async def publish(self, snapshot: Any) -> None:
        self.writes += 1  # one task document + its event in Redis

    async def publish_limits(self, *args: Any) -> bool:
        return True

    async def resync(self, ended: list[Any]) -> int:
        return 0

    def pending(self) -> int:
        return 0

    def firestore_stats(self) -> None:
        return None


async def no_llm_use(company_id: str) -> tuple[int, int]:
    return 0, 3600


def controller() -> tuple[Controller, Api, Mirror]:
    api, mirror = Api(), Mirror()
    settings = OperatorSettings(namespace=NAMESPACE, default_max_tasks_per_user=1)
    made = Controller(settings, api, mirror, no_llm_use)  # type: ignore[arg-type]
    made.tracker.ready = True
    return made, api, mirror


async def add_tasks(made: Controller, prefix: str, count: int, companies: int = 1) -> None:
    for i in range(count):
        spec = {
            "taskId": f"{prefix}{i}",
            "taskType": "document_analysis",
            "userId": "u1",
            "companyId": f"c{i % companies}",
        }
        key = TaskKey(NAMESPACE, f"task-{prefix}{i}")
        await made.task_seen(key, f"uid-{prefix}{i}", spec, {}, "2026-11-28T00:00:00Z")


async def writes_per_admission(waiting: int, admissions: int = 20) -> float:
    made, api, mirror = controller()
    await add_tasks(made, "t", waiting + 1)
    await made.scheduler.step()
    await made.launcher.settle()
    before = mirror.writes
    for i in range(admissions):
        task = made.tracker.tasks[TaskKey(NAMESPACE, f"task-t{i}")]
        await made.job_seen(api.complete(task.tenant_namespace, naming.job_name(f"t{i}")))
        await made.scheduler.step()
        await made.launcher.settle()
    return (mirror.writes - before) / admissions


async def progress_round_trips(running: int) -> int:
    made, _, mirror = controller()
    await add_tasks(made, "r", running)
    for task in made.tracker.tasks.values():
        task.phase = Phase.RUNNING
    await made.reconciler.sync_progress()
    return mirror.registry.round_trips


async def quota_usage_seconds(tasks: int, companies: int = 50, rounds: int = 200) -> float:
    made, _, _ = controller()
    await add_tasks(made, "q", tasks, companies)
    for c in range(companies):
        made.tracker.show_usage_in(f"c{c}", TaskKey(NAMESPACE, f"quota-c{c}"))
    started = time.perf_counter()
    for _ in range(rounds):
        made.reconciler._quota_shown.clear()  # every company patched each round
        made.tracker.usage_owed.update(f"c{c}" for c in range(companies))
        await made.reconciler.publish_quota_usage()
    return time.perf_counter() - started


async def quota_usage_companies_visited(companies: int) -> int:
    """Companies looked up by a quota-usage round after one task of one company arrived."""
    made, _, _ = controller()
    for c in range(companies):
        made.tracker.show_usage_in(f"c{c}", TaskKey(NAMESPACE, f"quota-c{c}"))
    await made.reconciler.publish_quota_usage()
    visited: list[str] = []
    summary = made.tracker.queue_summary

    def counting(company_id: str) -> dict[str, int]:
        visited.append(company_id)
        return summary(company_id)

    made.tracker.queue_summary = counting  # type: ignore[method-assign]
    await add_tasks(made, "one", 1)
    await made.reconciler.publish_quota_usage()
    return len(visited)


async def step_seconds_after_one_change(waiting: int, rounds: int = 40) -> float:
    """Steps that each follow one new task of a new company, with ``waiting`` tasks of 500
    other companies queued and unchanged (issue 19, item 2)."""
    made, _, _ = controller()
    await add_tasks(made, "w", waiting, companies=500)
    await made.scheduler.step()
    await made.launcher.settle()
    elapsed = 0.0
    for i in range(rounds):
        spec = {
            "taskId": f"n{i}",
            "taskType": "document_analysis",
            "userId": "u1",
            "companyId": f"new{i}",
        }
        await made.task_seen(
            TaskKey(NAMESPACE, f"task-n{i}"), f"uid-n{i}", spec, {}, "2026-11-28T00:00:00Z"
        )
        started = time.perf_counter()
        await made.scheduler.step()
        elapsed += time.perf_counter() - started
        await made.launcher.settle()
    return elapsed


async def step_while_a_launch_hangs() -> dict[str, Any]:
    """A step with one tenant's Job create hanging: does it return, and do the other tenants'
    tasks start meanwhile?"""
    made, api, _ = controller()
    hang = asyncio.Event()
    create = api.create

    async def hanging_create(manifest: dict[str, Any]) -> bool:
        if manifest["metadata"]["name"] == naming.job_name("h0"):
            await hang.wait()
        return await create(manifest)

    api.create = hanging_create  # type: ignore[method-assign]
    await add_tasks(made, "h", 10, companies=10)
    try:
        await asyncio.wait_for(made.scheduler.step(), 10.0)
    except TimeoutError:
        return {"step_returned": False, "others_started": 0}
    for _ in range(100):
        await asyncio.sleep(0)
    started = sum(1 for t in made.tracker.tasks.values() if t.phase is Phase.RUNNING)
    hang.set()
    await made.launcher.settle()
    return {"step_returned": True, "others_started": started}


def failed_scrapes(tasks: int = 2000, rounds: int = 200) -> tuple[int, int]:
    """Scrapes in a thread while the task dict changes: (failed, done)."""
    made, _, mirror = controller()
    asyncio.run(add_tasks(made, "m", tasks))
    collector = metrics.OperatorCollector(made.tracker, mirror)
    collector.refresh()
    counts = {"failed": 0, "done": 0}
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                list(collector.collect())
            except RuntimeError:
                counts["failed"] += 1
            counts["done"] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=scrape)
    thread.start()
    keys = list(made.tracker.tasks)
    for _ in range(rounds):
        moved = {key: made.tracker.tasks.pop(key) for key in keys[:200]}
        made.tracker.tasks.update(moved)
    stop.set()
    thread.join()
    sys.setswitchinterval(interval)
    return counts["failed"], counts["done"]


def main() -> None:
    small, large = (asyncio.run(writes_per_admission(w)) for w in (200, 400))
    trips_small, trips_large = (asyncio.run(progress_round_trips(n)) for n in (100, 1000))
    quota_small, quota_large = (asyncio.run(quota_usage_seconds(n)) for n in (1000, 10_000))
    visited = asyncio.run(quota_usage_companies_visited(1000))
    step_small, step_large = (asyncio.run(step_seconds_after_one_change(n)) for n in (1000, 20_000))
    hung = asyncio.run(step_while_a_launch_hangs())
    failed, scrapes = failed_scrapes()
    settings = kopf.OperatorSettings()
    handlers.filter_watches_on_the_server(settings)
    selector = settings.watching.label_selectors.collect(kopf.Resource("batch", "v1", "jobs"))
    emit(
        "operator_costs",
        {
            "redis_writes_per_admission": {"waiting_200": small, "waiting_400": large},
            "redis_writes_per_admission_ratio_400_vs_200": round(large / small, 2),
            "progress_sync_round_trips": {"running_100": trips_small, "running_1000": trips_large},
            "quota_usage_time_ratio_10000_vs_1000_tasks": round(quota_large / quota_small, 2),
            "quota_usage_companies_visited_after_one_change_of_1000": visited,
            "step_time_ratio_20000_vs_1000_other_tasks_waiting": round(step_large / step_small, 2),
            "step_with_one_launch_hanging_of_10": hung,
            "scrapes_failed_while_tasks_change": {"failed": failed, "scrapes": scrapes},
            "job_watch_label_selector": ",".join(selector),
        },
    )


if __name__ == "__main__":
    main()
