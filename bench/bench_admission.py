"""Admission benchmark on a kind cluster: latency, throughput, API writes, memory.

``make bench-admission``. Creates a kind cluster (``regtask_dev.kind``), loads the runner image,
starts Redis, the gateway (host process on the cluster's host address) and the operator (as its
ServiceAccount); every task runs as a real pod. Creates TASKS RegistryTasks for USERS users of
one company (limit LIMIT per user, so LIMIT * USERS run at once and the rest wait), measures
from each create call's return to the moment its Job appears in a watch, follows all tasks to
Succeeded, and reads the apiserver's own request counters to count the operator's writes per
task.
Then it creates KNOWN more tasks (never admitted: limit 0) to measure the operator's memory with
that many tasks known. Meanwhile it reads the users' events: the first ETA (``estimated_start``)
the operator published for each waiting task, against the moment its Job appeared.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from kubernetes import client, config, watch

from bench.common import emit
from regtask import keys, naming
from regtask.crmodels import API_GROUP, API_VERSION, RegistryTaskSpec, TaskInput
from regtask.tasktypes import TaskType
from regtask.timeutil import parse_iso
from regtask_dev import images
from regtask_dev.kind import KindCluster
from regtask_dev.redis_server import RedisServer
from regtask_dev.stack import (
    RBAC_DIR,
    GatewayProcess,
    OperatorProcess,
    apply_crds,
    apply_manifests,
    ensure_namespace,
    wait_until,
)
from regtask_shim.taskstore import task_manifest

TASKS = int(os.environ.get("BENCH_TASKS", "300"))
USERS = int(os.environ.get("BENCH_USERS", "10"))
LIMIT = int(os.environ.get("BENCH_LIMIT", "5"))
KNOWN = int(os.environ.get("BENCH_KNOWN", "10000"))
# Then this many more tasks with room for all of them at once: the lifecycle without waiting.
UNCONTENDED = int(os.environ.get("BENCH_UNCONTENDED", "50"))
# Writes that land a little after the last task ends (status sync, quota usage): waited for.
SETTLE_S = 10
# The operator hands freed heap back to the OS this often (its default).
MEMORY_TRIM_S = 30
COMPANY = "bench_co"
NAMESPACE = "regtask-system"

# Operator writes, read from the apiserver's request counters: (resource, subresource) pairs.
# The bench writes registrytasks (create); Kubernetes' own controllers and the kubelet write
# jobs/status, pods, pods/status, serviceaccounts/token and resourcequotas/status: not counted.
# Events are counted apart, from every component (the operator's are two per task).
OPERATOR_WRITES = {
    ("registrytasks", ""),
    ("registrytasks", "status"),
    ("companyquotas", "status"),
    ("jobs", ""),
    ("secrets", ""),
    ("namespaces", ""),
    ("serviceaccounts", ""),
    ("networkpolicies", ""),
    ("resourcequotas", ""),
    ("limitranges", ""),
}
WRITE_VERBS = {"POST", "PATCH", "PUT", "DELETE", "DELETECOLLECTION", "APPLY", "CREATE", "UPDATE"}


def request_counts(cluster: KindCluster) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total summed by (verb, resource, subresource)."""
    counts: dict[tuple[str, str, str], float] = {}
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} ([0-9.e+]+)$")
    for line in cluster.get("/metrics").decode().splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
        counts[key] = counts.get(key, 0.0) + float(match.group(2))
    return counts


def operator_writes(
    before: dict[Any, float], after: dict[Any, float], creates: int
) -> tuple[float, dict[str, float], float]:
    """(object writes, the same by verb/resource, Event posts) between two counter readings."""
    total = 0.0
    by_kind: dict[str, float] = {}
    events = 0.0
    for (verb, resource, sub), value in after.items():
        delta = value - before.get((verb, resource, sub), 0.0)
        if not delta or verb.upper() not in WRITE_VERBS:
            continue
        if resource == "events":
            events += delta
        elif (resource, sub) in OPERATOR_WRITES:
            if (verb.upper(), resource, sub) == ("POST", "registrytasks", ""):
                delta -= creates  # the bench's own task creations are not the operator's
            if (verb.upper(), resource, sub) == ("POST", "serviceaccounts", ""):
                continue  # the controller-manager's "default" ServiceAccount of a new namespace
            total += delta
            label = f"{verb} {resource}{'/' + sub if sub else ''}"
            by_kind[label] = by_kind.get(label, 0.0) + delta
    return total, {k: v for k, v in sorted(by_kind.items()) if v}, events


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    """Resident size (or with ``VmHWM:``, its peak) of a process, in MB."""
    with Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def task_body(task_id: str, user: str, company: str = COMPANY) -> dict[str, Any]:
    """The RegistryTask exactly as the shim creates it (finalizer already set)."""
    spec = RegistryTaskSpec(
        task_id=task_id,
        task_type=TaskType.DOCUMENT_ANALYSIS,
        user_id=user,
        company_id=company,
        inputs=[TaskInput(name="document", value=f"Facture {task_id}")],
    )
    return task_manifest(spec, NAMESPACE)


