"""The operator's maintenance decisions without a cluster: idle namespaces, drift repair."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from regtask import naming
from regtask.timeutil import iso_z, parse_iso, utc_now
from regtask_operator import isolation, maintenance, quantity
from regtask_operator.config import OperatorSettings
from regtask_operator.kube import KubeError
from regtask_operator.runtime import Runtime

SETTINGS = OperatorSettings(namespace="regtask-test")


def max_tasks(company_id: str) -> int:
    """A company's maxTasksPerUser as the controller would give it (one company set apart)."""
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
    assert maintenance.idle_namespaces(listed, {name("busy", "c")}, cutoff) == [
        name("old", "c"),
        name("edge", "c"),
    ]


def test_last_used_reads_the_annotation() -> None:
    assert maintenance.last_used(namespace("u", "c", "2026-01-10T11:00:00Z")) == datetime(
        2026, 1, 10, 11, 0, 0, tzinfo=UTC
    )
    assert maintenance.last_used(namespace("u", "c", None)) is None
    assert maintenance.last_used(namespace("u", "c", "soon")) is None
    assert maintenance.last_used({}) is None


# ------------------------------------------------------------------ what a repair applies


def test_repair_rebuilds_what_admission_builds_and_keeps_the_last_used_time() -> None:
    user, company = "Jean.Dupont@ex", "ACME.Corp_FR"
    manifests = maintenance.repair_manifests(
        namespace(user, company, "2026-01-10T11:00:00Z"), SETTINGS, max_tasks
    )
    assert manifests == [
        *isolation.namespaced_manifests(user, company, SETTINGS, max_tasks(company)),
        isolation.namespace_manifest(user, company, "2026-01-10T11:00:00Z"),
    ]
    # The Namespace last: a namespace deleted meanwhile makes the fences fail first.
    assert manifests[-1]["kind"] == "Namespace"
    assert {m["metadata"].get("namespace") for m in manifests[:-1]} == {
        naming.tenant_namespace(user, company)
    }


def test_repair_stamps_a_missing_or_unreadable_last_used_time_as_now() -> None:
    for stamp in (None, "not a time"):
        before = utc_now().replace(microsecond=0)
        manifests = maintenance.repair_manifests(namespace("u", "c", stamp), SETTINGS, max_tasks)
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
    assert maintenance.repair_manifests(listed, SETTINGS, max_tasks) is None


def test_repair_clock_first_round_then_every_interval() -> None:
    clock = maintenance.RepairClock()
    assert clock.due(300, now=1000.0)
    assert not clock.due(300, now=1001.0)
    assert not clock.due(300, now=1299.9)
    assert clock.due(300, now=1300.0)
    assert not clock.due(300, now=1300.5)


# ------------------------------------------------------------------ a repair round, API counted


@dataclass
class FakeKube:
    """Records the calls maintenance makes; ``fail_in`` answers 403 for one namespace."""

    namespaces: list[dict[str, Any]]
    fail_in: str | None = None
    applied: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    selectors: list[str | None] = field(default_factory=list)

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        assert path == "/api/v1/namespaces"
        self.selectors.append(label_selector)
        return self.namespaces

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        if self.fail_in is not None and self.fail_in in (meta.get("namespace"), meta["name"]):
            raise KubeError(403, "PATCH", meta["name"], "forbidden")
        self.applied.append(manifest)
        return manifest

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        assert (api_version, kind, namespace) == ("v1", "Namespace", None)
        self.deleted.append(name)
        return True


def fake_runtime(kube: FakeKube, **controller: Any) -> Runtime:
    forgotten: list[str] = []
    state = SimpleNamespace(
        is_running=lambda key: key in controller.get("running", ()),
        is_queued=lambda key: key in controller.get("queued", ()),
    )
    tasks = {
        key: SimpleNamespace(key=key, tenant_namespace=ns)
        for key, ns in controller.get("tasks", {}).items()
    }

    async def live_jobs() -> list[dict[str, Any]]:
        return [{"metadata": {"namespace": ns}} for ns in controller.get("jobs_in", ())]

    rt = SimpleNamespace(
        settings=OperatorSettings(namespace="regtask-test", namespace_idle_seconds=600),
        kube=kube,
        live_jobs=live_jobs,
        controller=SimpleNamespace(
            tasks=tasks,
            state=state,
            forget_namespace=forgotten.append,
            forgotten=forgotten,
            applied_within=lambda ns, seconds: ns in controller.get("fresh", ()),
            max_tasks_per_user=max_tasks,
        ),
    )
    return cast(Runtime, rt)


