"""The chart installed as users install it, on the test cluster: every part of the platform a pod.

The images built from the Dockerfile, ``helm install`` with them; the operator, the shim and the
gateway run under their own ServiceAccounts and RBAC, restricted Pod Security; runners get
their tokens from the real kubelet and reach the gateway through its Service, under the tenant
NetworkPolicy. Redis runs on the host (the cluster's host address). The web app's calls go to
the shim through ``kubectl port-forward``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from kubernetes import client, watch

from regtask import naming, shards
from regtask.crmodels import API_GROUP, API_VERSION
from regtask.timeutil import parse_iso
from regtask_dev import design_calls, images, install
from regtask_dev.kind import ClusterError, KindCluster
from regtask_dev.stack import wait_until

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(1200)]

MAX_TASKS = 3


@pytest.fixture(scope="module")
def platform_images(cluster: KindCluster) -> dict[str, str]:
    """The three images of this checkout, loaded into the node."""
    try:
        refs = images.build()
        cluster.load_images(list(refs.values()))
    except (images.ImageBuildError, ClusterError) as exc:
        pytest.fail(str(exc), pytrace=False)
    return refs


@dataclass
class Installed:
    namespace: str
    release: str
    shim: str
    token: str

    def rpc(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.post(
            f"{self.shim}/rpc",
            json={"method": method, "args": list(args), "kwargs": kwargs},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        ).json()
        return answer

    def call(self, method: str, args: list[Any]) -> dict[str, Any]:
        """Exactly the web app's ``rpc_call(method, args=[...])``: no kwargs at all."""
        answer: dict[str, Any] = httpx.post(
            f"{self.shim}/rpc",
            json={"method": method, "args": args},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        ).json()
        return answer


@contextlib.contextmanager
def install_chart(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    platform_images: dict[str, str],
    tmp_path: Path,
    operator: dict[str, Any] | None = None,
) -> Iterator[Installed]:
    release = f"e2e{secrets.token_hex(3)}"
    namespace = f"{release}-system"
    token = secrets.token_urlsafe(32)
    services = install.start_host_services(
        cluster, tmp_path / "services", firestore=False, llm=False, chroma=False
    )
    values = install.merge(
        install.image_values(platform_images),
        services.values(),
        {
            "shim": {"replicas": 1, "auth": {"serviceToken": {"value": token}}},
            "gateway": {"replicas": 1},
            "operator": {
                "quotas": {"maxTasksPerUser": MAX_TASKS},
                "intervals": {"statusSyncSeconds": 1, "reconcileSeconds": 5},
                "jobs": {"backoffLimit": 1},
            },
        },
        {"operator": operator or {}},
    )
    try:
        install.install(cluster, release, namespace, values, workdir=tmp_path)
        service = install.component_name(cluster, namespace, release, "service", "shim")
        with install.forwarded(
            cluster, namespace, f"service/{service}", 8080, tmp_path / "port-forward.log"
        ) as shim:
            yield Installed(namespace, release, shim.url, token)
    finally:
        try:
            install.helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
            client.CoreV1Api(kube_api).delete_namespace(namespace)
        finally:
            services.stop()  # also when the uninstall fails: its Redis was left running


@pytest.fixture
def installed(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    crds: list[str],
    platform_images: dict[str, str],
    tmp_path: Path,
) -> Iterator[Installed]:
    with install_chart(cluster, kube_api, platform_images, tmp_path) as installed:
        yield installed


def task_phases(api: client.ApiClient, namespace: str) -> dict[str, str]:
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "registrytasks"
    )["items"]
    return {i["spec"]["taskId"]: (i.get("status") or {}).get("phase", "") for i in items}


