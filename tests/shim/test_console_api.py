"""The JSON and HTML behind the console's task page, on the in-process shim (the test cluster's
API server, Redis as the shim's ACL user): a task's step history (written as the gateway
writes it) and its Job and pods (written as the operator writes them into the CR status), and
nothing of either for an admin of another company."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from kubernetes import client

from regtask import naming
from regtask.documents import RegistryStatus
from regtask.registry import Registry
from regtask.settings import Settings
from regtask_operator import jobs
from tests.fixtures.shim import Shim, ShimFactory
from tests.shim.helpers import GROUP, PLURAL, VERSION, ok, refused

pytestmark = pytest.mark.kube

ACME, GLOBEX = "acme", "globex"


async def start(shim: Shim, user: str, company: str, job: str) -> str:
    answer = await shim.rpc(
        "TASK.start_document_analysis", [user, {"text": "Invoice 42", "company_id": company}, job]
    )
    assert answer.status_code in (200, 202), answer.text
    task_id: str = answer.json()["task_id"]
    return task_id


def running_with_pod(
    kube_api: client.ApiClient, namespace: str, task_id: str, pod_name: str, exit_code: int
) -> None:
    """The CR status the operator writes for a task whose Job ran one pod that ended."""
    tenant = f"rt-{task_id[:20]}"
    job = {
        "metadata": {"name": naming.job_name(task_id), "namespace": tenant, "uid": "u-1"},
        "status": {"failed": 1, "active": 1, "startTime": "2026-11-28T10:00:00Z"},
    }
    pod = {
        "metadata": {"name": pod_name, "creationTimestamp": "2026-11-28T10:00:01Z"},
        "spec": {"nodeName": "node-7"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": jobs.CONTAINER_NAME,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}},
                }
            ],
        },
    }
    status = {
        "phase": "Running",
        "namespace": tenant,
        "jobName": naming.job_name(task_id),
        "job": jobs.job_summary(job, [pod]),
    }
    # (not set_cr_status: its own ``namespace`` parameter would swallow the status field)
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, naming.task_resource_name(task_id), {"status": status}
    )


async def report(gateway: Registry, task_id: str, user: str, steps: list[tuple[str, Any]]) -> None:
    """What the gateway does with a runner's reports (record_step)."""
    for percent, (step, data) in enumerate(steps, start=1):
        applied = await gateway.update_task_progress(
            task_id,
            user,
            RegistryStatus.PROCESSING,
            percent * 10,
            step,
            600,
            data=data,
            record_step=True,
        )
        assert applied


async def test_task_api_and_page_show_steps_job_and_pods_only_within_scope(
    make_shim: ShimFactory,
    kube_api: client.ApiClient,
    shim_namespace: str,
    redis_acl_urls: dict[str, str],
) -> None:
    shim = await make_shim()
    mine = await start(shim, "ann", ACME, "console-api-a")
    theirs = await start(shim, "gus", GLOBEX, "console-api-g")
    running_with_pod(kube_api, shim_namespace, mine, "acme-pod-x1", 75)
    running_with_pod(kube_api, shim_namespace, theirs, "globex-pod-z9", 65)
    gateway_redis = aioredis.Redis.from_url(redis_acl_urls["gateway"])  # the gateway's ACL
    try:
        gateway = Registry(gateway_redis, Settings())
        await report(
            gateway,
            mine,
            "ann",
            [("extracting_text", {"documents": 1}), ("entity_recognition", {"entities_found": 4})],
        )
        await report(gateway, theirs, "gus", [("globex_secret_step", {"globex_secret": 1})])
    finally:
        await gateway_redis.aclose()

    # The service credential: the JSON behind the page carries the steps, the Job and its pod.
    page = ok(await shim.http.get(f"/console/api/tasks/{mine}", headers=shim.auth()))
    assert [(s["step"], s["progress"], s["data"]) for s in page["steps"]] == [
        ("extracting_text", 10, {"documents": 1}),
        ("entity_recognition", 20, {"entities_found": 4}),
    ]
    assert all(s["time"] for s in page["steps"])
    job = page["task"]["job"]
    assert (job["name"], job["state"], job["failed"]) == (naming.job_name(mine), "Running", 1)
    [pod] = job["pods"]
    assert (pod["name"], pod["phase"], pod["node"], pod["exit_code"], pod["restarts"]) == (
        "acme-pod-x1",
        "Failed",
        "node-7",
        75,
        0,
    )
    # ... and the page (its live fragment, as the browser swaps it in) shows them.
    html = await shim.http.get(f"/console/tasks/{mine}?fragment=1", headers=shim.auth())
    assert html.status_code == 200
    for shown in (
        "extracting_text",
        "entities_found",
        "acme-pod-x1",
        "node-7",
        naming.job_name(mine),
    ):
        assert shown in html.text, shown

    # An admin of acme: its own task in full; globex's refused, page and API, with nothing of it.
    alice = shim.user_token("alice", companies=[ACME], company_roles={ACME: "admin"})
    own = ok(await shim.http.get(f"/console/api/tasks/{mine}", headers=shim.auth(alice)))
    assert [s["step"] for s in own["steps"]] == ["extracting_text", "entity_recognition"]
    assert own["task"]["job"]["pods"][0]["name"] == "acme-pod-x1"
    secrets = ("globex_secret", "globex-pod-z9", naming.job_name(theirs), "node-7")
    denied = await shim.http.get(f"/console/api/tasks/{theirs}", headers=shim.auth(alice))
    refused(denied, 403, "not authorized")
    for path in (f"/console/tasks/{theirs}", f"/console/tasks/{theirs}?fragment=1"):
        answer = await shim.http.get(path, headers=shim.auth(alice))
        assert answer.status_code == 403
        assert not [s for s in secrets if s in answer.text], answer.text
    assert not [s for s in secrets if s in denied.text]
    # the mirror image: globex's admin cannot read acme's task
    gina = shim.user_token("gina", companies=[GLOBEX], company_roles={GLOBEX: "admin"})
    refused(await shim.http.get(f"/console/api/tasks/{mine}", headers=shim.auth(gina)), 403)
    theirs_page = ok(await shim.http.get(f"/console/api/tasks/{theirs}", headers=shim.auth(gina)))
    assert [s["step"] for s in theirs_page["steps"]] == ["globex_secret_step"]
    # a member of acme (not admin) reads nothing
    bob = shim.user_token("bob", companies=[ACME], company_roles={ACME: "member"})
    refused(await shim.http.get(f"/console/api/tasks/{mine}", headers=shim.auth(bob)), 403)
