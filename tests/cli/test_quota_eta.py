"""The ETA of waiting tasks (``regtask quota``): pure computation, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from regtask.eta import NEVER
from regtask.queueplan import (
    RunTimes,
    TaskRecord,
    estimate_user_queue,
    plan_company,
    record_from_resource,
    typical_run_times,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 9, 24, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A moment relative to NOW (negative: in the past)."""
    return NOW + timedelta(seconds=seconds)


def done(
    task_id: str,
    run_s: float,
    *,
    task_type: str = "document_analysis",
    ended: float = -60,
    admitted: bool = True,
    phase: str = "Succeeded",
) -> TaskRecord:
    began = at(ended - run_s)
    return TaskRecord(
        task_id=task_id,
        task_type=task_type,
        user_id="someone",
        company_id="other_co",
        phase=phase,
        admitted_at=began if admitted else None,
        start_time=None if admitted else began,
        completion_time=at(ended),
    )


def waiting(
    task_id: str,
    position: int,
    *,
    user: str = "u1",
    task_type: str = "document_analysis",
    retry_after: datetime | None = None,
) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        task_type=task_type,
        user_id=user,
        company_id="acme",
        phase="Waiting",
        created=at(-100 + position),
        queue_position=position,
        reason="UserConcurrencyQuota",
        retry_after=retry_after,
    )


def running(
    task_id: str, elapsed_s: float, *, user: str = "u1", task_type: str = "document_analysis"
) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        task_type=task_type,
        user_id=user,
        company_id="acme",
        phase="Running",
        admitted_at=at(-elapsed_s),
        start_time=at(-elapsed_s + 2),
    )


TIMES = {
    "document_analysis": RunTimes("document_analysis", 60.0, 5),
    "llm_conversation": RunTimes("llm_conversation", 20.0, 5),
}


def test_median_of_the_last_n_succeeded_runs_per_type() -> None:
    records = [
        # the three most recent document runs: 10, 30, 50 -> median 30
        done("d1", 10, ended=-10),
        done("d2", 50, ended=-20),
        done("d3", 30, ended=-30),
        # older runs, outside last_n=3
        done("d4", 1000, ended=-500),
        done("d5", 1000, ended=-600),
        # not Succeeded: never counted
        done("d6", 5, ended=-5, phase="Failed"),
        done("l1", 7, task_type="llm_conversation"),
    ]
    times = typical_run_times(records, last_n=3)
    assert times["document_analysis"] == RunTimes("document_analysis", 30.0, 3)
    assert times["llm_conversation"] == RunTimes("llm_conversation", 7.0, 1)
    assert typical_run_times(records, last_n=10)["document_analysis"].median_s == 50.0


def test_run_time_is_measured_from_admission_else_from_the_job_start() -> None:
    assert done("a", 42).run_seconds() == 42.0
    assert done("b", 17, admitted=False).run_seconds() == 17.0
    both = TaskRecord(
        "c",
        "document_analysis",
        "u",
        "co",
        phase="Succeeded",
        admitted_at=at(-100),
        start_time=at(-90),
        completion_time=at(-40),
    )
    assert both.run_seconds() == 60.0  # admittedAt wins: the slot was taken from then
    assert TaskRecord("d", "document_analysis", "u", "co", phase="Succeeded").run_seconds() is None


def test_one_slot_queue_waits_for_the_running_task_then_each_task_ahead() -> None:
    queue = [waiting("w1", 1), waiting("w2", 2), waiting("w3", 3, task_type="llm_conversation")]
    etas = estimate_user_queue(queue, [running("r1", 15)], TIMES, limit=1, now=NOW)
    # r1 has 60 - 15 = 45 s left; then w1 (60 s), then w2 (60 s), then w3 (20 s)
    assert [(e.start_in_s, e.done_in_s) for e in etas] == [(45, 105), (105, 165), (165, 185)]
    assert all(e.note == "" for e in etas)


def test_the_queue_is_divided_across_the_concurrency_limit() -> None:
    queue = [waiting(f"w{i}", i) for i in range(1, 5)]
    busy = [running("r1", 50), running("r2", 10)]
    etas = estimate_user_queue(queue, busy, TIMES, limit=2, now=NOW)
    # slots free at 10 and 50; w1 takes 10 (ends 70), w2 takes 50 (ends 110),
    # w3 takes 70 (ends 130), w4 takes 110
    assert [e.start_in_s for e in etas] == [10, 50, 70, 110]
    # equal medians, long queue: about median x (running + ahead) / L
    assert etas[3].start_in_s == pytest.approx(60 * (2 + 3) / 2, abs=60)


def test_a_free_slot_starts_at_once_but_never_before_retry_after() -> None:
    queue = [waiting("w1", 1, retry_after=at(300)), waiting("w2", 2)]
    etas = estimate_user_queue(queue, [], TIMES, limit=3, now=NOW)
    assert etas[0].start_in_s == 300
    assert etas[0].done_in_s == 360
    assert etas[1].start_in_s == 300  # FIFO within the user: not before w1


def test_a_running_task_past_its_median_frees_its_slot_any_moment() -> None:
    etas = estimate_user_queue([waiting("w1", 1)], [running("r1", 500)], TIMES, 1, NOW)
    assert etas[0].start_in_s == 0
    assert etas[0].done_in_s == 60


def test_limit_zero_means_never() -> None:
    etas = estimate_user_queue([waiting("w1", 1), waiting("w2", 2)], [], TIMES, 0, NOW)
    assert [(e.start_in_s, e.done_in_s, e.note) for e in etas] == [(None, None, NEVER)] * 2


