"""A kind cluster: the one Kubernetes the tests, the demo and the end-to-end run use.

A real node (kubelet, containerd, runc), the real controllers (Job, namespace, garbage
collector, TTL, ResourceQuota, eviction), the real scheduler, kube-proxy, CoreDNS and a
NetworkPolicy engine, in one container made by `kind <https://kind.sigs.k8s.io>`_:

* **Docker** where a Docker engine answers: kind's defaults (its own ``kindest/node`` image unless
  ``REGTASK_KIND_NODE_IMAGE`` names another), the API server on a published loopback port.
* **podman** otherwise (rootful; this machine): the project's own containers.conf and storage
  (``hack/kind/lib.sh``), the node image ``hack/kind/node-image.sh`` builds without pulling, and
  the network lock-down of :mod:`regtask_dev.lockdown`. The network is internal, so nothing is
  published: the host talks to the API server at the node's own address.

Either way ``host_address`` is the host's address on the kind network: a server bound there
(Redis, the LLM, a gateway run as a host process) is reachable from pods, and from nothing
outside the machine.

Readiness comes from the new cluster answering (``/readyz`` with its own CA, the node Ready,
CoreDNS, kube-proxy and the NetworkPolicy engine ready), never from files an earlier run left:
the kubeconfig is written fresh from ``kind get kubeconfig`` after the create.

Clusters are named ``regtask-<purpose>``; each records its owner's PID under
``$REGTASK_KIND_DIR/clusters``. A cluster whose owner died (a killed test run) is deleted by
the next :meth:`KindCluster.create` or by ``python -m regtask_dev.kind down --all``, which also
undoes the host changes once no cluster is left.

Long (about 630 lines) for a reason: one cluster's whole life (create, readiness, kubeconfig,
images, delete, the records of clusters whose owner died) in one class whose steps share the
cluster's state and depend on their order.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.client
import json
import logging
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from regtask_dev.lockdown import NETWORK_NAME, Lockdown, LockdownError, gateway_address, locked

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_KIND = REPO_ROOT / "hack" / "kind"
NAME_PREFIX = "regtask-"
KUBERNETES_VERSION = "v1.37.2"


class ClusterError(RuntimeError):
    """The cluster could not be created, reached or deleted."""


def _run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        input=input_text,
    )
    if check and result.returncode != 0:
        raise ClusterError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr.strip()[-2000:]}"
        )
    return result


def tools_bin() -> Path:
    """The bin dir of ``hack/install-k8s-tools.sh`` (kind, kubectl, helm ...)."""
    found = _run([str(REPO_ROOT / "hack" / "install-k8s-tools.sh"), "--print-bin"])
    return Path(found.stdout.strip())


def tool(name: str) -> str:
    path = tools_bin() / name
    if not path.exists():
        raise ClusterError(f"{name} not found in {path.parent}: run make setup (hack/setup.sh)")
    return str(path)


def docker_available() -> bool:
    """A Docker engine that answers (the client alone is not enough)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, check=False, timeout=20
            ).returncode
            == 0
        )
    return False


def provider() -> str:
    """``docker`` or ``podman``; ``REGTASK_KIND_PROVIDER`` overrides the detection."""
    chosen = os.environ.get("REGTASK_KIND_PROVIDER") or (
        "docker" if docker_available() else "podman"
    )
    if chosen not in ("docker", "podman"):
        raise ClusterError(f"REGTASK_KIND_PROVIDER={chosen}: docker or podman")
    return chosen


