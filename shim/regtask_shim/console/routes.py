"""The console's routes under ``/console``: HTML pages, the JSON API behind them, the live
stream (Server-Sent Events) and cancel.

Credentials: ``Authorization: Bearer`` (scripts, tests) or the HttpOnly cookie that the login
page sets from a pasted token (service token or Firebase ID token); the page itself carries no
secret. Cancel is a POST that must carry ``X-Regtask-Console: 1``: with the cookie's
``SameSite=Strict`` no other site can send it.

Live: the stream PSUBSCRIBEs the users' event channels, keeps the events of companies in scope
(by the task document's company) and sends a ``tick`` every ``TICK_S`` so that changes only the
operator's CR status carries (a phase, a queue position) reach the page too; the page answers
each by fetching its own ``?fragment=1`` and swapping the live part. Hazard: every open page
holds one Redis pub/sub connection (``PSUBSCRIBE events:user:*``) for as long as it is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.responses import StreamingResponse

from regtask import keys
from regtask.identifiers import ID_MAX_LENGTH
from regtask_shim.auth import Authenticator
from regtask_shim.console import views
from regtask_shim.console.access import Scope, console_scope
from regtask_shim.console.source import ConsoleSource
from regtask_shim.errors import BadArguments, Forbidden, NotFound, ShimError, Unauthenticated, echo
from regtask_shim.models import LLM_TASK_PREFIX
from regtask_shim.service import ShimService

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
COOKIE = "regtask_console"
PREFIX = "/console"
TICK_S = 3.0
CSRF_HEADER = "X-Regtask-Console"


class LoginArgs(BaseModel):
    token: str = Field(min_length=1, max_length=8192)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _spark_points(series: list[int], width: int = 240, height: int = 36) -> str:
    top = max(max(series, default=0), 1)
    step = width / max(len(series) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - 2 - (value / top) * (height - 4):.1f}"
        for i, value in enumerate(series)
    )


def install_console(
    app: Any, service: ShimService, authenticator: Authenticator, source: ConsoleSource
) -> None:
    """Mount the console on the shim's app (same authenticator, same cancel rules)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["dur"] = _fmt_s
    templates.env.globals["spark_points"] = _spark_points
    templates.env.globals["prefix"] = PREFIX
    templates.env.globals["step_cap"] = keys.TASK_STEP_HISTORY_CAP
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    async def scope_of(request: Request) -> Scope:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        token = token or request.cookies.get(COOKIE)
        who = await authenticator.authenticate(token)
        request.state.caller = who.describe()
        return console_scope(who)

    def now() -> datetime:
        return datetime.now(UTC)

    async def read_tasks() -> tuple[list[dict[str, Any]], list[views.Task]]:
        objects = await source.tasks()
        running = [
            str(o["spec"]["taskId"])
            for o in objects
            if (o.get("status") or {}).get("phase") == "Running" and o.get("spec")
        ]
        live = await source.live(running)
        tasks = [
            t
            for t in (
                views.task_from_resource(o, live.get(str((o.get("spec") or {}).get("taskId"))))
                for o in objects
            )
            if t is not None
        ]
        return objects, tasks

    async def overview(scope: Scope) -> views.Overview:
        _, tasks = await read_tasks()
        quotas = await source.quotas()
        at = now()
        names = views.companies_in(tasks, quotas, scope.companies)
        usages = await asyncio.gather(*(source.usage(c) for c in names))
        summaries = [
            views.summarize(c, tasks, views.quota_of(quotas, c), u, at)
            for c, u in zip(names, usages, strict=True)
        ]
        visible = [t for t in tasks if scope.sees(t.company_id)]
        return views.Overview(
            companies=summaries, spark=views.sparkline(visible, at), generated_at=at
        )

    async def company(scope: Scope, company_id: str) -> views.CompanyPage:
        scope.require(company_id)
        objects, tasks = await read_tasks()
        quota = views.quota_of(await source.quotas(), company_id)
        use = await source.usage(company_id)
        return views.company_page(company_id, objects, tasks, quota, use, now())

    async def task(scope: Scope, task_id: str) -> views.TaskPage:
        if len(task_id) > ID_MAX_LENGTH:
            raise BadArguments("task id too long")
        obj = await source.task(task_id)
        if obj is None:
            raise NotFound(f"unknown task {echo(task_id)}")
        company_id = str((obj.get("spec") or {}).get("companyId"))
        scope.require_task(company_id, task_id)
        live = await source.live([task_id])
        found = views.task_from_resource(obj, live.get(task_id))
        if found is None:
            raise NotFound(f"task {echo(task_id)} is unreadable")
        events, steps = await asyncio.gather(source.events(obj), source.steps(task_id))
        return views.task_page(found, events, steps, now())

    # ------------------------------------------------------------------ pages

    async def page(
        request: Request,
        name: str,
        build: Callable[[Scope], Awaitable[BaseModel]],
        **extra: Any,
    ) -> Response:
        try:
            scope = await scope_of(request)
            model = await build(scope)
        except Unauthenticated:
            return RedirectResponse(f"{PREFIX}/login", status_code=303)
        except ShimError as exc:
            return templates.TemplateResponse(
                request,
                "error.html",
                {"status": exc.status, "message": exc.message, "scope": None},
                status_code=exc.status,
            )
        if request.query_params.get("fragment") == "1":
            name = name.replace(".html", "_live.html")  # only the live part, for the swap
        context = {"m": model, "scope": scope, **extra}
        return templates.TemplateResponse(request, name, context)

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"scope": None})

    @router.get("/", response_class=HTMLResponse)
    async def overview_page(request: Request) -> Response:
        return await page(request, "overview.html", overview)

    @router.get("/companies/{company_id}", response_class=HTMLResponse)
    async def company_html(request: Request, company_id: str) -> Response:
        return await page(
            request, "company.html", lambda s: company(s, company_id), company_id=company_id
        )

    @router.get("/tasks/{task_id}", response_class=HTMLResponse)
    async def task_html(request: Request, task_id: str) -> Response:
        return await page(request, "task.html", lambda s: task(s, task_id), task_id=task_id)

    # ------------------------------------------------------------------ API

    @router.post("/api/session")
    async def login(args: LoginArgs, request: Request) -> Response:
        who = await authenticator.authenticate(args.token)
        scope = console_scope(who)
        answer = JSONResponse(
            {
                "success": True,
                "caller": who.describe(),
                "companies": None if scope.companies is None else sorted(scope.companies),
            }
        )
        answer.set_cookie(
            COOKIE,
            args.token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=PREFIX,
        )
        log.info("console_login", caller=who.describe())
        return answer

    @router.post("/api/logout")
    async def logout() -> Response:
        answer = JSONResponse({"success": True})
        answer.delete_cookie(COOKIE, path=PREFIX)
        return answer

    def as_json(model: BaseModel) -> JSONResponse:
        return JSONResponse({"success": True, **model.model_dump(mode="json")})

    @router.get("/api/overview")
    async def overview_api(request: Request) -> Response:
        return as_json(await overview(await scope_of(request)))

    @router.get("/api/companies/{company_id}")
    async def company_api(request: Request, company_id: str) -> Response:
        return as_json(await company(await scope_of(request), company_id))

    @router.get("/api/tasks/{task_id}")
    async def task_api(request: Request, task_id: str) -> Response:
        return as_json(await task(await scope_of(request), task_id))

    @router.post("/api/tasks/{task_id}/cancel")
    async def cancel_api(
        request: Request,
        task_id: str,
        csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
    ) -> Response:
        scope = await scope_of(request)
        if csrf != "1":
            raise Forbidden(f"cancel needs the header {CSRF_HEADER}: 1")
        view = await service.task_view(task_id)
        if view is None:
            raise NotFound(f"unknown task {echo(task_id)}")
        scope.require_task(view.company_id, task_id)
        answer = await service.cancel_viewed(view, scope.principal)
        return JSONResponse(answer.model_dump(mode="json", exclude_none=True))

    @router.get("/api/stream")
    async def stream(request: Request) -> Response:
        scope = await scope_of(request)
        return StreamingResponse(
            _events(request, scope),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _events(request: Request, scope: Scope) -> AsyncIterator[str]:
        companies: dict[str, str | None] = {}
        pubsub = source.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(keys.events_pattern())
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                try:
                    message = await pubsub.get_message(timeout=TICK_S)
                except RedisError:
                    yield "event: error\ndata: {}\n\n"
                    return
                if message is None:
                    yield f"event: tick\ndata: {json.dumps({'at': now().isoformat()})}\n\n"
                    continue
                task_id = _event_task_id(message.get("data"))
                if task_id is None:
                    continue
                if task_id not in companies:
                    companies[task_id] = await source.company_of_task(task_id)
                company_id = companies[task_id]
                if company_id is None or not scope.sees(company_id):
                    continue
                yield f"event: task\ndata: {json.dumps({'task_id': task_id})}\n\n"
        finally:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(HERE / "static")), name="console")

    async def console_root() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    app.add_api_route(PREFIX, console_root, methods=["GET"], include_in_schema=False)


def _event_task_id(raw: Any) -> str | None:
    """The task an event on a user channel is about (LLM events name the conversation)."""
    try:
        event = json.loads(raw)
        payload = event["payload"]
    except (TypeError, ValueError, KeyError):
        return None
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("task_id"), str):
        return str(payload["task_id"])
    if isinstance(payload.get("conversation_id"), str):
        return f"{LLM_TASK_PREFIX}{payload['conversation_id']}"
    return None
