"""Tenant namespaces without a cluster: idle ones, drift repair, their quota's size."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from regtask import naming
from regtask.crmodels import RegistryTaskSpec
from regtask.timeutil import iso_z, parse_iso, utc_now
from regtask_operator import isolation, quantity, tenants
from regtask_operator.admission import TaskKey
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import Kube, KubeError, Page, object_path
from regtask_operator.tasks import TaskTracker
from regtask_operator.tenants import Tenants

pytestmark = pytest.mark.unit

SETTINGS = OperatorSettings(namespace="regtask-test")


def max_tasks(company_id: str) -> int:
    """A company's maxTasksPerUser as the tracker would give it (one company set apart)."""
    return 3 if company_id == "globex" else SETTINGS.default_max_tasks_per_user


NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)


def namespace(
    user_id: str,
    company_id: str,
    last_used: str | None = "2026-01-10T11:00:00Z",
    *,
    name: str | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    """A tenant namespace as the API lists it (built by the operator, then maybe drifted)."""
    annotations = {naming.ANNOTATION_USER: user_id, naming.ANNOTATION_COMPANY: company_id}
    if last_used is not None:
        annotations[isolation.ANNOTATION_LAST_USED] = last_used
    meta: dict[str, Any] = {
        "name": name or naming.tenant_namespace(user_id, company_id),
        "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
        "annotations": annotations,
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-01-10T11:59:00Z"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


# ------------------------------------------------------------------ which namespaces are idle


def test_idle_namespaces_are_the_unused_ones_before_the_cutoff() -> None:
    cutoff = NOW - timedelta(seconds=600)
    old = namespace("old", "c", "2026-01-10T11:00:00Z")
    at_cutoff = namespace("edge", "c", iso_z(cutoff))
    recent = namespace("recent", "c", "2026-01-10T11:55:00Z")
    busy = namespace("busy", "c", "2026-01-10T10:00:00Z")
    terminating = namespace("gone", "c", "2026-01-10T10:00:00Z", terminating=True)
    unstamped = namespace("unstamped", "c", None)
    garbled = namespace("garbled", "c", "last tuesday")
    listed = [old, at_cutoff, recent, busy, terminating, unstamped, garbled]
    name = naming.tenant_namespace
    assert tenants.idle_namespaces(listed, {name("busy", "c")}, cutoff) == [
        name("old", "c"),
        name("edge", "c"),
    ]


def test_last_used_reads_the_annotation() -> None:
    assert tenants.last_used(namespace("u", "c", "2026-01-10T11:00:00Z")) == datetime(
        2026, 1, 10, 11, 0, 0, tzinfo=UTC
    )
    assert tenants.last_used(namespace("u", "c", None)) is None
    assert tenants.last_used(namespace("u", "c", "soon")) is None
    assert tenants.last_used({}) is None


# ------------------------------------------------------------------ what a repair applies


def test_repair_rebuilds_what_admission_builds_and_keeps_the_last_used_time() -> None:
    user, company = "Jean.Dupont@ex", "ACME.Corp_FR"
    manifests = tenants.repair_manifests(
        namespace(user, company, "2026-01-10T11:00:00Z"), SETTINGS, max_tasks
    )
    assert manifests == [
        *isolation.namespaced_manifests(user, company, SETTINGS, max_tasks(company)),
        isolation.namespace_manifest(user, company, "2026-01-10T11:00:00Z", SETTINGS.shard_labels),
    ]
    # The Namespace last: a namespace deleted meanwhile makes the fences fail first.
    assert manifests[-1]["kind"] == "Namespace"
    assert {m["metadata"].get("namespace") for m in manifests[:-1]} == {
        naming.tenant_namespace(user, company)
    }


def test_repair_stamps_a_missing_or_unreadable_last_used_time_as_now() -> None:
    for stamp in (None, "not a time"):
        before = utc_now().replace(microsecond=0)
        manifests = tenants.repair_manifests(namespace("u", "c", stamp), SETTINGS, max_tasks)
        assert manifests is not None
        applied = manifests[-1]["metadata"]["annotations"][isolation.ANNOTATION_LAST_USED]
        assert before <= parse_iso(applied) <= utc_now()


@pytest.mark.parametrize(
    "listed",
    [
        namespace("u", "c", terminating=True),
        namespace("u", "c", name="rt-someone-else-0123456789"),  # annotations of another tenant
        {"metadata": {"name": naming.tenant_namespace("u", "c"), "annotations": {}}},
        {
            "metadata": {
                "name": naming.tenant_namespace("u", "c"),
                "annotations": {naming.ANNOTATION_USER: "u"},
            }
        },
    ],
    ids=["terminating", "annotations-name-another-tenant", "no-annotations", "no-company"],
)
def test_repair_leaves_namespaces_it_cannot_rebuild(listed: dict[str, Any]) -> None:
    assert tenants.repair_manifests(listed, SETTINGS, max_tasks) is None


# ------------------------------------------------------------------ a repair round, API counted


def server_form(manifest: dict[str, Any]) -> dict[str, Any]:
    """An applied object as the API server lists it: no apiVersion or kind in a list's items,
    fields of its own added, quantities in another spelling of the same value."""
    live = copy.deepcopy({k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")})
    live["metadata"].update(uid=f"uid-{manifest['metadata']['name']}", resourceVersion="7")
    hard = (live.get("spec") or {}).get("hard")
    if hard:  # "2Gi" comes back as "2147483648", "500m" as "0.5": the same quantities
        live["spec"]["hard"] = {k: str(quantity.parse(v).normalize()) for k, v in hard.items()}
    if manifest["kind"] == "ResourceQuota":
        live["status"] = {"hard": hard, "used": {}}
    return live


@dataclass
class FakeKube:
    """An API server's tenant objects, and the calls maintenance makes; ``fail_in`` answers 403
    for one namespace. An apply changes what later lists return, as on a real server."""

    namespaces: list[dict[str, Any]]
    fail_in: str | None = None
    applied: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    selectors: list[str | None] = field(default_factory=list)
    fences: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        assert path == "/api/v1/namespaces"
        self.selectors.append(label_selector)
        return copy.deepcopy(self.namespaces)

    async def pages(self, path: str, label_selector: str | None = None) -> AsyncIterator[Page]:
        assert label_selector == f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
        kinds = {object_path(v, k, None): k for v, k in tenants.FENCE_KINDS}
        yield [copy.deepcopy(o) for (_, kind, _), o in self.fences.items() if kind == kinds[path]]

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        if self.fail_in is not None and self.fail_in in (meta.get("namespace"), meta["name"]):
            raise KubeError(403, "PATCH", meta["name"], "forbidden")
        self.applied.append(manifest)
        live = server_form(manifest)
        if manifest["kind"] == "Namespace":
            self.namespaces = [n for n in self.namespaces if n["metadata"]["name"] != meta["name"]]
            self.namespaces.append(live)
        else:
            self.fences[tenants.object_key(manifest)] = live
        return live

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
    ) -> bool:
        assert (api_version, kind, namespace) == ("v1", "Namespace", None)
        self.deleted.append(name)
        return True


def tenants_on(kube: FakeKube) -> Tenants:
    settings = OperatorSettings(namespace="regtask-test", namespace_idle_seconds=600)
    return Tenants(cast(Kube, kube), settings, max_tasks)


async def test_a_repair_round_applies_each_object_once_per_namespace() -> None:
    pairs = [("alice", "acme"), ("bob", "acme"), ("carol", "globex")]
    listed = [namespace(u, c) for u, c in pairs] + [
        namespace("dora", "acme", terminating=True),
        namespace("eve", "acme", name="rt-not-hers-0123456789"),
        namespace("fred", "acme"),
    ]
    kube = FakeKube(listed)
    owner = tenants_on(kube)
    skip = [naming.tenant_namespace("fred", "acme")]
    per_namespace = 1 + len(isolation.namespaced_manifests("u", "c", owner.settings, 1))
    assert per_namespace == 6  # Namespace, SA, 2 NetworkPolicies, ResourceQuota, LimitRange

    assert await owner.repair(skip=skip) == per_namespace * 3
    assert kube.selectors == ["app.kubernetes.io/managed-by=regtask-operator"]
    expected = [
        m
        for u, c in pairs
        for m in tenants.repair_manifests(namespace(u, c), owner.settings, max_tasks) or []
    ]
    assert kube.applied == expected
    # Nothing drifted since: the next round reads, and writes nothing.
    kube.applied.clear()
    assert await owner.repair(skip=skip) == 0
    assert kube.applied == []


async def test_a_repair_round_applies_only_what_drifted() -> None:
    pairs = [("alice", "acme"), ("bob", "acme"), ("carol", "globex")]
    kube = FakeKube([namespace(u, c) for u, c in pairs])
    owner = tenants_on(kube)
    await owner.repair()
    assert await owner.repair() == 0
    alice, bob = (naming.tenant_namespace(u, c) for u, c in pairs[:2])
    # Drift, as a careless admin would make it: a policy widened, a quota raised, a fence
    # deleted, a namespace label removed.
    kube.fences[(alice, "NetworkPolicy", "default-deny-all")]["spec"]["policyTypes"] = ["Ingress"]
    kube.fences[(alice, "ResourceQuota", "tenant-quota")]["spec"]["hard"]["pods"] = "999"
    del kube.fences[(bob, "LimitRange", "tenant-limits")]
    bob_ns = next(n for n in kube.namespaces if n["metadata"]["name"] == bob)
    del bob_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    kube.applied.clear()
    assert await owner.repair() == 4
    assert sorted(tenants.object_key(m) for m in kube.applied) == sorted(
        [
            (alice, "NetworkPolicy", "default-deny-all"),
            (alice, "ResourceQuota", "tenant-quota"),
            (bob, "LimitRange", "tenant-limits"),
            ("", "Namespace", bob),
        ]
    )
    kube.applied.clear()
    assert await owner.repair() == 0


def test_holds_is_a_subset_test_with_quantities_compared_by_value() -> None:
    quota = isolation.namespaced_manifests("u", "c", SETTINGS, 4)[3]
    assert quota["kind"] == "ResourceQuota"
    assert isolation.holds(quota, server_form(quota))
    assert not isolation.holds(quota, {**server_form(quota), "spec": {"hard": {}}})
    policy = isolation.namespaced_manifests("u", "c", SETTINGS, 4)[2]
    live = server_form(policy)
    live["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    assert not isolation.holds(policy, live)  # a list element more is drift
    assert isolation.conforms({"spec": {"cpu": "500m"}}, {"spec": {"cpu": "0.5"}})
    assert not isolation.conforms({"spec": {"cpu": "500m"}}, {"spec": {"cpu": "0.6"}})
    assert not isolation.conforms({"labels": {"size": "1k"}}, {"labels": {"size": "1000"}})
    assert not isolation.conforms({"a": False}, {"a": 0})
    assert not isolation.conforms({"a": True}, {})


async def test_a_repair_round_skips_namespaces_admission_just_applied() -> None:
    """Admission applied their fences less than a repair interval ago: nothing to repair yet."""
    pairs = [("alice", "acme"), ("bob", "acme")]
    kube = FakeKube([namespace(u, c) for u, c in pairs])
    owner = tenants_on(kube)
    await owner.ensure("alice", "acme")  # admission applies alice's namespace and fences
    kube.applied.clear()
    assert await owner.repair() == 6
    assert {m["metadata"].get("namespace") or m["metadata"]["name"] for m in kube.applied} == {
        naming.tenant_namespace("bob", "acme")
    }


async def test_a_failing_namespace_does_not_stop_the_repair_of_the_others() -> None:
    broken = naming.tenant_namespace("bob", "acme")
    kube = FakeKube([namespace("alice", "acme"), namespace("bob", "acme")], fail_in=broken)
    await tenants_on(kube).repair()
    assert {m["metadata"].get("namespace") or m["metadata"]["name"] for m in kube.applied} == {
        naming.tenant_namespace("alice", "acme")
    }
    assert len(kube.applied) == 6


async def test_idle_removal_spares_namespaces_with_jobs_running_or_waiting_tasks() -> None:
    old = iso_z(utc_now() - timedelta(seconds=3600))
    users = ["idle", "with_job", "running", "waiting", "finished", "recent"]
    listed = [namespace(t, "acme", old) for t in users[:-1]]
    listed.append(namespace("recent", "acme", iso_z(utc_now())))
    ns = {t: naming.tenant_namespace(t, "acme") for t in users}
    kube = FakeKube(listed)
    tracker = TaskTracker(OperatorSettings(namespace="regtask-test"))
    for key, user, phase in (
        ("k-run", "running", "Queued"),
        ("k-wait", "waiting", "Queued"),
        ("k-done", "finished", "Succeeded"),
    ):
        spec = RegistryTaskSpec.model_validate(
            {"taskId": key, "taskType": "document_analysis", "userId": user, "companyId": "acme"}
        )
        task, _ = tracker.track(
            TaskKey("regtask-test", key), "uid", spec, "2026-01-10T11:00:00Z", {"phase": phase}
        )
        if key == "k-run":
            tracker.state.mark_running(task.candidate())
    jobs = [{"metadata": {"namespace": ns["with_job"]}}]

    async def busy() -> set[str]:
        return tenants.busy_namespaces(jobs, tracker.active_namespaces())

    owner = tenants_on(kube)
    forgotten: list[str] = []
    owner.forget = forgotten.append  # type: ignore[method-assign,assignment]
    removed = await owner.remove_idle(busy)
    assert removed == [ns["idle"], ns["finished"]]
    assert kube.deleted == removed
    assert forgotten == removed


@pytest.mark.parametrize("limit", [1, 10, 12, 25])
def test_tenant_quota_holds_the_companys_concurrency(limit: int) -> None:
    """maxTasksPerUser runners at their requests and limits, plus as many still terminating,
    fit the tenant's ResourceQuota, whatever the company's limit (a fixed 10 CPU refused the
    11th runner's pod of a company allowed 12)."""
    hard = isolation.tenant_quota(limit, SETTINGS)
    runners = 2 * limit
    assert int(hard["pods"]) == runners
    for resource, per_runner in (
        ("requests.cpu", SETTINGS.runner_cpu_request),
        ("limits.cpu", SETTINGS.runner_cpu_limit),
        ("requests.memory", SETTINGS.runner_memory_request),
        ("limits.memory", SETTINGS.runner_memory_limit),
    ):
        assert quantity.parse(hard[resource]) == runners * quantity.parse(per_runner), resource


def test_tenant_quota_counts_no_jobs() -> None:
    """Finished Jobs live until their TTL and object-count quotas count them: a count on Jobs
    would refuse a tenant's 21st task within the hour, for ever."""
    quota = next(
        m
        for m in isolation.namespaced_manifests("u", "c", SETTINGS, 10)
        if m["kind"] == "ResourceQuota"
    )
    assert not any(key.startswith("count/") for key in quota["spec"]["hard"])


@pytest.mark.parametrize(
    ("text", "count", "written"),
    [
        ("100m", 20, "2"),
        ("100m", 3, "300m"),
        ("1", 24, "24"),
        ("128Mi", 20, "2560Mi"),
        ("512Mi", 2, "1Gi"),
        ("1Gi", 20, "20Gi"),
        ("1M", 1000, "1G"),
        ("250m", 0, "0"),
    ],
)
def test_quantities_are_multiplied_into_the_api_servers_own_form(
    text: str, count: int, written: str
) -> None:
    assert quantity.times(text, count) == written


def test_a_bad_quantity_is_refused() -> None:
    for bad in ("ten", "-1", "1Xi"):
        with pytest.raises(ValueError, match="quantity"):
            quantity.parse(bad)


class RecreatingKube(FakeKube):
    """Answers each Namespace apply with the namespace's current UID (a new one once it was
    deleted and created again)."""

    uid: str = "uid-1"

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        applied = await super().apply(manifest)
        if manifest["kind"] == "Namespace":
            return {**applied, "metadata": {**applied["metadata"], "uid": self.uid}}
        return applied


async def test_a_namespace_created_again_by_admission_gets_its_fences_in_the_same_step() -> None:
    """Issue 15, item 6: deleted by hand, the namespace comes back empty from the next
    admission's apply: its NetworkPolicies, quota and ServiceAccount must come back before any
    Job runs there, not at the next drift repair."""
    kube = RecreatingKube(namespaces=[])
    tenants = tenants_on(kube)
    namespace = await tenants.ensure("u", "c")
    assert len(kube.applied) == 6  # the namespace and its five fences
    kube.applied.clear()
    tenants._namespaces_applied[namespace] -= 10_000  # its last-used refresh is due
    await tenants.ensure("u", "c")
    assert [m["kind"] for m in kube.applied] == ["Namespace"]  # same namespace: refresh only
    kube.applied.clear()
    kube.uid = "uid-2"  # `kubectl delete namespace`, then this admission created it again
    tenants._namespaces_applied[namespace] -= 10_000
    await tenants.ensure("u", "c")
    assert sorted(m["kind"] for m in kube.applied) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "NetworkPolicy",
            "NetworkPolicy",
            "ResourceQuota",
            "LimitRange",
        ]
    )
