"""``make demo``: the whole platform on this machine, and one task of each type through it.

``python -m regtask_dev.demo up`` starts, each in its own session so that they outlive this
command: Redis, etcd + kube-apiserver, the Firestore emulator, the LLM server (chat and
embeddings), ChromaDB, the gateway, the operator (as its ServiceAccount, with the shipped RBAC),
the RPC shim and the node stand-in. It then calls the shim exactly as the web app does
(``TASK.start_document_analysis``, ``TASK.start_vector_computation``,
``TASK.start_llm_conversation``), follows the tasks through the real-time events, prints their
results and the addresses of everything, and leaves the stack running.
``python -m regtask_dev.demo down`` stops every process ``up`` started (``make demo-down``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from kubernetes import client, config

from regtask import keys
from regtask.events import TaskProgressEvent, parse_event
from regtask.logconfig import configure_logging
from regtask_dev.chroma_server import ChromaServer
from regtask_dev.firestore_emulator import FirestoreEmulator
from regtask_dev.llm_server import LlamaServer
from regtask_dev.procs import free_port, start_process, tail, wait_for
from regtask_dev.redis_server import RedisServer
from regtask_dev.stack import (
    CRD_DIR,
    RBAC_DIR,
    REPO_ROOT,
    GatewayProcess,
    OperatorProcess,
    ServiceProcess,
    apply_crds,
    apply_manifests,
    ensure_namespace,
)

NAMESPACE = "regtask-system"
USER = "demo_user"
COMPANY = "company_demo"  # the company of manifests/samples/companyquota.yaml
DATA = REPO_ROOT / "tests" / "data"
TERMINAL = {"completed", "failed", "cancelled"}


def say(text: str) -> None:
    """The demo's own narration goes to the terminal (logs of the servers go to files)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Stack:
    """The processes ``up`` started, persisted so that ``down`` can stop them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_path = workdir / "state.json"
        self.pids: dict[str, int] = {}
        self.urls: dict[str, str] = {}

    def record(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.save()

    def save(self) -> None:
        self.state_path.write_text(json.dumps({"pids": self.pids, "urls": self.urls}, indent=2))

    @classmethod
    def load(cls, workdir: Path) -> Stack:
        stack = cls(workdir)
        if stack.state_path.exists():
            state = json.loads(stack.state_path.read_text())
            stack.pids = {k: int(v) for k, v in state.get("pids", {}).items()}
            stack.urls = dict(state.get("urls", {}))
        return stack

    def stop_all(self, grace_s: float = 10.0) -> list[str]:
        """SIGTERM every process group, SIGKILL what is left; returns what was running."""
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
        self.save()
        return stopped


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _start_control_plane(stack: Stack) -> Path:
    cp_dir = stack.workdir / "control-plane"
    proc = start_process(
        [sys.executable, "-m", "regtask_dev.controlplane", "up", "--dir", str(cp_dir)],
        stack.workdir / "control-plane.log",
    )
    stack.record("control-plane", proc.pid)
    kubeconfig = cp_dir / "kubeconfig.yaml"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"control plane exited\n{tail(stack.workdir / 'control-plane.log')}")
        return kubeconfig.exists()

    wait_for(ready, 90, "control plane", interval_s=0.2)
    return kubeconfig


def start(stack: Stack) -> dict[str, Any]:
    """Start every service; return what the demo needs to talk to them."""
    shim_token = secrets.token_urlsafe(32)

    say("starting Redis, the control plane, the Firestore emulator, the LLM and ChromaDB ...")
    with ThreadPoolExecutor(max_workers=5) as pool:
        redis_f = pool.submit(lambda: RedisServer(workdir=_dir(stack, "redis")).start())
        cp_f = pool.submit(_start_control_plane, stack)
        fs_f = pool.submit(
            lambda: FirestoreEmulator(project_id="regtask-demo", workdir=_dir(stack, "fs")).start()
        )
        llm_f = pool.submit(lambda: LlamaServer(workdir=_dir(stack, "llm")).start())
        chroma_f = pool.submit(lambda: ChromaServer(workdir=_dir(stack, "chroma")).start())
        redis_srv, kubeconfig = redis_f.result(), cp_f.result()
        assert redis_srv.proc is not None
        stack.record("redis", redis_srv.proc.pid)
        firestore, llm, chroma = fs_f.result(), llm_f.result(), chroma_f.result()
    for name, proc in [("firestore", firestore.proc), ("chroma", chroma.proc)]:
        if proc is not None:
            stack.record(name, proc.pid)
    for index, proc in enumerate(llm.procs):
        stack.record(f"llm-{index}", proc.pid)

    api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    apply_crds(api, CRD_DIR)
    ensure_namespace(api, NAMESPACE)
    apply_manifests(api, RBAC_DIR / "operator.yaml")
    apply_manifests(api, REPO_ROOT / "manifests" / "samples" / "companyquota.yaml")

    shared = {
        "REDIS_URL": redis_srv.url,
        "REGTASK_NAMESPACE": NAMESPACE,
        "FIRESTORE_PROJECT_ID": firestore.project_id,
        "FIRESTORE_EMULATOR_HOST": firestore.host,
        "UNIFIED_REGISTRY_ENABLED": "true",
    }
    say("starting the gateway, the operator, the RPC shim and the node stand-in ...")
    gateway = GatewayProcess(
        {
            **shared,
            "KUBECONFIG": str(kubeconfig),
            "LLM_BASE_URL": llm.base_url,
            "LLM_EMBEDDINGS_BASE_URL": llm.embeddings_base_url,
            "CHROMA_URL": chroma.url,
        },
        _dir(stack, "gateway"),
    ).start()
    stack.record("gateway", _pid(gateway))
    operator = OperatorProcess(
        _operator_kubeconfig(api, kubeconfig, stack),
        {
            **shared,
            "REGTASK_STANDALONE": "true",
            "REGTASK_GATEWAY_URL": gateway.url,
        },
        _dir(stack, "operator"),
    ).start()
    stack.record("operator", _pid(operator))
    shim = ServiceProcess(
        "shim",
        ["regtask_shim"],
        {
            **shared,
            "KUBECONFIG": str(kubeconfig),
            "SHIM_SERVICE_TOKEN": shim_token,
            "SHIM_HOST": "127.0.0.1",
        },
        _dir(stack, "shim"),
        port=free_port(),
    )
    shim.env["SHIM_PORT"] = str(shim.port)
    shim.start()
    stack.record("shim", _pid(shim))
    venv_bin = str(Path(sys.executable).parent)
    node = start_process(
        [
            sys.executable,
            "-m",
            "regtask_dev.nodesim",
            "--kubeconfig",
            str(kubeconfig),
            "--log-dir",
            str(_dir(stack, "node")),
        ],
        stack.workdir / "node.log",
        env={"PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"},
    )
    stack.record("node-stand-in", node.pid)
    stack.urls = {
        "shim (RPC: POST /rpc)": shim.url,
        "gateway": gateway.url,
        "operator metrics": operator.metrics_url,
        "operator liveness": operator.url + "/healthz",
        "redis": redis_srv.url,
        "kubeconfig": str(kubeconfig),
        "firestore emulator": firestore.host,
        "llm (OpenAI-compatible)": llm.base_url,
        "chromadb": chroma.url,
        "shim service token": shim_token,
    }
    stack.save()
    return {"shim": shim.url, "token": shim_token, "redis": redis_srv.url, "api": api}


def _dir(stack: Stack, name: str) -> Path:
    path = stack.workdir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid(process: ServiceProcess) -> int:
    assert process.proc is not None
    return process.proc.pid


def _operator_kubeconfig(api: client.ApiClient, admin: Path, stack: Stack) -> Path:
    """A token of the operator's ServiceAccount: the demo runs it with the shipped RBAC."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=24 * 3600)
    )
    answer = client.CoreV1Api(api).create_namespaced_service_account_token(
        "regtask-operator", NAMESPACE, request
    )
    kubeconfig = yaml.safe_load(admin.read_text())
    assert answer.status is not None
    kubeconfig["users"] = [{"name": "regtask-operator", "user": {"token": answer.status.token}}]
    for context in kubeconfig["contexts"]:
        context["context"]["user"] = "regtask-operator"
    path = stack.workdir / "operator-kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


