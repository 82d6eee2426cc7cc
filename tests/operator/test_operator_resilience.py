"""Redis and Firestore going away mid-run: tasks keep running, mirrors converge afterwards."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client

from regtask import keys
from regtask_dev.firestore_emulator import FirestoreEmulator
from regtask_dev.kind import KindCluster
from regtask_dev.redis_server import RedisServer
from regtask_dev.stack import GatewayProcess, OperatorProcess, scrape_metrics, wait_until
from tests.fixtures.platform import gateway_env, operator_env
from tests.operator.test_operator_lifecycle import new_task, phase_of

pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(900)]


def registry_status(client_: redis.Redis, task_id: str) -> str | None:
    raw = client_.hget(keys.task(task_id), keys.DATA_FIELD)
    return json.loads(raw)["task_info"]["status"] if raw else None


def own_gateway(
    cluster: KindCluster, own_redis: RedisServer, namespace: str, tmp_path: Path
) -> GatewayProcess:
    """A gateway on this test's own Redis (which the test stops and starts)."""
    return GatewayProcess(
        {
            "REDIS_URL": own_redis.url,
            "REGTASK_NAMESPACE": namespace,
            "KUBECONFIG": str(cluster.kubeconfig_path),
        },
        tmp_path / "gateway",
        host=cluster.host_address,
    ).start()


@pytest.mark.firestore
def test_redis_and_firestore_outage(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_kubeconfig: Path,
    runner_image: str,
    tmp_path: Path,
) -> None:
    with RedisServer() as own_redis, FirestoreEmulator() as firestore:
        gateway = own_gateway(cluster, own_redis, control_namespace, tmp_path)
        operator = OperatorProcess(
            operator_kubeconfig,
            operator_env(
                own_redis.url,
                control_namespace,
                runner_image,
                **gateway_env(gateway),
                FIRESTORE_PROJECT_ID=firestore.project_id,
                FIRESTORE_EMULATOR_HOST=firestore.host,
            ),
            tmp_path / "operator",
        ).start()
        store = redis.Redis.from_url(own_redis.url)
        try:
            before = new_task(kube_api, control_namespace, "outage_before")
            wait_until(
                lambda: phase_of(kube_api, control_namespace, before) == "Succeeded",
                120,
                "first task Succeeded",
            )
            assert registry_status(store, "outage_before") == "completed"

            # Firestore and Redis go away. The runner of a task started now cannot report
            # progress (the gateway needs Redis), so it fails; the operator must still run it
            # to its end and record that end everywhere once the services return.
            firestore.stop()
            own_redis.stop()
            outage_started = time.monotonic()
            during = new_task(kube_api, control_namespace, "outage_during")
            wait_until(
                lambda: phase_of(kube_api, control_namespace, during) in ("Failed", "Succeeded"),
                180,
                "task started during the outage finished",
            )
            time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))  # a 30 s outage
            own_redis.start()
            firestore.start()

            after = new_task(kube_api, control_namespace, "outage_after")
            wait_until(
                lambda: phase_of(kube_api, control_namespace, after) == "Succeeded",
                120,
                "task after the outage Succeeded",
            )
            final_phase = phase_of(kube_api, control_namespace, during)
            expected = {"Failed": "failed", "Succeeded": "completed"}[final_phase or "Failed"]
            wait_until(
                lambda: registry_status(store, "outage_during") == expected,
                60,
                "registry converged for the task of the outage",
            )
            wait_until(
                lambda: registry_status(store, "outage_after") == "completed",
                30,
                "registry has the task after the outage",
            )

            fs = firestore.client()

            def mirrored(task_id: str) -> dict[str, Any] | None:
                snap = fs.collection("registry_tasks").document(task_id).get()
                return snap.to_dict() if snap.exists else None

            doc = wait_until(lambda: mirrored("outage_during"), 120, "Firestore converged")
            assert doc["phase"] == final_phase
            assert (
                wait_until(lambda: mirrored("outage_after"), 60, "Firestore after")["phase"]
                == "Succeeded"
            )
            fs.close()
            assert operator.proc is not None and operator.proc.poll() is None, "operator survived"
            assert "registry_mirror_failed" in operator.log_text()
            values = scrape_metrics(operator.metrics_url)
            assert values['regtask_mirror_failures_total{target="redis"}'] >= 1
            assert values["regtask_firestore_mirror_failed_attempts_total"] >= 1
            assert values["regtask_firestore_mirror_written_total"] >= 2
        finally:
            operator.stop()
            gateway.stop()
            store.close()


def test_an_end_not_mirrored_before_a_restart_is_mirrored_after_it(
    cluster: KindCluster,
    kube_api: client.ApiClient,
    control_namespace: str,
    operator_kubeconfig: Path,
    runner_image: str,
    tmp_path: Path,
) -> None:
    """A task ends while Redis is down; its registry write is kept in the operator's memory,
    and the operator is restarted before Redis returns. The new operator compares the ends in
    the CR status with the registry and writes the missing one. Before: the registry showed
    the task unfinished for ever."""
    with RedisServer() as own_redis:
        gateway = own_gateway(cluster, own_redis, control_namespace, tmp_path)
        env = operator_env(own_redis.url, control_namespace, runner_image, **gateway_env(gateway))
        store = redis.Redis.from_url(own_redis.url)
        first = OperatorProcess(operator_kubeconfig, env, tmp_path / "operator-1").start()
        try:
            task = new_task(kube_api, control_namespace, "restart_lost")
            wait_until(
                lambda: registry_status(store, "restart_lost") in ("running", "queued"),
                60,
                "task registered",
            )
            own_redis.stop()
            wait_until(
                lambda: phase_of(kube_api, control_namespace, task) in ("Failed", "Succeeded"),
                240,
                "task ended during the outage",
            )
            wait_until(
                lambda: "registry_mirror_failed" in first.log_text(), 30, "end kept in memory"
            )
        finally:
            first.stop()
        own_redis.start()  # (without persistence: the document is gone, or never had the end)
        assert registry_status(store, "restart_lost") not in ("failed", "completed")
        second = OperatorProcess(operator_kubeconfig, env, tmp_path / "operator-2").start()
        try:
            expected = {"Failed": "failed", "Succeeded": "completed"}[
                phase_of(kube_api, control_namespace, task) or "Failed"
            ]
            wait_until(
                lambda: registry_status(store, "restart_lost") == expected,
                60,
                "the registry has the end after the restart",
            )
            assert "registry_resynced" in second.log_text()
        finally:
            second.stop()
            gateway.stop()
            store.close()
