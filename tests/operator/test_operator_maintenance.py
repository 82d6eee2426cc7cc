"""The operator's maintenance timers on real servers: idle tenant namespaces removed, drifted
ones repaired without a new task, stale presence swept offline into Firestore's
``listeners_registry``, expired registry references pruned.

Kubernetes' own controllers do their part: the TTL controller deletes finished Jobs
(``ttlSecondsAfterFinished``), the namespace controller empties and removes a deleted namespace.

Long (about 520 lines) for a reason: each maintenance timer's scenario runs on the same
operator, cluster, Redis and emulator; the decisions alone are tested in test_tenants.py and
test_maintenance.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from datetime import timedelta
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regtask import keys, naming
from regtask.crmodels import API_GROUP, API_VERSION
from regtask.docstore import DocUpdate, op_set
from regtask.documents import TaskDoc, TaskInfo, TaskIsolation
from regtask.firestore_writer import FirestoreWriter
from regtask.registry import Registry
from regtask.settings import Settings
from regtask.timeutil import iso_z, parse_iso, utc_now
from regtask_dev.firestore_emulator import FirestoreEmulator
from regtask_dev.kind import KindCluster
from regtask_dev.redis_server import RedisServer
from regtask_dev.stack import GatewayProcess, OperatorProcess, wait_until
from regtask_operator import isolation, maintenance
from regtask_operator.config import OperatorSettings
from tests.fixtures.kube import raw_request
from tests.fixtures.platform import create_company_quota, gateway_env
from tests.operator.test_operator_lifecycle import as_dict, new_task, phase_of

IDLE_S = 3
FAST_MAINTENANCE = {"REGTASK_MAINTENANCE_INTERVAL_S": "0.5"}
MANAGED = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"


# ------------------------------------------------------------------ helpers


def read_namespace(api: client.ApiClient, name: str) -> dict[str, Any] | None:
    try:
        found = client.CoreV1Api(api).read_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cast(dict[str, Any], api.sanitize_for_serialization(found))


def removed(api: client.ApiClient, name: str) -> bool:
    """Deleted: being emptied by the namespace controller, or gone already."""
    ns = read_namespace(api, name)
    return ns is None or bool(ns["metadata"].get("deletionTimestamp"))


def object_path(manifest: dict[str, Any]) -> str:
    plural = {
        "Namespace": "namespaces",
        "ServiceAccount": "serviceaccounts",
        "NetworkPolicy": "networkpolicies",
        "ResourceQuota": "resourcequotas",
        "LimitRange": "limitranges",
    }[manifest["kind"]]
    version = manifest["apiVersion"]
    prefix = "/api/v1" if version == "v1" else f"/apis/{version}"
    meta = manifest["metadata"]
    scope = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{prefix}{scope}/{plural}/{meta['name']}"


def read_object(api: client.ApiClient, manifest: dict[str, Any]) -> dict[str, Any] | None:
    status, found = raw_request(api, "GET", object_path(manifest))
    if status == 404:
        return None
    assert status == 200, (status, found)
    return cast(dict[str, Any], found)


def contains(live: Any, desired: Any) -> bool:
    """``desired`` is in ``live``: every key it sets has that value (the API adds defaults)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


def as_built(
    api: client.ApiClient, user_id: str, company_id: str, settings: OperatorSettings
) -> list[str]:
    """What differs from what admission builds (empty = the namespace is exactly in shape)."""
    ns = read_namespace(api, naming.tenant_namespace(user_id, company_id))
    if ns is None:
        return ["namespace missing"]
    stamp = ns["metadata"].get("annotations", {}).get(isolation.ANNOTATION_LAST_USED, "")
    wanted = [
        isolation.namespace_manifest(user_id, company_id, stamp),
        *isolation.namespaced_manifests(
            user_id, company_id, settings, settings.default_max_tasks_per_user
        ),
    ]
    return [
        f"{m['kind']}/{m['metadata']['name']}"
        for m in wanted
        if not contains(read_object(api, m), m)
    ]


