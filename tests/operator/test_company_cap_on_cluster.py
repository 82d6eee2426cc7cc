"""A company cap shared by fair share, on the real cluster (issue 18, item 3): the operator
process, its Jobs real pods of the runner image, every Job of the company followed by a watch.

Before: no company cap (user A alone ran 10 Jobs of a company capped at 4) and FIFO between
users (B's tasks would have started after A's whole queue)."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import pytest
from kubernetes import client, watch

from regtask import naming
from regtask.crmodels import API_GROUP, API_VERSION
from regtask_dev.stack import GatewayProcess, scrape_metrics, wait_until
from tests.fixtures.platform import gateway_env
from tests.operator.test_operator_lifecycle import new_task
from tests.operator.test_operator_real_cluster import phases

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(900)]

CAP = 4
A_TASKS = 16
B_TASKS = 2


class JobFollower(threading.Thread):
    """Every Job of one company as the API server's watch delivers them (one stream, so in
    resourceVersion order): the order they were created in, and the most that were active
    (created, neither Complete nor Failed, not deleted) at any instant."""

    def __init__(self, api: client.ApiClient, company: str) -> None:
        super().__init__(daemon=True)
        self.api, self.company = api, company
        self.added: list[str] = []  # the Jobs' user ids, in creation order
        self.active: set[str] = set()
        self.most_active = 0
        self.errors: list[str] = []
        self._watch = watch.Watch()
        listed = client.BatchV1Api(api).list_job_for_all_namespaces(label_selector=self.selector)
        self._since = listed.metadata.resource_version

    @property
    def selector(self) -> str:
        return f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"

    def run(self) -> None:
        try:
            for event in self._watch.stream(
                client.BatchV1Api(self.api).list_job_for_all_namespaces,
                label_selector=self.selector,
                resource_version=self._since,
                timeout_seconds=900,
            ):
                self._see(event["type"], event["object"])
        except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.errors.append(repr(exc))

    def _see(self, kind: str, job: Any) -> None:
        annotations = job.metadata.annotations or {}
        if annotations.get(naming.ANNOTATION_COMPANY) != self.company:
            return
        name = job.metadata.name
        conditions = {c.type for c in (job.status.conditions or []) if c.status == "True"}
        if kind == "ADDED":
            self.added.append(annotations.get(naming.ANNOTATION_USER, ""))
        if kind == "DELETED" or conditions & {"Complete", "Failed"}:
            self.active.discard(name)
        elif kind in ("ADDED", "MODIFIED"):
            self.active.add(name)
        self.most_active = max(self.most_active, len(self.active))

    def stop(self) -> None:
        self._watch.stop()


def test_a_colleague_starts_before_a_bursts_queue_drains_and_the_cap_holds(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: GatewayProcess,
) -> None:
    """User A queues 16 tasks, user B 2 once A fills the company's 4 slots: B's tasks take the
    next slots that free (B runs fewer than A), long before A's queue drains; at no instant
    does the company have more than 4 active Jobs (A alone may run 10)."""
    suffix = secrets.token_hex(3)
    company, user_a, user_b = f"fair_{suffix}", f"burst_{suffix}", f"colleague_{suffix}"
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        control_namespace,
        "companyquotas",
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "CompanyQuota",
            "metadata": {"name": naming.derived_name("cq", company)},
            "spec": {"companyId": company, "maxTasksPerUser": 10, "maxTasksPerCompany": CAP},
        },
    )
    operator = operator_factory(**gateway_env(gateway))
    jobs = JobFollower(kube_api, company)
    jobs.start()
    try:
        names = [
            new_task(
                kube_api,
                control_namespace,
                f"burst_{n:02d}_{suffix}",
                userId=user_a,
                companyId=company,
                inputs=[{"name": "document", "value": f"Facture {n}, 12,00 EUR."}],
            )
            for n in range(A_TASKS)
        ]
        wait_until(lambda: len(jobs.added) >= CAP, 120, "A fills the company's slots", 0.2)
        a_before_b = len(jobs.added)
        names += [
            new_task(
                kube_api,
                control_namespace,
                f"colleague_{n}_{suffix}",
                userId=user_b,
                companyId=company,
                inputs=[{"name": "document", "value": f"Facture B{n}, 3,00 EUR."}],
            )
            for n in range(B_TASKS)
        ]
        series = f'regtask_quota_company_slot_headroom{{company="{company}"}}'
        wait_until(
            lambda: phases(kube_api, control_namespace, names).get("Succeeded") == len(names),
            600,
            "every task Succeeded",
            2.0,
        )
        time.sleep(1.0)  # the watch's last events
    finally:
        jobs.stop()
    assert jobs.errors == []
    assert jobs.added.count(user_a) == A_TASKS and jobs.added.count(user_b) == B_TASKS
    assert jobs.most_active <= CAP, f"{jobs.most_active} Jobs active at once, cap {CAP}"
    last_b = max(i for i, user in enumerate(jobs.added) if user == user_b)
    a_after_b = jobs.added[last_b + 1 :].count(user_a)
    a_between = jobs.added[a_before_b : last_b + 1].count(user_a)
    # B runs fewer than A, so each slot that frees goes to B (2 of A's may start in the instant
    # before the operator sees B's tasks); FIFO would have put B behind all 16 of A's.
    assert a_between <= 2, (jobs.added, a_before_b)
    assert a_after_b >= A_TASKS - a_before_b - 2, (jobs.added, a_before_b)
    wait_until(
        lambda: scrape_metrics(operator.metrics_url).get(series) == float(CAP),
        30,
        "headroom back to the whole cap",
    )
    assert scrape_metrics(operator.metrics_url).get(
        f'regtask_quota_max_tasks_per_company{{company="{company}"}}'
    ) == float(CAP)
