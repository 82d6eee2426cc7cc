"""The runner gateway: the only door from a task's Job to the platform's data and the LLM.

Every request carries the runner's token (``Authorization: Bearer``): a ServiceAccount token
the kubelet projected into the task's pod, checked by the API server
(:mod:`regtask_shim.runnerauth`) and matched to the task's spec (:func:`regtask.tokens.authorize`).
The task, user, company, namespace and conversation come from the spec of the task the token is
bound to, never from the request body, so a runner can read and write its own task's records
only. The gateway holds the LLM provider key (runners never see it) and counts every real LLM
request against the company's hourly quota (:mod:`regtask.ratelimit`).

Run it with ``python -m regtask_shim.gateway`` (uvicorn; settings from the environment, see
:class:`GatewaySettings`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

import chromadb
import httpx
import redis.asyncio as aioredis
import structlog
import uvicorn
from chromadb.api import AsyncClientAPI
from chromadb.config import Settings as ChromaSettings
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from kubernetes_asyncio.client import ApiClient
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError

from regtask import registry_ops
from regtask.crmodels import RegistryTaskSpec, TaskInput
from regtask.docstore import DocumentError, DocumentMissing
from regtask.documents import ConversationDoc, Quotas, RegistryStatus
from regtask.events import (
    AsyncEventPublisher,
    EventType,
    LlmConversationCompleteEvent,
    LlmConversationCompletePayload,
    LlmConversationUpdateEvent,
    LlmConversationUpdatePayload,
)
from regtask.identifiers import Identifier
from regtask.kubeclient import async_api_client
from regtask.logconfig import configure_logging
from regtask.naming import derived_name
from regtask.ratelimit import LlmRateLimiter, RateDecision
from regtask.registry import Registry
from regtask.servicemetrics import CONTENT_TYPE_LATEST, GatewayMetrics
from regtask.settings import Settings
from regtask.storage import (
    MAX_INLINE_RESULT_BYTES,
    REDIS_REF_SCHEME,
    StorageAccounting,
    blob_prefix,
    store_result,
)
from regtask.tokens import TaskClaims, TokenError, authorize
from regtask_shim.runnerauth import AuthUnavailable, RunnerAuthenticator, TokenReviewAuthenticator
from regtask_shim.taskspec import KubeTaskSpecSource, TaskNotFound, TaskSpecSource

log = structlog.get_logger(__name__)

MAX_PROGRESS_DATA_BYTES = 8 * 1024
MAX_VECTOR_BATCH = 1000
SPEC_CACHE_TTL_S = 30.0
# Chroma collection names derived from (company, user, collection): "rtv-<readable>-<hash>".
VECTOR_COLLECTION_PREFIX = "rtv"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, populate_by_name=True
    )

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    # OpenAI-compatible provider, e.g. https://api.openai.com/v1 or a local llama.cpp server.
    llm_base_url: str = Field(default="http://127.0.0.1:8080/v1", alias="LLM_BASE_URL")
    # The real provider key: held here only, never handed to a runner.
    llm_api_key: SecretStr = Field(default=SecretStr(""), alias="LLM_API_KEY")
    llm_default_model: str = Field(default="gemma-3-270m", alias="LLM_DEFAULT_MODEL")
    # Embeddings may come from another endpoint/model than chat (unset = the same as chat).
    llm_embeddings_base_url: str | None = Field(default=None, alias="LLM_EMBEDDINGS_BASE_URL")
    llm_embedding_model: str | None = Field(default=None, alias="LLM_EMBEDDING_MODEL")
    llm_timeout_s: float = Field(default=300.0, gt=0, alias="LLM_TIMEOUT_S")
    chroma_url: str = Field(default="http://127.0.0.1:8000", alias="CHROMA_URL")
    unified_registry_enabled: bool = Field(default=False, alias="UNIFIED_REGISTRY_ENABLED")
    # The shared switches every process gets (regtask.settings): debug logs, history length.
    registry_debug: bool = Field(default=False, alias="REGISTRY_DEBUG")
    task_history_limit: int = Field(default=50, ge=1, alias="TASK_HISTORY_LIMIT")
    # Where the RegistryTask CRs live; kubeconfig unset = in-cluster service account.
    namespace: str = Field(default="regtask-system", alias="REGTASK_NAMESPACE")
    kubeconfig: str | None = Field(default=None, alias="KUBECONFIG")
    host: str = Field(default="0.0.0.0", alias="REGTASK_GATEWAY_HOST")
    port: int = Field(default=8081, alias="REGTASK_GATEWAY_PORT")
    # One progress write per task per interval (unless the step changes or progress hits 100).
    progress_min_interval_s: float = Field(
        default=0.2, ge=0, alias="REGTASK_PROGRESS_MIN_INTERVAL_S"
    )
    max_result_bytes: int = Field(default=MAX_INLINE_RESULT_BYTES, gt=0)
    max_input_bytes: int = Field(default=16 * 1024 * 1024, gt=0)


# ------------------------------------------------------------------ HTTP models


class ResolvedInput(BaseModel):
    """An input as the runner receives it: always inline (references resolved here)."""

    name: str
    content_type: str
    value: str
    encoding: Literal["utf-8", "base64"]
    size_bytes: int


class TaskView(BaseModel):
    task_id: str
    task_type: str
    user_id: str
    company_id: str
    conversation_id: str | None
    session_id: str | None
    priority: str
    max_duration_seconds: int
    cancel: bool
    parameters: dict[str, str]
    inputs: list[ResolvedInput]
    # The user's LLM defaults (unified registry), for runners that call the LLM.
    model_preferences: dict[str, Any]


class ProgressIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Runners report work in progress only; the end of a task is recorded by the operator from
    # the Job's outcome, so a runner cannot claim "completed" for work it did not finish.
    status: Literal["processing"] = "processing"
    progress: int = Field(ge=0, le=100)
    current_step: str = Field(min_length=1, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict)
    estimated_completion: str | None = Field(default=None, max_length=64)


class ProgressOut(BaseModel):
    # False: dropped by the per-task throttle (answered 202).
    accepted: bool
    # False: the task had already finished; nothing was written.
    applied: bool = False


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: dict[str, Any]


class ResultOut(BaseModel):
    stored: bool
    size_bytes: int
    storage_used_bytes: int


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[EventType.LLM_CONVERSATION_UPDATE, EventType.LLM_CONVERSATION_COMPLETE]
    payload: dict[str, Any]


class EventOut(BaseModel):
    published: bool
    receivers: int


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversation_id: Identifier
    prompt: str
    response: str
    model: str = Field(min_length=1, max_length=256)
    temperature: float = Field(ge=0, le=2)
    tokens_used: int = Field(ge=0)


class ConversationOut(BaseModel):
    stored: bool
    conversation_id: str


class ChatCompletionIn(BaseModel):
    """The OpenAI request, passed through as sent (extra fields kept)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]


