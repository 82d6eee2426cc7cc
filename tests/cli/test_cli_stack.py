"""``regtask`` against the real stack: shim process, operator, gateway, the test cluster, Redis.

Nothing is imitated: tasks are submitted through the shim's ``POST /rpc`` like the web app's,
the operator admits them on the test cluster, runners run as real pods, and
``watch`` reads the events the gateway and the operator publish on Redis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from regtask import naming
from regtask.crmodels import API_GROUP, API_VERSION
from regtask.eta import NEVER
from regtask_dev.stack import GatewayProcess, wait_until
from tests.fixtures.cli import RegtaskCli
from tests.fixtures.platform import create_company_quota, gateway_env

pytestmark = pytest.mark.kube

DATA = Path(__file__).resolve().parents[1] / "data"

TEXT = (
    "Facture 2025-042 de ACME Industries SAS, datée du 24/09/2025. "
    "Montant total: 1 250,00 EUR. IBAN FR76 3000 6000 0112 3456 7890 189. "
    "Contact: billing@acme.example"
)


def json_out(stdout: str) -> Any:
    return json.loads(stdout)


def test_submit_then_watch_to_completion_then_list_and_status(
    regtask_cli: RegtaskCli,
    operator_factory: Any,
    gateway: GatewayProcess,
) -> None:
    operator_factory(**gateway_env(gateway))
    task_id = "doc_analysis_cli-e2e"

    submitted = regtask_cli.run(
        "submit",
        "document-analysis",
        "--user",
        "cli_user",
        "--company",
        "acme",
        "--text",
        TEXT,
        "--job-id",
        "cli-e2e",
    )
    assert submitted.exit_code == 0, submitted.output
    assert f"task {task_id} queued" in submitted.stdout

    watched = regtask_cli.run(
        "watch", task_id, "--user", "cli_user", "--poll-interval", "10", "--timeout", "150"
    )
    assert watched.exit_code == 0, watched.output + regtask_cli.shim.log_text()[-2000:]
    lines = watched.stdout.splitlines()
    # fed by the real-time events: the runner's steps arrive as event lines, in order
    steps = [line for line in lines if " event " in line]
    assert any("entity_recognition" in line and "entities_found" in line for line in steps)
    assert "completed" in steps[-1] and "100%" in steps[-1]
    assert any("━" in line and "100%" in line for line in lines)  # the bar's final state
    assert f"done: {task_id} completed 100% (completed)" in watched.stdout
    assert "entities_found:" in watched.stdout  # the result's summary

    listed = regtask_cli.run("list", "--user", "cli_user")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if task_id in line)
    assert "document_analysis" in row and "completed" in row and "100%" in row

    # the installed console script, as a user runs it
    status = regtask_cli.run_process("status", task_id, "--json")
    assert status.returncode == 0, status.stderr
    answer = json_out(status.stdout)
    assert (answer["status"], answer["progress"]) == ("completed", 100)
    assert "FR7630006000011234567890189" in json.dumps(answer["result"]).replace(" ", "")

    pretty = regtask_cli.run("status", task_id)
    assert pretty.exit_code == 0
    assert "completed" in pretty.stdout and "result.entities_found" in pretty.stdout

    finished = regtask_cli.run("cancel", task_id)
    assert finished.exit_code == 6
    assert finished.stderr.strip() == (
        "error: shim refused the call (HTTP 409): task already finished with status 'completed'"
    )

    # a file, followed right from the submit (--watch), as JSON lines
    followed = regtask_cli.run(
        *("submit", "document-analysis", "-u", "cli_user", "-c", "acme"),
        *("--file", str(DATA / "report.md"), "--watch", "--json", "--timeout", "150"),
    )
    assert followed.exit_code == 0, followed.output
    started, *updates = (json_out(line) for line in followed.stdout.splitlines())
    assert started["task_id"].startswith("doc_analysis_cli-") and started["status"] == "queued"
    assert any(u["source"] == "event" and u["current_step"] == "key_phrases" for u in updates)
    final = updates[-1]
    assert (final["source"], final["status"], final["progress"]) == ("final", "completed", 100)
    assert final["result"]["documents"][0]["kind"] == "markdown"

    # watching a finished task answers at once, from the status read
    again = regtask_cli.run("watch", task_id, "--user", "cli_user", "--json", "--timeout", "20")
    assert again.exit_code == 0, again.output
    assert json_out(again.stdout.splitlines()[0])["source"] == "start"


def task_spec(api: client.ApiClient, namespace: str, task_id: str) -> dict[str, Any]:
    task = client.CustomObjectsApi(api).get_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "registrytasks", naming.task_resource_name(task_id)
    )
    assert isinstance(task, dict)
    return dict(task["spec"])


def quota_status(api: client.ApiClient, namespace: str, company_id: str) -> dict[str, Any]:
    quota = client.CustomObjectsApi(api).get_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "companyquotas", naming.derived_name("cq", company_id)
    )
    assert isinstance(quota, dict)
    return dict(quota.get("status") or {})


def test_waiting_task_shows_in_quota_then_cancel_stops_it(
    regtask_cli: RegtaskCli,
    operator_factory: Any,
    kube_api: client.ApiClient,
    control_namespace: str,
) -> None:
    create_company_quota(kube_api, control_namespace, "frozen_co", max_tasks=0)
    operator_factory()
    wait_until(
        lambda: "activeTasks" in quota_status(kube_api, control_namespace, "frozen_co"),
        60,
        "operator read the CompanyQuota",
    )

    submitted = regtask_cli.run(
        "submit", "llm", "--user", "cli_user2", "--company", "frozen_co", "--prompt", "Hi", "--json"
    )
    assert submitted.exit_code == 0, submitted.output
    started = json_out(submitted.stdout)
    task_id = started["task_id"]
    assert task_id == f"llm_{started['conversation_id']}"

    def status_of() -> str:
        result = regtask_cli.run("status", task_id, "--json")
        assert result.exit_code == 0, result.output
        return str(json_out(result.stdout)["status"])

    wait_until(lambda: status_of() == "waiting_quota", 60, "task waiting for quota")

    def waiting_at_one() -> dict[str, Any] | None:
        result = regtask_cli.run("quota", "frozen_co", "--json")
        assert result.exit_code == 0, result.output
        doc: dict[str, Any] = json_out(result.stdout)
        rows = doc["waiting"]
        return doc if rows and rows[0]["queue_position"] == 1 else None

    doc = wait_until(waiting_at_one, 30, "waiting at position 1")
    assert (doc["max_tasks_per_user"], doc["limit_source"]) == (0, "CompanyQuota")
    [row] = doc["waiting"]
    assert (row["task_id"], row["user_id"], row["task_type"]) == (
        task_id,
        "cli_user2",
        "llm_conversation",
    )
    assert row["reason"] == "UserConcurrencyQuota"
    assert (row["eta_start_s"], row["eta_note"]) == (None, NEVER)
    assert doc["running"] == []

    pretty = regtask_cli.run("quota", "frozen_co")
    assert pretty.exit_code == 0, pretty.output
    assert "Waiting (1)" in pretty.stdout and "Running (0)" in pretty.stdout
    line = next(line for line in pretty.stdout.splitlines() if task_id in line)
    assert line.split()[1] == "1"  # "│ 1 │ task │ ...": queue position 1
    assert "cli_user2" in line and "never" in line

    # the other submit forms queue behind it (LLM.start_conversation for a model, vectors)
    chosen = regtask_cli.run(
        *("submit", "llm", "-u", "cli_user2", "-c", "frozen_co", "-p", "Hi again"),
        *("--model", "tiny-model", "--temperature", "0.3"),
    )
    assert chosen.exit_code == 0, chosen.output
    chosen_id = chosen.stdout.split()[1]
    vectors = regtask_cli.run(
        *("submit", "vectors", "-u", "cli_user2", "-c", "frozen_co", "--collection", "reports"),
        *("--file", str(DATA / "report.md"), "--file", str(DATA / "invoice.pdf"), "--json"),
    )
    assert vectors.exit_code == 0, vectors.output
    vectors_id = json_out(vectors.stdout)["task_id"]

    def queue() -> list[tuple[int | None, str]]:
        rows = json_out(regtask_cli.run("quota", "frozen_co", "--json").stdout)["waiting"]
        return [(row["queue_position"], row["task_id"]) for row in rows]

    expected = [(1, task_id), (2, chosen_id), (3, vectors_id)]
    wait_until(lambda: queue() == expected, 30, "three tasks queued")
    spec = task_spec(kube_api, control_namespace, chosen_id)
    assert spec["parameters"] == {"model": "tiny-model", "temperature": "0.3"}
    inputs = task_spec(kube_api, control_namespace, vectors_id)["inputs"]
    assert [(i["name"], i["contentType"]) for i in inputs] == [
        ("report.md", "text/markdown"),
        ("invoice.pdf", "application/pdf"),
    ]
    assert inputs[1]["encoding"] == "base64"

    # watch (the console script) is subscribed before the cancel: the end arrives as an event
    watcher = regtask_cli.popen(
        *("watch", task_id, "--user", "cli_user2", "--json"),
        *("--poll-interval", "60", "--timeout", "90"),
    )
    try:
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        assert (first["source"], first["status"]) == ("start", "waiting_quota")
        cancelled = regtask_cli.run("cancel", task_id)
        assert cancelled.exit_code == 0, cancelled.output
        assert f"cancel requested for {task_id}" in cancelled.stdout
        rest, errors = watcher.communicate(timeout=90)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 1, errors
    updates = [json.loads(line) for line in rest.splitlines()]
    assert any(u["source"] == "event" and u["status"] == "cancelled" for u in updates), updates
    assert (updates[-1]["source"], updates[-1]["status"]) == ("final", "cancelled")
    assert status_of() == "cancelled"

    pretty_end = regtask_cli.run("watch", task_id, "--user", "cli_user2", "--timeout", "20")
    assert pretty_end.exit_code == 1, pretty_end.output
    assert f"CANCELLED: {task_id} cancelled" in pretty_end.stdout
    for other in (chosen_id, vectors_id):
        assert regtask_cli.run("cancel", other).exit_code == 0
    wait_until(lambda: queue() == [], 30, "queue emptied by the cancels")

    # failures: one line on stderr, a documented exit code
    unknown = regtask_cli.run("status", "no_such_task")
    assert unknown.exit_code == 5
    assert unknown.stderr.strip() == "error: unknown task 'no_such_task'"
    denied = regtask_cli.run("--token", "x" * 40, "list", "--user", "cli_user2")
    assert denied.exit_code == 4
    assert denied.stderr.startswith("error: shim refused the credentials (401)")
    assert len(denied.stderr.strip().splitlines()) == 1
