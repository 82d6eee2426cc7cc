"""Scale benchmark in Kueue's shape: many companies, tasks at a steady rate, runtimes simulated.

``make bench-scale``. Kueue's performance suite admits 50,000 workloads over 1,000
ClusterQueues on envtest with simulated runtimes; this is the same shape on the same kind of
control plane (``bench.envtest``: etcd + kube-apiserver, nothing else), with the real operator
(as its ServiceAccount, the shipped RBAC), Redis, COMPANIES CompanyQuotas (LIMIT per user),
USERS users spread over them, and TASKS RegistryTasks created at RATE per second. No pod runs:
``bench.job_completer`` (benchmark-only) finishes each Job after a drawn runtime and deletes it
after its TTL, as the Job and TTL controllers would. Tasks carry a short
``ttlSecondsAfterFinished`` so that the operator collects them during the run.

One JSON line: admissions/s sustained, admission latency from "room exists" (the task's create
returned while its user had a free slot) to its Job appearing in a watch, plain creates/s of
the same client on the same API server, the operator's API writes per task (the API server's
own ``apiserver_request_total``), its RSS at the known-task milestones and once the finished
tasks are collected, its CPU seconds per admission. With ``SHARDS=N`` (N > 1) N operators run,
one per shard (``regtask.shards``: each with its control namespace, the tasks and quotas of its
companies placed there as the shim places them); rates are the aggregate, RSS and CPU the sum
over the operators (each one's apart too). With ``WAVES=2`` the same number of tasks again once
the first are collected: the RSS after each collection (the figures are the first wave's).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client, config

from bench.common import emit
from bench.envtest import EnvtestControlPlane
from regtask.crmodels import API_GROUP, API_VERSION, RegistryTaskSpec, TaskInput
from regtask.shards import all_control_namespaces, company_namespace
from regtask.tasktypes import TaskType
from regtask_dev.procs import start_process, stop_process
from regtask_dev.redis_server import RedisServer
from regtask_dev.stack import RBAC_DIR, OperatorProcess, apply_crds, apply_manifests
from regtask_shim.taskstore import task_manifest

TASKS = int(os.environ.get("TASKS", "50000"))
COMPANIES = int(os.environ.get("COMPANIES", "1000"))
USERS = int(os.environ.get("USERS", str(2 * COMPANIES)))
RATE = float(os.environ.get("RATE", "200"))
LIMIT = int(os.environ.get("LIMIT", "10"))
RUNTIME_MIN = float(os.environ.get("RUNTIME_MIN_S", "1"))
RUNTIME_MAX = float(os.environ.get("RUNTIME_MAX_S", "3"))
TASK_TTL_S = int(os.environ.get("TASK_TTL_S", "20"))
RAW_CREATES = int(os.environ.get("RAW_CREATES", "2000"))
PROFILE = os.environ.get("PROFILE", "")  # a path: the operator runs under py-spy record
SHARDS = int(os.environ.get("SHARDS", "1"))
# WAVES=2: once the first TASKS are collected, TASKS more (new ids, the same users): the RSS
# after each wave's collection tells a plateau (heap kept and reused) from a leak.
WAVES = int(os.environ.get("WAVES", "1"))
CONCURRENCY = 16  # in-flight creates, for the tasks and the raw baseline alike
NAMESPACE = "regtask-system"
TRIM_S = 30  # the operator's memory-trim cadence (REGTASK_MEMORY_TRIM_INTERVAL_S default)

# Writes of the operator: (resource, subresource). The bench creates registrytasks; the completer
# writes jobs/status and deletes Jobs; nothing else writes here.
OPERATOR_WRITES = {
    ("registrytasks", ""),
    ("registrytasks", "status"),
    ("companyquotas", "status"),
    ("jobs", ""),
    ("namespaces", ""),
    ("serviceaccounts", ""),
    ("networkpolicies", ""),
    ("resourcequotas", ""),
    ("limitranges", ""),
    ("events", ""),
}
WRITE_VERBS = {"POST", "PATCH", "PUT", "DELETE", "APPLY", "CREATE", "UPDATE"}


def request_counts(plane: EnvtestControlPlane) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total summed by (verb, resource, subresource)."""
    counts: dict[tuple[str, str, str], float] = defaultdict(float)
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} ([0-9.e+]+)$")
    for line in plane.get("/metrics").decode().splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            key = (
                labels.get("verb", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
            )
            counts[key] += float(match.group(2))
    return counts


def writes_by_kind(
    before: dict[Any, float], after: dict[Any, float], creates: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    for (verb, resource, sub), value in after.items():
        delta = value - before.get((verb, resource, sub), 0.0)
        if verb.upper() not in WRITE_VERBS or (resource, sub) not in OPERATOR_WRITES:
            continue
        if (verb.upper(), resource, sub) == ("POST", "registrytasks", ""):
            delta -= creates  # the bench's own
        if (verb.upper(), resource, sub) == ("DELETE", "jobs", ""):
            continue  # the completer's stand-in for the TTL controller
        if delta:
            out[f"{verb} {resource}{'/' + sub if sub else ''}"] = delta
    return dict(sorted(out.items()))


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def total_rss_mb(pids: list[int], field: str = "VmRSS:") -> float:
    """The operators' RSS summed (one shard: the operator's)."""
    return round(sum(rss_mb(pid, field) for pid in pids), 1)


def task_namespace(company_id: str) -> str:
    """Where the shim puts a company's tasks and quota: its shard's control namespace."""
    return company_namespace(NAMESPACE, company_id, SHARDS)


def company(n: int) -> str:
    return f"co{n:04d}"


def task_body(n: int) -> tuple[str, str, dict[str, Any]]:
    user_n = n % USERS
    user, company_id = f"u{user_n:05d}", company(user_n % COMPANIES)
    spec = RegistryTaskSpec(
        task_id=f"scale_{n:06d}",
        task_type=TaskType.DOCUMENT_ANALYSIS,
        user_id=user,
        company_id=company_id,
        inputs=[TaskInput(name="document", value=f"Facture {n}")],
        ttl_seconds_after_finished=TASK_TTL_S,
    )
    return spec.task_id, user, task_manifest(spec, task_namespace(company_id))


class Api:
    """The bench's one client library for both task creates and the raw baseline (aiohttp)."""

    def __init__(self, plane: EnvtestControlPlane) -> None:
        context = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
        context.load_cert_chain(str(plane.pki / "admin.crt"), str(plane.pki / "admin.key"))
        self.server = plane.server_url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY)
        )

    async def create(self, path: str, body: dict[str, Any]) -> None:
        for _attempt in range(20):
            async with self.session.post(self.server + path, json=body) as answer:
                await answer.read()
                if answer.status < 300 or answer.status == 409:
                    return
                if answer.status not in (429, 500, 503, 504):
                    raise RuntimeError(f"POST {path}: {answer.status} {await answer.text()}")
            await asyncio.sleep(0.2)
        raise RuntimeError(f"POST {path}: kept failing")

    async def count(self, path: str) -> int:
        async with self.session.get(self.server + path, params={"limit": "1"}) as answer:
            body = await answer.json()
        return len(body["items"]) + int(body["metadata"].get("remainingItemCount") or 0)

    async def count_all(self, plural: str) -> int:
        return sum(
            [
                await self.count(f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{ns}/{plural}")
                for ns in all_control_namespaces(NAMESPACE, SHARDS)
            ]
        )

    async def raw_rate(self, n: int, tag: str) -> float:
        """Plain creates of a small object (a ConfigMap) per second, CONCURRENCY in flight."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{tag}-{i}"}}
                await self.create(f"/api/v1/namespaces/{NAMESPACE}/configmaps", body)

        began = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.monotonic() - began)


def admission_latencies(
    created: dict[str, float], users: dict[str, str], ledger: dict[str, tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Seconds from create to Job seen, for the tasks created while their user had room: fewer
    than LIMIT of the user's tasks running (Job seen, not done) or created before and not
    started yet. Two lists: the users' first tasks (their admission creates the tenant
    namespace and its fences, six applies more) and the later ones."""
    per_user: dict[str, list[str]] = defaultdict(list)
    for task in sorted(created, key=created.__getitem__):
        per_user[users[task]].append(task)
    first: list[float] = []
    later: list[float] = []
    for tasks in per_user.values():
        for i, task in enumerate(tasks):
            if task not in ledger:
                continue
            at = created[task]
            busy = sum(
                1
                for other in tasks[:i]
                if other not in ledger or ledger[other][1] > at  # running or not started at `at`
            )
            if busy < LIMIT:
                (later if i else first).append(ledger[task][0] - at)
    return first, later


def read_ledger(path: Path) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[row["task"]] = (row["seen"], row["done"])
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def ms_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(statistics.median(values) * 1000, 1),
        "p99": round(percentile(values, 0.99) * 1000, 1),
    }


