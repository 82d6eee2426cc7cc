"""FirestoreWriter against the real Firestore emulator, including "down, then back" runs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from regtask.firestore_writer import FirestoreWriter
from regtask.settings import Settings
from regtask_dev.firestore_emulator import FirestoreEmulator, emulator_host_env
from regtask_dev.procs import free_port, wait_for

pytestmark = pytest.mark.firestore

PRESENCE = "listeners_registry"
TASKS = "registry_tasks"


def docs(client: Any, collection: str) -> dict[str, dict[str, Any]]:
    return {snap.id: snap.to_dict() for snap in client.collection(collection).stream()}


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.fixture(scope="module")
def spare_emulator(firestore_emulator: FirestoreEmulator) -> Iterator[FirestoreEmulator]:
    """A second emulator on a fixed port, NOT started: tests start/stop it to play an outage."""
    emulator = FirestoreEmulator(port=free_port(), project_id=firestore_emulator.project_id)
    try:
        yield emulator
    finally:
        emulator.close()


def writer_on(host: str, project_id: str, **kwargs: Any) -> FirestoreWriter:
    """A writer whose client targets ``host`` (the emulator host is read at construction)."""
    kwargs.setdefault("retry_initial_s", 0.05)
    kwargs.setdefault("retry_max_s", 0.5)
    with emulator_host_env(host):
        return FirestoreWriter(project_id, **kwargs)


def test_presence_has_contract_fields_and_merges(
    firestore_writer: FirestoreWriter, firestore_client: Any
) -> None:
    firestore_client.collection(PRESENCE).document("uid-1").set(
        {"display_name": "kept by the web app", "status": "offline"}
    )
    for uid in ("uid-1", "uid-2"):
        firestore_writer.write_presence(
            uid,
            status="online",
            heartbeat_at="2025-09-24T10:30:00Z",
            ttl_seconds=90,
            authorized_companies_ids=["c1", "c2"],
        )
    assert firestore_writer.wait_idle(30)

    contract = {
        "status": "online",
        "heartbeat_at": "2025-09-24T10:30:00Z",
        "ttl_seconds": 90,
        "authorized_companies_ids": ["c1", "c2"],
    }
    stored = docs(firestore_client, PRESENCE)
    assert stored["uid-2"] == contract
    assert stored["uid-1"] == {**contract, "display_name": "kept by the web app"}
    assert isinstance(stored["uid-2"]["ttl_seconds"], int)

    firestore_writer.write_presence(
        "uid-1",
        status="offline",
        heartbeat_at="2025-09-24T10:31:30Z",
        ttl_seconds=90,
        authorized_companies_ids=[],
    )
    assert firestore_writer.wait_idle(30)
    assert docs(firestore_client, PRESENCE)["uid-1"] == {
        "status": "offline",
        "heartbeat_at": "2025-09-24T10:31:30Z",
        "ttl_seconds": 90,
        "authorized_companies_ids": [],
        "display_name": "kept by the web app",
    }
    assert firestore_writer.stats() == {
        "written": 3,
        "failed_attempts": 0,
        "dropped": 0,
        "rejected": 0,
        "pending": 0,
    }


def test_task_phase_changes_merge_into_one_doc(
    firestore_writer: FirestoreWriter, firestore_client: Any
) -> None:
    firestore_writer.write_task(
        "task-1",
        {
            "task_id": "task-1",
            "task_type": "extract",
            "user_id": "u1",
            "company_id": "c1",
            "status": "running",
            "phase": "Running",
            "progress": 10,
            "current_step": "download",
            "updated_at": "2025-09-24T10:30:00Z",
        },
    )
    assert firestore_writer.wait_idle(30)
    firestore_writer.write_task(
        "task-1",
        {
            "status": "done",
            "phase": "Succeeded",
            "progress": 100,
            "updated_at": "2025-09-24T10:35:00Z",
        },
    )
    assert firestore_writer.wait_idle(30)
    assert docs(firestore_client, TASKS) == {
        "task-1": {
            "task_id": "task-1",
            "task_type": "extract",
            "user_id": "u1",
            "company_id": "c1",
            "status": "done",
            "phase": "Succeeded",
            "progress": 100,
            "current_step": "download",
            "updated_at": "2025-09-24T10:35:00Z",
        }
    }


def test_updates_coalesce_per_document_keeping_queue_position(
    firestore_clean: FirestoreEmulator,
) -> None:
    # Not started yet: everything stays queued, so coalescing is observable exactly.
    writer = FirestoreWriter(firestore_clean.project_id, queue_size=3, retry_initial_s=0.05)
    client = firestore_clean.client()
    try:
        for i in range(200):
            writer.write_task("hot", {"progress": i, "step": f"step-{i}"})
        assert writer.pending() == 1

        writer.write_task("b", {"v": 1})
        writer.write_task("c", {"v": 1})
        writer.write_task("hot", {"status": "done"})  # coalesced: "hot" stays the oldest
        with capture_logs() as logs:
            writer.write_task("d", {"v": 1})
        assert [e["path"] for e in events(logs, "firestore_mirror_dropped")] == [f"{TASKS}/hot"]
        assert writer.stats()["dropped"] == 1
        assert writer.pending() == 3

        payload: dict[str, Any] = {"v": 2, "meta": {"x": 1}}
        writer.write_task("b", payload)
        payload["v"] = 3  # the caller reusing its dict must not change what is queued
        payload["meta"]["x"] = 999
        writer.start()
        assert writer.wait_idle(30)
        assert docs(client, TASKS) == {
            "b": {"v": 2, "meta": {"x": 1}},
            "c": {"v": 1},
            "d": {"v": 1},
        }
        assert writer.stats()["written"] == 3

        for i in range(200):
            writer.write_task("hot2", {"progress": i, "meta": {f"k{i % 3}": i}})
        assert writer.wait_idle(30)
        assert docs(client, TASKS)["hot2"] == {
            "progress": 199,
            "meta": {"k0": 198, "k1": 199, "k2": 197},
        }
        # With the worker running, 200 quick updates still cost only a few writes.
        assert writer.stats()["written"] - 3 <= 20
    finally:
        writer.stop()
        client.close()

    # And the coalesced map merge matches Firestore's own merge=True semantics.
    writer = FirestoreWriter(firestore_clean.project_id)
    client = firestore_clean.client()
    try:
        writer.write_task("nested", {"meta": {"a": 0}, "progress": 1})
        writer.write_task("nested", {"meta": {"b": 1}, "progress": 2})
        writer.start()
        assert writer.wait_idle(30)
        assert docs(client, TASKS)["nested"] == {"meta": {"a": 0, "b": 1}, "progress": 2}
    finally:
        writer.stop()
        client.close()


def test_concurrent_producers_converge(
    firestore_writer: FirestoreWriter, firestore_client: Any
) -> None:
    def produce(worker: int) -> None:
        for rnd in range(5):
            for n in range(40):
                firestore_writer.write_task(f"w{worker}-{n:02d}", {"worker": worker, "round": rnd})
            firestore_writer.write_task("shared", {f"w{worker}": rnd})

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert firestore_writer.wait_idle(30)
    stored = docs(firestore_client, TASKS)
    assert len(stored) == 4 * 40 + 1
    assert stored.pop("shared") == {"w0": 4, "w1": 4, "w2": 4, "w3": 4}
    assert all(doc["round"] == 4 for doc in stored.values())
    stats = firestore_writer.stats()
    assert (stats["failed_attempts"], stats["dropped"], stats["pending"]) == (0, 0, 0)


def test_firestore_down_never_blocks_then_everything_converges(
    spare_emulator: FirestoreEmulator,
) -> None:
    assert not spare_emulator.running
    writer = writer_on(spare_emulator.host, spare_emulator.project_id)
    writer.start()
    try:
        with capture_logs() as logs:
            slowest = 0.0
            began = time.monotonic()
            for i in range(1000):
                call = time.monotonic()
                writer.write_task(
                    f"task-{i % 250:03d}",
                    {
                        "task_id": f"task-{i % 250:03d}",
                        "round": i // 250,
                        "status": "done" if i >= 750 else "running",
                    },
                )
                slowest = max(slowest, time.monotonic() - call)
            elapsed = time.monotonic() - began
            wait_for(lambda: writer.stats()["failed_attempts"] >= 3, 10, "failed attempts")

        assert elapsed < 2.0, f"1,000 write_task calls took {elapsed:.2f}s"
        assert slowest < 0.5, f"one write_task call took {slowest:.3f}s"
        stats = writer.stats()
        assert stats["written"] == 0
        assert stats["pending"] == 250
        assert stats["dropped"] == 0
        failures = events(logs, "firestore_mirror_write_failed")
        assert len(failures) >= 3
        assert failures[0]["path"] == f"{TASKS}/task-000"
        assert failures[0]["attempt"] == 1
        assert failures[0]["error"].startswith("ServiceUnavailable(")
        assert failures[0]["log_level"] == "warning"

        spare_emulator.start()  # same port: Firestore is back, the writer is not restarted
        assert writer.wait_idle(60), writer.stats()
        stats = writer.stats()
        assert stats["written"] == 250
        assert stats["pending"] == 0
        assert stats["failed_attempts"] >= 3

        client = spare_emulator.client()
        try:
            stored = docs(client, TASKS)
        finally:
            client.close()
        assert len(stored) == 250
        assert all(
            doc == {"task_id": task_id, "round": 3, "status": "done"}
            for task_id, doc in stored.items()
        )
    finally:
        writer.stop(drain_timeout_s=1.0)
        spare_emulator.stop()


def test_bounded_queue_drops_oldest_and_survivors_converge(
    spare_emulator: FirestoreEmulator,
) -> None:
    assert not spare_emulator.running
    writer = writer_on(spare_emulator.host, spare_emulator.project_id, queue_size=10)
    writer.start()
    try:
        with capture_logs() as logs:
            for i in range(25):
                writer.write_task(f"doc-{i:02d}", {"n": i, "version": 1})
            wait_for(lambda: writer.stats()["dropped"] == 15, 10, "15 drops")
            wait_for(lambda: writer.stats()["failed_attempts"] >= 2, 10, "failed attempts")
            writer.write_task("doc-16", {"version": 2})  # coalesced into a survivor
        stats = writer.stats()
        assert stats["dropped"] == 15
        assert stats["pending"] == 10
        dropped = sorted(e["path"] for e in events(logs, "firestore_mirror_dropped"))
        assert dropped == [f"{TASKS}/doc-{i:02d}" for i in range(15)]

        spare_emulator.start()
        assert writer.wait_idle(60), writer.stats()
        client = spare_emulator.client()
        try:
            stored = docs(client, TASKS)
        finally:
            client.close()
        assert sorted(stored) == [f"doc-{i:02d}" for i in range(15, 25)]
        assert stored["doc-16"] == {"n": 16, "version": 2}
        assert all(stored[f"doc-{i:02d}"] == {"n": i, "version": 1} for i in range(17, 25))
        assert writer.stats()["written"] == 10
        assert writer.stats()["dropped"] == 15
    finally:
        writer.stop(drain_timeout_s=1.0)
        spare_emulator.stop()


def test_a_full_queue_drops_progress_before_any_tasks_end(
    spare_emulator: FirestoreEmulator,
) -> None:
    """Firestore down, the queue full of progress: the ends queued earlier survive the trim
    and reach Firestore. Before: the oldest went first, and the oldest were the ends."""
    assert not spare_emulator.running
    writer = writer_on(spare_emulator.host, spare_emulator.project_id, queue_size=5)
    writer.start()
    try:
        for i in range(3):
            writer.write_task(f"ended-{i}", {"phase": "Succeeded"}, final=True)
        for i in range(20):
            writer.write_task(f"busy-{i:02d}", {"phase": "Running", "progress": i})
        wait_for(lambda: writer.stats()["dropped"] == 18, 10, "18 drops")
        spare_emulator.start()
        assert writer.wait_idle(60), writer.stats()
        client = spare_emulator.client()
        try:
            stored = docs(client, TASKS)
        finally:
            client.close()
        assert {f"ended-{i}" for i in range(3)} <= set(stored), sorted(stored)
        assert sorted(stored) == ["busy-18", "busy-19", "ended-0", "ended-1", "ended-2"]
    finally:
        writer.stop(drain_timeout_s=1.0)
        spare_emulator.stop()


def test_stop_with_backend_down_returns_within_drain_timeout(
    spare_emulator: FirestoreEmulator,
) -> None:
    assert not spare_emulator.running
    writer = writer_on(spare_emulator.host, spare_emulator.project_id, retry_max_s=5.0)
    writer.start()
    for i in range(50):
        writer.write_task(f"t{i}", {"n": i})
    wait_for(lambda: writer.stats()["failed_attempts"] >= 1, 10, "a failed attempt")

    began = time.monotonic()
    writer.stop(drain_timeout_s=1.0)
    took = time.monotonic() - began
    assert took < 1.0 + 0.5, f"stop took {took:.2f}s"
    assert writer.stats()["pending"] == 50
    assert writer.stats()["written"] == 0

    began = time.monotonic()
    writer.stop(drain_timeout_s=1.0)  # idempotent
    assert time.monotonic() - began < 0.1
    writer.write_task("late", {"n": 1})  # after stop: counted as dropped, never raises
    assert writer.stats()["dropped"] == 1


def test_hanging_backend_neither_blocks_callers_nor_stop(
    firestore_emulator: FirestoreEmulator,
) -> None:
    """A peer that accepts TCP but never answers: writes hang until write_timeout_s."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        host = f"127.0.0.1:{blackhole.getsockname()[1]}"
        writer = writer_on(host, firestore_emulator.project_id, write_timeout_s=3.0)
        writer.start()
        began = time.monotonic()
        for i in range(1000):
            writer.write_task(f"t{i % 100}", {"n": i})
        assert time.monotonic() - began < 2.0
        time.sleep(0.3)  # let the worker get stuck inside a write
        assert writer.stats()["written"] == 0

        began = time.monotonic()
        writer.stop(drain_timeout_s=0.5)
        assert time.monotonic() - began < 0.5 + 0.5
        assert writer.pending() == 100


def test_from_settings(firestore_clean: FirestoreEmulator) -> None:
    assert FirestoreWriter.from_settings(Settings(FIRESTORE_PROJECT_ID=None)) is None
    writer = FirestoreWriter.from_settings(
        Settings(
            FIRESTORE_PROJECT_ID=firestore_clean.project_id,
            FIRESTORE_TASKS_COLLECTION="tasks_mirror_test",
            FIRESTORE_QUEUE_SIZE=5,
        )
    )
    assert writer is not None
    assert (writer.tasks_collection, writer.presence_collection, writer.queue_size) == (
        "tasks_mirror_test",
        PRESENCE,
        5,
    )
    client = firestore_clean.client()
    writer.start()
    try:
        writer.write_task("t1", {"status": "queued"})
        assert writer.wait_idle(30)
        assert docs(client, "tasks_mirror_test") == {"t1": {"status": "queued"}}
    finally:
        writer.stop()
        client.close()
