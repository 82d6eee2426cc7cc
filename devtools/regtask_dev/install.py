"""The platform installed on a cluster the way users install it: the project's images, the Helm
chart, and the services it depends on.

Redis, the Firestore emulator, the LLM server and ChromaDB run as host processes bound to the
cluster's ``host_address`` (pods reach them there; nothing outside the machine does); the
operator, the RPC shim and the gateway run as pods of the chart under their ServiceAccounts and
RBAC, and every task as a Job of the runner image. Used by ``make demo``, ``make kind-e2e`` and
the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from regtask_dev.chroma_server import ChromaServer
from regtask_dev.firestore_emulator import FirestoreEmulator
from regtask_dev.kind import REPO_ROOT, ClusterError, KindCluster, tool
from regtask_dev.llm_server import LlamaServer
from regtask_dev.procs import free_port, wait_for
from regtask_dev.redis_server import RedisServer

CHART = REPO_ROOT / "charts" / "regtask"
RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


@dataclass
class HostServices:
    """The chart's dependencies, as host processes on the cluster's host address."""

    redis: RedisServer
    firestore: FirestoreEmulator | None = None
    llm: LlamaServer | None = None
    chroma: ChromaServer | None = None

    def pids(self) -> dict[str, int]:
        found: dict[str, int] = {}
        if self.redis.proc is not None:
            found["redis"] = self.redis.proc.pid
        if self.firestore is not None and self.firestore.proc is not None:
            found["firestore"] = self.firestore.proc.pid
        if self.llm is not None:
            for index, proc in enumerate(self.llm.procs):
                found[f"llm-{index}"] = proc.pid
        if self.chroma is not None and self.chroma.proc is not None:
            found["chroma"] = self.chroma.proc.pid
        return found

    def values(self) -> dict[str, Any]:
        """Chart values that point the platform at these services."""
        values: dict[str, Any] = {"redis": {"url": self.redis.url}}
        if self.firestore is not None:
            values["firestore"] = {
                "enabled": True,
                "projectId": self.firestore.project_id,
                "emulatorHost": self.firestore.host,
            }
        if self.llm is not None:
            values["llm"] = {
                "baseUrl": self.llm.base_url,
                "embeddingsBaseUrl": self.llm.embeddings_base_url,
                "embeddingModel": self.llm.embedding_model,
            }
        if self.chroma is not None:
            values["chroma"] = {"url": self.chroma.url}
        return values

    def stop(self) -> None:
        for server in (self.chroma, self.llm, self.firestore, self.redis):
            if server is not None:
                server.stop()


def start_host_services(
    cluster: KindCluster, workdir: Path, *, firestore: bool, llm: bool, chroma: bool
) -> HostServices:
    """Start what is asked for, in parallel where it takes time (the LLM, the emulator)."""
    host = cluster.host_address

    def sub(name: str) -> Path:
        path = workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    with ThreadPoolExecutor(max_workers=4) as pool:
        redis_f = pool.submit(lambda: RedisServer(workdir=sub("redis"), host=host).start())
        fs_f = (
            pool.submit(
                lambda: FirestoreEmulator(
                    project_id="regtask-demo", workdir=sub("firestore"), bind=host
                ).start()
            )
            if firestore
            else None
        )
        llm_f = (
            pool.submit(lambda: LlamaServer(workdir=sub("llm"), host=host).start()) if llm else None
        )
        chroma_f = (
            pool.submit(lambda: ChromaServer(workdir=sub("chroma"), host=host).start())
            if chroma
            else None
        )
        return HostServices(
            redis=redis_f.result(),
            firestore=fs_f.result() if fs_f else None,
            llm=llm_f.result() if llm_f else None,
            chroma=chroma_f.result() if chroma_f else None,
        )


def image_values(images: dict[str, str]) -> dict[str, Any]:
    """``images:`` values for references built here (``repository:tag``), never pulled."""
    values: dict[str, Any] = {"pullPolicy": "Never"}
    for target, ref in images.items():
        repository, _, tag = ref.rpartition(":")
        values[target] = {"repository": repository, "tag": tag}
    return {"images": values}


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of values dictionaries, later layers winning."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def helm(cluster: KindCluster, *args: str, timeout_s: float = 600) -> str:
    """Run helm against the cluster; its stdout (a failure raises with helm's stderr)."""
    result = subprocess.run(
        [tool("helm"), "--kubeconfig", str(cluster.kubeconfig_path), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        raise ClusterError(f"helm {' '.join(args[:3])} failed:\n{result.stderr.strip()[-3000:]}")
    return result.stdout


def install(
    cluster: KindCluster,
    release: str,
    namespace: str,
    values: dict[str, Any],
    *,
    workdir: Path,
    timeout_s: float = 600,
) -> None:
    """``helm install --wait`` of the chart into ``namespace``, created first with restricted
    Pod Security (every pod of the platform is held to it)."""
    namespace_manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": RESTRICTED_LABELS},
    }
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(namespace_manifest))
    values_file = workdir / f"values-{release}.yaml"
    values_file.write_text(yaml.safe_dump(values, sort_keys=False))
    values_file.chmod(0o600)  # it holds the shim's service token
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "-f",
        str(values_file),
        "--wait",
        "--timeout",
        f"{int(timeout_s)}s",
        timeout_s=timeout_s + 60,
    )


@dataclass
class PortForward:
    """``kubectl port-forward`` of a Service to a loopback port (how a user reaches the shim)."""

    cluster: KindCluster
    namespace: str
    target: str
    remote_port: int
    log_path: Path
    local_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def start(self, *, detached: bool = False, timeout_s: float = 60) -> PortForward:
        """``detached``: its own session (it outlives this process, e.g. for ``make demo``)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    tool("kubectl"),
                    "--kubeconfig",
                    str(self.cluster.kubeconfig_path),
                    "--namespace",
                    self.namespace,
                    "port-forward",
                    "--address",
                    "127.0.0.1",
                    self.target,
                    f"{self.local_port}:{self.remote_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detached,
            )
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise ClusterError(f"port-forward exited: {self.log_path.read_text()[-500:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.local_port), timeout=0.5).close()
                return True
            return False

        wait_for(listening, timeout_s, f"port-forward to {self.target}", interval_s=0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@contextlib.contextmanager
def forwarded(
    cluster: KindCluster, namespace: str, target: str, port: int, log_path: Path
) -> Iterator[PortForward]:
    forward = PortForward(cluster, namespace, target, port, log_path).start()
    try:
        yield forward
    finally:
        forward.stop()


def component_name(
    cluster: KindCluster, namespace: str, release: str, kind: str, component: str
) -> str:
    """The name of a release's Service or Deployment of one component (``shim``, ``operator``,
    ``gateway``), found by the chart's labels rather than rebuilt from its naming rules."""
    found = cluster.kubectl(
        "--namespace",
        namespace,
        "get",
        kind,
        "-l",
        f"app.kubernetes.io/name=regtask-{component},app.kubernetes.io/instance={release}",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ).split()
    if len(found) != 1:
        raise ClusterError(f"{kind} of {component} in release {release}: {found or 'none'}")
    return found[0]


def wait_rolled_out(
    cluster: KindCluster, namespace: str, deployment: str, timeout_s: float
) -> None:
    cluster.kubectl(
        "--namespace",
        namespace,
        "rollout",
        "status",
        f"deployment/{deployment}",
        f"--timeout={int(timeout_s)}s",
    )
