"""Pieces of a local platform (tests and ``make demo``): CRDs, namespaces, the operator process.

Everything runs as real processes against the real control plane; nothing is imitated here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from regtask_dev.kind import tool
from regtask_dev.procs import free_port, start_process, stop_process, tail, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "manifests" / "crds"
RBAC_DIR = REPO_ROOT / "manifests" / "rbac"
CHART_DIR = REPO_ROOT / "charts" / "regtask"
CONFINEMENT_TEMPLATE = "templates/operator/confinement.yaml"


def apply_crds(api: client.ApiClient, crd_dir: Path = CRD_DIR, timeout_s: float = 30) -> list[str]:
    """Create or replace the project's CRDs and wait until the apiserver serves them."""
    ext = client.ApiextensionsV1Api(api)
    names: list[str] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        body: Any = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        names.append(name)
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            assert current.metadata is not None
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, body)

    def established() -> bool:
        for name in names:
            crd = ext.read_custom_resource_definition(name)
            conditions = (crd.status.conditions if crd.status else None) or []
            if not any(c.type == "Established" and c.status == "True" for c in conditions):
                return False
        return True

    wait_for(established, timeout_s, "CRDs established", interval_s=0.2)
    return names


def apply_manifests(api: client.ApiClient, path: Path) -> int:
    """Create every object of a multi-document YAML file; existing ones are left as they are."""
    count = 0
    for body in yaml.safe_load_all(path.read_text()):
        if not body:
            continue
        namespace = body["metadata"].get("namespace")
        if namespace:
            ensure_namespace(api, namespace)
        group = body["apiVersion"].rpartition("/")[0]
        if group.endswith("regtask.io"):
            _create_custom(api, body, namespace or "default")
        else:
            try:
                utils.create_from_dict(api, body)  # type: ignore[no-untyped-call]
            except utils.FailToCreateError as exc:
                if any(e.status != 409 for e in exc.api_exceptions):
                    raise
        count += 1
    return count


def render_operator_confinement(
    runner_image: str, release_namespace: str = "regtask-system"
) -> str:
    """The chart's ValidatingAdmissionPolicies that confine the operator, rendered for this
    runner image (``repository:tag``) and the ServiceAccount ``regtask-operator`` of
    ``release_namespace`` (the one the operator's tests run as)."""
    repository, _, tag = runner_image.rpartition(":")
    result = subprocess.run(
        [
            tool("helm"),
            "template",
            "regtask",
            str(CHART_DIR),
            "--namespace",
            release_namespace,
            "--show-only",
            CONFINEMENT_TEMPLATE,
            "--set-string",
            f"images.runner.repository={repository},images.runner.tag={tag}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template of the confinement failed: {result.stderr.strip()}")
    return result.stdout


def apply_operator_confinement(
    api: client.ApiClient, runner_image: str, timeout_s: float = 30
) -> list[str]:
    """Create (or replace) the operator's confinement policies and bindings for this runner
    image and wait until the API server enforces them; returns the policies' names.

    A new policy takes effect asynchronously: this waits until a dry-run request as the
    operator (impersonated) outside its tenant namespaces is refused by each policy.
    """
    admission = client.AdmissionregistrationV1Api(api)
    policies: list[str] = []
    for body in yaml.safe_load_all(render_operator_confinement(runner_image)):
        if not body:
            continue
        name = body["metadata"]["name"]
        is_policy = body["kind"] == "ValidatingAdmissionPolicy"
        if is_policy:
            policies.append(name)
        try:
            if is_policy:
                admission.create_validating_admission_policy(body)
            else:
                admission.create_validating_admission_policy_binding(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current: Any = (
                admission.read_validating_admission_policy(name)
                if is_policy
                else admission.read_validating_admission_policy_binding(name)
            )
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            if is_policy:
                admission.replace_validating_admission_policy(name, body)
            else:
                admission.replace_validating_admission_policy_binding(name, body)
    wait_for(lambda: confinement_enforced(api), timeout_s, "operator confinement enforced", 0.2)
    return policies


OPERATOR_USER = "system:serviceaccount:regtask-system:regtask-operator"


def confinement_enforced(api: client.ApiClient) -> bool:
    """Whether dry-run writes as the operator outside a tenant namespace are refused by the
    namespaces, fences and Jobs policies alike."""
    probes: list[tuple[str, dict[str, Any]]] = [
        (
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "confinement-probe"}},
        ),
        (
            "/api/v1/namespaces/kube-system/serviceaccounts",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "confinement-probe"},
            },
        ),
        (
            "/apis/batch/v1/namespaces/kube-system/jobs",
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "confinement-probe"},
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "confinement-probe"}],
                        }
                    }
                },
            },
        ),
    ]
    for path, body in probes:
        response = api.call_api(
            "POST",
            api.configuration.host + path + "?dryRun=All",
            header_params={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Impersonate-User": OPERATOR_USER,
            },
            body=body,
        )
        response.read()  # type: ignore[no-untyped-call]
        if response.status != 403 or b"ValidatingAdmissionPolicy" not in (response.data or b""):
            return False
    return True