def log_events(operator: OperatorProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in operator.log_text().splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def apply_requests(cluster: KindCluster) -> float:
    """Server-side applies the apiserver has served, all resources (``apiserver_request_total``)."""
    total = 0.0
    pattern = re.compile(r'^apiserver_request_total\{(.*verb="APPLY".*)\} ([0-9.e+]+)$')
    for line in cluster.get("/metrics").decode().splitlines():
        match = pattern.match(line)
        if match:
            total += float(match.group(2))
    return total


def expected_settings(control_namespace: str, gateway: GatewayProcess) -> OperatorSettings:
    """The settings the test's operator builds tenant namespaces with."""
    return OperatorSettings(
        namespace=control_namespace,
        gateway_port=gateway.port,
        gateway_egress_cidrs=[f"{gateway.host}/32"],
    )


# ------------------------------------------------------------------ idle namespaces


@pytest.mark.kube
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_idle_tenant_namespace_is_removed_and_busy_ones_are_kept(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: Any,
) -> None:
    run = secrets.token_hex(3)
    idle = (f"idle_{run}", f"co_{run}")
    waiting = (f"waiting_{run}", f"cw_{run}")  # its company's quota lets it run nothing
    running = (f"running_{run}", f"co_{run}")  # its Job gets no pod (the node is cordoned)
    ns = {
        key: naming.tenant_namespace(*pair)
        for key, pair in {"idle": idle, "waiting": waiting, "running": running}.items()
    }
    # The TTL controller deletes finished Jobs this long after they finish: long enough to see
    # a namespace kept for its finished Job first.
    job_ttl_s = 20
    operator = operator_factory(
        **gateway_env(gateway),
        REGTASK_NAMESPACE_IDLE_SECONDS=str(IDLE_S),
        REGTASK_TTL_SECONDS_AFTER_FINISHED=str(job_ttl_s),
        **FAST_MAINTENANCE,
    )

    def task(task_id: str, pair: tuple[str, str]) -> str:
        return new_task(kube_api, control_namespace, task_id, userId=pair[0], companyId=pair[1])

    def reaches(name: str, phase: str, timeout_s: float = 120) -> None:
        wait_until(
            lambda: phase_of(kube_api, control_namespace, name) == phase,
            timeout_s,
            f"{name} {phase}",
        )

    idle_1 = task(f"idle_1_{run}", idle)
    waiting_1 = task(f"waiting_1_{run}", waiting)
    reaches(idle_1, "Succeeded")
    reaches(waiting_1, "Succeeded")
    finished_at = utc_now()
    cluster.kubectl("cordon", cluster.node_container)
    try:
        running_1 = task(f"running_1_{run}", running)
        reaches(running_1, "Running")

        # The waiting tenant's company may now run nothing: its next task waits.
        create_company_quota(kube_api, control_namespace, waiting[1], max_tasks=0)
        wait_until(
            lambda: any(
                (q.get("status") or {}).get("waitingTasks") is not None
                for q in as_dict(
                    client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
                        API_GROUP, API_VERSION, control_namespace, "companyquotas"
                    )
                )["items"]
            ),
            30,
            "the operator took the CompanyQuota",
        )
        waiting_2 = task(f"waiting_2_{run}", waiting)
        reaches(waiting_2, "Waiting", 30)

        def idle_for(name: str) -> float:
            body = read_namespace(kube_api, name)
            assert body is not None
            stamp = body["metadata"]["annotations"][isolation.ANNOTATION_LAST_USED]
            return (utc_now() - parse_iso(stamp)).total_seconds()

        def more_maintenance_rounds(count: int) -> None:
            rounds = len(log_events(operator, "registry_cleanup"))
            wait_until(
                lambda: len(log_events(operator, "registry_cleanup")) >= rounds + count,
                30,
                f"{count} more maintenance rounds",
            )

        # Older than the idle time, but a finished Job is still in it (until its TTL): kept.
        wait_until(lambda: idle_for(ns["idle"]) > IDLE_S + 1, 30, "idle namespace old enough")
        more_maintenance_rounds(2)
        assert (utc_now() - finished_at).total_seconds() < job_ttl_s, "checked within the TTL"
        assert not removed(kube_api, ns["idle"])

        # The TTL controller deletes the finished Jobs: from then on only the tasks keep a
        # namespace busy, and the idle one is removed (then emptied by the namespace
        # controller).
        wait_until(lambda: removed(kube_api, ns["idle"]), job_ttl_s + 60, "idle namespace removed")
        assert log_events(operator, "tenant_namespace_removed")

        # The two others are as old as the removed one (older than the idle time) for several
        # more maintenance rounds, and stay: one has a Running task, the other a Waiting one.
        wait_until(
            lambda: min(idle_for(ns["waiting"]), idle_for(ns["running"])) > IDLE_S + 1,
            30,
            "busy namespaces older than the idle time",
        )
        more_maintenance_rounds(4)
        assert not removed(kube_api, ns["waiting"])
        assert not removed(kube_api, ns["running"])
        assert phase_of(kube_api, control_namespace, waiting_2) == "Waiting"
        assert phase_of(kube_api, control_namespace, running_1) == "Running"
    finally:
        cluster.kubectl("uncordon", cluster.node_container)

    # The namespace controller finishes the deletion; the tenant's next task gets a new
    # namespace, fenced as before, and runs.
    wait_until(lambda: read_namespace(kube_api, ns["idle"]) is None, 120, "namespace gone")
    idle_2 = task(f"idle_2_{run}", idle)
    reaches(idle_2, "Succeeded")
    again = read_namespace(kube_api, ns["idle"])
    assert again is not None and not again["metadata"].get("deletionTimestamp")
    assert as_built(kube_api, *idle, expected_settings(control_namespace, gateway)) == []
    status = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        API_GROUP, API_VERSION, control_namespace, "registrytasks", idle_2
    )
    assert as_dict(status)["status"]["namespace"] == ns["idle"]


