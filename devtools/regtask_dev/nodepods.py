"""Pod objects for the node stand-in (TEST/DEV TOOL ONLY): what a Job's pod needs in the API.

A projected ServiceAccount token is bound to a live Pod object, so for Jobs whose pods mount
one the stand-in does what the Job controller, the kubelet and the quota controller would:
create the Pod through the API server (its admission: Pod Security, LimitRange, ResourceQuota),
keep the namespace's ResourceQuota status (the quota controller's job: admission refuses pods
in a namespace whose quota has no status), request each token with TokenRequest bound to the
pod, and write it where the container would find it (a local directory standing for the mount
path). The Pod is deleted when its process ends, which also voids its tokens.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from urllib3 import BaseHTTPResponse

Obj = dict[str, Any]
NODE_NAME = "regtask-nodesim"


def _json(response: object) -> Obj:
    """The body of a ``_preload_content=False`` call (the client's hints name the model)."""
    decoded: Obj = json.loads(cast(BaseHTTPResponse, response).data)
    return decoded


# ResourceQuota keys the stand-in counts besides "pods" (others are reported as 0 used).
_COUNTED = {
    "requests.cpu": ("requests", "cpu"),
    "limits.cpu": ("limits", "cpu"),
    "requests.memory": ("requests", "memory"),
    "limits.memory": ("limits", "memory"),
}
_ALIASES = {"cpu": "requests.cpu", "memory": "requests.memory"}


class PodRefused(Exception):
    """The API server refused the Pod (admission, quota): the Job controller retries."""


def token_sources(pod_spec: Obj) -> dict[str, list[Obj]]:
    """Projected ServiceAccount token sources per volume name."""
    found: dict[str, list[Obj]] = {}
    for volume in pod_spec.get("volumes") or []:
        sources = [
            source["serviceAccountToken"]
            for source in (volume.get("projected") or {}).get("sources") or []
            if "serviceAccountToken" in source
        ]
        if sources:
            found[volume["name"]] = sources
    return found


def map_path(value: str, mounts: dict[str, Path]) -> str:
    """A container path under a mounted volume, as the local path standing for it."""
    for mount_path, local in mounts.items():
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(local) + value[len(mount_path) :]
    return value


def _usage(pod: Obj) -> dict[str, Decimal]:
    totals = {"pods": Decimal(1)}
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        for key, (kind, name) in _COUNTED.items():
            value = (resources.get(kind) or {}).get(name)
            if value is not None:
                quantity: Decimal = parse_quantity(value)  # type: ignore[no-untyped-call]
                totals[key] = totals.get(key, Decimal(0)) + quantity
    return totals


def _format(key: str, value: Decimal) -> str:
    if key.endswith("cpu"):
        return f"{int(value * 1000)}m"
    return str(int(value))


class PodObjects:
    def __init__(self, core: client.CoreV1Api, volume_dir: Path) -> None:
        self._core = core
        self._volume_dir = volume_dir
        self._lock = threading.Lock()
        self._namespace_locks: dict[str, threading.Lock] = {}
        # (namespace, pod name) -> its resource usage, for the quota status
        self._live: dict[tuple[str, str], dict[str, Decimal]] = {}

    def _namespace_lock(self, namespace: str) -> threading.Lock:
        with self._lock:
            return self._namespace_locks.setdefault(namespace, threading.Lock())

    def create(self, job: Obj, pod_name: str) -> Obj:
        """Create the Job's pod as the Job controller would; raise PodRefused if refused."""
        meta = job["metadata"]
        namespace = meta["namespace"]
        template = job["spec"]["template"]
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "batch.kubernetes.io/job-name": meta["name"],
            "batch.kubernetes.io/controller-uid": meta["uid"],
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": NODE_NAME},
        }
        with self._namespace_lock(namespace):
            self._sync_quotas(namespace)
            try:
                response = self._core.create_namespaced_pod(
                    namespace, cast(client.V1Pod, body), _preload_content=False
                )
            except ApiException as exc:
                raise PodRefused(_message(exc)) from exc
            pod = _json(response)
            self._live[(namespace, pod_name)] = _usage(pod)
        return pod

    def mount_tokens(self, pod: Obj, container: Obj) -> dict[str, Path]:
        """Request the pod's projected tokens; return mount path -> local directory."""
        meta = pod["metadata"]
        sources = token_sources(pod["spec"])
        account = pod["spec"].get("serviceAccountName") or "default"
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in sources:
                continue
            local = self._volume_dir / meta["namespace"] / meta["name"] / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            for source in sources[mount["name"]]:
                request = client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(
                        audiences=[source["audience"]] if source.get("audience") else [],
                        expiration_seconds=source.get("expirationSeconds", 3600),
                        bound_object_ref=client.V1BoundObjectReference(
                            api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
                        ),
                    )
                )
                try:
                    answer = self._core.create_namespaced_service_account_token(
                        account, meta["namespace"], request
                    )
                except ApiException as exc:
                    raise PodRefused(f"token request: {_message(exc)}") from exc
                path = local / source["path"]
                if answer.status is None:
                    raise PodRefused("token request: no token in the answer")
                path.write_text(answer.status.token)
                path.chmod(0o600)
            mounts[mount["mountPath"]] = local
        return mounts

    def delete(self, namespace: str, pod_name: str) -> None:
        with self._namespace_lock(namespace):
            self._live.pop((namespace, pod_name), None)
            with contextlib.suppress(ApiException):
                self._core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=0)
        shutil.rmtree(self._volume_dir / namespace / pod_name, ignore_errors=True)

    def _sync_quotas(self, namespace: str) -> None:
        """ResourceQuota status from the pods this node runs (the quota controller's part)."""
        used: dict[str, Decimal] = {}
        for (pod_namespace, _), usage in self._live.items():
            if pod_namespace == namespace:
                for key, value in usage.items():
                    used[key] = used.get(key, Decimal(0)) + value
        quotas = self._core.list_namespaced_resource_quota(namespace, _preload_content=False)
        for quota in _json(quotas)["items"]:
            hard: dict[str, str] = (quota.get("spec") or {}).get("hard") or {}
            status = {
                "hard": hard,
                "used": {
                    key: _format(key, used.get(_ALIASES.get(key, key), Decimal(0))) for key in hard
                },
            }
            self._core.patch_namespaced_resource_quota_status(
                quota["metadata"]["name"], namespace, {"status": status}
            )


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return f"HTTP {exc.status}: {exc.reason}"
