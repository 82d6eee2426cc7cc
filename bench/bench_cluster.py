"""The test cluster's own costs: create and delete, image load, and a Job of the runner image.

``make bench-cluster``. Creates a kind cluster (``regtask_dev.kind``, as the tests do), loads the
runner image, then runs JOBS Jobs one after the other, each ``python -c 'import
regtask_runners'`` in the runner image with the restricted security context the operator gives
its runners, and measures each from the create call to the Job's ``Complete`` condition seen by
a watch. The baseline in the same run: the same Job running ``true`` from the same image (the
container start without Python), so the ratio shows what the runner's interpreter costs.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from bench.common import emit
from regtask_dev import images
from regtask_dev.kind import KindCluster

JOBS = int(os.environ.get("BENCH_JOBS", "10"))
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def job(name: str, image: str, command: list[str]) -> Any:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": command,
                            "securityContext": RESTRICTED,
                        }
                    ],
                }
            },
        },
    }


def run_to_complete(api: client.ApiClient, namespace: str, body: Any) -> float:
    """Seconds from the create call to the Job's Complete condition (a watch sees it)."""
    batch = client.BatchV1Api(api)
    began = time.monotonic()
    created = batch.create_namespaced_job(namespace, body)
    for event in watch.Watch().stream(
        batch.list_namespaced_job,
        namespace,
        field_selector=f"metadata.name={body['metadata']['name']}",
        resource_version=created.metadata.resource_version,
        timeout_seconds=120,
    ):
        conditions = event["object"].status.conditions or []
        if any(c.type == "Complete" and c.status == "True" for c in conditions):
            return time.monotonic() - began
        if any(c.type == "Failed" and c.status == "True" for c in conditions):
            raise RuntimeError(f"Job {body['metadata']['name']} failed")
    raise TimeoutError(f"Job {body['metadata']['name']} not Complete after 120 s")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="regtask-bench-cluster-"))
    [runner] = images.build(["runner"]).values()
    cluster = KindCluster(f"regtask-bench-{os.getpid()}", work / "kind")
    began = time.monotonic()
    cluster.create()
    create_s = time.monotonic() - began
    try:
        began = time.monotonic()
        cluster.load_images([runner])
        load_s = time.monotonic() - began
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata={"name": "bench"}))
        python_s, true_s = [], []
        for n in range(JOBS):
            script = ["python", "-c", "import regtask_runners"]
            python_s.append(run_to_complete(api, "bench", job(f"py-{n}", runner, script)))
            true_s.append(run_to_complete(api, "bench", job(f"true-{n}", runner, ["true"])))
        api.close()
    finally:
        began = time.monotonic()
        cluster.delete()
        delete_s = time.monotonic() - began
    emit(
        "cluster",
        {
            "provider": cluster.provider,
            "cluster_create_s": round(create_s, 1),
            "cluster_delete_s": round(delete_s, 1),
            "runner_image_load_s": round(load_s, 1),
            "jobs": JOBS,
            "job_python_runner_to_complete_p50_s": round(statistics.median(python_s), 2),
            "job_python_runner_to_complete_max_s": round(max(python_s), 2),
            "job_true_to_complete_p50_s": round(statistics.median(true_s), 2),
            "ratio_python_to_true": round(
                statistics.median(python_s) / statistics.median(true_s), 2
            ),
        },
    )


if __name__ == "__main__":
    main()