MetadataValue = str | int | float | bool


class VectorUpsertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_VECTOR_BATCH
    )
    embeddings: list[list[float]]
    documents: list[str] | None = None
    metadatas: list[dict[str, MetadataValue]] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> VectorUpsertIn:
        count = len(self.ids)
        for name in ("embeddings", "documents", "metadatas"):
            values = getattr(self, name)
            if values is not None and len(values) != count:
                raise ValueError(f"{name} has {len(values)} items for {count} ids")
        dims = {len(vector) for vector in self.embeddings}
        if len(dims) != 1 or 0 in dims:
            raise ValueError("embeddings must all have the same, non-zero dimension")
        if len(set(self.ids)) != count:
            raise ValueError("ids must be unique within a batch")
        return self

    @property
    def dimension(self) -> int:
        return len(self.embeddings[0])


class VectorUpsertOut(BaseModel):
    collection: str
    requested_collection: str
    upserted: int
    total: int
    dimension: int


# ------------------------------------------------------------------ plumbing


class ProgressThrottle:
    """At most one progress write per task per interval; a new step or 100 % always passes.

    In memory, per gateway process: the runner throttles too, this only bounds a misbehaving
    runner's write rate on Redis and on the users' event channels.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, tuple[float, str]] = {}

    def admit(self, task_id: str, step: str, progress: int) -> bool:
        now = self.clock()
        last = self._last.get(task_id)
        if (
            last is not None
            and now - last[0] < self.interval_s
            and step == last[1]
            and progress < 100
        ):
            return False
        self._last[task_id] = (now, step)
        if len(self._last) > 10_000:
            horizon = now - max(self.interval_s, 1.0)
            self._last = {k: v for k, v in self._last.items() if v[0] >= horizon}
        return True


@dataclass
class GatewayState:
    settings: GatewaySettings
    redis: aioredis.Redis
    registry: Registry
    limiter: LlmRateLimiter
    storage: StorageAccounting
    publisher: AsyncEventPublisher
    http: httpx.AsyncClient
    specs: TaskSpecSource
    authenticator: RunnerAuthenticator
    throttle: ProgressThrottle
    chroma: AsyncClientAPI | None = None
    chroma_lock: asyncio.Lock | None = None
    # task id -> (expiry on the monotonic clock, spec); see _spec.
    spec_cache: dict[str, tuple[float, RegistryTaskSpec]] = field(default_factory=dict)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)

    async def chroma_client(self) -> AsyncClientAPI:
        """Connected on first use: the gateway starts (and serves LLM calls) without Chroma."""
        if self.chroma is None:
            if self.chroma_lock is None:
                self.chroma_lock = asyncio.Lock()
            async with self.chroma_lock:
                if self.chroma is None:
                    url = urlsplit(self.settings.chroma_url)
                    self.chroma = await chromadb.AsyncHttpClient(
                        host=url.hostname or "127.0.0.1",
                        port=url.port or (443 if url.scheme == "https" else 8000),
                        ssl=url.scheme == "https",
                        settings=ChromaSettings(anonymized_telemetry=False),
                    )
        return self.chroma


def _state(request: Request) -> GatewayState:
    return cast(GatewayState, request.app.state.gateway)


StateDep = Annotated[GatewayState, Depends(_state)]


async def _claims(
    state: StateDep, authorization: Annotated[str | None, Header()] = None
) -> TaskClaims:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="regtask"'}
        )
    try:
        identity = await state.authenticator.authenticate(token.strip())
    except TokenError as exc:
        log.warning("gateway_token_refused", error=str(exc))
        raise HTTPException(
            401,
            "invalid or expired task token",
            headers={"WWW-Authenticate": 'Bearer realm="regtask", error="invalid_token"'},
        ) from exc
    except AuthUnavailable as exc:
        raise HTTPException(
            503, "cannot verify the token now", headers={"Retry-After": "5"}
        ) from exc
    spec = await _spec_by_id(state, identity.task_id)
    try:
        return authorize(identity, spec)
    except TokenError as exc:
        log.error("gateway_token_task_mismatch", task_id=identity.task_id, error=str(exc))
        raise HTTPException(403, "token does not match the task") from exc


ClaimsDep = Annotated[TaskClaims, Depends(_claims)]


async def _spec_by_id(state: GatewayState, task_id: str, fresh: bool = False) -> RegistryTaskSpec:
    """The task's spec, from a copy up to :data:`SPEC_CACHE_TTL_S` old unless ``fresh``.

    Progress and result writes need only immutable fields (ids, type, max duration: the CRD
    refuses changes), so they use the copy instead of one API read per write; ``GET /v1/task``
    reads fresh (it carries ``cancel``).
    """
    now = time.monotonic()
    cached = None if fresh else state.spec_cache.get(task_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        spec = await state.specs.get(task_id)
    except TaskNotFound as exc:
        state.spec_cache.pop(task_id, None)
        raise HTTPException(404, f"task {task_id} not found") from exc
    if len(state.spec_cache) > 10_000:
        state.spec_cache = {k: v for k, v in state.spec_cache.items() if v[0] > now}
    state.spec_cache[task_id] = (now + SPEC_CACHE_TTL_S, spec)
    return spec


async def _spec(state: GatewayState, claims: TaskClaims, fresh: bool = False) -> RegistryTaskSpec:
    """The claims' task spec; one that now names another tenant than the claims is refused."""
    spec = await _spec_by_id(state, claims.task_id, fresh)
    if (spec.user_id, spec.company_id, spec.task_type.value) != (
        claims.user_id,
        claims.company_id,
        claims.task_type,
    ):
        log.error("gateway_claims_spec_mismatch", task_id=claims.task_id)
        raise HTTPException(403, "token does not match the task")
    return spec