async def test_a_repair_round_applies_each_object_once_per_namespace() -> None:
    tenants = [("alice", "acme"), ("bob", "acme"), ("carol", "globex")]
    listed = [namespace(u, c) for u, c in tenants] + [
        namespace("dora", "acme", terminating=True),
        namespace("eve", "acme", name="rt-not-hers-0123456789"),
        namespace("fred", "acme"),
    ]
    kube = FakeKube(listed)
    rt = fake_runtime(kube)
    skip = [naming.tenant_namespace("fred", "acme")]
    per_namespace = 1 + len(isolation.namespaced_manifests("u", "c", rt.settings, 1))
    assert per_namespace == 6  # Namespace, SA, 2 NetworkPolicies, ResourceQuota, LimitRange

    assert await maintenance.repair_namespaces(rt, skip=skip) == per_namespace * 3
    assert kube.selectors == [maintenance.MANAGED_NAMESPACES]
    expected = [
        m
        for u, c in tenants
        for m in maintenance.repair_manifests(namespace(u, c), rt.settings, max_tasks) or []
    ]
    assert kube.applied == expected
    # The same again next round: no more calls than objects.
    kube.applied.clear()
    assert await maintenance.repair_namespaces(rt, skip=skip) == per_namespace * 3
    assert kube.applied == expected


async def test_a_repair_round_skips_namespaces_admission_just_applied() -> None:
    """Admission applied their fences less than a repair interval ago: nothing to repair yet."""
    tenants = [("alice", "acme"), ("bob", "acme")]
    kube = FakeKube([namespace(u, c) for u, c in tenants])
    rt = fake_runtime(kube, fresh={naming.tenant_namespace("alice", "acme")})
    assert await maintenance.repair_namespaces(rt) == 6
    assert {m["metadata"].get("namespace") or m["metadata"]["name"] for m in kube.applied} == {
        naming.tenant_namespace("bob", "acme")
    }


async def test_a_failing_namespace_does_not_stop_the_repair_of_the_others() -> None:
    broken = naming.tenant_namespace("bob", "acme")
    kube = FakeKube([namespace("alice", "acme"), namespace("bob", "acme")], fail_in=broken)
    rt = fake_runtime(kube)
    await maintenance.repair_namespaces(rt)
    assert {m["metadata"].get("namespace") or m["metadata"]["name"] for m in kube.applied} == {
        naming.tenant_namespace("alice", "acme")
    }
    assert len(kube.applied) == 6


async def test_idle_removal_spares_namespaces_with_jobs_running_or_waiting_tasks() -> None:
    old = iso_z(utc_now() - timedelta(seconds=3600))
    tenants = ["idle", "with_job", "running", "waiting", "finished", "recent"]
    listed = [namespace(t, "acme", old) for t in tenants[:-1]]
    listed.append(namespace("recent", "acme", iso_z(utc_now())))
    ns = {t: naming.tenant_namespace(t, "acme") for t in tenants}
    kube = FakeKube(listed)
    rt = fake_runtime(
        kube,
        jobs_in=[ns["with_job"]],
        tasks={"k-run": ns["running"], "k-wait": ns["waiting"], "k-done": ns["finished"]},
        running={"k-run"},
        queued={"k-wait"},
    )
    removed = await maintenance.remove_idle_namespaces(rt)
    assert removed == [ns["idle"], ns["finished"]]
    assert kube.deleted == removed
    assert cast(Any, rt.controller).forgotten == removed


async def test_run_once_repairs_on_the_first_round_then_at_the_repair_cadence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, Any]] = []

    async def step(name: str, result: Any = None) -> Any:
        calls.append((name, None))
        return result

    async def removal(rt: Runtime) -> list[str]:
        calls.append(("remove", None))
        return ["rt-removed"]

    async def repair(rt: Runtime, skip: Any = ()) -> int:
        calls.append(("repair", list(skip)))
        return 0

    monkeypatch.setattr(maintenance, "retry_mirrors", lambda rt: step("retry"))
    monkeypatch.setattr(maintenance, "sweep_registry", lambda rt: step("sweep"))
    monkeypatch.setattr(maintenance, "remove_idle_namespaces", removal)
    monkeypatch.setattr(maintenance, "repair_namespaces", repair)
    rt = cast(Runtime, SimpleNamespace(settings=SimpleNamespace(namespace_repair_interval_s=3600)))
    clock = maintenance.RepairClock()
    await maintenance.run_once(rt, clock)
    await maintenance.run_once(rt, clock)
    assert calls == [
        ("retry", None),
        ("sweep", None),
        ("remove", None),
        ("repair", ["rt-removed"]),  # what this round removed is not re-applied
        ("retry", None),
        ("sweep", None),
        ("remove", None),
    ]


def test_idle_seconds_may_be_a_few_seconds_and_repair_has_a_default_cadence() -> None:
    assert OperatorSettings(namespace_idle_seconds=1).namespace_idle_seconds == 1
    defaults = OperatorSettings()
    assert defaults.namespace_idle_seconds == 3600
    assert defaults.namespace_repair_interval_s == 300
    with pytest.raises(ValueError, match="namespace_idle_seconds"):
        OperatorSettings(namespace_idle_seconds=0)
    with pytest.raises(ValueError, match="namespace_repair_interval_s"):
        OperatorSettings(namespace_repair_interval_s=0)


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