def test_unknown_history_makes_the_rest_of_the_queue_unknown() -> None:
    queue = [
        waiting("w1", 1),
        waiting("w2", 2, task_type="vector_computation"),
        waiting("w3", 3),
    ]
    etas = estimate_user_queue(queue, [], TIMES, limit=1, now=NOW)
    assert (etas[0].start_in_s, etas[0].done_in_s) == (0, 60)
    assert (etas[1].start_in_s, etas[1].done_in_s) == (60, None)
    assert "vector_computation" in etas[1].note
    assert (etas[2].start_in_s, etas[2].done_in_s) == (None, None)
    assert "w2" in etas[2].note
    unknown_running = estimate_user_queue(
        [waiting("w1", 1)], [running("r1", 5, task_type="vector_computation")], TIMES, 1, NOW
    )
    assert unknown_running[0].start_in_s is None


def test_company_plan_counts_only_the_tasks_own_user_and_company() -> None:
    history = [done(f"h{i}", 60, ended=-10 * i) for i in range(1, 4)]
    records = [
        *history,
        running("r_u1", 30, user="u1"),
        # another user's running task does not delay u1 (the limit is per user)
        running("r_u2", 0, user="u2"),
        waiting("w_u2", 1, user="u2"),
        waiting("w_u1", 2, user="u1"),
        # another company's waiting task is not part of this plan
        TaskRecord("x", "document_analysis", "u1", "other_co", phase="Waiting", queue_position=1),
    ]
    plan = plan_company(records, "acme", limit=1, last_n=20, now=NOW)
    assert [row.record.task_id for row in plan.waiting] == ["w_u2", "w_u1"]
    by_id = {row.record.task_id: row.eta for row in plan.waiting}
    assert by_id["w_u1"].start_in_s == 30  # behind r_u1 only
    assert by_id["w_u2"].start_in_s == 60  # behind r_u2 only
    assert [row.record.task_id for row in plan.running] == ["r_u1", "r_u2"]
    assert plan.running[0].elapsed_s == 30 and plan.running[0].remaining_s == 30
    assert plan.run_times["document_analysis"].samples == 3


def test_waiting_tasks_without_a_position_yet_come_last_in_creation_order() -> None:
    late = TaskRecord("late", "document_analysis", "u1", "acme", phase="Waiting", created=at(-1))
    early = TaskRecord("early", "document_analysis", "u1", "acme", phase="Waiting", created=at(-2))
    plan = plan_company([late, waiting("w1", 1), early], "acme", 1, now=NOW)
    assert [row.record.task_id for row in plan.waiting] == ["w1", "early", "late"]


def resource(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "task-x", "creationTimestamp": "2025-09-24T11:58:00Z"},
        "spec": {
            "taskId": "doc_analysis_x",
            "taskType": "document_analysis",
            "userId": "u1",
            "companyId": "acme",
            "inputs": [],
        },
        "status": status,
    }


def test_record_from_a_registry_task_resource() -> None:
    record = record_from_resource(
        resource(
            phase="Waiting",
            queuePosition=2,
            reason="LlmRateQuota",
            retryAfter="2025-09-24T12:05:00Z",
            operatorState={"kopf": 1},
        )
    )
    assert record is not None
    assert (record.task_id, record.user_id, record.company_id) == ("doc_analysis_x", "u1", "acme")
    assert (record.phase, record.queue_position, record.reason) == ("Waiting", 2, "LlmRateQuota")
    assert record.created == at(-120)
    assert record.retry_after == at(300)
    finished = record_from_resource(
        resource(
            phase="Succeeded",
            admittedAt="2025-09-24T11:58:10Z",
            startTime="2025-09-24T11:58:12Z",
            completionTime="2025-09-24T11:59:00Z",
            progress=100,
        )
    )
    assert finished is not None and finished.run_seconds() == 50.0


@pytest.mark.parametrize(
    "broken",
    [
        {"metadata": {}, "spec": {"taskId": "x"}},
        {**resource(), "status": {"phase": "Exploded"}},
        {**resource(), "status": {"queuePosition": -1}},
    ],
)
def test_unreadable_resources_are_skipped_not_fatal(broken: dict[str, Any]) -> None:
    assert record_from_resource(broken) is None


def test_the_plan_follows_fair_share_under_a_company_cap() -> None:
    """A runs 2 of the company's 2 slots with 3 more waiting (older); B waits with 1: B is
    shown first and gets the first slot to free; the headroom is 0."""
    history = [done(f"h{i}", 60, ended=-10 * i) for i in range(1, 4)]
    records = [
        *history,
        running("ra1", 50, user="A"),
        running("ra2", 10, user="A"),
        waiting("wa1", 1, user="A"),
        waiting("wa2", 2, user="A"),
        waiting("wa3", 3, user="A"),
        waiting("wb1", 4, user="B"),  # created last, reported last (the CR's stale position)
    ]
    plan = plan_company(records, "acme", limit=5, now=NOW, company_cap=2)
    assert [(row.record.task_id, row.position) for row in plan.waiting] == [
        ("wb1", 1),
        ("wa1", 2),
        ("wa2", 3),
        ("wa3", 4),
    ]
    starts = {row.record.task_id: row.eta.start_in_s for row in plan.waiting}
    # ra1 frees at 10 s -> wb1 (B runs 0); ra2 at 50 s -> wa1 (A 0, B 1); wb1 at 70 s -> wa2
    # (A 1, B 0 but B has nothing left); wa1 at 110 s -> wa3
    assert starts == {"wb1": 10, "wa1": 50, "wa2": 70, "wa3": 110}
    assert (plan.company_cap, plan.headroom) == (2, 0)
    assert plan_company(records, "acme", limit=5, now=NOW).headroom is None