class EtaLedger(threading.Thread):
    """The first ETA each waiting task got in its events (what its user saw first), and when."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(keys.events_channel("*"))
        self.first: dict[str, tuple[float, float]] = {}  # task -> (estimated start, seen at)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            message = self.pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            event = json.loads(message["data"])
            payload = event.get("payload") or {}
            start = (payload.get("data") or {}).get("estimated_start")
            task_id = payload.get("task_id")
            if start and task_id and task_id not in self.first:
                self.first[task_id] = (parse_iso(start).timestamp(), time.time())

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def errors(self, started: dict[str, float]) -> dict[str, Any]:
        """Median absolute error of the first ETA against the real start, and the wait it
        predicted over (from the estimate to the start), in seconds."""
        pairs = [
            (abs(started[t] - eta), started[t] - seen)
            for t, (eta, seen) in self.first.items()
            if t in started
        ]
        if not pairs:
            return {"eta_tasks_estimated": 0}
        return {
            "eta_tasks_estimated": len(pairs),
            "eta_median_abs_error_s": round(statistics.median(e for e, _ in pairs), 1),
            "eta_median_wait_s": round(statistics.median(w for _, w in pairs), 1),
            "eta_median_relative_error": round(
                statistics.median(e / w for e, w in pairs if w > 0), 2
            ),
        }


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="regtask-bench-admission-"))
    with KindCluster("regtask-bench", work / "kind") as plane:
        [runner] = images.build(["runner"]).values()
        plane.load_images([runner])
        redis_srv = RedisServer(host=plane.host_address).start()
        api = config.new_client_from_config(config_file=str(plane.kubeconfig_path))
        apply_crds(api)
        ensure_namespace(api, NAMESPACE)
        apply_manifests(api, RBAC_DIR / "operator.yaml")
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            NAMESPACE,
            "companyquotas",
            {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": "CompanyQuota",
                "metadata": {"name": "bench"},
                "spec": {"companyId": COMPANY, "maxTasksPerUser": LIMIT},
            },
        )
        gateway = GatewayProcess(
            {
                "REDIS_URL": redis_srv.url,
                "REGTASK_NAMESPACE": NAMESPACE,
                "KUBECONFIG": str(plane.kubeconfig_path),
            },
            work / "gateway",
            host=plane.host_address,
        ).start()
        operator = OperatorProcess(
            plane.service_account_kubeconfig(NAMESPACE, "regtask-operator"),
            {
                "REDIS_URL": redis_srv.url,
                "REGTASK_NAMESPACE": NAMESPACE,
                "REGTASK_STANDALONE": "true",
                "REGTASK_RUNNER_IMAGE": runner,
                "REGTASK_GATEWAY_URL": gateway.url,
                "REGTASK_GATEWAY_PORT": str(gateway.port),
                "REGTASK_GATEWAY_EGRESS_CIDRS": json.dumps([f"{gateway.host}/32"]),
            },
            work / "operator",
        ).start()

        batch = client.BatchV1Api(api)
        selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
        rv = batch.list_job_for_all_namespaces(label_selector=selector).metadata.resource_version
        job_seen: dict[str, float] = {}
        job_seen_wall: dict[str, float] = {}
        eta_ledger = EtaLedger(redis_srv.url)
        eta_ledger.start()
        unfinished: set[str] = set()
        max_per_user: dict[str, int] = {}
        running_per_user: dict[str, int] = {}
        stop = threading.Event()

        def follow() -> None:
            nonlocal rv
            while not stop.is_set():
                for event in watch.Watch().stream(
                    batch.list_job_for_all_namespaces,
                    label_selector=selector,
                    resource_version=rv,
                    timeout_seconds=5,
                ):
                    job = event["object"]
                    rv = job.metadata.resource_version
                    task_id = job.metadata.annotations[naming.ANNOTATION_TASK]
                    user = job.metadata.annotations[naming.ANNOTATION_USER]
                    done = any(
                        c.type in ("Complete", "Failed") and c.status == "True"
                        for c in (job.status.conditions or [])
                    )
                    if event["type"] == "ADDED" and task_id not in job_seen:
                        job_seen[task_id] = time.monotonic()
                        job_seen_wall[task_id] = time.time()
                        if not done:
                            unfinished.add(task_id)
                            running_per_user[user] = running_per_user.get(user, 0) + 1
                    elif (done or event["type"] == "DELETED") and task_id in unfinished:
                        unfinished.discard(task_id)
                        running_per_user[user] -= 1
                    max_per_user[user] = max(
                        max_per_user.get(user, 0), running_per_user.get(user, 0)
                    )

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        before = request_counts(plane)
        created: dict[str, float] = {}

        def create(n: int) -> None:
            task_id = f"bench_{n:05d}"
            custom.create_namespaced_custom_object(
                API_GROUP,
                API_VERSION,
                NAMESPACE,
                "registrytasks",
                task_body(task_id, f"user{n % USERS}"),
            )
            created[task_id] = time.monotonic()

        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(TASKS)))

        def all_succeeded() -> bool:
            items = custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, NAMESPACE, "registrytasks"
            )["items"]
            return (
                sum(1 for i in items if (i.get("status") or {}).get("phase") == "Succeeded")
                >= TASKS
            )

        wait_until(all_succeeded, 3600, "all tasks Succeeded", 2.0)
        finished = time.monotonic()
        eta_ledger.stop()
        eta = eta_ledger.errors(job_seen_wall)
        time.sleep(SETTLE_S)  # let the last status, quota and cleanup writes land
        after = request_counts(plane)

        # The same lifecycle without waiting: room for every task at once.
        custom.patch_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            NAMESPACE,
            "companyquotas",
            "bench",
            {"spec": {"maxTasksPerUser": 1000}},
        )
        time.sleep(2)
        before_free = request_counts(plane)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(TASKS, TASKS + UNCONTENDED)))

        def all_succeeded_again() -> bool:
            items = custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, NAMESPACE, "registrytasks"
            )["items"]
            done = sum(1 for i in items if (i.get("status") or {}).get("phase") == "Succeeded")
            return done >= TASKS + UNCONTENDED

        wait_until(all_succeeded_again, 600, "the uncontended tasks Succeeded", 1.0)
        time.sleep(SETTLE_S)
        after_free = request_counts(plane)
        stop.set()

        # Only the tasks admitted at once measure admission itself (the rest waited for room).
        first_wave = sorted(created, key=created.__getitem__)[: USERS * LIMIT]
        latencies = sorted((job_seen[t] - created[t]) * 1000 for t in first_wave if t in job_seen)
        writes, writes_by_kind, events = operator_writes(before, after, TASKS)
        free_writes, free_by_kind, free_events = operator_writes(
            before_free, after_free, UNCONTENDED
        )

        # Memory with many tasks known: KNOWN more tasks for a company whose limit is 0.
        custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            NAMESPACE,
            "companyquotas",
            {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": "CompanyQuota",
                "metadata": {"name": "frozen"},
                "spec": {"companyId": "frozen_co", "maxTasksPerUser": 0},
            },
        )

        def create_known(n: int) -> None:
            body = task_body(f"known_{n:05d}", f"user{n % 100}", "frozen_co")
            custom.create_namespaced_custom_object(
                API_GROUP, API_VERSION, NAMESPACE, "registrytasks", body
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create_known, range(KNOWN)))

        def all_known_waiting() -> bool:
            items = custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, NAMESPACE, "registrytasks"
            )["items"]
            return (
                sum(1 for i in items if (i.get("status") or {}).get("phase") == "Waiting") >= KNOWN
            )

        # Steady state: the operator has decided on every known task, then one memory-trim
        # round of the operator (REGTASK_MEMORY_TRIM_INTERVAL_S, 30 s) has passed.
        wait_until(all_known_waiting, 900, f"{KNOWN} known tasks Waiting", 5.0)
        time.sleep(MEMORY_TRIM_S + 10)
        assert operator.proc is not None
        rss = rss_mb(operator.proc.pid)
        rss_peak = rss_mb(operator.proc.pid, field="VmHWM:")

        # The limit of the platform: plain object creates on the same apiserver.
        core = client.CoreV1Api(api)

        def raw_create(n: int) -> None:
            core.create_namespaced_config_map(
                NAMESPACE, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"raw-{n}"))
            )

        raw_began = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(raw_create, range(300)))
        raw_rate = 300 / (time.monotonic() - raw_began)

        operator.stop()
        gateway.stop()
        redis_srv.stop()
        over = sum(max(0, peak - LIMIT) for peak in max_per_user.values())
        emit(
            "admission",
            {
                "tasks": TASKS,
                "users": USERS,
                "limit_per_user": LIMIT,
                "over_quota_admitted": over,
                "admission_p50_ms": round(statistics.median(latencies), 1),
                "admission_p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 1),
                "tasks_per_s": round(TASKS / (finished - began), 2),
                "api_writes_per_task": round(writes / TASKS, 2),
                "api_writes_by_kind_per_task": {
                    k: round(v / TASKS, 2) for k, v in writes_by_kind.items()
                },
                "event_posts_per_task_all_components": round(events / TASKS, 2),
                "uncontended_tasks": UNCONTENDED,
                "api_writes_per_task_uncontended": round(free_writes / UNCONTENDED, 2),
                "api_writes_by_kind_per_task_uncontended": {
                    k: round(v / UNCONTENDED, 2) for k, v in free_by_kind.items()
                },
                "event_posts_per_task_uncontended_all_components": round(
                    free_events / UNCONTENDED, 2
                ),
                "raw_api_creates_per_s": round(raw_rate, 1),
                "operator_rss_mb": round(rss, 1),
                "operator_rss_peak_mb": round(rss_peak, 1),
                "tasks_known_for_rss": TASKS + KNOWN,
                **eta,
            },
        )


if __name__ == "__main__":
    main()
