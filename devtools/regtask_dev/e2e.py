"""``make kind-e2e``: the path a user takes, end to end, on a kind cluster of its own.

Build the images from the Dockerfile, create a cluster ``regtask-e2e-<pid>``, start Redis, the LLM
server and ChromaDB on the cluster's host address, ``helm install`` the chart, ``kubectl apply
-k manifests/samples/`` and wait until every sample task has Succeeded; then read each task
through the shim's RPC (``TASK.get_task_status``) over a port-forward. On failure it prints the
tasks, the platform's logs and the tenants' Jobs and pods. The cluster is deleted and the
services stopped at the end, also on failure (``--keep`` keeps them, for a look around).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

from regtask import naming
from regtask_dev import images, install
from regtask_dev.kind import REPO_ROOT, ClusterError, KindCluster

NAMESPACE = "regtask-system"
RELEASE = "regtask"


def cluster_name() -> str:
    """One per run (runs may overlap: CI beside a developer's)."""
    return f"regtask-e2e-{os.getpid()}"


def log(text: str) -> None:
    sys.stderr.write(f"kind-e2e: {text}\n")
    sys.stderr.flush()


def task_phases(cluster: KindCluster) -> dict[str, str]:
    listed = json.loads(
        cluster.kubectl("--namespace", NAMESPACE, "get", "registrytasks", "-o", "json")
    )
    return {
        item["metadata"]["name"]: (item.get("status") or {}).get("phase") or "Queued"
        for item in listed["items"]
    }


def wait_for_samples(cluster: KindCluster, timeout_s: float) -> None:
    """Every sample task Succeeded; a Failed or Cancelled one ends the wait at once."""
    deadline = time.monotonic() + timeout_s
    next_report = 0.0
    while True:
        phases = task_phases(cluster)
        ended = {name: phase for name, phase in phases.items() if phase in ("Failed", "Cancelled")}
        if ended:
            raise ClusterError(f"sample tasks ended badly: {ended}")
        if phases and all(phase == "Succeeded" for phase in phases.values()):
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"sample tasks not Succeeded after {timeout_s:.0f} s: {phases}")
        if time.monotonic() >= next_report:
            log("tasks: " + ", ".join(f"{n}={p}" for n, p in sorted(phases.items())))
            next_report = time.monotonic() + 15
        time.sleep(3)
    # The formal check, as a user would run it.
    cluster.kubectl(
        "--namespace",
        NAMESPACE,
        "wait",
        "registrytasks",
        "--all",
        "--for=jsonpath={.status.phase}=Succeeded",
        "--timeout=30s",
    )


def diagnostics(cluster: KindCluster) -> None:
    def show(*args: str) -> None:
        sys.stderr.write(cluster.kubectl(*args, check=False))

    log("---------------- diagnostics")
    show("get", "registrytasks,companyquotas", "-A", "-o", "wide")
    show("--namespace", NAMESPACE, "describe", "registrytasks")
    show("--namespace", NAMESPACE, "get", "pods", "-o", "wide")
    for component in ("operator", "shim", "gateway"):
        log(f"---------------- logs: {component}")
        show(
            "--namespace",
            NAMESPACE,
            "logs",
            "-l",
            f"app.kubernetes.io/name=regtask-{component}",
            "--tail=200",
        )
    tenants = cluster.kubectl(
        "get",
        "namespaces",
        "-l",
        f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}",
        "-o",
        "jsonpath={.items[*].metadata.name}",
        check=False,
    ).split()
    for tenant in tenants:
        log(f"---------------- tenant namespace {tenant}")
        show("--namespace", tenant, "get", "jobs,pods,networkpolicies", "-o", "wide")
        show("--namespace", tenant, "logs", "--all-containers", "--prefix", "-l", "job-name")
    show("get", "events", "-A", "--sort-by=.lastTimestamp")


def run(workdir: Path, *, keep: bool, timeout_s: float) -> int:
    name = cluster_name()
    cluster = KindCluster(name, workdir / "kind", owner_pid=1 if keep else None)
    services: install.HostServices | None = None
    token = secrets.token_urlsafe(32)
    ok = False
    try:
        log("building the images")
        refs = images.build()
        log(f"creating the kind cluster {name}")
        cluster.create()
        log(f"cluster ready in {cluster.create_seconds:.0f} s; loading the images")
        cluster.load_images(list(refs.values()))
        log("starting Redis, the LLM and ChromaDB on the host")
        services = install.start_host_services(
            cluster, workdir / "services", firestore=False, llm=True, chroma=True
        )
        log("installing the chart")
        values = install.merge(
            install.image_values(refs),
            services.values(),
            {
                "shim": {"replicas": 1, "auth": {"serviceToken": {"value": token}}},
                "gateway": {"replicas": 1},
                "operator": {"intervals": {"statusSyncSeconds": 1}, "jobs": {"backoffLimit": 1}},
            },
        )
        install.install(cluster, RELEASE, NAMESPACE, values, workdir=workdir)
        log("applying manifests/samples/")
        cluster.kubectl("apply", "-k", str(REPO_ROOT / "manifests" / "samples"))
        wait_for_samples(cluster, timeout_s)
        service = install.component_name(cluster, NAMESPACE, RELEASE, "service", "shim")
        with install.forwarded(
            cluster, NAMESPACE, f"service/{service}", 8080, workdir / "port-forward.log"
        ) as shim:
            specs = json.loads(
                cluster.kubectl("--namespace", NAMESPACE, "get", "registrytasks", "-o", "json")
            )
            for item in specs["items"]:
                task_id = item["spec"]["taskId"]
                answer = httpx.post(
                    f"{shim.url}/rpc",
                    json={"method": "TASK.get_task_status", "args": [task_id]},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                ).json()
                print(f"TASK.get_task_status({task_id}): {json.dumps(answer)[:400]}")
                if answer.get("status") != "completed":
                    raise ClusterError(f"{task_id}: the registry says {answer}")
        ok = True
    except (ClusterError, images.ImageBuildError, RuntimeError, httpx.HTTPError) as exc:
        log(f"FAILED: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
        if cluster.kubeconfig_path.exists():
            diagnostics(cluster)
    finally:
        if keep:
            log(f"keeping the cluster: export KUBECONFIG={cluster.kubeconfig_path}")
            log(f"delete it with: python -m regtask_dev.kind down --name {name}")
        else:
            if services is not None:
                services.stop()
            cluster.delete()
    log("PASSED" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regtask_dev.e2e")
    parser.add_argument("--keep", action="store_true", help="keep the cluster and services")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the samples")
    args = parser.parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="regtask-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"logs and kubeconfig under {workdir}")
    return run(workdir, keep=args.keep, timeout_s=args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