def podman_env() -> dict[str, str]:
    """CONTAINERS_CONF & co. of the project (written by hack/kind/podman-env.sh)."""
    out = _run([str(HACK_KIND / "podman-env.sh")]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def kind_dir() -> Path:
    return Path(os.environ.get("REGTASK_KIND_DIR") or Path.home() / ".cache/regtask/kind")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class _Record:
    """What ``$REGTASK_KIND_DIR/clusters/<name>.json`` says of a cluster of ours."""

    name: str
    owner_pid: int
    provider: str
    work_dir: str


# An image archive unused this long is deleted when a new one is made: every build of a changed
# checkout makes new ones (200-700 MB each), and without this they filled the disk (61 archives,
# 22 GB, until `kind load image-archive` failed for want of space).
ARCHIVE_KEEP_S = 6 * 3600


def prune_archives(archives: Path, keep_s: float = ARCHIVE_KEEP_S) -> list[Path]:
    """Delete the archives (and leftover partial ones) not used for ``keep_s``; their paths."""
    cutoff = time.time() - keep_s
    removed = []
    for path in [*archives.glob("*.tar"), *archives.glob("*.part")]:
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue  # another process removed it first
    return removed


class KindCluster:
    """One kind cluster; ``create()`` then ``delete()`` (also as a context manager)."""

    def __init__(
        self,
        name: str,
        work_dir: Path,
        *,
        owner_pid: int | None = None,
        wait_timeout_s: float = 300.0,
    ) -> None:
        if not name.startswith(NAME_PREFIX):
            raise ClusterError(f"cluster names start with {NAME_PREFIX!r}: {name}")
        self.name = name
        self.work_dir = work_dir
        self.owner_pid = owner_pid or os.getpid()
        self.wait_timeout_s = wait_timeout_s
        self.create_seconds: float | None = None
        self._server: str | None = None

    # -- where things are ------------------------------------------------------------------

    @cached_property
    def provider(self) -> str:
        return provider()

    @cached_property
    def env(self) -> dict[str, str]:
        """Environment of every kind/podman call for this cluster."""
        env = {"PATH": f"{tools_bin()}:{os.environ.get('PATH', '')}"}
        if self.provider == "podman":
            env |= podman_env()
            env["KIND_EXPERIMENTAL_PROVIDER"] = "podman"
            env["KIND_EXPERIMENTAL_PODMAN_NETWORK"] = NETWORK_NAME
        return env

    @property
    def node_container(self) -> str:
        return f"{self.name}-control-plane"

    @property
    def kubeconfig_path(self) -> Path:
        """Admin kubeconfig, written fresh by ``create()`` from the new cluster."""
        return self.work_dir / "kubeconfig.yaml"

    @property
    def server_url(self) -> str:
        if self._server is None:
            self._server = str(self._kubeconfig()["clusters"][0]["cluster"]["server"])
        return self._server

    @cached_property
    def host_address(self) -> str:
        """The host's address on the kind network: bind servers here for pods to reach them."""
        if self.provider == "podman":
            return gateway_address()
        found = _run(["docker", "network", "inspect", "kind"], env=self.env).stdout
        for config in json.loads(found)[0]["IPAM"]["Config"]:
            gateway = str(config.get("Gateway") or "")
            if gateway and ":" not in gateway:
                return gateway
        raise ClusterError("no IPv4 gateway on the docker network kind")

    @property
    def node_address(self) -> str:
        """The node container's address (the API server listens there on 6443)."""
        fmt = "{{json .NetworkSettings.Networks}}"
        found = _run([self.provider, "inspect", self.node_container, "--format", fmt], env=self.env)
        networks: dict[str, dict[str, str]] = json.loads(found.stdout)
        network = NETWORK_NAME if self.provider == "podman" else "kind"
        return networks[network]["IPAddress"]

    @property
    def _record_path(self) -> Path:
        return kind_dir() / "clusters" / f"{self.name}.json"

    # -- lifecycle -------------------------------------------------------------------------

    def create(self) -> KindCluster:
        """Create the cluster (deleting a stale one of the same name first) and wait for it."""
        began = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        node_image = self._node_image()
        with locked(kind_dir() / "clusters" / ".lock"):
            sweep_stale(self.env)
            if self.name in self.existing():
                raise ClusterError(
                    f"kind cluster {self.name} exists and its owner is alive: "
                    f"delete it (python -m regtask_dev.kind down --name {self.name})"
                )
            if self.provider == "podman":
                self._lockdown().apply()
            self._write_record()
            config = self.work_dir / "kind-config.yaml"
            config.write_text(yaml.safe_dump(self._config(node_image), sort_keys=False))
            log.info("creating kind cluster %s (%s, %s)", self.name, self.provider, node_image)
            created = _run(
                [
                    tool("kind"),
                    "create",
                    "cluster",
                    "--name",
                    self.name,
                    "--config",
                    str(config),
                    "--kubeconfig",
                    str(self.work_dir / "kind-own.kubeconfig"),  # unused: kubeconfig.yaml is ours
                    "--wait",
                    "0s",
                ],
                env=self.env,
                check=False,
                timeout=600,
            )
            (self.work_dir / "kind-create.log").write_text(created.stdout + created.stderr)
            if created.returncode != 0:
                self._forget_failed_create()
                raise ClusterError(
                    f"kind create cluster {self.name} failed "
                    f"(log: {self.work_dir / 'kind-create.log'}):\n{created.stderr[-1500:]}"
                )
            if self.provider == "podman":
                self._lockdown().ensure_bridge_address()
        self._write_kubeconfig()
        self._wait_ready()
        self.create_seconds = time.monotonic() - began
        log.info("kind cluster %s ready in %.1f s", self.name, self.create_seconds)
        return self

    def delete(self) -> None:
        """Delete the cluster and, when it was the last one, undo the host changes."""
        with locked(kind_dir() / "clusters" / ".lock"):
            delete_cluster(self.name, self.env)
            self._record_path.unlink(missing_ok=True)
            if self.provider == "podman":
                release_host(self.env)

    def __enter__(self) -> KindCluster:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def existing(self) -> set[str]:
        found = _run([tool("kind"), "get", "clusters"], env=self.env, check=False)
        return {line.strip() for line in found.stdout.splitlines() if line.strip()}

    # -- images ----------------------------------------------------------------------------

    def load_images(self, refs: Sequence[str]) -> None:
        """Make images present on the node (no registry: pods use them as pulled)."""
        for ref in refs:
            began = time.monotonic()
            if self.provider == "docker":
                _run([tool("kind"), "load", "docker-image", ref, "--name", self.name], env=self.env)
            else:
                archive = self._archive(ref)
                _run(
                    [tool("kind"), "load", "image-archive", str(archive), "--name", self.name],
                    env=self.env,
                    timeout=600,
                )
            log.info("loaded %s in %.1f s", ref, time.monotonic() - began)

    def _archive(self, ref: str) -> Path:
        """A docker-archive of the image, made once per image id (``kind load`` reads it)."""
        image_id = _run(
            ["podman", "image", "inspect", ref, "--format", "{{.Id}}"], env=self.env
        ).stdout.strip()
        archives = kind_dir() / "archives"
        archives.mkdir(parents=True, exist_ok=True)
        archive = archives / f"{image_id[:24]}.tar"
        if archive.exists():
            os.utime(archive)  # in use: kept by prune_archives
        else:
            fd, tmp = tempfile.mkstemp(dir=archives, suffix=".part")
            os.close(fd)
            Path(tmp).unlink()
            _run(
                ["podman", "save", "-q", "--format", "docker-archive", "-o", tmp, ref],
                env=self.env,
                timeout=600,
            )
            Path(tmp).replace(archive)
            prune_archives(archives)
        return archive

    # -- API access ------------------------------------------------------------------------

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        """Run kubectl as admin against this cluster; its stdout."""
        return _run(
            [tool("kubectl"), "--kubeconfig", str(self.kubeconfig_path), *args],
            check=check,
            input_text=input_text,
            timeout=300,
        ).stdout

    def node_exec(self, *argv: str) -> str:
        """Run a command inside the node container; its stdout."""
        return _run([self.provider, "exec", self.node_container, *argv], env=self.env).stdout

    def get(self, path: str) -> bytes:
        """GET a raw API path as admin, e.g. ``/metrics``; raises on a non-2xx answer."""
        return self._request("GET", path)

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, path: Path | None = None, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig with a real token of that ServiceAccount (TokenRequest API), which must
        exist: the API server authenticates it as it would a pod's."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        answer = self._request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body
        )
        token = str(json.loads(answer)["status"]["token"])
        target = path or self.work_dir / "kubeconfigs" / f"sa-{namespace}-{name}.yaml"
        config = self._kubeconfig()
        user = f"system:serviceaccount:{namespace}:{name}"
        cluster_name = config["clusters"][0]["name"]
        config["users"] = [{"name": user, "user": {"token": token}}]
        config["contexts"] = [
            {"name": self.name, "context": {"cluster": cluster_name, "user": user}}
        ]
        config["current-context"] = self.name
        _write_private(target, json.dumps(config, indent=2).encode())
        return target

    def _kubeconfig(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.kubeconfig_path.read_text())
        return loaded

    def _ssl_context(self) -> ssl.SSLContext:
        config = self._kubeconfig()
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        pki = self.work_dir / "pki"
        cert, key = pki / "admin.crt", pki / "admin.key"
        _write_private(cert, base64.b64decode(user["client-certificate-data"]))
        _write_private(key, base64.b64decode(user["client-key-data"]))
        context.load_cert_chain(str(cert), str(key))
        return context

    @cached_property
    def _admin_context(self) -> ssl.SSLContext:
        return self._ssl_context()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        host_port = self.server_url.removeprefix("https://")
        host, _, port = host_port.partition(":")
        conn = http.client.HTTPSConnection(
            host, int(port or 443), context=self._admin_context, timeout=30
        )
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            raise ClusterError(f"{method} {path}: HTTP {response.status}: {payload[:500]!r}")
        return payload

    # -- internals -------------------------------------------------------------------------

    def _lockdown(self) -> Lockdown:
        return Lockdown(kind_dir() / "host-changes.json", self.env)

    def _node_image(self) -> str:
        override = os.environ.get("REGTASK_KIND_NODE_IMAGE")
        if override:
            return override
        if self.provider == "docker":
            return ""  # kind's own default kindest/node
        built = _run([str(HACK_KIND / "node-image.sh")], env=self.env, timeout=3600)
        return built.stdout.strip().splitlines()[-1]

    def _config(self, node_image: str) -> dict[str, Any]:
        node: dict[str, Any] = {"role": "control-plane"}
        kubelet_patch = "kind: KubeletConfiguration\nfailCgroupV1: false\n"
        if self.provider == "podman":
            # The node image shields the host-wide kernel parameters the kubelet sets
            # (hack/kind/node/regtask-sysctl-shield): should the shield fail, the kubelet
            # refuses to start rather than change them on the machine.
            kubelet_patch += "protectKernelDefaults: true\n"
        if node_image:
            node["image"] = node_image
        config: dict[str, Any] = {
            "kind": "Cluster",
            "apiVersion": "kind.x-k8s.io/v1alpha4",
            "name": self.name,
            # Without CAP_SYS_RESOURCE (these machines) runc cannot set a negative
            # oom_score_adj; the kubelet must accept cgroup v1 hierarchies. Harmless elsewhere.
            "containerdConfigPatches": [
                '[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true'
            ],
            "kubeadmConfigPatches": [kubelet_patch],
            "nodes": [node],
        }
        if self.provider == "podman":
            # kube-router's policy controller rewrites the iptables filter table by save and
            # restore; kube-proxy in iptables mode lost its chains to it at start-up (seen
            # here: no Service reachable, for good). In nftables mode the two share no table.
            config["networking"] = {"kubeProxyMode": "nftables"}
        return config

    def _write_record(self) -> None:
        record = _Record(self.name, self.owner_pid, self.provider, str(self.work_dir))
        self._record_path.parent.mkdir(parents=True, exist_ok=True)
        self._record_path.write_text(json.dumps(record.__dict__))

    def _forget_failed_create(self) -> None:
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            delete_cluster(self.name, self.env)
        self._record_path.unlink(missing_ok=True)
        if self.provider == "podman":
            with contextlib.suppress(ClusterError, LockdownError):
                release_host(self.env)

    def _write_kubeconfig(self) -> None:
        args = [tool("kind"), "get", "kubeconfig", "--name", self.name]
        if self.provider == "podman":
            # No published ports on an internal network: the node's own address.
            args.append("--internal")
        config: dict[str, Any] = yaml.safe_load(_run(args, env=self.env).stdout)
        if self.provider == "podman":
            config["clusters"][0]["cluster"]["server"] = f"https://{self.node_address}:6443"
        _write_private(self.kubeconfig_path, json.dumps(config, indent=2).encode())
        self._server = None
        with contextlib.suppress(AttributeError):
            del self._admin_context

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.wait_timeout_s

        def until(what: str, check: Callable[[], bool]) -> None:
            while time.monotonic() < deadline:
                with contextlib.suppress(ClusterError, OSError, ValueError, KeyError):
                    if check():
                        return
                time.sleep(0.5)
            raise ClusterError(
                f"kind cluster {self.name}: {what} not ready after {self.wait_timeout_s:.0f} s\n"
                + self.kubectl("get", "pods", "-A", "-o", "wide", check=False)
            )

        until("API server", lambda: self.get("/readyz") == b"ok")
        until("node", self._node_ready)
        for kind, name in (
            ("deployment", "coredns"),
            ("daemonset", "kube-proxy"),
            ("daemonset", self.policy_engine),
        ):
            until(f"{kind}/{name}", functools.partial(self._rolled_out, kind, name))
        until(
            "default ServiceAccount",
            lambda: bool(self.get("/api/v1/namespaces/default/serviceaccounts/default")),
        )

    @property
    def policy_engine(self) -> str:
        """The DaemonSet that enforces NetworkPolicy: kube-router on the node image built here,
        kindnet (which embeds kube-network-policies) on kindest/node."""
        found = self.get("/apis/apps/v1/namespaces/kube-system/daemonsets")
        names = {d["metadata"]["name"] for d in json.loads(found)["items"]}
        for candidate in ("kube-router", "kindnet"):
            if candidate in names:
                return candidate
        raise ClusterError(f"no NetworkPolicy engine among kube-system DaemonSets {sorted(names)}")

    def _node_ready(self) -> bool:
        nodes = json.loads(self.get("/api/v1/nodes"))["items"]
        return bool(nodes) and all(
            c["status"] == "True"
            for n in nodes
            for c in n["status"].get("conditions", [])
            if c["type"] == "Ready"
        )

    def _rolled_out(self, kind: str, name: str) -> bool:
        obj = json.loads(self.get(f"/apis/apps/v1/namespaces/kube-system/{kind}s/{name}"))
        status = obj.get("status", {})
        if kind == "deployment":
            wanted = obj["spec"].get("replicas", 1)
            return bool(int(status.get("readyReplicas", 0)) >= wanted)
        desired = int(status.get("desiredNumberScheduled", 0))
        return bool(desired > 0 and int(status.get("numberReady", 0)) >= desired)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def delete_cluster(name: str, env: dict[str, str]) -> None:
    """``kind delete cluster`` (a missing cluster is fine), then volumes a failed create left."""
    _run([tool("kind"), "delete", "cluster", "--name", name], env=env, timeout=300)
    if env.get("KIND_EXPERIMENTAL_PROVIDER") == "podman":
        # Our own storage only (CONTAINERS_STORAGE_CONF): a failed create leaks its /var volume.
        _run(["podman", "volume", "prune", "--force"], env=env, check=False)


