"""Quota race and restart safety: the operator under a burst and under repeated SIGKILLs."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client, watch

from regtask import naming
from regtask.crmodels import API_GROUP, API_VERSION
from regtask_dev.kind import KindCluster
from regtask_dev.stack import GatewayProcess, wait_until
from tests.fixtures.platform import create_company_quota, gateway_env
from tests.operator.test_operator_lifecycle import as_dict, new_task

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(1800)]

COMPANY = "company_burst"


class JobLedger(threading.Thread):
    """Follows the operator's Jobs in watch (resourceVersion) order.

    ``max_admitted`` is the largest number of Jobs that existed unfinished at the same time:
    exact, because the watch replays the apiserver's own order of events.
    """

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(daemon=True)
        self.batch = client.BatchV1Api(api)
        self.selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
        start = self.batch.list_job_for_all_namespaces(label_selector=self.selector)
        self.resource_version = start.metadata.resource_version
        self.unfinished: set[str] = set()
        self.created: Counter[str] = Counter()
        self.max_admitted = 0
        self._halt = threading.Event()

    @staticmethod
    def finished(job: Any) -> bool:
        conditions = (job.status.conditions if job.status else None) or []
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)

    def run(self) -> None:
        while not self._halt.is_set():
            stream = watch.Watch().stream(
                self.batch.list_job_for_all_namespaces,
                label_selector=self.selector,
                resource_version=self.resource_version,
                timeout_seconds=5,
            )
            for event in stream:
                job = event["object"]
                key = f"{job.metadata.namespace}/{job.metadata.name}"
                self.resource_version = job.metadata.resource_version
                if event["type"] == "ADDED":
                    self.created[key] += 1
                    if not self.finished(job):
                        self.unfinished.add(key)
                elif event["type"] == "DELETED" or self.finished(job):
                    self.unfinished.discard(key)
                self.max_admitted = max(self.max_admitted, len(self.unfinished))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def quota_status(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    quota = as_dict(
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "companyquotas", naming.derived_name("cq", COMPANY)
        )
    )
    return quota.get("status") or {}


def tasks_by_phase(api: client.ApiClient, namespace: str) -> dict[str, list[dict[str, Any]]]:
    items = as_dict(
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "registrytasks"
        )
    )["items"]
    phases: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        phases.setdefault((item.get("status") or {}).get("phase") or "", []).append(item)
    return phases


def burst(api: client.ApiClient, namespace: str, count: int, prefix: str) -> list[str]:
    def create(n: int) -> str:
        return new_task(
            api,
            namespace,
            f"{prefix}_{n:03d}",
            companyId=COMPANY,
            inputs=[{"name": "document", "value": f"Facture {n} du 24/09/2025."}],
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(create, range(count)))


def test_200_tasks_for_one_user_never_exceed_the_limit(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: GatewayProcess,
) -> None:
    create_company_quota(kube_api, control_namespace, COMPANY, 10)
    # The node cordoned: admitted Jobs get no pod yet, so the queue holds still to be read.
    cluster.kubectl("cordon", cluster.node_container)
    operator_factory(**gateway_env(gateway))
    ledger = JobLedger(kube_api)
    ledger.start()
    names = burst(kube_api, control_namespace, 200, "burst")

    # No node yet: 10 Jobs admitted and stuck, 190 waiting with their queue positions.
    def settled() -> dict[str, list[dict[str, Any]]] | None:
        phases = tasks_by_phase(kube_api, control_namespace)
        waiting = phases.get("Waiting", [])
        positions = sorted(t["status"].get("queuePosition") or 0 for t in waiting)
        if len(phases.get("Running", [])) == 10 and positions == list(range(1, 191)):
            return phases
        return None

    phases = wait_until(settled, 120, "10 running and 190 waiting at positions 1..190", 1.0)
    waiting = sorted(phases["Waiting"], key=lambda t: t["status"]["queuePosition"])
    created = [(t["metadata"]["creationTimestamp"]) for t in waiting]
    assert created == sorted(created), "queue positions follow creation order (FIFO)"
    assert waiting[0]["status"]["reason"] == "UserConcurrencyQuota"

    wait_until(
        lambda: quota_status(kube_api, control_namespace).get("waitingTasks") == 190,
        30,
        "CompanyQuota status shows the queue",
    )

    cluster.kubectl("uncordon", cluster.node_container)
    try:
        wait_until(
            lambda: len(tasks_by_phase(kube_api, control_namespace).get("Succeeded", [])) == 200,
            900,
            "all 200 tasks Succeeded",
            2.0,
        )
    finally:
        cluster.kubectl("uncordon", cluster.node_container)
        ledger.stop()
    assert ledger.max_admitted <= 10
    assert ledger.max_admitted == 10  # the limit was actually reached
    assert len(ledger.created) == 200 and set(ledger.created.values()) == {1}
    assert len(names) == 200


def test_sigkill_twenty_times_loses_nothing(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: GatewayProcess,
) -> None:
    create_company_quota(kube_api, control_namespace, COMPANY, 5)
    operator = operator_factory(**gateway_env(gateway))
    ledger = JobLedger(kube_api)
    ledger.start()
    burst(kube_api, control_namespace, 40, "crash")
    rng = random.Random(20)
    for _ in range(20):
        time.sleep(rng.uniform(0.3, 2.5))
        operator.kill()
        operator.start()
    try:
        wait_until(
            lambda: len(tasks_by_phase(kube_api, control_namespace).get("Succeeded", [])) == 40,
            600,
            "all 40 tasks Succeeded after the crashes",
            2.0,
        )
    finally:
        ledger.stop()
    assert operator.starts == 21
    assert len(ledger.created) == 40 and set(ledger.created.values()) == {1}, "no duplicate Job"
    assert ledger.max_admitted <= 5
    # No leaked slot: the quota shows nothing running once everything finished.
    wait_until(
        lambda: quota_status(kube_api, control_namespace).get("activeTasks") == 0,
        30,
        "CompanyQuota shows 0 active tasks",
    )