# ------------------------------------------------------------------ drift repair


@pytest.mark.kube
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drifted_tenant_namespace_is_repaired_without_a_new_task(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    gateway: Any,
) -> None:
    run = secrets.token_hex(3)
    user, company = f"drift_{run}", f"co_{run}"
    tenant = naming.tenant_namespace(user, company)
    settings = expected_settings(control_namespace, gateway)
    env = {
        **gateway_env(gateway),
        "REGTASK_NAMESPACE_REPAIR_INTERVAL_S": "1",
        **FAST_MAINTENANCE,
    }
    operator = operator_factory(**env)
    name = new_task(kube_api, control_namespace, f"drift_{run}", userId=user, companyId=company)
    wait_until(lambda: phase_of(kube_api, control_namespace, name) == "Succeeded", 120, "ran")
    assert as_built(kube_api, user, company, settings) == []
    before = read_namespace(kube_api, tenant)
    assert before is not None
    stamp = before["metadata"]["annotations"][isolation.ANNOTATION_LAST_USED]

    # Drift, as a careless admin would make it.
    core = client.CoreV1Api(kube_api)
    net = client.NetworkingV1Api(kube_api)
    net.delete_namespaced_network_policy("default-deny-all", tenant)
    core.patch_namespaced_resource_quota(
        "tenant-quota", tenant, {"spec": {"hard": {"pods": "999"}}}
    )
    core.patch_namespace(
        tenant, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": None}}}
    )
    core.patch_namespaced_service_account(
        isolation.RUNNER_SERVICE_ACCOUNT, tenant, {"automountServiceAccountToken": True}
    )
    drifted = set(as_built(kube_api, user, company, settings))
    assert drifted >= {
        "Namespace/" + tenant,
        "NetworkPolicy/default-deny-all",
        "ResourceQuota/tenant-quota",
        "ServiceAccount/" + isolation.RUNNER_SERVICE_ACCOUNT,
    }, drifted

    wait_until(lambda: as_built(kube_api, user, company, settings) == [], 30, "repaired")
    after = read_namespace(kube_api, tenant)
    assert after is not None
    # A repair is not a use: the idle clock of the namespace did not move.
    assert after["metadata"]["annotations"][isolation.ANNOTATION_LAST_USED] == stamp
    tasks = as_dict(
        client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            API_GROUP, API_VERSION, control_namespace, "registrytasks"
        )
    )["items"]
    assert [t["metadata"]["name"] for t in tasks] == [name]  # no new task did it
    assert log_events(operator, "tenant_namespaces_repaired")

    # Cheap: a fresh operator with nothing to admit and nothing drifted reads the fences and
    # writes nothing, round after round, counted by the apiserver itself (it used to apply
    # every object of every tenant namespace each round).
    operator.stop()
    applies_before = apply_requests(cluster)
    quiet = operator_factory(**env)
    wait_until(
        lambda: len(log_events(quiet, "tenant_namespaces_repaired")) >= 3, 30, "three repair rounds"
    )
    quiet.stop()
    applied = apply_requests(cluster) - applies_before
    rounds = log_events(quiet, "tenant_namespaces_repaired")
    assert all(r["checked"] >= 1 for r in rounds), rounds
    assert all(r["applies"] == 0 for r in rounds), rounds
    assert applied == 0, (applied, rounds)