def _create_custom(api: client.ApiClient, body: dict[str, Any], namespace: str) -> None:
    """The project's own kinds (the client's generic loader knows only built-in ones)."""
    group, version = body["apiVersion"].split("/")
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            group, version, namespace, body["kind"].lower() + "s", body
        )
    except ApiException as exc:
        if exc.status != 409:
            raise


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    body: Any = {"metadata": {"name": name}}
    try:
        client.CoreV1Api(api).create_namespace(body)
    except ApiException as exc:
        if exc.status != 409:
            raise


class ServiceProcess:
    """``python -m <module>`` as a child process with its own port and an HTTP health URL."""

    def __init__(
        self,
        name: str,
        module_args: list[str],
        env: dict[str, str],
        workdir: Path,
        health_path: str = "/healthz",
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.host = host
        self.module_args = module_args
        self.env = env
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self.port = port or free_port()
        self.health_path = health_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", *self.module_args]

    def start(self, timeout_s: float = 60) -> Self:
        self.starts += 1
        self.proc = start_process(self.argv(), self.log_path, env=self.env)
        try:
            wait_for(self._alive, timeout_s, f"{self.name} health", interval_s=0.2)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{tail(self.log_path)}") from exc
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}\n{tail(self.log_path)}"
            )
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the crash a restart-safety test needs (no cleanup handlers run)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=15)
            self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class OperatorProcess(ServiceProcess):
    """``python -m regtask_operator``; its Kopf liveness endpoint is the health URL."""

    def __init__(self, kubeconfig: Path, env: dict[str, str], workdir: Path) -> None:
        self.metrics_port = free_port()
        super().__init__(
            "operator",
            ["regtask_operator"],
            {
                "REGTASK_METRICS_PORT": str(self.metrics_port),
                "REGTASK_METRICS_HOST": "127.0.0.1",
                **env,
            },
            workdir,
        )
        self.kubeconfig = kubeconfig

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def argv(self) -> list[str]:
        return [
            *super().argv(),
            "--kubeconfig",
            str(self.kubeconfig),
            "--liveness",
            self.url + self.health_path,
        ]


class GatewayProcess(ServiceProcess):
    """``python -m regtask_gateway`` (settings from the environment), bound to ``host``:
    a cluster's ``host_address`` makes it reachable from pods (and nothing outside)."""

    def __init__(self, env: dict[str, str], workdir: Path, host: str = "127.0.0.1") -> None:
        super().__init__("gateway", ["regtask_gateway"], env, workdir, host=host)
        self.metrics_port = free_port()
        self.env = {
            **env,
            "REGTASK_GATEWAY_HOST": host,
            "REGTASK_GATEWAY_PORT": str(self.port),
            "REGTASK_GATEWAY_METRICS_PORT": str(self.metrics_port),
        }

    @property
    def metrics_url(self) -> str:
        """``/metrics``, on its own port (runners may reach :attr:`url` only)."""
        return f"http://{self.host}:{self.metrics_port}/metrics"


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns a truthy value, and return that value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not reached after {timeout_s:.0f}s (last: {last!r})")


def scrape_metrics(url: str) -> dict[str, float]:
    """A Prometheus text page as {series with labels: value} (comments skipped)."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
