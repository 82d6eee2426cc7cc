"""A scheduler step decides only the companies whose tasks or limits changed (and those waiting
on an LLM window): its work does not grow with other companies' queues (issue 19, item 2).

Before, every step sorted and walked every waiting task of every company (measured under
bench-scale: 8 / 212 / 566 ms per step with 1,000 / 10,000 / 20,000 tasks of other companies
waiting and nothing to admit). The property test holds the incremental decision to the full one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regtask.crmodels import Priority, RateLimitPolicy
from regtask.documents import Quotas
from regtask_operator.admission import AdmissionState, Candidate, RateVerdict, TaskKey, Waiting
from regtask_operator.controller import Controller
from tests.operator.test_lifecycle_races import NAMESPACE, FakeApi, make, step

pytestmark = pytest.mark.unit

COMPANIES = ("ca", "cb", "cc")


def candidate(n: int, company: str, user: int, llm: bool) -> Candidate:
    return Candidate(
        TaskKey(NAMESPACE, f"t{n}"),
        f"t{n}",
        f"u{user}",
        company,
        Priority.NORMAL if n % 3 else Priority.HIGH,
        float(n),
        uses_llm=llm,
    )


def rate(company_id: str, pending: int) -> RateVerdict:
    """Deterministic: company cc's window has room for one more LLM task per decision."""
    return RateVerdict(company_id != "cc" or pending < 1, 60)


def by_company(waiting: list[Waiting]) -> dict[str, list[Waiting]]:
    grouped: dict[str, list[Waiting]] = defaultdict(list)
    for entry in waiting:
        grouped[entry.candidate.company_id].append(entry)
    return dict(grouped)


OPS = st.lists(
    st.tuples(
        st.sampled_from("ssssqrl"),
        st.integers(0, 30),
        st.sampled_from(COMPANIES),
        st.integers(0, 3),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_deciding_the_changed_companies_is_deciding_them_all(
    ops: list[tuple[str, int, str, int, bool]],
) -> None:
    limits = {c: Quotas(max_tasks_per_user=2, max_tasks_per_company=3) for c in COMPANIES}

    def quotas(company_id: str) -> tuple[Quotas, RateLimitPolicy]:
        return limits[company_id], RateLimitPolicy.WAIT

    full, incremental = AdmissionState(), AdmissionState()
    shown: dict[str, list[Waiting]] = {}  # what the incremental steps last published
    for op, n, company, user, llm in ops:
        made = candidate(n, company, user, llm)
        for state in (full, incremental):
            if op == "s":
                state.submit(made)
            elif op == "q":
                state.mark_running(made)
            elif op == "r":
                state.release(made.key)
        if op == "l":
            limits[company] = Quotas(max_tasks_per_user=1 + user % 2, max_tasks_per_company=user)
            incremental.mark_to_decide(company)  # as TaskTracker.set_limits does
        everything = full.decide(quotas, rate)
        due = incremental.take_to_decide()
        partial = incremental.decide(quotas, rate, due)
        assert {c.key for c in partial.admitted} == {c.key for c in everything.admitted}
        assert set(incremental._running) == set(full._running)
        assert set(incremental._queued) == set(full._queued)
        decided = by_company(partial.waiting)
        for company_id in due:
            shown[company_id] = decided.get(company_id, [])
        expected = by_company(everything.waiting)
        for company_id in COMPANIES:
            assert shown.get(company_id, []) == expected.get(company_id, []), company_id


async def controller_with_waiting(tasks: int, companies: int) -> tuple[Controller, FakeApi]:
    """One user per company, one task each may run: the rest of each company's tasks wait."""
    api = FakeApi(random.Random(0))
    controller = make(api)
    for n in range(tasks):
        company = f"other{n % companies}"
        spec = {"taskId": f"w{n}", "taskType": "document_analysis", "userId": "busy"}
        await controller.task_seen(
            TaskKey(NAMESPACE, f"task-w{n}"),
            f"uid-w{n}",
            {**spec, "companyId": company},
            {},
            "2026-11-28T00:00:00Z",
        )
    return controller, api


async def test_a_step_reads_only_the_company_that_changed() -> None:
    """20,000 tasks of 500 other companies wait; one task arrives for another company: the
    step decides that company alone and reports no other company's waiting tasks."""
    controller, api = await controller_with_waiting(20_000, companies=500)
    await step(controller)  # the first step decides them all (each was new)
    visited: list[str] = []
    decide_company = controller.tracker.state._decide_company

    def counting(company_id: str, *args: Any) -> None:
        visited.append(company_id)
        decide_company(company_id, *args)

    controller.tracker.state._decide_company = counting  # type: ignore[method-assign,assignment]
    key = TaskKey(NAMESPACE, "task-late")
    spec = {"taskId": "late", "taskType": "document_analysis", "userId": "solo"}
    await controller.task_seen(
        key, "uid-late", {**spec, "companyId": "newcomer"}, {}, "2026-11-28T00:00:00Z"
    )
    decisions = await step(controller)
    assert visited == ["newcomer"]
    assert [c.key for c in decisions.admitted] == [key]
    assert decisions.waiting == []
    visited.clear()
    assert (await step(controller)).admitted == []
    assert visited == [], "nothing changed: nothing decided"
    assert isinstance(api, FakeApi)


def test_the_llm_windows_read_are_those_of_companies_with_queued_llm_tasks() -> None:
    state = AdmissionState()
    rng = random.Random(0)
    for n in range(200):
        state.submit(candidate(n, f"c{n % 50}", n % 7, llm=(n % 50 == 3 and rng.random() < 2)))
    assert state.companies_with_queued_llm() == {"c3"}
    for n in range(3, 200, 50):
        state.release(TaskKey(NAMESPACE, f"t{n}"))
    assert state.companies_with_queued_llm() == set()


async def test_a_step_reads_the_running_tasks_of_the_companies_it_reports_only() -> None:
    """The ETAs of the waiting tasks a step reports need the running tasks of their companies;
    the step read every company's (20,000 running at 50,000 tasks known: a quarter of the
    operator's CPU in bench-scale)."""
    controller, _ = await controller_with_waiting(2_000, companies=500)
    await step(controller)  # 500 running (one per company), 1,500 waiting
    state = controller.tracker.state
    assert len(state.running()) == 500
    read: list[str] = []
    running_in = state.running_in

    def counting(company_id: str) -> Any:
        read.append(company_id)
        return running_in(company_id)

    def everyone() -> list[Any]:
        raise AssertionError("a step walked the running tasks of every company")

    state.running_in = counting  # type: ignore[method-assign]
    state.running = everyone  # type: ignore[method-assign]
    for n in range(2):  # the second waits behind the first: its ETA is computed
        spec = {"taskId": f"solo{n}", "taskType": "document_analysis", "userId": "solo"}
        await controller.task_seen(
            TaskKey(NAMESPACE, f"task-solo{n}"),
            f"uid-solo{n}",
            {**spec, "companyId": "newcomer"},
            {},
            "2026-11-28T00:00:00Z",
        )
    decisions = await step(controller)
    assert [w.candidate.task_id for w in decisions.waiting] == ["solo1"]
    assert set(read) == {"newcomer"}
