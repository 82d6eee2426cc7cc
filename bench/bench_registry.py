"""Registry benchmark: lost updates under concurrent writers, and progress-update throughput.

Run with ``make bench-registry``. Starts its own redis-server on loopback.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from typing import Any

import redis

from bench.common import emit
from regtask import keys, registry_ops
from regtask.docstore import DocStore
from regtask.documents import RegistryStatus, TaskDoc, TaskInfo, TaskIsolation
from regtask_dev.redis_server import RedisServer

WRITERS = 8
PER_WRITER = 250
COMPANY = "company_bench"
PROGRESS_UPDATES = 5000


def _task(task_id: str, user: str) -> TaskDoc:
    return TaskDoc(
        task_info=TaskInfo(
            task_id=task_id, task_type="document_analysis", user_id=user, company_id=COMPANY
        ),
        isolation=TaskIsolation(namespace="rt-bench", max_duration=3600),
    )


def _ours(url: str, writer: int, start: Any) -> None:
    store = DocStore(redis.Redis.from_url(url))
    start.wait()
    for n in range(PER_WRITER):
        for update in registry_ops.register_task(_task(f"w{writer}_{n}", f"u{writer}"), True):
            store.apply(update)


def _seed(url: str, writer: int, start: Any) -> None:
    """The seed's algorithm: HGET, json.loads, append, HSET (read-modify-write, no lock)."""
    client = redis.Redis.from_url(url)
    key = f"seed:{keys.company(COMPANY)}"
    start.wait()
    for n in range(PER_WRITER):
        raw = client.hget(key, keys.DATA_FIELD)
        doc = json.loads(raw) if raw else {"services": {"active_tasks": []}}
        doc["services"]["active_tasks"].append(f"w{writer}_{n}")
        client.hset(key, keys.DATA_FIELD, json.dumps(doc))


def _race(url: str, target: Any) -> float:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(url, w, start)) for w in range(WRITERS)]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # let every writer connect before the gun
    began = time.perf_counter()
    start.set()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"writer exited with {proc.exitcode}")
    return time.perf_counter() - began


class CountingConnection(redis.Connection):
    """Counts replies read from the server: one per network round trip."""

    replies = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.replies += 1
        return super().read_response(*args, **kwargs)


def main() -> None:
    with RedisServer() as server:
        pool = redis.ConnectionPool(
            host="127.0.0.1", port=server.port, connection_class=CountingConnection
        )
        client = redis.Redis(connection_pool=pool)
        expected = WRITERS * PER_WRITER

        ours_s = _race(server.url, _ours)
        doc = json.loads(client.hget(keys.company(COMPANY), keys.DATA_FIELD) or b"{}")
        ours_kept = len(set(doc["services"]["active_tasks"]))

        _race(server.url, _seed)
        seed_doc = json.loads(
            client.hget(f"seed:{keys.company(COMPANY)}", keys.DATA_FIELD) or b"{}"
        )
        seed_kept = len(seed_doc["services"]["active_tasks"])

        # Progress updates, one connection, sequential: the per-call cost the runners pay.
        store = DocStore(client)
        store.apply(registry_ops.register_task(_task("progress_task", "u0"), False)[0])

        def progress(n: int, record_step: bool = False) -> None:
            store.progress(
                registry_ops.task_progress(
                    "progress_task",
                    "u0",
                    RegistryStatus.PROCESSING,
                    n % 100,
                    "analysis",
                    3600,
                    data={"entities_found": n},
                    record_step=record_step,
                )
            )

        progress(0)  # warm: loads the script once
        before = CountingConnection.replies
        began = time.perf_counter()
        for n in range(PROGRESS_UPDATES):
            progress(n)
        progress_s = time.perf_counter() - began
        round_trips = CountingConnection.replies - before

        # The gateway's runner reports also join the task's step history, in the same call:
        # measured in alternating blocks with plain updates, so that the machine's noise falls
        # on both alike.
        plain_s = with_step_s = 0.0
        for block in range(10):
            for record_step in (block % 2 == 0, block % 2 == 1):
                began = time.perf_counter()
                for n in range(PROGRESS_UPDATES // 5):
                    progress(n, record_step=record_step)
                took = time.perf_counter() - began
                if record_step:
                    with_step_s += took
                else:
                    plain_s += took

        trivial = client.register_script("return 1")
        trivial()
        began = time.perf_counter()
        for _ in range(PROGRESS_UPDATES):
            trivial()
        raw_s = time.perf_counter() - began
        client.close()

    progress_rate = PROGRESS_UPDATES / progress_s
    raw_rate = PROGRESS_UPDATES / raw_s
    emit(
        "registry",
        {
            "writers": WRITERS,
            "registrations": expected,
            "lost": expected - ours_kept,
            "registration_seconds": round(ours_s, 3),
            "seed_algorithm_lost": expected - seed_kept,
            "progress_updates": PROGRESS_UPDATES,
            "progress_updates_per_s": round(progress_rate, 1),
            "raw_eval_per_s": round(raw_rate, 1),
            "ratio_to_raw_eval": round(progress_rate / raw_rate, 3),
            "progress_with_step_per_s": round(2 * PROGRESS_UPDATES / with_step_s, 1),
            "step_history_ratio_to_progress": round(plain_s / with_step_s, 3),
            "round_trips_per_progress_update": round_trips / PROGRESS_UPDATES,
        },
    )


if __name__ == "__main__":
    main()
