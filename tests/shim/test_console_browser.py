"""The web console in a real browser (Debian's Chromium through Playwright) on the real stack.

The production shim process (``python -m regtask_shim``) with the Firebase Auth emulator, the
operator and the gateway as processes, the test cluster (every task a real pod of the runner
image), Redis. Tasks are submitted through the shim's ``POST /rpc`` as the web app does, while
the pages are open: they appear, wait, run, finish and are cancelled without any reload.
Screenshots of each page go to ``$REGTASK_CONSOLE_SCREENSHOTS`` when set (``docs/console``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from playwright.sync_api import Browser, Page, expect

from regtask import naming
from regtask_dev.firebase_auth import FirebaseAuthEmulator, SignedIn
from regtask_dev.kind import KindCluster
from regtask_dev.redis_server import RedisServer
from regtask_dev.shim_process import ShimProcess
from regtask_dev.stack import GatewayProcess
from tests.fixtures.platform import create_company_quota, gateway_env
from tests.shim.test_firebase_auth_emulator import admin_app

pytestmark = [pytest.mark.kube, pytest.mark.firebase_auth, pytest.mark.browser, pytest.mark.slow]

TOKEN = "console-" + "0123456789abcdef" * 3
ACME, GLOBEX = "acme", "globex"
TEXT = (
    "Invoice 2025-042 from ACME Industries, total 1 250,00 EUR, contact billing@acme.example. " * 3
)


@dataclass
class Stack:
    shim: ShimProcess
    http: httpx.Client
    emulator: FirebaseAuthEmulator
    shots: list[Path]
    kube: client.ApiClient

    @property
    def console(self) -> str:
        return f"{self.shim.url}/console"

    def start_doc(self, user: str, company: str, job: str) -> str:
        answer = self.http.post(
            "/rpc",
            json={
                "method": "TASK.start_document_analysis",
                "args": [user, {"text": TEXT, "company_id": company}, job],
            },
        )
        assert answer.status_code == 202 or answer.status_code == 200, answer.text
        task_id: str = answer.json()["task_id"]
        return task_id

    def api(self, path: str, token: str | None, method: str = "GET", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"{self.console}{path}", headers=headers, timeout=30, **kw)


def user_with_roles(emulator: FirebaseAuthEmulator, name: str, roles: dict[str, str]) -> SignedIn:
    """A Firebase user whose custom claims give it ``roles`` in those companies."""
    from firebase_admin import auth

    email, password = f"{name}@example.com", f"pw-{name}-123456"
    user = emulator.sign_up(email, password)
    auth.set_custom_user_claims(
        user.uid,
        {"authorized_companies_ids": sorted(roles), "company_roles": roles},
        app=admin_app(emulator.project_id),
    )
    return emulator.sign_in(email, password)


@pytest.fixture
def stack(
    cluster: KindCluster,
    redis_server: RedisServer,
    control_namespace: str,
    kube_api: client.ApiClient,
    operator_factory: Any,
    gateway: GatewayProcess,
    auth_emulator: FirebaseAuthEmulator,
    tmp_path: Path,
) -> Iterator[Stack]:
    create_company_quota(kube_api, control_namespace, ACME, max_tasks=1)
    operator_factory(**gateway_env(gateway))
    shim = ShimProcess(
        redis_url=redis_server.url,
        kubeconfig=cluster.kubeconfig_path,
        namespace=control_namespace,
        service_token=TOKEN,
        workdir=tmp_path / "shim",
        env={
            "SHIM_TASK_STARTS_PER_MINUTE": "0",
            "FIREBASE_PROJECT_ID": auth_emulator.project_id,
            "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator.host,
            "SHIM_ALLOW_AUTH_EMULATOR": "true",
        },
    )
    with (
        shim,
        httpx.Client(
            base_url=shim.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as http,
    ):
        yield Stack(shim, http, auth_emulator, [], kube_api)


def shoot(page: Page, name: str) -> None:
    target = os.environ.get("REGTASK_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def sign_in(page: Page, stack: Stack, token: str) -> None:
    page.goto(f"{stack.console}/")
    expect(page).to_have_url(f"{stack.console}/login")  # nobody gets in without a credential
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_console_follows_tasks_live_and_cancels_one(browser: Browser, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    sign_in(page, stack, "not-a-token")
    expect(page.locator("#login-error")).to_contain_text("invalid token")
    shoot(page, "login")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{stack.console}/")
    expect(page.locator("h1")).to_have_text("Companies")
    expect(page.locator("#who")).to_contain_text("all companies")
    expect(page.locator("#live-state")).to_have_class("live on")
    page.evaluate("window.__notReloaded = true")

    # Submitted through the shim while the page is open: the company appears without a reload.
    first = stack.start_doc("ann", ACME, "console-1")
    expect(page.locator("tr[data-company=acme]")).to_be_visible(timeout=30_000)
    assert page.evaluate("window.__notReloaded") is True

    page.click("a[href$='/companies/acme']")
    expect(page.locator("h1")).to_have_text(ACME)
    page.evaluate("window.__notReloaded = true")
    second = stack.start_doc("ann", ACME, "console-2")
    third = stack.start_doc("ann", ACME, "console-3")
    other = stack.start_doc("gus", GLOBEX, "console-g")

    # Watch the page (never reloaded) through the run: what each task looked like, in order.
    seen: dict[str, set[str]] = {first: set(), second: set(), third: set()}
    steps: set[str] = set()
    shot_running = False
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        for task_id, states in seen.items():
            for table in ("queue", "running", "recent"):
                if page.locator(f"#{table} tr[data-task='{task_id}']").count():
                    states.add(table)
        for step in page.locator("#running td.step").all_inner_texts():
            steps.add(step)
        busy = page.locator("#running tr[data-task]").count()
        if busy and page.locator("#queue tr[data-task]").count() >= 2 and not shot_running:
            shoot(page, "company")
            shot_running = True
        if "recent" in seen[first] and "queue" in seen[third]:
            break
        page.wait_for_timeout(150)
    if not shot_running:
        shoot(page, "company")
    assert page.evaluate("window.__notReloaded") is True
    assert "running" in seen[first] and "recent" in seen[first], seen
    assert "queue" in seen[second] and "queue" in seen[third], seen  # limit 1: they waited
    # the runner's own steps, swapped in live (the operator's first step is "starting")
    assert steps - {"starting", ""}, f"no runner step was shown for a running task: {steps}"
    # the queue shows the operator's positions in admission order
    expect(page.locator(f"#queue tr[data-task='{third}'] td").first).not_to_have_text("—")

    # Cancel the waiting third task from its page: it ends Cancelled, live.
    page.click(f"a[href$='/tasks/{third}']")
    expect(page.locator("#phase")).to_have_text("Waiting", timeout=20_000)
    page.evaluate("window.__notReloaded = true")
    page.click("#cancel")
    expect(page.locator("#phase")).to_have_text("Cancelled", timeout=60_000)
    assert page.evaluate("window.__notReloaded") is True
    expect(page.locator("#history")).to_contain_text("Cancel")
    assert (
        stack.http.post("/rpc", json={"method": "TASK.get_task_status", "args": [third]}).json()[
            "status"
        ]
        == "cancelled"
    )

    # The second runs once the first is done, and finishes; its page shows history and result.
    page.goto(f"{stack.console}/tasks/{second}")
    expect(page.locator("#phase")).to_have_text("Succeeded", timeout=150_000)
    expect(page.locator("#progress")).to_have_attribute("value", "100")
    expect(page.locator("#history")).to_contain_text("Admitted")
    expect(page.locator("#result")).to_contain_text("entities")
    expect(page.locator("#cancel")).to_have_count(0)
    # its steps as the runner reported them, with their data, oldest first
    steps_table = page.locator("#steps")
    for shown in ("extracting_text", "entity_recognition", "entities_found", "completed"):
        expect(steps_table).to_contain_text(shown)
    expect(steps_table.locator("tbody tr td.step").first).to_have_text("extracting_text")
    # its Job and pod, as the cluster has them
    [pod] = (
        client.CoreV1Api(stack.kube)
        .list_namespaced_pod(
            naming.tenant_namespace("ann", ACME),
            label_selector=f"batch.kubernetes.io/job-name={naming.job_name(second)}",
        )
        .items
    )
    expect(page.locator("#jobinfo")).to_contain_text(naming.job_name(second))
    expect(page.locator("#jobinfo .jobstate")).to_have_text("Complete")
    expect(page.locator("#pods")).to_contain_text(str(pod.metadata.name))
    expect(page.locator("#pods")).to_contain_text(str(pod.spec.node_name))
    expect(page.locator("#pods td.exit").first).to_have_text("0")
    shoot(page, "task")
    behind = stack.api(f"/api/tasks/{second}", TOKEN).json()  # the JSON behind the page
    assert [s["step"] for s in behind["steps"]][-1] == "completed"
    assert behind["task"]["job"]["pods"][0]["name"] == pod.metadata.name
    # a finished task is refused by the same rule as TASK.cancel_task (409)
    answer = httpx.post(
        f"{stack.console}/api/tasks/{second}/cancel",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Regtask-Console": "1"},
        timeout=30,
    )
    assert answer.status_code == 409 and "already finished" in answer.json()["error"]

    page.goto(f"{stack.console}/")
    expect(page.locator("tr[data-company=globex]")).to_be_visible()
    expect(page.locator("tr[data-company=acme] td.finished")).to_have_text("3", timeout=60_000)
    shoot(page, "overview")
    context.close()
    assert other


def test_company_admin_sees_only_its_company_and_nobody_else_gets_in(
    browser: Browser, stack: Stack
) -> None:
    mine = stack.start_doc("ann", ACME, "scope-a")
    theirs = stack.start_doc("gus", GLOBEX, "scope-g")
    admin = user_with_roles(stack.emulator, "alice", {ACME: "admin"})
    member = user_with_roles(stack.emulator, "bob", {ACME: "member", GLOBEX: "member"})
    admin_globex = user_with_roles(stack.emulator, "gina", {GLOBEX: "admin"})

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    sign_in(page, stack, admin.id_token)
    expect(page).to_have_url(f"{stack.console}/")
    expect(page.locator("#who")).to_contain_text(f"admin of {ACME}")
    expect(page.locator("tr[data-company=acme]")).to_be_visible()
    expect(page.locator("tr[data-company=globex]")).to_have_count(0)
    shoot(page, "overview-company-admin")
    page.goto(f"{stack.console}/companies/{GLOBEX}")
    expect(page.locator("#error-status")).to_have_text("403")
    shoot(page, "forbidden")
    page.goto(f"{stack.console}/tasks/{theirs}")
    expect(page.locator("#error-status")).to_have_text("403")
    assert "gus" not in page.content()  # nothing of the other company's task leaks
    assert naming.job_name(theirs) not in page.content()  # nor its Job, pods or steps
    assert page.locator("#steps, #pods, #jobinfo").count() == 0
    page.goto(f"{stack.console}/tasks/{mine}")
    expect(page.locator("h1")).to_contain_text(mine)
    expect(page.locator("#steps")).to_be_visible()  # its own task: steps, Job and pods
    expect(page.locator("#jobinfo")).to_be_visible()
    context.close()

    # The API behind the pages says the same.
    token = admin.id_token
    overview = stack.api("/api/overview", token)
    assert overview.status_code == 200
    assert [c["company_id"] for c in overview.json()["companies"]] == [ACME]
    assert stack.api(f"/api/companies/{GLOBEX}", token).status_code == 403
    assert stack.api(f"/api/companies/{ACME}", token).status_code == 200
    denied = stack.api(f"/api/tasks/{theirs}", token)
    assert denied.status_code == 403
    assert set(denied.json()) == {"success", "error"}  # no steps, no Job, no pod
    cancel = httpx.post(
        f"{stack.console}/api/tasks/{theirs}/cancel",
        headers={"Authorization": f"Bearer {token}", "X-Regtask-Console": "1"},
        timeout=30,
    )
    assert cancel.status_code == 403
    status = stack.http.post("/rpc", json={"method": "TASK.get_task_status", "args": [theirs]})
    assert status.json()["status"] != "cancelled"
    # the other company's admin: the mirror image
    other = stack.api("/api/overview", admin_globex.id_token).json()
    assert [c["company_id"] for c in other["companies"]] == [GLOBEX]
    assert stack.api(f"/api/tasks/{mine}", admin_globex.id_token).status_code == 403

    # The live stream of acme's admin carries acme's task events and none of globex's.
    seen: list[str] = []
    with httpx.stream(
        "GET",
        f"{stack.console}/api/stream",
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30),
    ) as events:
        assert events.status_code == 200
        theirs_live = stack.start_doc("gus", GLOBEX, "scope-g2")
        mine_live = stack.start_doc("ann", ACME, "scope-a2")
        deadline = time.monotonic() + 120
        for line in events.iter_lines():
            if line.startswith("data: ") and "task_id" in line:
                seen.append(json.loads(line[6:])["task_id"])
            if seen.count(mine_live) >= 2 or time.monotonic() > deadline:
                break
    assert mine_live in seen, seen
    assert theirs_live not in seen and theirs not in seen, seen

    # Nobody else: a member (authorised, not admin), no credential, a bad one, a cookie-less page.
    assert stack.api("/api/overview", member.id_token).status_code == 403
    assert stack.api("/api/overview", None).status_code == 401
    assert stack.api("/api/overview", "nonsense").status_code == 401
    assert stack.api("/api/stream", None).status_code == 401
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, stack, member.id_token)
    expect(page.locator("#login-error")).to_contain_text("role 'admin'")
    page.goto(f"{stack.console}/companies/{ACME}")
    expect(page).to_have_url(f"{stack.console}/login")
    context.close()
