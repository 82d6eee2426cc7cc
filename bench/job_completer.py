"""BENCHMARK-ONLY Job completer: finishes the operator's Jobs as the Job controller would.

Used by ``make bench-scale`` alone (no test, no demo). Kueue's performance suite simulates
runtimes the same way: on an envtest control plane nothing runs pods, so this process watches
the operator's Jobs and, after a runtime drawn uniformly from [min, max] seconds, writes the
Job's status as Kubernetes 1.37's Job controller does for a Job whose one pod succeeded. The
API server validates Job status transitions strictly; what it accepts, in two writes:

1. ``startTime`` (a Job without it cannot take terminal conditions), written when the Job is seen;
2. ``succeeded: 1``, ``completionTime``, and the conditions ``SuccessCriteriaMet`` then
   ``Complete`` (``Complete`` alone is refused: "cannot set Complete=True condition without the
   SuccessCriteriaMet=true condition").

It also stands in for the TTL-after-finished controller: a finished Job is deleted (background
propagation, no garbage collector needed) ``spec.ttlSecondsAfterFinished`` after it ended.

One JSON line per Job to ``--ledger``: ``{"task": id, "seen": t, "done": t}`` (wall clock, the
Job's ADDED event and its completion write): the bench's admission times come from it.

Hazard: it is a stand-in; do not use it where a real Job controller exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import random
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

SELECTOR = "app.kubernetes.io/managed-by=regtask-operator"
TASK_ANNOTATION = "regtask.io/task-id"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finished_status(started: float, ended: float) -> dict[str, Any]:
    """The status the Job controller writes when a one-pod Job succeeds (1.37)."""
    stamp = _iso(ended)
    return {
        "startTime": _iso(started),
        "completionTime": stamp,
        "succeeded": 1,
        "active": 0,
        "ready": 0,
        "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastProbeTime": stamp,
                "lastTransitionTime": stamp,
            }
            for kind in ("SuccessCriteriaMet", "Complete")
        ],
    }


class Completer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.server = args.server
        self.ssl = ssl.create_default_context(cafile=args.ca)
        self.ssl.load_cert_chain(args.cert, args.key)
        self.rng = random.Random(args.seed)
        self.runtime = (args.runtime_min, args.runtime_max)
        self.ledger = Path(args.ledger).open("a", buffering=1)  # noqa: SIM115 - lives as long as we do
        self.due: list[tuple[float, int, str, str, str, float]] = []  # heap of work
        self.seq = 0
        self.known: set[tuple[str, str]] = set()
        self.gate = asyncio.Semaphore(args.concurrency)
        self.wake = asyncio.Event()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ssl, limit=64)
        async with aiohttp.ClientSession(connector=connector) as self.http:
            await asyncio.gather(self.watch(), self.work())

    async def watch(self) -> None:
        rv = ""
        while True:
            params = {"labelSelector": SELECTOR, "watch": "1", "allowWatchBookmarks": "1"}
            if rv:
                params["resourceVersion"] = rv
            else:
                async with self.http.get(
                    f"{self.server}/apis/batch/v1/jobs", params={"labelSelector": SELECTOR}
                ) as listed:
                    body = await listed.json()
                for job in body["items"]:
                    self.seen(job)
                rv = body["metadata"]["resourceVersion"]
                params["resourceVersion"] = rv
            try:
                async with self.http.get(
                    f"{self.server}/apis/batch/v1/jobs",
                    params={**params, "timeoutSeconds": "300"},
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=330),
                ) as stream:
                    async for line in stream.content:
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            rv = ""  # expired: list again
                            break
                        rv = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] == "ADDED":
                            self.seen(event["object"])
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(1)

    def seen(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        ident = (meta["namespace"], meta["name"])
        if ident in self.known or (job.get("status") or {}).get("completionTime"):
            return
        self.known.add(ident)
        now = time.time()
        task = (meta.get("annotations") or {}).get(TASK_ANNOTATION, meta["name"])
        runtime = self.rng.uniform(*self.runtime)
        self.push(now, "start", meta["namespace"], meta["name"], now)
        self.push(now + runtime, "finish:" + task, meta["namespace"], meta["name"], now)
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is not None:
            self.push(now + runtime + float(ttl), "delete", meta["namespace"], meta["name"], now)

    def push(self, at: float, what: str, namespace: str, name: str, seen: float) -> None:
        self.seq += 1
        heapq.heappush(self.due, (at, self.seq, what, namespace, name, seen))
        self.wake.set()

    async def work(self) -> None:
        pending: set[asyncio.Task[None]] = set()
        while True:
            now = time.time()
            while self.due and self.due[0][0] <= now:
                item = heapq.heappop(self.due)
                await self.gate.acquire()
                job = asyncio.create_task(self.do(*item[2:]))
                pending.add(job)
                job.add_done_callback(pending.discard)
            self.wake.clear()
            delay = self.due[0][0] - time.time() if self.due else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.0, min(delay, 1.0)))

    async def do(self, what: str, namespace: str, name: str, seen: float) -> None:
        path = f"{self.server}/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
        headers = {"Content-Type": "application/merge-patch+json"}
        try:
            for _attempt in range(5):
                if what == "start":
                    body = {"status": {"startTime": _iso(seen), "active": 1}}
                    request = self.http.patch(path + "/status", json=body, headers=headers)
                elif what == "delete":
                    request = self.http.delete(path, json={"propagationPolicy": "Background"})
                else:
                    body = {"status": finished_status(seen, time.time())}
                    request = self.http.patch(path + "/status", json=body, headers=headers)
                async with request as answer:
                    text = await answer.text()
                if answer.status < 300 or answer.status == 404:
                    break
                if answer.status == 422:
                    print(f"refused {what} {namespace}/{name}: {text[:400]}", flush=True)
                    break
                await asyncio.sleep(0.5)
            if what.startswith("finish:"):
                task = what.split(":", 1)[1]
                self.ledger.write(
                    json.dumps({"task": task, "seen": seen, "done": time.time()}) + "\n"
                )
            elif what == "delete":
                self.known.discard((namespace, name))
        except (aiohttp.ClientError, TimeoutError) as exc:
            print(f"failed {what} {namespace}/{name}: {exc}", flush=True)
        finally:
            self.gate.release()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.job_completer", description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--runtime-min", type=float, default=1.0)
    parser.add_argument("--runtime-max", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=19)
    asyncio.run(Completer(parser.parse_args()).run())


if __name__ == "__main__":
    main()