# ------------------------------------------------------------------ presence and registry


async def seed_registry(redis_url: str, run: str) -> dict[str, str]:
    """Users and tasks as the shim and the operator write them (unified registry on)."""
    client_ = aioredis.Redis.from_url(redis_url)
    registry = Registry(client_, Settings(UNIFIED_REGISTRY_ENABLED=True))
    ids = {
        "stale": f"stale_{run}",
        "fresh": f"fresh_{run}",
        "gone": f"gone_{run}",
        "company": f"co_{run}",
        "other_company": f"co2_{run}",
        "task_alive": f"doc_alive_{run}",
        "task_gone": f"doc_gone_{run}",
    }
    try:
        company = ids["company"]
        await registry.register_user(
            ids["stale"],
            "session-stale",
            "/backend/1",
            company_id=company,
            authorized_companies=[company, ids["other_company"]],
            company_roles={company: "admin"},
        )
        await registry.register_user(ids["fresh"], "session-fresh", "/backend/1", company)
        await registry.register_user(ids["gone"], "session-gone", "/backend/1", company)
        for task_id in (ids["task_alive"], ids["task_gone"]):
            await registry.register_task(
                TaskDoc(
                    task_info=TaskInfo(
                        task_id=task_id,
                        task_type="document_analysis",
                        user_id=ids["stale"],
                        company_id=company,
                    ),
                    isolation=TaskIsolation(namespace="rt-x", max_duration=600),
                )
            )
        # The stale user's last heartbeat is older than its TTL (90 s).
        ids["stale_heartbeat"] = iso_z(utc_now() - timedelta(seconds=300))
        await registry.apply(
            [
                DocUpdate(
                    key=keys.unified_user(ids["stale"]),
                    ops=[op_set(("heartbeat", "last_heartbeat"), ids["stale_heartbeat"])],
                )
            ]
        )
        # Expired keys, still referenced from the company and user documents.
        await client_.pexpire(keys.task(ids["task_gone"]), 1)
        await client_.pexpire(keys.unified_user(ids["gone"]), 1)
        await asyncio.sleep(0.05)
    finally:
        await client_.aclose()
    return ids


def document(store: redis.Redis, key: str) -> dict[str, Any]:
    raw = store.hget(key, keys.DATA_FIELD)
    return cast(dict[str, Any], json.loads(raw)) if raw else {}