def test_the_web_apps_calls_run_on_the_installed_chart(
    kube_api: client.ApiClient, installed: Installed
) -> None:
    deployments = client.AppsV1Api(kube_api).list_namespaced_deployment(installed.namespace)
    for deployment in deployments.items:
        assert deployment.status.ready_replicas == deployment.spec.replicas, deployment.metadata
        pod_spec = deployment.spec.template.spec
        assert pod_spec.service_account_name.startswith(installed.release)
    registered = installed.rpc(
        "REGISTRY.register_user",
        "chart_user",
        "session-1",
        "/backend/1",
        company_id="chart_co",
        authorized_companies_ids=["chart_co"],
    )
    assert registered["success"], registered
    started = installed.rpc(
        "TASK.start_document_analysis",
        "chart_user",
        {"company_id": "chart_co", "text": "Facture 2025-042, 1 250,00 EUR, billing@acme.example"},
        "job1",
    )
    assert started["success"] and started["task_id"] == "doc_analysis_job1", started
    wait_until(
        lambda: (
            installed.rpc("TASK.get_task_status", "doc_analysis_job1").get("status")
            in ("completed", "failed")
        ),
        180,
        "the task ended",
        2.0,
    )
    status = installed.rpc("TASK.get_task_status", "doc_analysis_job1")
    assert status["status"] == "completed", status
    assert "billing@acme.example" in str(status.get("result"))
    # The runner ran as a pod of the runner image in its tenant namespace.
    tenant = naming.tenant_namespace("chart_user", "chart_co")
    [pod] = client.CoreV1Api(kube_api).list_namespaced_pod(tenant).items
    assert pod.spec.containers[0].image.startswith("localhost/regtask/runner:")
    assert pod.status.phase == "Succeeded"


def test_the_designs_call_sequence_as_written_runs_on_the_installed_chart(
    kube_api: client.ApiClient, installed: Installed
) -> None:
    """Registry, Chroma, task and unified-registry calls of the design, unchanged (issue 17).

    Before: ``TASK.start_document_analysis`` answered 400 "company_id unknown".
    """
    tasks = design_calls.run(
        installed.call,
        user_id="design_user",
        session_id="design-session",
        backend_route="/design",
        company_id="design_co",
        job_id="design1",
        collection_name="design_docs",
        with_llm=False,  # no LLM server in this test; make demo runs the LLM call too
    )
    task_id = tasks.document_task_id
    wait_until(
        lambda: (
            installed.call("TASK.get_task_status", [task_id]).get("status")
            in ("completed", "failed")
        ),
        180,
        "the design's task ended",
        2.0,
    )
    status = installed.call("TASK.get_task_status", [task_id])
    assert status["status"] == "completed", status
    assert "billing@acme.example" in str(status.get("result"))
    # No company anywhere: the user's default tenant, a namespace of its own.
    tenant = naming.tenant_namespace("design_user", "default.design_user")
    [pod] = client.CoreV1Api(kube_api).list_namespaced_pod(tenant).items
    assert pod.status.phase == "Succeeded"


