"""Prometheus metrics of the operator (served on ``REGTASK_METRICS_PORT``, default 9090).

Gauges of tasks and quotas are computed at scrape time from the operator's own state (a
custom collector reading two narrow interfaces: :class:`TaskStats`, :class:`MirrorStats`), so
they can never drift from what the operator believes; events that happen once (admission, a
finished Job, a failed mirror write) are counters and histograms. Imports nothing of the
operator: every other module may import this one.

Hazard: the scrape runs in the HTTP server's thread while the event loop changes the tracker's
dicts (walking them there failed with "dictionary changed size during iteration"). The event
loop therefore computes a :class:`StatsSnapshot` (:meth:`OperatorCollector.refresh`, every
status-sync interval) and the scrape only reads the latest one: one reference, swapped whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

ADMISSION_WAIT = Histogram(
    "regtask_admission_wait_seconds",
    "Time from a task's creation to its admission (Job created).",
    ["company"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "regtask_job_duration_seconds",
    "Time from admission to the end of the task, by type and final phase.",
    ["task_type", "phase"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600),
    registry=REGISTRY,
)
TASKS_FINISHED = PromCounter(
    "regtask_tasks_finished_total",
    "Tasks that reached a final phase.",
    ["task_type", "company", "phase"],
    registry=REGISTRY,
)
MIRROR_FAILURES = PromCounter(
    "regtask_mirror_failures_total",
    "Failed writes to a mirror (kept and retried for Redis; retried in-thread for Firestore).",
    ["target"],
    registry=REGISTRY,
)


class TaskStats(Protocol):
    """What the collector reads of the operator's memory (a TaskTracker)."""

    def task_counts(self) -> Counter[tuple[str, str, str]]: ...

    def companies(self) -> set[str]: ...

    def queue_summary(self, company_id: str) -> dict[str, int]: ...

    def max_tasks_per_user(self, company_id: str) -> int: ...

    def max_tasks_per_company(self, company_id: str) -> int | None: ...


class MirrorStats(Protocol):
    """What the collector reads of the mirror."""

    def pending(self) -> int: ...

    def firestore_stats(self) -> dict[str, int] | None: ...


@dataclass(frozen=True)
class StatsSnapshot:
    """The numbers a scrape shows, computed on the event loop (never walked from the scrape's
    thread)."""

    task_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # company -> (running, waiting, maxTasksPerUser, maxTasksPerCompany or None)
    quotas: dict[str, tuple[int, int, int, int | None]] = field(default_factory=dict)
    mirror_pending: int = 0


def take_snapshot(tasks: TaskStats, mirror: MirrorStats) -> StatsSnapshot:
    """Read the operator's memory; call on the event loop's thread only."""
    quotas: dict[str, tuple[int, int, int, int | None]] = {}
    for company in tasks.companies():
        usage = tasks.queue_summary(company)
        quotas[company] = (
            usage["activeTasks"],
            usage["waitingTasks"],
            tasks.max_tasks_per_user(company),
            tasks.max_tasks_per_company(company),
        )
    return StatsSnapshot(tasks.task_counts(), quotas, mirror.pending())


class OperatorCollector(Collector):
    """Task counts, quota usage and mirror backlog: the latest snapshot the event loop took
    (:meth:`refresh`), so a scrape lags by at most one refresh interval."""

    def __init__(self, tasks: TaskStats, mirror: MirrorStats) -> None:
        self.tasks = tasks
        self.mirror = mirror
        self.latest = StatsSnapshot()

    def refresh(self) -> None:
        """Take a new snapshot; on the event loop's thread only (it walks the tracker)."""
        self.latest = take_snapshot(self.tasks, self.mirror)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshot = self.latest  # one read: the scrape never sees half of two snapshots
        tasks = GaugeMetricFamily(
            "regtask_tasks",
            "Tasks known to the operator, by phase, type and company.",
            labels=["phase", "task_type", "company"],
        )
        for (phase, task_type, company), value in sorted(snapshot.task_counts.items()):
            tasks.add_metric([phase, task_type, company], value)
        yield tasks

        running = GaugeMetricFamily(
            "regtask_quota_running_tasks", "Admitted tasks per company.", labels=["company"]
        )
        waiting = GaugeMetricFamily(
            "regtask_quota_waiting_tasks", "Tasks waiting for room per company.", labels=["company"]
        )
        limit = GaugeMetricFamily(
            "regtask_quota_max_tasks_per_user",
            "The company's concurrency limit per user.",
            labels=["company"],
        )
        company_cap = GaugeMetricFamily(
            "regtask_quota_max_tasks_per_company",
            "The company's cap on running tasks (companies with one only).",
            labels=["company"],
        )
        headroom = GaugeMetricFamily(
            "regtask_quota_company_slot_headroom",
            "Slots the company may still fill before its maxTasksPerCompany (companies with a"
            " cap only; 0 = at the cap, its next free slot goes by fair share).",
            labels=["company"],
        )
        for company, (active, queued, max_tasks, cap) in sorted(snapshot.quotas.items()):
            running.add_metric([company], active)
            waiting.add_metric([company], queued)
            limit.add_metric([company], max_tasks)
            if cap is not None:
                company_cap.add_metric([company], cap)
                headroom.add_metric([company], max(cap - active, 0))
        yield running
        yield waiting
        yield limit
        yield company_cap
        yield headroom
        failures = GaugeMetricFamily(
            "regtask_mirror_pending_tasks", "Task states waiting to be written to Redis."
        )
        failures.add_metric([], snapshot.mirror_pending)
        yield failures
        stats = self.mirror.firestore_stats()
        if stats is not None:
            # The Firestore writer retries in its own thread; its counters are its own.
            for name, key, help_text in (
                (
                    "regtask_firestore_mirror_failed_attempts_total",
                    "failed_attempts",
                    "Failed Firestore writes (each is retried).",
                ),
                (
                    "regtask_firestore_mirror_dropped_total",
                    "dropped",
                    "Firestore documents dropped from a full queue.",
                ),
                ("regtask_firestore_mirror_written_total", "written", "Firestore writes done."),
            ):
                family = CounterMetricFamily(name.removesuffix("_total"), help_text)
                family.add_metric([], stats.get(key, 0))
                yield family
