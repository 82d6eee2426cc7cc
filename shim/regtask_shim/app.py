"""The shim's HTTP surface: ``POST /rpc`` for the web app, REST routes, ``/healthz``.

:func:`create_app` receives its collaborators (registry, task store, authenticator) so tests
wire real ones against real servers; ``python -m regtask_shim`` builds the production ones.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import regtask
from regtask.identifiers import ID_MAX_LENGTH, ID_PATTERN
from regtask.registry import Registry
from regtask.servicemetrics import CONTENT_TYPE_LATEST, ShimMetrics
from regtask_shim import rpc
from regtask_shim.auth import Authenticator, Principal
from regtask_shim.console.routes import install_console
from regtask_shim.console.source import ConsoleSource
from regtask_shim.errors import ErrorAnswer, answer_for, error_response, install_error_handlers
from regtask_shim.models import (
    CancelAnswer,
    CollectionAnswer,
    CompanyIdArgs,
    CompanyUsersAnswer,
    ConversationIdArgs,
    ConversationStatusAnswer,
    DocumentAnalysisArgs,
    HealthAnswer,
    HeartbeatCollectionArgs,
    LlmConversationArgs,
    LlmStartArgs,
    RegisterCollectionArgs,
    RegisterUserAnswer,
    RegisterUserArgs,
    RpcAnswer,
    RpcMethodInfo,
    RpcRequest,
    TaskIdArgs,
    TaskListAnswer,
    TaskStartedAnswer,
    TaskStatusAnswer,
    UnregisterSessionAnswer,
    UnregisterSessionArgs,
    UserIdArgs,
    UserRegistryAnswer,
    VectorComputationArgs,
)
from regtask_shim.presence import PresenceReader
from regtask_shim.service import ShimService
from regtask_shim.settings import ShimSettings
from regtask_shim.taskstore import KubeTaskStore, TaskStore

log = structlog.get_logger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorAnswer, "description": text}
    for code, text in {
        400: "Bad arguments (the message names the parameter)",
        401: "Missing, invalid or expired credentials",
        403: "Not authorized (another user's data, or a company not authorized)",
        404: "Unknown method, task, conversation or user",
        409: "Conflict (id already used by another task, task already finished)",
        413: "Request too large",
        429: "Quota exceeded",
        503: "Redis or Kubernetes unavailable",
    }.items()
}
IdPath = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
SessionPath = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[!-~]+$")]


class EdgeMiddleware:
    """Outermost layer: request size limit (413), last-resort error answer, one log line."""

    def __init__(self, app: ASGIApp, max_request_bytes: int, metrics: ShimMetrics) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = {"code": 0}
        scope.setdefault("state", {})

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        body = await self._read_body(scope, receive, tracked_send)
        if body is not None:
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            try:
                await self.app(scope, replay, tracked_send)
            except Exception as exc:
                if status["code"]:
                    raise
                await answer_for(exc)(scope, receive, tracked_send)
        state = scope["state"]
        path = scope.get("path", "")
        level = log.debug if path in ("/healthz", "/metrics") else log.info
        rpc_method = state.get("rpc_method")
        if rpc_method is not None:
            # Only published names become labels: arbitrary ones would explode the series.
            label = rpc_method if rpc_method in rpc.METHODS else "unknown"
            self.metrics.rpc_calls.labels(label, str(status["code"])).inc()
        level(
            "http_request",
            method=scope.get("method"),
            path=path,
            status=status["code"],
            duration_ms=round((time.perf_counter() - began) * 1000, 2),
            rpc_method=state.get("rpc_method"),
            caller=state.get("caller"),
        )

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body; None when answered 413 already (or the client went away)."""
        too_large = f"request too large: at most {self.max_request_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_request_bytes:
                    await error_response(413, too_large)(scope, receive, send)
                    return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left: nothing to answer, nothing to run
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                await error_response(413, too_large)(scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def create_app(
    settings: ShimSettings,
    *,
    registry: Registry,
    task_store: TaskStore,
    authenticator: Authenticator,
    presence: PresenceReader | None = None,
    owns_resources: bool = False,
) -> FastAPI:
    """The ASGI app; with ``owns_resources`` it closes the Redis and Kubernetes clients on exit.

    ``presence``: the Firestore presence registry, read to pick a company for a call that names
    none (None: that rung is skipped).
    """
    service = ShimService(settings, registry, task_store, presence)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info(
            "shim_started",
            namespace=settings.namespace,
            unified_registry_enabled=settings.unified_registry_enabled,
            firebase=authenticator.verifier is not None,
            presence_registry=presence is not None,
        )
        yield
        if owns_resources:
            await task_store.close()
            await registry.client.aclose()
            if presence is not None:
                presence.close()

    app = FastAPI(
        title="regtask RPC shim",
        version=regtask.__version__,
        description="The web app's RPC door (POST /rpc) and the same operations as REST.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    metrics = ShimMetrics()
    app.add_middleware(
        EdgeMiddleware, max_request_bytes=settings.max_request_bytes, metrics=metrics
    )

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    bearer = HTTPBearer(auto_error=False, description="Firebase ID token or service token")

    async def principal(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        who = await authenticator.authenticate(credentials.credentials if credentials else None)
        request.state.caller = who.describe()
        return who

    Caller = Annotated[Principal, Depends(principal)]

    # ---------------------------------------------------------------- RPC

    @app.post("/rpc", response_model=RpcAnswer, responses=_ERRORS, tags=["rpc"])
    async def rpc_endpoint(body: RpcRequest, request: Request, who: Caller) -> JSONResponse:
        """``rpc_call(method, args=[...], kwargs={...})``: see GET /rpc/methods for the table."""
        request.state.rpc_method = body.method[:100]
        answer = await rpc.call(service, who, body.method, body.args, body.keyword_args)
        return JSONResponse(answer.model_dump(mode="json", exclude_none=True))

    @app.get("/rpc/methods", response_model=list[RpcMethodInfo], tags=["rpc"])
    async def rpc_methods() -> list[RpcMethodInfo]:
        """The published method table (positional order = ``params`` order)."""
        return [method.info() for method in rpc.METHODS.values()]

    # ---------------------------------------------------------------- REST

    rest: dict[str, Any] = {"responses": _ERRORS, "response_model_exclude_none": True}

    @app.post("/v1/registry/users", response_model=RegisterUserAnswer, tags=["registry"], **rest)
    async def register_user(args: RegisterUserArgs, who: Caller) -> Any:
        return await service.register_user(who, args)

    @app.delete(
        "/v1/registry/sessions/{session_id}",
        response_model=UnregisterSessionAnswer,
        tags=["registry"],
        **rest,
    )
    async def unregister_session(session_id: SessionPath, who: Caller) -> Any:
        args = UnregisterSessionArgs(session_id=session_id)
        return await service.unregister_session(who, args)

    @app.post("/v1/chroma/collections", response_model=CollectionAnswer, tags=["chroma"], **rest)
    async def register_collection(args: RegisterCollectionArgs, who: Caller) -> Any:
        return await service.register_collection_user(who, args)

    @app.post(
        "/v1/chroma/collections/heartbeat",
        response_model=CollectionAnswer,
        tags=["chroma"],
        **rest,
    )
    async def heartbeat_collection(args: HeartbeatCollectionArgs, who: Caller) -> Any:
        return await service.heartbeat_collection(who, args)

    started: dict[str, Any] = {"response_model": TaskStartedAnswer, "status_code": 202, **rest}

    @app.post("/v1/tasks/document-analysis", tags=["tasks"], **started)
    async def start_document_analysis(args: DocumentAnalysisArgs, who: Caller) -> Any:
        return await service.start_document_analysis(who, args)

    @app.post("/v1/tasks/vector-computation", tags=["tasks"], **started)
    async def start_vector_computation(args: VectorComputationArgs, who: Caller) -> Any:
        return await service.start_vector_computation(who, args)

    @app.post("/v1/tasks/llm-conversation", tags=["tasks"], **started)
    async def start_llm_conversation(args: LlmConversationArgs, who: Caller) -> Any:
        return await service.start_llm_conversation(who, args)

    @app.get("/v1/tasks/{task_id}", response_model=TaskStatusAnswer, tags=["tasks"], **rest)
    async def get_task_status(task_id: IdPath, who: Caller) -> Any:
        return await service.get_task_status(who, TaskIdArgs(task_id=task_id))

    @app.post("/v1/tasks/{task_id}/cancel", response_model=CancelAnswer, tags=["tasks"], **rest)
    async def cancel_task(task_id: IdPath, who: Caller) -> Any:
        return await service.cancel_task(who, TaskIdArgs(task_id=task_id))

    @app.get("/v1/users/{user_id}/tasks", response_model=TaskListAnswer, tags=["tasks"], **rest)
    async def list_user_tasks(user_id: IdPath, who: Caller) -> Any:
        return await service.list_user_tasks(who, UserIdArgs(user_id=user_id))

    @app.post("/v1/llm/conversations", tags=["llm"], **started)
    async def llm_start_conversation(args: LlmStartArgs, who: Caller) -> Any:
        return await service.llm_start_conversation(who, args)

    @app.get(
        "/v1/llm/conversations/{conversation_id}",
        response_model=ConversationStatusAnswer,
        tags=["llm"],
        **rest,
    )
    async def get_conversation_status(conversation_id: IdPath, who: Caller) -> Any:
        args = ConversationIdArgs(conversation_id=conversation_id)
        return await service.get_conversation_status(who, args)

    @app.get(
        "/v1/users/{user_id}/registry",
        response_model=UserRegistryAnswer,
        tags=["registry"],
        **rest,
    )
    async def get_user_registry(user_id: IdPath, who: Caller) -> Any:
        return await service.get_user_registry(who, UserIdArgs(user_id=user_id))

    @app.get(
        "/v1/companies/{company_id}/active-users",
        response_model=CompanyUsersAnswer,
        tags=["registry"],
        **rest,
    )
    async def get_company_active_users(company_id: IdPath, who: Caller) -> Any:
        args = CompanyIdArgs(company_id=company_id)
        return await service.get_company_active_users(who, args)

    # ---------------------------------------------------------------- web console

    if settings.console_enabled and isinstance(task_store, KubeTaskStore):
        source = ConsoleSource(task_store, registry, settings.kube_timeout_s)
        install_console(app, service, authenticator, source)

    # ---------------------------------------------------------------- health

    @app.get(
        "/healthz",
        response_model=HealthAnswer,
        responses={503: {"model": HealthAnswer, "description": "Redis or Kubernetes unavailable"}},
        tags=["health"],
    )
    async def healthz() -> JSONResponse:
        checks = await service.health()
        ok = all(value == "ok" for value in checks.values())
        answer = HealthAnswer(status="ok" if ok else "degraded", checks=checks)
        return JSONResponse(answer.model_dump(), status_code=200 if ok else 503)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, minus the 422 answers it lists but the shim never gives (400)."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
