"""The console's figures, from RegistryTask and CompanyQuota objects as the API returns them
(pure: no server). What each page shows is decided here; the browser test shows it on screen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from regtask import keys
from regtask.documents import TaskStep
from regtask.runner_contract import FAILURE_STEP
from regtask_shim.auth import Principal, claims_from_payload
from regtask_shim.console import views
from regtask_shim.console.access import console_scope
from regtask_shim.console.routes import _event_task_id
from regtask_shim.errors import Forbidden, Unauthenticated

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def iso(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cr(
    task_id: str,
    phase: str,
    *,
    company: str = "acme",
    user: str = "ann",
    created: float = 30,
    **status: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"t-{task_id}", "creationTimestamp": iso(created)},
        "spec": {
            "taskId": task_id,
            "taskType": "document_analysis",
            "userId": user,
            "companyId": company,
        },
        "status": {"phase": phase, **status},
    }


def quota(company: str, max_tasks: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"cq-{company}"},
        "spec": {"companyId": company, "maxTasksPerUser": max_tasks},
    }


OBJECTS = [
    cr("done1", "Succeeded", admittedAt=iso(20), completionTime=iso(18)),
    cr("done2", "Succeeded", admittedAt=iso(10), completionTime=iso(8)),
    cr("bad", "Failed", admittedAt=iso(50), completionTime=iso(40), reason="DeadlineExceeded"),
    cr("old_bad", "Failed", admittedAt=iso(100), completionTime=iso(90)),
    cr("run", "Running", admittedAt=iso(1), progress=40, currentStep="ocr"),
    cr("wait2", "Waiting", queuePosition=2, created=3, reason="UserTaskLimit"),
    cr("wait1", "Waiting", queuePosition=1, created=4, reason="UserTaskLimit"),
    cr("new", "Queued", created=0.1),
    cr("g1", "Running", company="globex", user="gus", admittedAt=iso(2)),
]


def tasks() -> list[views.Task]:
    live = {"run": views.Live(progress=70, current_step="entity_recognition")}
    found = [views.task_from_resource(o, live.get(o["spec"]["taskId"])) for o in OBJECTS]
    return [t for t in found if t is not None]


def test_overview_counts_running_waiting_finished_and_failures_of_the_last_hour() -> None:
    summary = views.summarize(
        "acme",
        tasks(),
        views.quota_of([quota("acme", 2)], "acme"),
        views.Usage(llm_requests=7),
        NOW,
    )
    assert (summary.running, summary.waiting, summary.finished) == (1, 3, 4)
    assert summary.failed_last_hour == 1  # "old_bad" ended 90 min ago
    assert summary.busiest_user_running == 1
    assert summary.quota.max_tasks_per_user == 2 and summary.quota.defined
    assert views.quota_of([], "globex").defined is False  # the defaults, said so
    assert views.companies_in(tasks(), [quota("initech", 1)], None) == ["acme", "globex", "initech"]
    assert views.companies_in(tasks(), [], frozenset({"acme"})) == ["acme"]


def test_company_page_queue_in_admission_order_with_eta_running_with_live_progress() -> None:
    page = views.company_page(
        "acme", OBJECTS, tasks(), views.quota_of([quota("acme", 1)], "acme"), views.Usage(), NOW
    )
    assert [q.task.task_id for q in page.queue] == ["wait1", "wait2", "new"]
    # median run 2 min, one slot: "run" (1 min in) frees it in 60 s, wait1 then runs 120 s
    assert page.queue[0].eta_start_s == pytest.approx(60)
    assert page.queue[0].eta_done_s == pytest.approx(180)
    assert page.queue[1].eta_start_s == pytest.approx(180)
    [running] = page.running
    assert (running.task.progress, running.task.current_step) == (70, "entity_recognition")
    assert [(u.user_id, u.running, u.waiting, u.finished) for u in page.users] == [("ann", 1, 3, 4)]
    assert [t.task_id for t in page.recent][:2] == ["done2", "done1"]
    assert all(t.company_id == "acme" for t in page.recent)


def test_sparkline_counts_admissions_and_completions_per_minute() -> None:
    spark = views.sparkline(tasks(), NOW)
    assert len(spark.admitted) == views.SPARK_MINUTES
    assert sum(spark.admitted) == 4  # done1, done2, run, g1 (the failures are older than 30 min)
    assert spark.completed[-9] == 1 and spark.completed[-19] == 1 and sum(spark.completed) == 2


def test_task_page_history_is_in_time_order_and_finished_tasks_cannot_be_cancelled() -> None:
    events = [
        {"lastTimestamp": iso(1), "type": "Normal", "reason": "Succeeded", "message": "done"},
        {"lastTimestamp": iso(3), "type": "Normal", "reason": "Admitted", "message": "Job x"},
    ]
    done = views.task_from_resource(OBJECTS[0])
    assert done is not None and done.progress == 100
    page = views.task_page(done, events, [], NOW)
    assert [e.reason for e in page.events] == ["Admitted", "Succeeded"]
    assert page.cancellable is False
    waiting = views.task_from_resource(OBJECTS[5])
    assert waiting is not None and views.task_page(waiting, [], [], NOW).cancellable is True
    assert views.task_from_resource({"spec": {"taskId": "x"}}) is None  # unreadable: left out


def test_task_page_shows_the_step_history_and_the_job_with_its_pods() -> None:
    job = {
        "name": "rt-job-done1",
        "namespace": "rt-ann-acme-1a2b3c",
        "state": "Failed",
        "failed": 2,
        "startTime": iso(5),
        "completionTime": iso(1),
        "pods": [
            {"name": "rt-job-done1-b", "phase": "Failed", "node": "n1", "exitCode": 75},
            {"name": "rt-job-done1-a", "phase": "Failed", "node": "n1", "restarts": 0},
        ],
    }
    task = views.task_from_resource(cr("jobbed", "Failed", jobName="rt-job-done1", job=job))
    assert task is not None and task.job is not None
    assert (task.job.state, task.job.failed, task.job.namespace) == ("Failed", 2, job["namespace"])
    assert [(p.name, p.exit_code) for p in task.job.pods] == [
        ("rt-job-done1-b", 75),
        ("rt-job-done1-a", None),
    ]
    steps = [
        TaskStep(at=iso(4), step="reading", progress=10, data={"pages": 3}),
        TaskStep(at="not a time", step="ocr", progress=40),
    ]
    page = views.task_page(task, [], steps, NOW)
    assert [(s.step, s.progress, s.data) for s in page.steps] == [
        ("reading", 10, {"pages": 3}),
        ("ocr", 40, {}),
    ]
    assert page.runner_error is None
    failed = TaskStep(at=iso(1), step=FAILURE_STEP, progress=40, data={"error": "bad PDF"})
    assert views.task_page(task, [], [*steps, failed], NOW).runner_error == "bad PDF"
    assert page.steps[0].time == NOW - timedelta(minutes=4) and page.steps[1].time is None
    dumped = page.model_dump(mode="json")  # the JSON behind the page carries both
    assert dumped["task"]["job"]["pods"][0]["node"] == "n1"
    assert dumped["steps"][0]["data"] == {"pages": 3}


def test_role_claim_is_a_map_of_company_to_role() -> None:
    claims = claims_from_payload({"sub": "alice", "company_roles": {"acme": "admin"}})
    assert claims.roles == (("acme", "admin"),)
    with pytest.raises(Unauthenticated, match="company_roles"):
        claims_from_payload({"sub": "alice", "company_roles": ["acme"]})


def test_console_scope_service_all_admin_its_companies_others_refused() -> None:
    assert console_scope(Principal(kind="service")).companies is None

    def user(roles: dict[str, str], companies: list[str]) -> Principal:
        return Principal(
            kind="firebase",
            uid="alice",
            token_companies=tuple(companies),
            token_roles=tuple(sorted(roles.items())),
        )

    scope = console_scope(user({"acme": "admin", "globex": "member"}, ["acme", "globex"]))
    assert scope.companies == frozenset({"acme"})
    with pytest.raises(Forbidden):
        scope.require("globex")
    # admin of a company it is not authorised for: nothing
    with pytest.raises(Forbidden):
        console_scope(user({"initech": "admin"}, ["acme"]))
    with pytest.raises(Forbidden):
        console_scope(user({"acme": "member"}, ["acme"]))
    # no company claim at all: the role alone opens nothing
    with pytest.raises(Forbidden):
        console_scope(Principal(kind="firebase", uid="alice", token_roles=(("acme", "admin"),)))


def test_stream_filter_finds_the_task_of_each_event() -> None:
    assert _event_task_id('{"payload": {"task_id": "doc_analysis_1"}}') == "doc_analysis_1"
    assert _event_task_id('{"payload": {"conversation_id": "conv_1"}}') == "llm_conv_1"
    assert _event_task_id("not json") is None
    assert keys.events_pattern() == "events:user:*"


@pytest.mark.unit
def test_the_console_reads_the_company_cap() -> None:
    quota = {
        "metadata": {"name": "cq-acme"},
        "spec": {"companyId": "acme", "maxTasksPerCompany": 4},
    }
    assert views.quota_of([quota], "acme").max_tasks_per_company == 4
    assert views.quota_of([], "acme").max_tasks_per_company is None