def release_host(env: dict[str, str]) -> None:
    """Undo the lock-down when no cluster is left on the kind network."""
    Lockdown(kind_dir() / "host-changes.json", env).release()


def _records() -> Iterator[_Record]:
    for path in sorted((kind_dir() / "clusters").glob("*.json")):
        with contextlib.suppress(ValueError, TypeError, OSError):
            yield _Record(**json.loads(path.read_text()))


def sweep_stale(env: dict[str, str]) -> list[str]:
    """Delete clusters of ours whose owner process is gone; returns their names."""
    swept = []
    for record in _records():
        if _pid_alive(record.owner_pid):
            continue
        log.warning("deleting stale kind cluster %s (owner %d gone)", record.name, record.owner_pid)
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            delete_cluster(record.name, env)
        (kind_dir() / "clusters" / f"{record.name}.json").unlink(missing_ok=True)
        swept.append(record.name)
    return swept


def down(names: Sequence[str], *, everything: bool = False) -> list[str]:
    """Delete the named clusters of ours (or all with ``everything``), then undo host changes."""
    env = KindCluster(f"{NAME_PREFIX}cli", Path(tempfile.gettempdir())).env
    deleted = []
    with locked(kind_dir() / "clusters" / ".lock"):
        for record in _records():
            if everything or record.name in names:
                delete_cluster(record.name, env)
                (kind_dir() / "clusters" / f"{record.name}.json").unlink(missing_ok=True)
                deleted.append(record.name)
        if env.get("KIND_EXPERIMENTAL_PROVIDER") == "podman":
            release_host(env)
    return deleted


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``up --name N --dir D`` (kept until ``down``), ``down --name N | --all``."""
    parser = argparse.ArgumentParser(prog="python -m regtask_dev.kind")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="create a cluster and keep it")
    up.add_argument("--name", default=f"{NAME_PREFIX}dev")
    up.add_argument("--dir", type=Path, required=True, help="work dir (kubeconfig, logs)")
    up.add_argument("--load", nargs="*", default=[], help="image references to load")
    rm = commands.add_parser("down", help="delete clusters of ours and undo host changes")
    rm.add_argument("--name", action="append", default=[])
    rm.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "up":
            # Owned by init (pid 1) in effect: kept until `down`, never swept as stale.
            cluster = KindCluster(args.name, args.dir, owner_pid=1).create()
            cluster.load_images(args.load)
            print(cluster.kubeconfig_path)
        else:
            for name in down(args.name, everything=args.all):
                print(f"deleted {name}")
    except (ClusterError, LockdownError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