class JobLedger(threading.Thread):
    """Every operator Job created in the cluster, counted from the watch (exact order)."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(daemon=True)
        self.batch = client.BatchV1Api(api)
        self.selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
        listed = self.batch.list_job_for_all_namespaces(label_selector=self.selector)
        self.resource_version = listed.metadata.resource_version
        self.created: Counter[str] = Counter()
        # namespace/name -> (time.monotonic() the watch saw it created, its labels)
        self.seen: dict[str, tuple[float, dict[str, str]]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for event in watch.Watch().stream(
                self.batch.list_job_for_all_namespaces,
                label_selector=self.selector,
                resource_version=self.resource_version,
                timeout_seconds=5,
            ):
                job = event["object"]
                self.resource_version = job.metadata.resource_version
                if event["type"] == "ADDED":
                    key = f"{job.metadata.namespace}/{job.metadata.name}"
                    self.created[key] += 1
                    self.seen[key] = (time.monotonic(), dict(job.metadata.labels or {}))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def test_the_operator_pod_deleted_mid_burst_loses_nothing(
    cluster: KindCluster, kube_api: client.ApiClient, installed: Installed
) -> None:
    """20 tasks for one user (3 at a time); the operator's pod is deleted twice while they run.
    Its Deployment starts a new one, which rebuilds its state from the cluster: every task
    Succeeds, each with exactly one Job, none stuck."""
    ledger = JobLedger(kube_api)
    ledger.start()
    ids = []
    for n in range(20):
        answer = installed.rpc(
            "TASK.start_document_analysis",
            "burst_user",
            {"company_id": "burst_co", "text": f"Facture {n}, {n},00 EUR."},
            f"burst{n:02d}",
        )
        assert answer["success"], answer
        ids.append(answer["task_id"])
    core = client.CoreV1Api(kube_api)
    selector = (
        f"app.kubernetes.io/name=regtask-operator,app.kubernetes.io/instance={installed.release}"
    )
    for _ in range(2):
        wait_until(
            lambda: (
                sum(p == "Succeeded" for p in task_phases(kube_api, installed.namespace).values())
                >= 3
            ),
            180,
            "some tasks done",
            1.0,
        )
        [pod] = [
            p
            for p in core.list_namespaced_pod(installed.namespace, label_selector=selector).items
            if not p.metadata.deletion_timestamp
        ]
        core.delete_namespaced_pod(str(pod.metadata.name), installed.namespace)
        deployment = install.component_name(
            cluster, installed.namespace, installed.release, "deployment", "operator"
        )
        install.wait_rolled_out(cluster, installed.namespace, deployment, 120)
    try:
        wait_until(
            lambda: (
                set(task_phases(kube_api, installed.namespace).values()) == {"Succeeded"}
                and len(task_phases(kube_api, installed.namespace)) == 20
            ),
            600,
            "all 20 tasks Succeeded",
            2.0,
        )
    finally:
        ledger.stop()
    tenant = naming.tenant_namespace("burst_user", "burst_co")
    ours = {key: count for key, count in ledger.created.items() if key.startswith(f"{tenant}/")}
    assert len(ours) == 20 and set(ours.values()) == {1}, ours
    for task_id in ids:
        assert installed.rpc("TASK.get_task_status", task_id)["status"] == "completed"


CONNECT_PROBE = textwrap.dedent(
    """
    import json, socket, sys, time
    targets = json.loads(sys.argv[1])

    def connects(host, port):
        try:
            socket.create_connection((host, port), timeout=2).close()
            return True
        except OSError:
            return False

    # A new pod joins the policies' address sets about a second after it starts, and until
    # then is refused: an allowed target is retried for a while, a refused one stays refused.
    found = {}
    for name, (host, port) in targets.items():
        deadline = time.time() + 15
        ok = connects(host, port)
        while not ok and time.time() < deadline:
            time.sleep(0.5)
            ok = connects(host, port)
        found[name] = ok
    print(json.dumps(found))
    """
)

PROBE_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def start_connect_probe(
    api: client.ApiClient, namespace: str, image: str, targets: dict[str, tuple[str, int]]
) -> str:
    name = f"probe-{secrets.token_hex(3)}"
    body: Any = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", CONNECT_PROBE, json.dumps(targets)],
                    "securityContext": PROBE_SECURITY,
                    "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}},
                }
            ],
        },
    }
    client.CoreV1Api(api).create_namespaced_pod(namespace, body)
    return name


def probe_result(api: client.ApiClient, namespace: str, name: str) -> Any:
    core = client.CoreV1Api(api)
    wait_until(
        lambda: core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed"),
        180,
        f"probe {namespace}/{name} finished",
        1.0,
    )
    log = str(core.read_namespaced_pod_log(name, namespace))
    return json.loads(log.strip().splitlines()[-1])


def test_the_control_namespace_admits_each_caller_to_its_port_only(
    kube_api: client.ApiClient, installed: Installed, platform_images: dict[str, str]
) -> None:
    """The chart's control-namespace NetworkPolicies (issue 16, item 11): from a tenant
    namespace (labelled as the operator labels them) only the gateway's API port answers; from
    any other namespace the shim and the metrics ports answer, the gateway's API port does not.
    """
    core = client.CoreV1Api(kube_api)

    def pod_ip(component: str) -> str:
        selector = (
            f"app.kubernetes.io/name=regtask-{component},"
            f"app.kubernetes.io/instance={installed.release}"
        )
        [pod] = core.list_namespaced_pod(installed.namespace, label_selector=selector).items
        return str(pod.status.pod_ip)

    shim, gateway, operator = pod_ip("shim"), pod_ip("gateway"), pod_ip("operator")
    targets = {
        "shim": (shim, 8080),
        "gateway_api": (gateway, 8081),
        "gateway_metrics": (gateway, 9092),
        "operator_metrics": (operator, 9090),
    }
    run = secrets.token_hex(3)
    namespaces = {
        # Only the label matters to the policies; the operator leaves a namespace whose
        # annotations name no tenant alone.
        "tenant": (
            f"rt-probe-{run}",
            {**install.RESTRICTED_LABELS, naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
        ),
        "outsider": (f"outsider-{run}", dict(install.RESTRICTED_LABELS)),
    }
    try:
        probes = {}
        for key, (namespace, labels) in namespaces.items():
            core.create_namespace({"metadata": {"name": namespace, "labels": labels}})  # type: ignore[arg-type]
            wait_until(
                lambda ns=namespace: core.list_namespaced_service_account(ns).items,
                30,
                "default ServiceAccount",
            )
            probes[key] = start_connect_probe(
                kube_api, namespace, platform_images["runner"], targets
            )
        found = {
            key: probe_result(kube_api, namespaces[key][0], name) for key, name in probes.items()
        }
    finally:
        for namespace, _ in namespaces.values():
            core.delete_namespace(namespace)
    assert found == {
        "tenant": {
            "shim": False,
            "gateway_api": True,
            "gateway_metrics": False,
            "operator_metrics": False,
        },
        "outsider": {
            "shim": True,
            "gateway_api": False,
            "gateway_metrics": True,
            "operator_metrics": True,
        },
    }, found


PEERING = "regtask-operator-ha"
PEERING_LIFETIME_S = 60  # Kopf's default, what a standby waits at most for a dead peer


def live_peers(api: client.ApiClient, peering: str = PEERING) -> dict[str, int]:
    """Identity -> priority of the live peers in the ClusterKopfPeering object."""
    try:
        body = cast(
            dict[str, Any],
            client.CustomObjectsApi(api).get_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", peering
            ),
        )
    except client.ApiException:
        return {}
    now = time.time()
    peers: dict[str, int] = {}
    for identity, info in (body.get("status") or {}).items():
        seen = parse_iso(info["lastseen"]).timestamp()
        if seen + int(info.get("lifetime", PEERING_LIFETIME_S)) > now:
            peers[identity] = int(info.get("priority", 0))
    return peers


def test_three_operator_replicas_one_acts_and_a_standby_takes_over(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    crds: list[str],
    platform_images: dict[str, str],
    tmp_path: Path,
) -> None:
    """The chart with 3 operator replicas and peering (issue 15, item 4). Before: every replica
    had priority 0 and Kopf pauses all peers of equal priority: no task ever started. Now each
    has its own; the active one is deleted mid-run and a standby takes over within the peering
    lifetime; every task Succeeds with exactly one Job."""
    operator = {
        "replicas": 3,
        "peering": {"enabled": True, "name": PEERING},
        "intervals": {"statusSyncSeconds": 1, "reconcileSeconds": 5},
    }
    with install_chart(cluster, kube_api, platform_images, tmp_path, operator) as installed:
        wait_until(lambda: len(live_peers(kube_api)) == 3, 120, "three peers announced", 1.0)
        peers = live_peers(kube_api)
        assert len(set(peers.values())) == 3, peers  # distinct priorities
        active = max(peers, key=lambda identity: peers[identity])
        ledger = JobLedger(kube_api)
        ledger.start()
        try:
            for n in range(12):
                answer = installed.rpc(
                    "TASK.start_document_analysis",
                    "ha_user",
                    {"company_id": "ha_co", "text": f"Facture {n}, {n},00 EUR."},
                    f"ha{n:02d}",
                )
                assert answer["success"], answer
            wait_until(
                lambda: (
                    sum(
                        p == "Succeeded"
                        for p in task_phases(kube_api, installed.namespace).values()
                    )
                    >= 3
                ),
                240,
                "the first tasks done by the active replica",
                1.0,
            )
            created_before = sum(ledger.created.values())
            core = client.CoreV1Api(kube_api)
            core.delete_namespaced_pod(active, installed.namespace)
            deleted_at = time.monotonic()
            wait_until(
                lambda: sum(ledger.created.values()) > created_before,
                PEERING_LIFETIME_S + 30,
                "a Job created by the replica that took over",
                0.5,
            )
            takeover_s = time.monotonic() - deleted_at
            wait_until(
                lambda: (
                    set(task_phases(kube_api, installed.namespace).values()) == {"Succeeded"}
                    and len(task_phases(kube_api, installed.namespace)) == 12
                ),
                600,
                "all 12 tasks Succeeded",
                2.0,
            )
        finally:
            ledger.stop()
        assert takeover_s < PEERING_LIFETIME_S, takeover_s
        tenant = naming.tenant_namespace("ha_user", "ha_co")
        ours = {k: c for k, c in ledger.created.items() if k.startswith(f"{tenant}/")}
        assert len(ours) == 12 and set(ours.values()) == {1}, ours
        survivors = live_peers(kube_api)
        assert active not in survivors


def companies_one_per_shard(count: int) -> list[str]:
    """A company placed in each shard (regtask.shards.shard_of), in shard order."""
    found: dict[int, str] = {}
    for n in range(1000):
        found.setdefault(shards.shard_of(f"sh_co{n}", count), f"sh_co{n}")
        if len(found) == count:
            break
    return [found[i] for i in range(count)]


@pytest.mark.timeout(2100)
def test_three_shards_each_admit_their_companies_and_one_takes_over_while_the_others_admit(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    crds: list[str],
    platform_images: dict[str, str],
    tmp_path: Path,
) -> None:
    """The chart with operator.shards=3, two replicas each (issue 19, item 3). The shim places
    each company's tasks in its shard's namespace; each shard creates the Jobs of its own
    companies only, labelled with its index. Shard 1's active replica is deleted: its standby
    takes over within the peering lifetime while shards 0 and 2 go on creating Jobs; every
    task Succeeds with exactly one Job."""
    peering = "e2e-shards"
    operator = {
        "shards": 3,
        "replicas": 2,
        "peering": {"enabled": True, "name": peering},
        "intervals": {"statusSyncSeconds": 1, "reconcileSeconds": 5},
    }
    companies = companies_one_per_shard(3)
    with install_chart(cluster, kube_api, platform_images, tmp_path, operator) as installed:
        peerings = [f"{peering}-shard-{i}" for i in range(3)]
        wait_until(
            lambda: all(len(live_peers(kube_api, p)) == 2 for p in peerings),
            180,
            "two peers announced on each shard's peering object",
            1.0,
        )
        ledger = JobLedger(kube_api)
        ledger.start()

        def submit(company: str, n: int) -> None:
            answer = installed.rpc(
                "TASK.start_document_analysis",
                f"{company}_user",
                {"company_id": company, "text": f"Facture {n}, {n},00 EUR."},
                f"{company}_{n:02d}",
            )
            assert answer["success"], answer

        def jobs_of(company: str, since: float = 0.0) -> int:
            tenant = naming.tenant_namespace(f"{company}_user", company)
            return sum(
                1
                for k, (at, _) in ledger.seen.items()
                if k.startswith(f"{tenant}/") and at >= since
            )

        try:
            for n in range(2):
                for company in companies:
                    submit(company, n)
            wait_until(lambda: all(jobs_of(c) == 2 for c in companies), 240, "the first Jobs", 1.0)
            peers = live_peers(kube_api, peerings[1])
            active = max(peers, key=lambda identity: peers[identity])
            client.CoreV1Api(kube_api).delete_namespaced_pod(active, installed.namespace)
            deleted_at = time.monotonic()
            for n in range(2, 4):
                for company in companies:
                    submit(company, n)
            wait_until(
                lambda: jobs_of(companies[1], deleted_at) > 0,
                PEERING_LIFETIME_S + 60,
                "a Job of shard 1's company created by its standby",
                0.5,
            )
            takeover_s = time.monotonic() - deleted_at
            namespaces = shards.all_control_namespaces(installed.namespace, 3)

            def phases() -> dict[str, str]:
                found: dict[str, str] = {}
                for namespace in namespaces:
                    found.update(task_phases(kube_api, namespace))
                return found

            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                now = phases()
                if set(now.values()) == {"Succeeded"} and len(now) == 12:
                    break
                time.sleep(2.0)
            else:
                shown = cluster.kubectl(
                    "get", "registrytasks,jobs,pods", "-A", "-o", "wide", check=False
                )
                logs = cluster.kubectl(
                    "logs",
                    "-n",
                    installed.namespace,
                    "-l",
                    "app.kubernetes.io/name=regtask-operator",
                    "--tail",
                    "40",
                    "--prefix",
                    "--max-log-requests",
                    "10",
                    check=False,
                )
                runners = "".join(
                    cluster.kubectl(
                        "logs",
                        "-n",
                        naming.tenant_namespace(f"{company}_user", company),
                        "-l",
                        naming.LABEL_TASK,
                        "--tail",
                        "8",
                        "--prefix",
                        "--max-log-requests",
                        "20",
                        check=False,
                    )
                    for company in companies
                )
                pytest.fail(f"not all 12 tasks Succeeded: {now}\n{shown}\n{logs}\n{runners}")
            placed = {namespace: set(task_phases(kube_api, namespace)) for namespace in namespaces}
            # Uninstalling removes the shard namespaces: their tasks' finalizers are the
            # operators' to remove, while they still run.
            for namespace in namespaces:
                client.CustomObjectsApi(kube_api).delete_collection_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, "registrytasks"
                )
            wait_until(lambda: not phases(), 120, "the tasks deleted", 1.0)
        finally:
            ledger.stop()
        # The other shards went on admitting while shard 1 had no active replica.
        assert jobs_of(companies[0], deleted_at) == 2 and jobs_of(companies[2], deleted_at) == 2
        first_other = min(
            at
            for k, (at, _) in ledger.seen.items()
            if at >= deleted_at
            and not k.startswith(naming.tenant_namespace(f"{companies[1]}_user", companies[1]))
        )
        first_shard_1 = min(
            at
            for k, (at, _) in ledger.seen.items()
            if at >= deleted_at
            and k.startswith(naming.tenant_namespace(f"{companies[1]}_user", companies[1]))
        )
        assert first_other < first_shard_1, (first_other - deleted_at, first_shard_1 - deleted_at)
        assert takeover_s < PEERING_LIFETIME_S + 30, takeover_s
        for index, company in enumerate(companies):
            home = namespaces[index]
            assert placed[home] == {f"doc_analysis_{company}_{n:02d}" for n in range(4)}
            tenant = naming.tenant_namespace(f"{company}_user", company)
            ours = {k: v for k, v in ledger.seen.items() if k.startswith(f"{tenant}/")}
            assert len(ours) == 4 and all(ledger.created[k] == 1 for k in ours), ours
            assert {labels[shards.LABEL_SHARD] for _, labels in ours.values()} == {str(index)}
            labels = client.CoreV1Api(kube_api).read_namespace(tenant).metadata.labels
            assert labels[shards.LABEL_SHARD] == str(index)