async def drive(
    plane: EnvtestControlPlane, pids: list[int], others: dict[str, list[int]], ledger_path: Path
) -> dict[str, Any]:
    api = Api(plane)
    try:
        await api.raw_rate(RAW_CREATES // 4, "warm")  # a fresh API server's first calls are slow
        raw_before = await api.raw_rate(RAW_CREATES, "raw-a")
        for n in range(COMPANIES):
            await api.create(
                f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{task_namespace(company(n))}"
                "/companyquotas",
                {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": "CompanyQuota",
                    "metadata": {"name": company(n).replace("_", "-")},
                    "spec": {"companyId": company(n), "maxTasksPerUser": LIMIT},
                },
            )
        await asyncio.sleep(15)  # the operator sees the quotas and settles
        rss_start = total_rss_mb(pids)
        before = request_counts(plane)
        cpu_before = [cpu_s(pid) for pid in pids]
        others_before = {name: group_cpu_s(group) for name, group in others.items()}
        milestones = sorted({max(1, TASKS // 5), max(1, TASKS // 2), TASKS})
        rss_at: dict[str, float] = {}
        created: dict[str, float] = {}
        users: dict[str, str] = {}
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> None:
            task_id, user, body = task_body(n)
            namespace = body["metadata"]["namespace"]
            path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/registrytasks"
            try:
                await api.create(path, body)
            finally:
                gate.release()
            created[task_id] = time.time()
            users[task_id] = user
            if len(created) in milestones:
                rss_at[str(len(created))] = total_rss_mb(pids)

        async def create_wave(offset: int) -> float:
            """TASKS creates at RATE from task number ``offset``; returns their duration."""
            started = time.monotonic()
            pending: list[asyncio.Task[None]] = []
            for n in range(TASKS):
                delay = started + n / RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                pending.append(asyncio.create_task(one(offset + n)))
            await asyncio.gather(*pending)
            return time.monotonic() - started

        began = time.monotonic()
        create_s = await create_wave(0)

        deadline = time.monotonic() + 3600
        # Polls: the ledger file and the API server are outside this process (no event).
        while len(read_ledger(ledger_path)) < TASKS and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(2)
        all_done = time.monotonic()
        cpu_used = [cpu_s(pid) - was for pid, was in zip(pids, cpu_before, strict=True)]
        others_used = {name: group_cpu_s(g) - others_before[name] for name, g in others.items()}
        await asyncio.sleep(15)  # the last ends' status writes land (usage: 10 s after)
        after = request_counts(plane)
        rss_done = total_rss_mb(pids)

        while await api.count_all("registrytasks") and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(5)
        collected_s = time.monotonic() - all_done
        after_collection = request_counts(plane)
        await asyncio.sleep(TRIM_S + 10)  # one memory-trim round of the operator
        rss_collected = total_rss_mb(pids)
        rss_each = [rss_mb(pid) for pid in pids]
        raw_after = await api.raw_rate(RAW_CREATES, "raw-b")
        ledger = read_ledger(ledger_path)
        first_wave = dict(created)
        rss_by_wave = [rss_collected]
        for wave in range(1, WAVES):
            await create_wave(wave * TASKS)
            deadline = time.monotonic() + 3600
            # Polls, as above.
            while (  # noqa: ASYNC110
                len(read_ledger(ledger_path)) < (wave + 1) * TASKS and time.monotonic() < deadline
            ):
                await asyncio.sleep(2)
            while await api.count_all("registrytasks") and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(5)
            await asyncio.sleep(TRIM_S + 10)
            rss_by_wave.append(total_rss_mb(pids))
    finally:
        await api.session.close()

    created = first_wave
    seen = sorted(s for s, _ in ledger.values())
    lo, hi = seen[len(seen) // 10], seen[(9 * len(seen)) // 10]
    sustained = (len(seen) * 0.8) / (hi - lo) if hi > lo else 0.0
    first, later = admission_latencies(created, users, ledger)
    latencies = first + later
    raw = (raw_before + raw_after) / 2
    kinds = writes_by_kind(before, after, TASKS)
    lifecycle = {
        k: v
        for k, v in kinds.items()
        if k not in ("DELETE registrytasks", "PATCH registrytasks", "POST events")
    }
    collection = writes_by_kind(after, after_collection, 0)
    return {
        "raw_api_creates_per_s": round(raw, 1),
        "raw_api_creates_per_s_before_after": [round(raw_before, 1), round(raw_after, 1)],
        "create_rate_achieved_per_s": round(TASKS / create_s, 1),
        "admissions_per_s_sustained": round(sustained, 1),
        "admissions_over_raw_creates": round(sustained / raw, 3),
        "end_to_end_s": round(all_done - began, 1),
        "admission_latency_tasks_with_room": len(latencies),
        "admission_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "admission_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "admission_ms_users_later_tasks": ms_summary(later),
        "admission_ms_users_first_task": ms_summary(first),
        "operator_writes_per_task": round(sum(lifecycle.values()) / TASKS, 2),
        "event_posts_per_task": round(kinds.get("POST events", 0.0) / TASKS, 2),
        "operator_writes_by_kind_per_task": {k: round(v / TASKS, 3) for k, v in kinds.items()},
        "operator_writes_by_kind_per_task_collection": {
            k: round(v / TASKS, 3) for k, v in collection.items()
        },
        "operator_cpu_s_per_admission": round(sum(cpu_used) / TASKS, 5),
        # The rest of the machine's work per task meanwhile: with 2 cores, their sum bounds the
        # rate whatever the number of operators.
        "cpu_s_per_admission_others": {k: round(v / TASKS, 5) for k, v in others_used.items()},
        "operator_rss_mb_start": rss_start,
        "operator_rss_mb_at_known": rss_at,
        "operator_rss_mb_all_finished": rss_done,
        "operator_rss_mb_collected": rss_collected,
        "operator_rss_mb_peak": total_rss_mb(pids, "VmHWM:"),
        "collected_s": round(collected_s, 1),
        **({"operator_rss_mb_collected_by_wave": rss_by_wave} if WAVES > 1 else {}),
        **(
            {
                "per_shard_cpu_s": [round(c, 1) for c in cpu_used],
                "per_shard_rss_mb_collected": rss_each,
            }
            if SHARDS > 1
            else {}
        ),
    }


def start_operator(
    plane: EnvtestControlPlane, redis_srv: RedisServer, shard: int, work: Path
) -> OperatorProcess:
    """The real operator as its ServiceAccount; with several shards, shard ``shard`` of them."""
    sharding = (
        {
            "REGTASK_SHARDS": str(SHARDS),
            "REGTASK_SHARD": str(shard),
            "REGTASK_TASK_NAMESPACES": all_control_namespaces(NAMESPACE, SHARDS)[shard],
        }
        if SHARDS > 1
        else {}
    )
    operator = OperatorProcess(
        plane.service_account_kubeconfig(NAMESPACE, "regtask-operator"),
        {
            "REDIS_URL": redis_srv.url,
            "REGTASK_NAMESPACE": NAMESPACE,
            "REGTASK_STANDALONE": "true",
            "REGTASK_RUNNER_IMAGE": "regtask-runner:bench-no-pod-runs",
            "REGTASK_GATEWAY_URL": "http://127.0.0.1:9",
            "REGTASK_MAINTENANCE_INTERVAL_S": "10",
            # Jobs are deleted by the completer's stand-in TTL controller this long after
            # their end (the shipped default, 3600 s, would keep all 50,000).
            "REGTASK_TTL_SECONDS_AFTER_FINISHED": "30",
            **sharding,
        },
        work / f"operator-{shard}",
    )
    operator.start(timeout_s=120)
    return operator


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="regtask-bench-scale-"))
    with EnvtestControlPlane(work / "plane") as plane, RedisServer() as redis_srv:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig_path))
        apply_crds(api)
        apply_manifests(api, RBAC_DIR / "operator.yaml")
        ledger = work / "ledger.jsonl"
        completer = start_process(
            [
                sys.executable,
                "-m",
                "bench.job_completer",
                f"--server={plane.server_url}",
                f"--ca={plane.pki / 'ca.crt'}",
                f"--cert={plane.pki / 'admin.crt'}",
                f"--key={plane.pki / 'admin.key'}",
                f"--ledger={ledger}",
                f"--runtime-min={RUNTIME_MIN}",
                f"--runtime-max={RUNTIME_MAX}",
            ],
            work / "completer.log",
        )
        core = client.CoreV1Api(api)
        core.read_namespace(NAMESPACE)
        for namespace in all_control_namespaces(NAMESPACE, SHARDS):
            if namespace != NAMESPACE:
                core.create_namespace(client.V1Namespace(metadata={"name": namespace}))
        operators: list[OperatorProcess] = []
        profiler = None
        try:
            for shard in range(SHARDS):
                operators.append(start_operator(plane, redis_srv, shard, work))
            pids = [op.proc.pid for op in operators if op.proc is not None]
            if PROFILE:  # py-spy samples the (first) operator from the outside (no change to it)
                profiler = start_process(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(pids[0]),
                        "--rate",
                        "40",
                        "--format",
                        "raw",
                        "-o",
                        PROFILE,
                    ],
                    work / "py-spy.log",
                )
            others = {"kube_apiserver_and_etcd": plane.pids, "job_completer": [completer.pid]}
            result = asyncio.run(drive(plane, pids, others, ledger))
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
            for operator in operators:
                operator.stop()
            stop_process(completer)
        emit(
            "scale",
            {
                "shape": {
                    "tasks": TASKS,
                    "companies": COMPANIES,
                    "shards": SHARDS,
                    "waves": WAVES,
                    "users": USERS,
                    "limit_per_user": LIMIT,
                    "rate_per_s": RATE,
                    "runtime_s": [RUNTIME_MIN, RUNTIME_MAX],
                    "task_ttl_s": TASK_TTL_S,
                    "control_plane": "envtest-shaped: etcd + kube-apiserver on loopback",
                },
                **result,
                "kueue_reference": {"workloads": 50000, "cluster_queues": 1000, "seconds": 1179},
                "ratio_to_kueue_admissions_per_s": round(
                    result["admissions_per_s_sustained"] / (50000 / 1179), 2
                ),
            },
        )


if __name__ == "__main__":
    main()
