"""RPC shim benchmark: task-start latency, status-read throughput, and an OpenAPI fuzz run.

Run with ``make bench-rpc`` (``python -m bench.bench_rpc``). Starts its own redis-server and a
real kube-apiserver + etcd on loopback, applies the CRDs, runs the production entry point
``python -m regtask_shim`` under uvicorn, then drives it from a SEPARATE process over loopback:

* ``requests`` calls of ``TASK.start_document_analysis``, ``concurrency`` in flight, each
  creating a real RegistryTask (p50/p99 latency),
* ``TASK.get_task_status`` reads for a fixed time (reads per second),
* a schemathesis run against ``/openapi.json`` (positive and negative cases, >= 2,000 in all):
  it counts 5xx answers, stack traces in bodies and schema violations (all expected 0).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import emit

SERVICE_TOKEN = "bench-" + "5e7a1c0f" * 6
NAMESPACE = "regtask-bench"
COMPANY = "company_bench"


# ---------------------------------------------------------------------------- load (child)


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


async def _load(url: str, requests: int, concurrency: int, read_seconds: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:
        latencies: list[float] = []
        errors: dict[str, int] = {}
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(requests):
            queue.put_nowait(n)

        async def starter() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                body = {
                    "method": "TASK.start_document_analysis",
                    "args": [
                        f"user{n % 50}",
                        {"company_id": COMPANY, "content": "x" * 200},
                        f"b{n}",
                    ],
                }
                began = time.perf_counter()
                response = await http.post("/rpc", json=body)
                latencies.append((time.perf_counter() - began) * 1000)
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(starter() for _ in range(concurrency)))
        start_elapsed = time.perf_counter() - began

        reads = 0
        read_errors = 0
        deadline = time.perf_counter() + read_seconds

        async def reader(worker: int) -> None:
            nonlocal reads, read_errors
            n = worker
            while time.perf_counter() < deadline:
                body = {"method": "TASK.get_task_status", "args": [f"doc_analysis_b{n % requests}"]}
                response = await http.post("/rpc", json=body)
                reads += 1
                if response.status_code != 200:
                    read_errors += 1
                n += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(reader(w) for w in range(concurrency)))
        read_elapsed = time.perf_counter() - began
    return {
        "requests": requests,
        "concurrency": concurrency,
        "start_task_p50_ms": round(statistics.median(latencies), 2),
        "start_task_p99_ms": round(_percentile(latencies, 99), 2),
        "start_task_max_ms": round(max(latencies), 2),
        "starts_per_s": round(requests / start_elapsed, 1),
        "start_errors": errors,
        "status_reads": reads,
        "status_reads_per_s": round(reads / read_elapsed, 1),
        "status_read_errors": read_errors,
    }


def _load_child(url: str, requests: int, concurrency: int, read_s: float, out: Any) -> None:
    out.send(asyncio.run(_load(url, requests, concurrency, read_s)))


# ---------------------------------------------------------------------------- fuzz


def fuzz_openapi(url: str, token: str, examples_per_operation: int) -> dict[str, Any]:
    """Schemathesis against ``url``/openapi.json: every operation, positive then negative.

    Returns counts; ``failures`` lists the first problems found (empty when all is well).
    """
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    stats: dict[str, Any] = {"cases": 0, "5xx": 0, "stack_traces": 0, "operations": 0}
    failures: list[str] = []
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)

    def runner(operation: Any, mode: Any) -> Any:
        @hypothesis.settings(
            max_examples=examples_per_operation,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=url, headers=headers, timeout=30)
            stats["cases"] += 1
            if response.status_code >= 500:
                stats["5xx"] += 1
            if "Traceback" in response.text or 'File "/' in response.text:
                stats["stack_traces"] += 1
            try:
                case.validate_response(response, checks=checks, headers=headers)
            except (Failure, FailureGroup) as exc:
                if len(failures) < 20:
                    where = f"{operation.label} [{mode.value}] {response.status_code}"
                    failures.append(f"{where}: {str(exc)[:400]}")

        return run

    for result in schema.get_all_operations():
        operation = result.ok()
        stats["operations"] += 1
        for mode in modes:
            try:
                runner(operation, mode)()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): no negative cases exist.
                stats["unsatisfiable"] = stats.get("unsatisfiable", 0) + 1
    stats["failures"] = failures
    return stats


def _fuzz_child(url: str, examples: int, out: Any) -> None:
    out.send(fuzz_openapi(url, SERVICE_TOKEN, examples))


# ---------------------------------------------------------------------------- main


def _in_child(target: Any, *args: Any) -> dict[str, Any]:
    """Run ``target`` in a separate (spawned) process; its answer comes back through a pipe."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    child.close()
    result: dict[str, Any] = parent.recv()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--read-seconds", type=float, default=10.0)
    parser.add_argument("--fuzz-examples", type=int, default=80, help="per operation and mode")
    args = parser.parse_args(argv)

    from kubernetes import config as kube_config

    from regtask_dev.kind import ClusterError, KindCluster
    from regtask_dev.redis_server import RedisServer
    from regtask_dev.stack import ServiceProcess, apply_crds, ensure_namespace

    workdir = Path(tempfile.mkdtemp(prefix="regtask-bench-rpc-"))
    plane = KindCluster("regtask-bench-rpc", workdir / "kind")
    try:
        plane.create()
    except ClusterError as exc:
        print(f"bench-rpc: no cluster, nothing measured: {exc}", file=sys.stderr)
        plane.delete()
        return 1
    try:
        with RedisServer() as redis_server:
            api = kube_config.new_client_from_config(config_file=str(plane.kubeconfig_path))
            apply_crds(api)
            ensure_namespace(api, NAMESPACE)
            api.close()
            shim = ServiceProcess("shim", ["regtask_shim"], {}, workdir / "shim")
            shim.env = {
                "REDIS_URL": redis_server.url,
                "REGTASK_NAMESPACE": NAMESPACE,
                "KUBECONFIG": str(plane.kubeconfig_path),
                "SHIM_SERVICE_TOKEN": SERVICE_TOKEN,
                "SHIM_HOST": "127.0.0.1",
                "SHIM_PORT": str(shim.port),
                "SHIM_TASK_STARTS_PER_MINUTE": "0",
                "FIREBASE_PROJECT_ID": "",
                "FIRESTORE_PROJECT_ID": "",
                "FIREBASE_AUTH_EMULATOR_HOST": "",
            }
            with shim:
                load = _in_child(
                    _load_child, shim.url, args.requests, args.concurrency, args.read_seconds
                )
                fuzz = _in_child(_fuzz_child, shim.url, args.fuzz_examples)
            server_log = shim.log_text()
    finally:
        plane.delete()
    emit(
        "rpc",
        {
            **load,
            "server": "python -m regtask_shim (uvicorn, 1 worker)",
            "control_plane": "kind (one node)",
            "fuzz_operations": fuzz["operations"],
            "fuzz_cases": fuzz["cases"],
            "fuzz_5xx": fuzz["5xx"],
            "fuzz_stack_traces": fuzz["stack_traces"],
            "server_log_tracebacks": server_log.count("Traceback"),
            "fuzz_check_failures": fuzz["failures"],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