async def _quotas(state: GatewayState, company_id: str) -> Quotas:
    """The company's quotas; the contract's defaults when it has no (readable) document."""
    try:
        doc = await state.registry.get_company(company_id)
    except DocumentError:
        doc = None
    return doc.quotas if doc else Quotas()


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _openai_error(status: int, message: str, kind: str, code: str, **headers: str) -> JSONResponse:
    """Errors in the OpenAI shape, so the SDK in the runner raises its matching exception."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}},
        status_code=status,
        headers=headers,
    )


def _rate_headers(decision: RateDecision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_in_s),
    }


# ------------------------------------------------------------------ the app


def create_gateway_app(
    settings: GatewaySettings,
    spec_source: TaskSpecSource | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
    authenticator: RunnerAuthenticator | None = None,
) -> FastAPI:
    """Build the app. By default specs come from the RegistryTask CRs and tokens are reviewed
    by the API server; tests without a cluster pass both (memory, a static authenticator)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url)
        api: ApiClient | None = None
        specs: TaskSpecSource
        auth: RunnerAuthenticator
        if spec_source is not None and authenticator is not None:
            specs, auth = spec_source, authenticator
        else:
            api = await async_api_client(settings.kubeconfig)
            specs = spec_source or KubeTaskSpecSource(api, settings.namespace)
            auth = authenticator or TokenReviewAuthenticator(api)
        registry_settings = Settings.model_validate(
            {
                "REDIS_URL": settings.redis_url,
                "UNIFIED_REGISTRY_ENABLED": settings.unified_registry_enabled,
                "REGISTRY_DEBUG": settings.registry_debug,
                "TASK_HISTORY_LIMIT": settings.task_history_limit,
            }
        )
        timeout = httpx.Timeout(settings.llm_timeout_s, connect=10.0)
        http = httpx.AsyncClient(
            timeout=timeout,
            transport=http_transport,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        app.state.gateway = GatewayState(
            settings=settings,
            redis=client,
            registry=Registry(client, registry_settings),
            limiter=LlmRateLimiter(client),
            storage=StorageAccounting(client),
            publisher=AsyncEventPublisher(client),
            http=http,
            specs=specs,
            authenticator=auth,
            throttle=ProgressThrottle(settings.progress_min_interval_s),
        )
        log.info(
            "gateway_started",
            llm_base_url=settings.llm_base_url,
            unified_registry=settings.unified_registry_enabled,
        )
        try:
            yield
        finally:
            await http.aclose()
            if api is not None:
                await api.close()
            await client.aclose()

    app = FastAPI(title="regtask runner gateway", version="1", lifespan=lifespan)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.error("gateway_redis_error", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": "registry unavailable"}, status_code=503)

    @app.get("/healthz")
    async def healthz(state: StateDep) -> dict[str, str]:
        await state.redis.ping()
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(state: StateDep) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ---------------------------------------------------------- task

    @app.get("/v1/task")
    async def get_task(state: StateDep, claims: ClaimsDep) -> TaskView:
        spec = await _spec(state, claims, fresh=True)
        inputs = [await _resolve_input(state, claims, item) for item in spec.inputs]
        registry = await _user_registry(state, claims.user_id)
        return TaskView(
            task_id=spec.task_id,
            task_type=spec.task_type.value,
            user_id=spec.user_id,
            company_id=spec.company_id,
            conversation_id=spec.conversation_id,
            session_id=spec.session_id,
            priority=spec.priority.value,
            max_duration_seconds=spec.effective_max_duration_s,
            cancel=spec.cancel,
            parameters=dict(spec.parameters),
            inputs=inputs,
            model_preferences=registry,
        )

    @app.post("/v1/task/progress", response_model=ProgressOut)
    async def post_progress(body: ProgressIn, state: StateDep, claims: ClaimsDep) -> Response:
        if _json_size(body.data) > MAX_PROGRESS_DATA_BYTES:
            raise HTTPException(413, f"progress data above {MAX_PROGRESS_DATA_BYTES} bytes")
        if not state.throttle.admit(claims.task_id, body.current_step, body.progress):
            return JSONResponse(ProgressOut(accepted=False).model_dump(), status_code=202)
        spec = await _spec(state, claims)
        try:
            applied = await state.registry.update_task_progress(
                claims.task_id,
                claims.user_id,
                RegistryStatus.PROCESSING,
                body.progress,
                body.current_step,
                spec.effective_max_duration_s,
                body.data,
                body.estimated_completion,
            )
        except DocumentMissing as exc:
            raise HTTPException(404, "task document not found in the registry") from exc
        return JSONResponse(ProgressOut(accepted=True, applied=applied).model_dump())

    @app.post("/v1/task/result")
    async def post_result(request: Request, state: StateDep, claims: ClaimsDep) -> ResultOut:
        limit = state.settings.max_result_bytes
        declared = int(request.headers.get("content-length") or 0)
        if declared > 4 * limit:
            raise HTTPException(413, _too_big(declared, limit))
        try:
            body = ResultIn.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False)) from exc
        size = _json_size(body.result)
        if size > limit:
            raise HTTPException(413, _too_big(size, limit))
        spec = await _spec(state, claims)
        quotas = await _quotas(state, claims.company_id)
        decision = await state.storage.reserve(claims.company_id, size, quotas.storage_limit_mb)
        if not decision.allowed:
            raise HTTPException(
                507,
                f"company storage quota exhausted ({decision.used_bytes} of "
                f"{decision.limit_bytes} bytes used)",
            )
        try:
            applied = (
                await state.registry.store.apply(
                    store_result(claims.task_id, body.result, spec.effective_max_duration_s)
                )
            ).applied
        except DocumentMissing as exc:
            await state.storage.release(claims.company_id, size)
            raise HTTPException(404, "task document not found in the registry") from exc
        if not applied:
            await state.storage.release(claims.company_id, size)
            raise HTTPException(409, "task already finished; result not stored")
        log.info("task_result_stored", task_id=claims.task_id, size_bytes=size)
        return ResultOut(stored=True, size_bytes=size, storage_used_bytes=decision.used_bytes)

    @app.post("/v1/task/events")
    async def post_event(body: EventIn, state: StateDep, claims: ClaimsDep) -> EventOut:
        if not claims.conversation_id:
            raise HTTPException(403, "this task has no conversation")
        try:
            event: LlmConversationUpdateEvent | LlmConversationCompleteEvent
            if body.type is EventType.LLM_CONVERSATION_UPDATE:
                event = LlmConversationUpdateEvent(
                    uid=claims.user_id,
                    payload=LlmConversationUpdatePayload.model_validate(body.payload),
                )
            else:
                event = LlmConversationCompleteEvent(
                    uid=claims.user_id,
                    payload=LlmConversationCompletePayload.model_validate(body.payload),
                )
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False)) from exc
        if event.payload.conversation_id != claims.conversation_id:
            raise HTTPException(403, "conversation_id does not belong to this task")
        if _json_size(body.payload) > state.settings.max_result_bytes:
            raise HTTPException(413, "event payload too large")
        receivers = await state.publisher.publish(event)
        return EventOut(published=True, receivers=receivers)

    @app.post("/v1/task/conversation")
    async def post_conversation(
        body: ConversationIn, state: StateDep, claims: ClaimsDep
    ) -> ConversationOut:
        if body.conversation_id != claims.conversation_id:
            raise HTTPException(403, "conversation_id does not belong to this task")
        if _json_size(body.model_dump()) > state.settings.max_result_bytes:
            raise HTTPException(413, "conversation too large")
        await state.registry.store_conversation(
            ConversationDoc(
                conversation_id=body.conversation_id,
                user_id=claims.user_id,
                company_id=claims.company_id,
                prompt=body.prompt,
                response=body.response,
                model=body.model,
                temperature=body.temperature,
                tokens_used=body.tokens_used,
            )
        )
        return ConversationOut(stored=True, conversation_id=body.conversation_id)

    # ---------------------------------------------------------- LLM

    @app.post("/v1/llm/chat/completions")
    async def chat_completions(
        body: ChatCompletionIn, state: StateDep, claims: ClaimsDep
    ) -> Response:
        base = state.settings.llm_base_url
        model = state.settings.llm_default_model
        return await _relay_llm(
            state,
            claims,
            f"{base.rstrip('/')}/chat/completions",
            model,
            body,
            body.stream,
            kind="chat",
        )

    @app.post("/v1/llm/embeddings")
    async def embeddings(body: EmbeddingsIn, state: StateDep, claims: ClaimsDep) -> Response:
        settings = state.settings
        base = settings.llm_embeddings_base_url or settings.llm_base_url
        model = settings.llm_embedding_model or settings.llm_default_model
        return await _relay_llm(
            state,
            claims,
            f"{base.rstrip('/')}/embeddings",
            model,
            body,
            stream=False,
            kind="embeddings",
        )

    # ---------------------------------------------------------- vectors

    @app.post("/v1/vectors/upsert")
    async def vectors_upsert(
        body: VectorUpsertIn, state: StateDep, claims: ClaimsDep
    ) -> VectorUpsertOut:
        name = derived_name(
            VECTOR_COLLECTION_PREFIX, claims.company_id, claims.user_id, body.collection
        )
        size = 4 * body.dimension * len(body.ids) + _json_size(body.documents or [])
        quotas = await _quotas(state, claims.company_id)
        decision = await state.storage.reserve(claims.company_id, size, quotas.storage_limit_mb)
        if not decision.allowed:
            raise HTTPException(507, "company storage quota exhausted")
        try:
            chroma = await state.chroma_client()
            collection = await chroma.get_or_create_collection(
                name,
                metadata={
                    "company_id": claims.company_id,
                    "user_id": claims.user_id,
                    "collection": body.collection,
                },
                embedding_function=None,
            )
            await collection.upsert(
                ids=body.ids,
                embeddings=body.embeddings,  # type: ignore[arg-type]
                documents=body.documents,
                metadatas=body.metadatas,  # type: ignore[arg-type]
            )
            total = await collection.count()
        except (httpx.TransportError, ConnectionError) as exc:
            await state.storage.release(claims.company_id, size)
            log.error("gateway_chroma_unreachable", error=str(exc))
            raise HTTPException(502, "vector store unreachable") from exc
        except Exception as exc:
            # Chroma reports a dimension mismatch and similar client errors as plain exceptions.
            await state.storage.release(claims.company_id, size)
            log.warning("gateway_chroma_refused", collection=name, error=str(exc))
            raise HTTPException(422, f"vector store refused the upsert: {exc}") from exc
        if state.settings.unified_registry_enabled:
            await state.registry.apply(
                registry_ops.unified_register_collection(claims.user_id, name, claims.company_id)
            )
        log.info("vectors_upserted", task_id=claims.task_id, collection=name, count=len(body.ids))
        return VectorUpsertOut(
            collection=name,
            requested_collection=body.collection,
            upserted=len(body.ids),
            total=total,
            dimension=body.dimension,
        )

    return app