@pytest.mark.kube
@pytest.mark.firestore
@pytest.mark.timeout(300)
def test_stale_presence_is_swept_into_listeners_registry_and_expired_entries_pruned(
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_factory: Any,
    redis_server: RedisServer,
    redis_sync: redis.Redis,
    firestore_clean: FirestoreEmulator,
) -> None:
    ids = asyncio.run(seed_registry(redis_server.url, secrets.token_hex(3)))
    assert not redis_sync.exists(keys.task(ids["task_gone"]))
    assert not redis_sync.exists(keys.unified_user(ids["gone"]))
    operator_factory(
        UNIFIED_REGISTRY_ENABLED="true",
        FIRESTORE_PROJECT_ID=firestore_clean.project_id,
        FIRESTORE_EMULATOR_HOST=firestore_clean.host,
        **FAST_MAINTENANCE,
    )
    fs = firestore_clean.client()
    try:

        def presence(uid: str) -> dict[str, Any] | None:
            snap = fs.collection("listeners_registry").document(uid).get()
            return cast(dict[str, Any], snap.to_dict()) if snap.exists else None

        mirrored = wait_until(lambda: presence(ids["stale"]), 60, "listeners_registry written")
        assert mirrored == {
            "status": "offline",
            "heartbeat_at": ids["stale_heartbeat"],
            "ttl_seconds": keys.HEARTBEAT_TTL_S,
            "authorized_companies_ids": [ids["company"], ids["other_company"]],
        }
        stale = document(redis_sync, keys.unified_user(ids["stale"]))
        assert stale["user_info"]["status"] == "offline"
        # The user whose heartbeat is within its TTL stays online and is not mirrored.
        fresh = document(redis_sync, keys.unified_user(ids["fresh"]))
        assert fresh["user_info"]["status"] == "online"
        assert presence(ids["fresh"]) is None

        company_key = keys.company(ids["company"])
        wait_until(
            lambda: (
                document(redis_sync, company_key)["services"]["active_tasks"] == [ids["task_alive"]]
            ),
            30,
            "expired task pruned from the company",
        )
        company = document(redis_sync, company_key)
        assert set(company["active_users"]) == {ids["stale"], ids["fresh"]}
        assert document(redis_sync, keys.unified_user(ids["stale"]))["services"]["tasks"][
            "active_tasks"
        ] == [ids["task_alive"]]
    finally:
        fs.close()


class RecordingFirestore:
    def __init__(self) -> None:
        self.presence: dict[str, dict[str, Any]] = {}

    def write_presence(self, uid: str, **fields: Any) -> None:
        self.presence[uid] = fields


async def test_presence_mirror_reads_the_swept_document_with_the_switch_off(
    redis_async: aioredis.Redis,
) -> None:
    """Rolled back (UNIFIED_REGISTRY_ENABLED=false) with unified documents still in Redis: the
    sweep marks them offline, and Firestore must get that, not the legacy key's 'online'."""
    on = Registry(redis_async, Settings(UNIFIED_REGISTRY_ENABLED=True))
    await on.register_user("rolled", "s1", "/b", "c1", authorized_companies=["c1"])
    old = iso_z(utc_now() - timedelta(seconds=600))
    await on.apply(
        [
            DocUpdate(
                key=keys.unified_user("rolled"), ops=[op_set(("heartbeat", "last_heartbeat"), old)]
            )
        ]
    )
    firestore = RecordingFirestore()
    registry = Registry(redis_async, Settings(UNIFIED_REGISTRY_ENABLED=False))
    await maintenance.sweep_registry(registry, cast(FirestoreWriter, firestore))
    assert firestore.presence == {
        "rolled": {
            "status": "offline",
            "heartbeat_at": old,
            "ttl_seconds": keys.HEARTBEAT_TTL_S,
            "authorized_companies_ids": ["c1"],
        }
    }