def rpc(shim: str, token: str, method: str, args: list[Any], **kwargs: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{shim}/rpc",
        json={"method": method, "args": args, "kwargs": kwargs},
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
    events.subscribe(keys.events_channel(USER))
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
    for kind, task_id in started.items():
        status = final.get(task_id, {"status": "timed out"})
        say(f"{kind}: {task_id} -> {status.get('status')}")
        result = status.get("result") or {}
        say("  " + json.dumps(result, ensure_ascii=False)[:600])
    return all(final.get(t, {}).get("status") == "completed" for t in started.values())


def up(workdir: Path) -> int:
    configure_logging(False)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    workdir.mkdir(parents=True, exist_ok=True)
    previous = Stack.load(workdir)
    if previous.pids:
        previous.stop_all()
    stack = Stack(workdir)
    try:
        env = start(stack)
        succeeded = submit_and_follow(env)
    except BaseException:
        say("the demo failed; stopping what it started (logs stay in " + str(workdir) + ")")
        stack.stop_all()
        raise
    say("")
    say("all demo tasks succeeded" if succeeded else "SOME DEMO TASKS DID NOT SUCCEED")
    say("the stack keeps running; stop it with `make demo-down`. Where to look:")
    for name, url in stack.urls.items():
        say(f"  {name:<26} {url}")
    say(f"  {'logs':<26} {workdir}/*/")
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