def _too_big(size: int, limit: int) -> str:
    return (
        f"result is {size} bytes, above the {limit}-byte inline limit: store the data as a blob "
        "and return its reference instead"
    )


async def _user_registry(state: GatewayState, user_id: str) -> dict[str, Any]:
    try:
        doc = await state.registry.get_user_registry(user_id)
    except DocumentError:
        return {}
    return dict(doc.services.llm.model_preferences) if doc else {}


async def _resolve_input(state: GatewayState, claims: TaskClaims, item: TaskInput) -> ResolvedInput:
    """Inline inputs as they are; ``redis://`` references read from the tenant's blob keys."""
    if item.value is not None:
        encoding: Literal["utf-8", "base64"] = "base64" if item.encoding == "base64" else "utf-8"
        if encoding == "base64":
            try:
                size = len(base64.b64decode(item.value, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise HTTPException(422, f"input {item.name!r} is not valid base64") from exc
        else:
            size = len(item.value.encode())
        return ResolvedInput(
            name=item.name,
            content_type=item.content_type,
            value=item.value,
            encoding=encoding,
            size_bytes=size,
        )
    assert item.ref is not None  # TaskInput guarantees value xor ref
    uri = item.ref.uri
    if not uri.startswith(REDIS_REF_SCHEME):
        raise HTTPException(422, f"input {item.name!r}: unsupported reference {uri.split(':')[0]}")
    key = uri[len(REDIS_REF_SCHEME) :]
    if not key.startswith(blob_prefix(claims.company_id, claims.user_id)):
        log.warning("gateway_foreign_ref_refused", task_id=claims.task_id, key=key)
        raise HTTPException(403, f"input {item.name!r} refers outside the tenant's blobs")
    size = int(await state.redis.strlen(key))
    if size > state.settings.max_input_bytes:
        raise HTTPException(413, f"input {item.name!r} is {size} bytes, above the limit")
    raw = await state.redis.get(key)
    if raw is None:
        raise HTTPException(404, f"input {item.name!r} not found at {key}")
    data = raw if isinstance(raw, bytes) else str(raw).encode()
    if item.content_type.startswith("text/"):
        try:
            return ResolvedInput(
                name=item.name,
                content_type=item.content_type,
                value=data.decode(),
                encoding="utf-8",
                size_bytes=len(data),
            )
        except UnicodeDecodeError:
            pass
    return ResolvedInput(
        name=item.name,
        content_type=item.content_type,
        value=base64.b64encode(data).decode(),
        encoding="base64",
        size_bytes=len(data),
    )


async def _relay_llm(
    state: GatewayState,
    claims: TaskClaims,
    url: str,
    default_model: str,
    body: BaseModel,
    stream: bool,
    kind: str,
) -> Response:
    """Count the request against the company's hour, then pass it through with the real key."""
    quotas = await _quotas(state, claims.company_id)
    decision = await state.limiter.hit(claims.company_id, quotas.max_llm_requests_per_hour)
    outcome = "allowed" if decision.allowed else "rate_limited"
    state.metrics.llm_requests.labels(claims.company_id, kind, outcome).inc()
    if not decision.allowed:
        log.warning(
            "llm_rate_limited",
            company_id=claims.company_id,
            task_id=claims.task_id,
            limit=decision.limit,
            retry_after_s=decision.retry_after_s,
        )
        return _openai_error(
            429,
            f"company LLM quota exhausted ({decision.limit} requests per hour); "
            f"retry in {decision.retry_after_s} s",
            "rate_limit_exceeded",
            "llm_quota_exceeded",
            **{"Retry-After": str(decision.retry_after_s)},
            **_rate_headers(decision),
        )
    payload = body.model_dump(exclude_none=True)
    payload["model"] = payload.get("model") or default_model
    # Providers attribute usage (and abuse) per end user: the tenant, never a runner's choice.
    payload["user"] = claims.namespace
    headers = {"Content-Type": "application/json"}
    key = state.settings.llm_api_key.get_secret_value()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = state.http.build_request("POST", url, json=payload, headers=headers)
    try:
        upstream = await state.http.send(request, stream=True)
    except httpx.TimeoutException as exc:
        return _openai_error(504, f"LLM provider timed out: {exc}", "upstream_error", "timeout")
    except httpx.TransportError as exc:
        log.error("llm_upstream_unreachable", url=url, error=str(exc))
        return _openai_error(502, "LLM provider unreachable", "upstream_error", "unreachable")
    rate = _rate_headers(decision)
    media_type = upstream.headers.get("content-type", "application/json")
    if not stream or upstream.status_code >= 400:
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(
            content, status_code=upstream.status_code, media_type=media_type, headers=rate
        )
    log.info("llm_stream_started", task_id=claims.task_id, company_id=claims.company_id)
    return StreamingResponse(
        _relay_chunks(upstream),
        status_code=upstream.status_code,
        media_type=media_type,
        headers={**rate, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _relay_chunks(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """Each upstream chunk as it arrives (no buffering); the upstream closes with the client."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


def main() -> None:
    settings = GatewaySettings()  # required values come from the environment
    configure_logging(settings.registry_debug)
    app = create_gateway_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
