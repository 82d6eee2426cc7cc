"""Prometheus metrics of the operator (served on ``REGTASK_METRICS_PORT``, default 9090).

Gauges of tasks and quotas are computed at scrape time from the controller's own state (a
custom collector), so they can never drift from what the operator believes; events that happen
once (admission, a finished Job, a failed mirror write) are counters and histograms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from regtask_operator.controller import Controller

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


class ControllerCollector(Collector):
    """Task counts and quota usage read from the controller at scrape time."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        tasks = GaugeMetricFamily(
            "regtask_tasks",
            "Tasks known to the operator, by phase, type and company.",
            labels=["phase", "task_type", "company"],
        )
        counts: Counter[tuple[str, str, str]] = Counter(
            (t.phase.value, t.task_type.value, t.company_id) for t in self.controller.tasks.values()
        )
        for (phase, task_type, company), value in sorted(counts.items()):
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
        companies = (
            self.controller.state.companies()
            | set(self.controller.limits)
            | {t.company_id for t in self.controller.tasks.values()}
        )
        for company in sorted(companies):
            usage = self.controller.queue_summary(company)
            running.add_metric([company], usage["activeTasks"])
            waiting.add_metric([company], usage["waitingTasks"])
            limit.add_metric(
                [company], self.controller.company_limits(company)[0].max_tasks_per_user
            )
        yield running
        yield waiting
        yield limit
        failures = GaugeMetricFamily(
            "regtask_mirror_pending_tasks", "Task states waiting to be written to Redis."
        )
        failures.add_metric([], self.controller.mirror.pending())
        yield failures
        firestore = self.controller.mirror.firestore
        if firestore is not None:
            # The Firestore mirror retries in its own thread; its counters are its own.
            stats = firestore.stats()
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
