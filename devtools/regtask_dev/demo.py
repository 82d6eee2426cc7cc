"""``make demo``: the whole platform on a kind cluster, and one task of each type through it.

``python -m regtask_dev.demo up`` creates the kind cluster ``regtask-demo`` (the project's own
node image and network lock-down here, kind's defaults where Docker runs), builds the images
from the Dockerfile and loads them, starts Redis, the Firestore emulator, the LLM server (chat
and embeddings) and ChromaDB as host processes on the cluster's host address, installs the Helm
chart (operator, RPC shim and gateway as pods), and forwards a loopback port to the shim. It
then calls the shim exactly as the web app does (``REGISTRY.register_user``,
``TASK.start_document_analysis``, ``TASK.start_vector_computation``,
``TASK.start_llm_conversation``), then the design's own call sequence as written
(:mod:`regtask_dev.design_calls`: no company named, the user's default tenant), follows the
tasks through the real-time events, prints their
results and where everything is, and leaves it all running (the host processes in their own
sessions). ``python -m regtask_dev.demo down`` (``make demo-down``) stops what ``up`` started,
by PID, deletes the cluster and undoes the host changes.

Readiness comes from the new cluster and services answering, never from files a previous run
left; a previous demo still running is taken down first. A failure prints one line and where the
logs are.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis

from regtask import keys
from regtask.events import TaskProgressEvent, parse_event
from regtask.logconfig import configure_logging
from regtask_dev import design_calls, images, install, kind
from regtask_dev.kind import KindCluster
from regtask_dev.stack import REPO_ROOT

NAMESPACE = "regtask-system"
RELEASE = "regtask"
CLUSTER = "regtask-demo"
USER = "demo_user"
DESIGN_USER = "design_user"  # registered with the design's three arguments only
COMPANY = "company_demo"  # the company of manifests/samples/companyquota.yaml
DATA = REPO_ROOT / "tests" / "data"
TERMINAL = {"completed", "failed", "cancelled"}


def say(text: str) -> None:
    """The demo's own narration goes to the terminal (logs of the servers go to files)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Stack:
    """What ``up`` started (host processes by PID, the cluster by name), persisted so that
    ``down`` can stop exactly that."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_path = workdir / "state.json"
        self.pids: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self.cluster: str | None = None

    def record(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.save()

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = {"pids": self.pids, "urls": self.urls, "cluster": self.cluster}
        self.state_path.write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, workdir: Path) -> Stack:
        stack = cls(workdir)
        if stack.state_path.exists():
            state = json.loads(stack.state_path.read_text())
            stack.pids = {k: int(v) for k, v in state.get("pids", {}).items()}
            stack.urls = dict(state.get("urls", {}))
            stack.cluster = state.get("cluster")
        return stack

    def stop_all(self, grace_s: float = 10.0) -> list[str]:
        """SIGTERM every process group, SIGKILL what is left, delete the cluster; returns what
        was running."""
        stopped = []
        for name, pid in reversed(list(self.pids.items())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
                stopped.append(name)
        deadline = time.monotonic() + grace_s
        for pid in self.pids.values():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.pids = {}
        if self.cluster:
            stopped += [f"kind cluster {name}" for name in kind.down([self.cluster])]
            self.cluster = None
        self.save()
        return stopped


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start(stack: Stack) -> dict[str, Any]:
    """Create the cluster, install the platform; return what the demo needs to talk to it."""
    shim_token = secrets.token_urlsafe(32)
    cluster = KindCluster(CLUSTER, stack.workdir / "kind", owner_pid=1)  # kept until `down`
    stack.cluster = CLUSTER
    stack.save()
    say("creating the kind cluster and building the images (cached after the first run) ...")
    with ThreadPoolExecutor(max_workers=1) as pool:
        built = pool.submit(images.build)
        cluster.create()
        refs = built.result()
    say(f"  cluster ready in {cluster.create_seconds:.0f} s; loading the images ...")
    cluster.load_images(list(refs.values()))
    say("starting Redis, the Firestore emulator, the LLM and ChromaDB on the host ...")
    # Every demo starts from empty stores: a ChromaDB collection left by an earlier demo keeps
    # the dimension of the embedding model it was made with (384 now, 640 before) and refuses
    # the new vectors.
    shutil.rmtree(stack.workdir / "services", ignore_errors=True)
    services = install.start_host_services(
        cluster, stack.workdir / "services", firestore=True, llm=True, chroma=True
    )
    for name, pid in services.pids().items():
        stack.record(name, pid)
    say("installing the Helm chart (operator, shim and gateway as pods) ...")
    values = install.merge(
        install.image_values(refs),
        services.values(),
        {
            "config": {"unifiedRegistryEnabled": True},
            "shim": {"replicas": 1, "auth": {"serviceToken": {"value": shim_token}}},
            "gateway": {"replicas": 1},
            "operator": {"intervals": {"statusSyncSeconds": 1}},
        },
    )
    install.install(cluster, RELEASE, NAMESPACE, values, workdir=stack.workdir)
    cluster.kubectl(
        "--namespace",
        NAMESPACE,
        "apply",
        "-f",
        str(REPO_ROOT / "manifests" / "samples" / "companyquota.yaml"),
    )
    service = install.component_name(cluster, NAMESPACE, RELEASE, "service", "shim")
    shim = install.PortForward(
        cluster, NAMESPACE, f"service/{service}", 8080, stack.workdir / "port-forward.log"
    ).start(detached=True)
    assert shim.proc is not None
    stack.record("shim port-forward", shim.proc.pid)
    assert services.llm is not None and services.chroma is not None
    assert services.firestore is not None
    stack.urls = {
        "shim (RPC: POST /rpc)": shim.url,
        "shim service token": shim_token,
        "web console (sign in with the service token)": f"{shim.url}/console/",
        "kubeconfig": str(cluster.kubeconfig_path),
        "redis": services.redis.url,
        "firestore emulator": services.firestore.host,
        "llm (OpenAI-compatible)": services.llm.base_url,
        "chromadb": services.chroma.url,
        "operator metrics": (
            f"kubectl -n {NAMESPACE} port-forward deploy/"
            f"{install.component_name(cluster, NAMESPACE, RELEASE, 'deployment', 'operator')} 9090"
        ),
    }
    stack.save()
    return {"shim": shim.url, "token": shim_token, "redis": services.redis.url}


def rpc(shim: str, token: str, method: str, args: list[Any], **kwargs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"method": method, "args": args}
    if kwargs:
        body["kwargs"] = kwargs
    response = httpx.post(
        f"{shim}/rpc",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    answer: dict[str, Any] = response.json()
    if not answer.get("success"):
        raise RuntimeError(f"{method} failed: {answer}")
    return answer


def submit_and_follow(env: dict[str, Any]) -> bool:
    shim, token = env["shim"], env["token"]
    call: Callable[..., dict[str, Any]] = lambda method, *args, **kw: rpc(  # noqa: E731
        shim, token, method, list(args), **kw
    )
    events = redis.Redis.from_url(env["redis"]).pubsub()  # type: ignore[no-untyped-call]
    events.subscribe(keys.events_channel(USER), keys.events_channel(DESIGN_USER))
    call(
        "REGISTRY.register_user",
        USER,
        "demo-session",
        "/demo",
        company_id=COMPANY,
        authorized_companies_ids=[COMPANY],
    )
    pdf = base64.b64encode((DATA / "invoice.pdf").read_bytes()).decode()
    started = {
        "document_analysis": call(
            "TASK.start_document_analysis",
            USER,
            {"company_id": COMPANY, "content_base64": pdf, "filename": "invoice.pdf"},
            "demo1",
        )["task_id"],
        "vector_computation": call(
            "TASK.start_vector_computation",
            USER,
            COMPANY,
            [{"id": "report", "content": (DATA / "report.md").read_text()}],
            "demo_docs",
            "demo1",
        )["task_id"],
        "llm_conversation": call(
            "TASK.start_llm_conversation", USER, COMPANY, "What is the capital of France?"
        )["task_id"],
    }
    # The design's own sequence, as written: positional args, no company for the document.
    design = design_calls.run(
        lambda method, args: rpc(shim, token, method, args),
        user_id=DESIGN_USER,
        session_id="design-session",
        backend_route="/design",
        company_id=COMPANY,
        job_id="design1",
        collection_name="design_docs",
    )
    started["design: document_analysis"] = design.document_task_id
    if design.conversation_task_id is not None:
        started["design: llm_conversation"] = design.conversation_task_id
    say("submitted through the RPC shim: " + ", ".join(f"{k}={v}" for k, v in started.items()))
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 600
    while len(final) < len(started) and time.monotonic() < deadline:
        message = events.get_message(timeout=1.0, ignore_subscribe_messages=True)
        if message:
            event = parse_event(message["data"])
            if isinstance(event, TaskProgressEvent):
                payload = event.payload
                say(
                    f"  {payload.task_id:<32} {payload.status:<11} {payload.progress:>3}%  "
                    f"{payload.current_step} {json.dumps(payload.data) if payload.data else ''}"
                )
        for task_id in started.values():
            if task_id not in final:
                status = call("TASK.get_task_status", task_id)
                if status.get("status") in TERMINAL:
                    final[task_id] = status
    events.close()
    say("")
    for task_type, task_id in started.items():
        status = final.get(task_id, {"status": "timed out"})
        say(f"{task_type}: {task_id} -> {status.get('status')}")
        result = status.get("result") or {}
        say("  " + json.dumps(result, ensure_ascii=False)[:600])
    return all(final.get(t, {}).get("status") == "completed" for t in started.values())


def up(workdir: Path) -> int:
    configure_logging(False)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    logging.getLogger("regtask_dev").setLevel(logging.WARNING)  # the demo narrates its steps
    workdir.mkdir(parents=True, exist_ok=True)
    previous = Stack.load(workdir)
    if previous.pids or previous.cluster:
        say("a previous demo is still up: taking it down first ...")
        previous.stop_all()
    stack = Stack(workdir)
    try:
        env = start(stack)
        succeeded = submit_and_follow(env)
    except Exception as exc:  # noqa: BLE001 - one line for the user, the details in the logs
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        say(f"the demo failed: {reason}")
        say(f"logs: {workdir} (cluster, services, port-forward); stopping what it started")
        stack.stop_all()
        return 1
    except KeyboardInterrupt:
        say("interrupted; stopping what the demo started")
        stack.stop_all()
        return 130
    say("")
    say("all demo tasks succeeded" if succeeded else "SOME DEMO TASKS DID NOT SUCCEED")
    say("the stack keeps running; stop it with `make demo-down`. Where to look:")
    for name, url in stack.urls.items():
        say(f"  {name:<26} {url}")
    say(f"  {'logs':<26} {workdir}/")
    return 0 if succeeded else 1


def down(workdir: Path) -> int:
    stack = Stack.load(workdir)
    stopped = stack.stop_all()
    say(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regtask_dev.demo")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".demo")
    args = parser.parse_args(argv)
    return up(args.dir) if args.command == "up" else down(args.dir)


if __name__ == "__main__":
    raise SystemExit(main())
