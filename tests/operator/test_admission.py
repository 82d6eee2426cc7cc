"""Admission decisions (pure): limits, order, fairness between users, rate windows."""

from __future__ import annotations

import random

import pytest

from regtask.crmodels import Priority, RateLimitPolicy
from regtask.documents import Quotas
from regtask_operator.admission import (
    AdmissionState,
    Candidate,
    QuotaLookup,
    RateCheck,
    RateVerdict,
    TaskKey,
    WaitReason,
)

pytestmark = pytest.mark.unit


def cand(
    n: int,
    user: str = "u1",
    company: str = "c1",
    priority: Priority = Priority.NORMAL,
    llm: bool = False,
    created: float | None = None,
) -> Candidate:
    return Candidate(
        key=TaskKey("regtask-system", f"t{n}"),
        task_id=f"t{n}",
        user_id=user,
        company_id=company,
        priority=priority,
        created=float(n) if created is None else created,
        uses_llm=llm,
    )


def limits(max_tasks: int = 2, policy: RateLimitPolicy = RateLimitPolicy.WAIT) -> QuotaLookup:
    return lambda company: (Quotas(max_tasks_per_user=max_tasks), policy)


def unlimited_rate(company: str, pending: int) -> RateVerdict:
    return RateVerdict(True)


def test_never_more_than_the_user_limit() -> None:
    state = AdmissionState()
    for n in range(5):
        state.submit(cand(n))
    decisions = state.decide(limits(2), unlimited_rate)
    assert [c.task_id for c in decisions.admitted] == ["t0", "t1"]
    assert [(w.candidate.task_id, w.position) for w in decisions.waiting] == [
        ("t2", 1),
        ("t3", 2),
        ("t4", 3),
    ]
    assert all(w.reason is WaitReason.USER_CONCURRENCY for w in decisions.waiting)
    assert state.running_count("c1", "u1") == 2
    # nothing more fits until a slot frees
    assert state.decide(limits(2), unlimited_rate).admitted == []
    state.release(TaskKey("regtask-system", "t0"))
    assert [c.task_id for c in state.decide(limits(2), unlimited_rate).admitted] == ["t2"]


def test_priority_then_fifo() -> None:
    state = AdmissionState()
    state.submit(cand(1, priority=Priority.LOW))
    state.submit(cand(2))
    state.submit(cand(3, priority=Priority.HIGH))
    state.submit(cand(4, priority=Priority.HIGH))
    decisions = state.decide(limits(1), unlimited_rate)
    assert [c.task_id for c in decisions.admitted] == ["t3"]
    assert [w.candidate.task_id for w in decisions.waiting] == ["t4", "t2", "t1"]


def test_a_busy_user_does_not_block_another_user() -> None:
    state = AdmissionState()
    state.submit(cand(1, user="busy"))
    state.submit(cand(2, user="busy"))
    state.submit(cand(3, user="other"))
    decisions = state.decide(limits(1), unlimited_rate)
    assert sorted(c.task_id for c in decisions.admitted) == ["t1", "t3"]


def test_submit_is_idempotent_and_release_frees() -> None:
    state = AdmissionState()
    state.submit(cand(1))
    state.submit(cand(1))
    assert state.queued_count("c1") == 1
    state.decide(limits(), unlimited_rate)
    state.submit(cand(1))  # already running: stays running, not queued again
    assert state.is_running(TaskKey("regtask-system", "t1"))
    assert state.queued_count("c1") == 0
    assert state.release(TaskKey("regtask-system", "t1")) is not None
    assert state.release(TaskKey("regtask-system", "t1")) is None


def test_llm_window_waits_or_refuses() -> None:
    def window(remaining: int) -> RateCheck:
        return lambda company, pending: RateVerdict(pending < remaining, 1200)

    state = AdmissionState()
    for n in range(3):
        state.submit(cand(n, llm=True))
    decisions = state.decide(limits(10), window(1))
    assert [c.task_id for c in decisions.admitted] == ["t0"]
    assert [(w.reason, w.retry_after_s) for w in decisions.waiting] == [
        (WaitReason.LLM_RATE, 1200),
        (WaitReason.LLM_RATE, 1200),
    ]
    refusing = limits(10, RateLimitPolicy.REFUSE)
    decisions = state.decide(refusing, window(0))
    assert [r.candidate.task_id for r in decisions.refused] == ["t1", "t2"]
    assert "retry after 1200s" in decisions.refused[0].message
    assert state.queued_count("c1") == 0


def test_rebuild_matches_the_cluster() -> None:
    state = AdmissionState()
    state.submit(cand(1))
    state.submit(cand(2))
    state.decide(limits(5), unlimited_rate)
    # the cluster has t2 and t9 (t1's Job vanished, t9 was created by a previous operator)
    added, dropped = state.rebuild([cand(2), cand(9)])
    assert (added, dropped) == (1, 1)
    assert {c.task_id for c in state.running()} == {"t2", "t9"}


def test_random_bursts_never_exceed_limits() -> None:
    rng = random.Random(7)
    state = AdmissionState()
    users = [f"u{i}" for i in range(4)]
    n = 0
    for _ in range(200):
        for _ in range(rng.randint(0, 5)):
            state.submit(cand(n, user=rng.choice(users), created=rng.random()))
            n += 1
        state.decide(limits(3), unlimited_rate)
        for user in users:
            assert state.running_count("c1", user) <= 3
        for candidate in state.running():
            if rng.random() < 0.3:
                state.release(candidate.key)
