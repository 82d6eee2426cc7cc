"""The shim's operations: what each RPC method and REST route does, once.

Each operation takes the authenticated :class:`~regtask_shim.auth.Principal` and its validated
arguments, checks authorisation first, then touches Redis (the registry) and Kubernetes (the
RegistryTask resources). Starting a task creates its resource, registers it in the registry with
status ``queued`` (so ``get_task_status`` answers at once) and answers immediately.

Long (about 600 lines) for a reason: one method per published operation (the contract's), each
checking authorisation before it touches anything; kept in one class so that every check sits
next to what it guards (:mod:`regtask_shim.rpc` and :mod:`regtask_shim.app` only dispatch).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError

from regtask import keys, naming, storage
from regtask.crmodels import (
    MAX_DURATION_LIMIT_S,
    MAX_INLINE_INPUT_BYTES,
    PHASE_TO_STATUS,
    InputRef,
    RegistryTaskSpec,
    TaskInput,
)
from regtask.docstore import DocumentError
from regtask.documents import (
    Quotas,
    RegistryStatus,
    TaskDoc,
    TaskInfo,
    TaskIsolation,
    TaskProgress,
)
from regtask.identifiers import Identifier
from regtask.registry import Registry, SessionTaken
from regtask.tasktypes import TASK_TYPES, TaskType
from regtask.timeutil import now_iso
from regtask_shim import payloads
from regtask_shim.auth import Access, Principal
from regtask_shim.companies import CompanyResolver, require_company
from regtask_shim.errors import (
    BadArguments,
    Conflict,
    NotFound,
    QuotaExceeded,
    ShimError,
    Unavailable,
    echo,
)
from regtask_shim.models import (
    CONVERSATION_PREFIX,
    LLM_TASK_PREFIX,
    CancelAnswer,
    CollectionAnswer,
    CompanyIdArgs,
    CompanyUsersAnswer,
    ConversationIdArgs,
    ConversationProgress,
    ConversationStatusAnswer,
    DocumentAnalysisArgs,
    HeartbeatCollectionArgs,
    LlmConversationArgs,
    LlmStartArgs,
    RegisterCollectionArgs,
    RegisterUserAnswer,
    RegisterUserArgs,
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
from regtask_shim.settings import ShimSettings
from regtask_shim.taskstore import StoredTask, TaskStore

log = structlog.get_logger(__name__)

# Ours: per-user count of task starts in one clock minute (SHIM_TASK_STARTS_PER_MINUTE).
START_RATE_PREFIX = keys.SHIM_START_RATE_PREFIX
START_RATE_TTL_S = 120
# Large inputs wait in Redis for the runner: long enough for the longest task after a long
# queue. The operator deletes them (and releases their storage) when the task ends.
BLOB_TTL_S = 2 * MAX_DURATION_LIMIT_S
_FINISHED = frozenset({RegistryStatus.COMPLETED, RegistryStatus.FAILED})
_ID = TypeAdapter(Identifier)


def start_rate_key(user_id: str, minute: int) -> str:
    return f"{START_RATE_PREFIX}{user_id}:{minute}"


@dataclass(frozen=True)
class TaskStatusView:
    """A task as the web app sees it: from the registry, else from the resource's status."""

    task_id: str
    task_type: str
    user_id: str
    company_id: str
    status: RegistryStatus
    progress: int
    current_step: str
    created_at: str | None
    estimated_completion: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    queue_position: int | None = None
    estimated_start: str | None = None

    @classmethod
    def from_doc(cls, doc: TaskDoc) -> TaskStatusView:
        info = doc.task_info
        return cls(
            task_id=info.task_id,
            task_type=info.task_type,
            user_id=info.user_id,
            company_id=info.company_id,
            status=info.status,
            progress=doc.progress.progress_percent,
            current_step=doc.progress.current_step,
            created_at=info.created_at,
            estimated_completion=doc.progress.estimated_completion,
            error=doc.error,
            result=doc.result,
            queue_position=doc.progress.queue_position,
            estimated_start=doc.progress.estimated_start,
        )

    @classmethod
    def from_resource(cls, task: StoredTask) -> TaskStatusView:
        status = task.status
        phase_status = (
            PHASE_TO_STATUS[status.phase]
            if status is not None and status.phase is not None
            else RegistryStatus.QUEUED
        )
        failed = phase_status in (RegistryStatus.FAILED, RegistryStatus.CANCELLED)
        return cls(
            task_id=task.spec.task_id,
            task_type=task.spec.task_type.value,
            user_id=task.spec.user_id,
            company_id=task.spec.company_id,
            status=phase_status,
            progress=(status.progress or 0) if status else 0,
            current_step=(status.current_step if status else None) or phase_status.value,
            created_at=task.created,
            error=(status.message or None) if status is not None and failed else None,
            result=status.result if status else None,
            queue_position=status.queue_position if status else None,
        )

    def conversation_id(self) -> str | None:
        if self.task_type == TaskType.LLM_CONVERSATION.value and self.task_id.startswith(
            LLM_TASK_PREFIX
        ):
            return self.task_id[len(LLM_TASK_PREFIX) :]
        return None

    def answer(self) -> TaskStatusAnswer:
        return TaskStatusAnswer(
            task_id=self.task_id,
            task_type=self.task_type,
            status=self.status,
            progress=self.progress,
            current_step=self.current_step,
            created_at=self.created_at,
            conversation_id=self.conversation_id(),
            error=self.error,
            result=self.result,
            queue_position=self.queue_position,
            estimated_start=self.estimated_start,
            estimated_completion=self.estimated_completion,
        )


class ShimService:
    def __init__(
        self,
        settings: ShimSettings,
        registry: Registry,
        task_store: TaskStore,
        presence: PresenceReader | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.tasks = task_store
        self.access = Access()
        self.companies = CompanyResolver(registry, presence)
        self.storage = storage.StorageAccounting(registry.client)

    # ------------------------------------------------------------------ REGISTRY.*

    async def register_user(self, who: Principal, args: RegisterUserArgs) -> RegisterUserAnswer:
        self.access.require_self(who, args.user_id)
        extras = (args.company_id, args.authorized_companies_ids, args.company_roles)
        if any(value is not None for value in extras):
            self.access.require_service(who, "company_id, authorized_companies_ids, company_roles")
        authorized = args.authorized_companies_ids
        if authorized is None and who.token_companies is not None:
            authorized = list(who.token_companies)
        try:
            await self.registry.register_user(
                args.user_id,
                args.session_id,
                args.backend_route,
                company_id=args.company_id,
                authorized_companies=authorized,
                company_roles=args.company_roles,
            )
        except SessionTaken:
            raise Conflict(
                "session id is registered by another user: a session belongs to the user who "
                "registered it until it is unregistered or expires"
            ) from None
        return RegisterUserAnswer(user_id=args.user_id, session_id=args.session_id)

    async def unregister_session(
        self, who: Principal, args: UnregisterSessionArgs
    ) -> UnregisterSessionAnswer:
        owner = await self.registry.session_user(args.session_id)
        if owner is None:
            return UnregisterSessionAnswer(session_id=args.session_id, unregistered=False)
        self.access.require_owner(who, owner, "session")
        found = await self.registry.unregister_session(args.session_id)
        return UnregisterSessionAnswer(session_id=args.session_id, unregistered=found)

    # ------------------------------------------------------------------ CHROMA_VECTOR.*

    async def register_collection_user(
        self, who: Principal, args: RegisterCollectionArgs
    ) -> CollectionAnswer:
        self.access.require_self(who, args.user_id)
        await self.registry.register_collection(args.user_id, args.collection_name, args.session_id)
        return CollectionAnswer(user_id=args.user_id, collection_name=args.collection_name)

    async def heartbeat_collection(
        self, who: Principal, args: HeartbeatCollectionArgs
    ) -> CollectionAnswer:
        self.access.require_self(who, args.user_id)
        if not await self.registry.heartbeat_collection(args.user_id, args.collection_name):
            raise NotFound(
                f"collection {echo(args.collection_name)} is not registered for this user "
                "(expired or never registered): register it again"
            )
        return CollectionAnswer(user_id=args.user_id, collection_name=args.collection_name)

    # ------------------------------------------------------------------ TASK.start_*

    async def start_document_analysis(
        self, who: Principal, args: DocumentAnalysisArgs
    ) -> TaskStartedAnswer:
        self.access.require_self(who, args.user_id)
        company_id = await self._document_company(who, args)
        task_type = TaskType.DOCUMENT_ANALYSIS
        task_id = f"{TASK_TYPES[task_type].id_prefix}{args.job_id}"
        inputs, parameters = payloads.document_inputs(args.document_data)
        status = await self._start(
            task_type=task_type,
            task_id=task_id,
            user_id=args.user_id,
            company_id=company_id,
            inputs=inputs,
            parameters={**parameters, "job_id": args.job_id},
        )
        return TaskStartedAnswer(task_id=task_id, status=status)

    async def _document_company(self, who: Principal, args: DocumentAnalysisArgs) -> str:
        """The company named in ``document_data`` (authorised), else the resolution ladder."""
        given = args.document_data.get("company_id")
        if given is None:
            return (await self.companies.resolve(who, args.user_id)).company_id
        try:
            company_id = _ID.validate_python(given)
        except ValidationError:
            raise BadArguments(
                "bad argument 'document_data.company_id': not a valid company id"
            ) from None
        require_company(who, company_id)
        return company_id

    async def start_vector_computation(
        self, who: Principal, args: VectorComputationArgs
    ) -> TaskStartedAnswer:
        self.access.require_self(who, args.user_id)
        require_company(who, args.company_id)
        task_type = TaskType.VECTOR_COMPUTATION
        suffix = args.job_id or secrets.token_hex(8)
        task_id = f"{TASK_TYPES[task_type].id_prefix}{suffix}"
        parameters = {"collection": args.collection_name}  # what the vector runner reads
        if args.job_id is not None:
            parameters["job_id"] = args.job_id
        status = await self._start(
            task_type=task_type,
            task_id=task_id,
            user_id=args.user_id,
            company_id=args.company_id,
            inputs=payloads.vector_inputs(args.documents),
            parameters=parameters,
        )
        return TaskStartedAnswer(
            task_id=task_id, status=status, collection_name=args.collection_name
        )

    async def start_llm_conversation(
        self, who: Principal, args: LlmConversationArgs
    ) -> TaskStartedAnswer:
        return await self._start_conversation(
            who, args.user_id, args.company_id, args.prompt, None, None, args.conversation_id
        )

    async def llm_start_conversation(self, who: Principal, args: LlmStartArgs) -> TaskStartedAnswer:
        return await self._start_conversation(
            who,
            args.user_id,
            args.company_id,
            args.prompt,
            args.model,
            args.temperature,
            args.conversation_id,
        )

    async def _start_conversation(
        self,
        who: Principal,
        user_id: str,
        company_id: str,
        prompt: str,
        model: str | None,
        temperature: float | None,
        conversation_id: str | None,
    ) -> TaskStartedAnswer:
        self.access.require_self(who, user_id)
        require_company(who, company_id)
        parameters: dict[str, str] = {}
        if model is not None:
            parameters["model"] = model
        if temperature is not None:
            parameters["temperature"] = repr(temperature)
        attempts = 1 if conversation_id is not None else 3
        for attempt in range(attempts):
            conv_id = conversation_id or f"{CONVERSATION_PREFIX}{secrets.token_hex(6)}"
            task_id = f"{LLM_TASK_PREFIX}{conv_id}"
            try:
                status = await self._start(
                    task_type=TaskType.LLM_CONVERSATION,
                    task_id=task_id,
                    user_id=user_id,
                    company_id=company_id,
                    inputs=[payloads.RawInput("prompt", "text/plain", prompt)],
                    parameters=parameters,
                    conversation_id=conv_id,
                )
            except Conflict:
                if attempt + 1 < attempts:
                    continue  # a minted id met an existing one: mint another
                raise
            return TaskStartedAnswer(task_id=task_id, status=status, conversation_id=conv_id)
        raise Conflict("could not mint a free conversation id")  # unreachable in practice

    async def _start(
        self,
        *,
        task_type: TaskType,
        task_id: str,
        user_id: str,
        company_id: str,
        inputs: list[payloads.RawInput],
        parameters: dict[str, str],
        conversation_id: str | None = None,
    ) -> RegistryStatus:
        """Create the task once; a repeated start answers the existing task's status."""
        try:
            _ID.validate_python(task_id)
        except ValidationError:
            raise BadArguments(f"task id {echo(task_id)} is not a valid id") from None
        known = await self.registry.get_task(task_id)
        if known is not None:
            info = known.task_info
            self._same_task(
                task_id,
                (info.user_id, info.company_id, info.task_type),
                (user_id, company_id, task_type.value),
            )
            log.info("task_start_replayed", task_id=task_id, user_id=user_id)
            return info.status
        await self._count_start(user_id)
        try:
            spec = RegistryTaskSpec(
                task_id=task_id,
                task_type=task_type,
                user_id=user_id,
                company_id=company_id,
                inputs=[await self._input(raw, task_id, user_id, company_id) for raw in inputs],
                parameters=parameters,
                conversation_id=conversation_id,
            )
            outcome = await self.tasks.create(spec)
            existing = outcome.task.spec
            if not outcome.created:
                self._same_task(
                    task_id,
                    (existing.user_id, existing.company_id, existing.task_type.value),
                    (user_id, company_id, task_type.value),
                )
        except (ShimError, RedisError, ValidationError):
            # A refused creation gives back the blobs stored for it (issue 16, item 4); a
            # replay of an existing task of the same user never reaches here.
            freed = await self.storage.release_task_blobs(company_id, user_id, task_id)
            if freed:
                log.info("task_refused_blobs_released", task_id=task_id, bytes=freed)
            raise
        view = TaskStatusView.from_resource(outcome.task)
        namespace = naming.tenant_namespace(user_id, company_id)
        await self.registry.register_task(
            TaskDoc(
                task_info=TaskInfo(
                    task_id=task_id,
                    task_type=task_type.value,
                    user_id=user_id,
                    company_id=company_id,
                    status=view.status,
                ),
                isolation=TaskIsolation(
                    namespace=namespace, max_duration=spec.effective_max_duration_s
                ),
                progress=TaskProgress(
                    current_step=view.current_step, progress_percent=view.progress
                ),
            )
        )
        if outcome.created:
            log.info(
                "task_started",
                task_id=task_id,
                task_type=task_type.value,
                user_id=user_id,
                company_id=company_id,
                isolation_namespace=namespace,
                timestamp=now_iso(),
            )
        else:
            log.info("task_start_replayed", task_id=task_id, user_id=user_id)
        return view.status

    @staticmethod
    def _same_task(
        task_id: str, existing: tuple[str, str, str], wanted: tuple[str, str, str]
    ) -> None:
        if existing != wanted:
            raise Conflict(
                f"task id {echo(task_id)} is already used by another task: choose another job id"
            )

    async def _count_start(self, user_id: str) -> None:
        limit = self.settings.task_starts_per_minute
        if limit == 0:
            return
        now = time.time()
        key = start_rate_key(user_id, int(now // 60))
        async with self.registry.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, START_RATE_TTL_S)
            count, _ = await pipe.execute()
        if int(count) > limit:
            raise QuotaExceeded(
                f"quota exceeded: at most {limit} new tasks per minute per user",
                retry_after_s=60 - int(now % 60),
            )

    async def _input(
        self, given: payloads.RawInput, task_id: str, user_id: str, company_id: str
    ) -> TaskInput:
        """Inline when small; otherwise a tenant-scoped blob, counted against storage quota."""
        name, content_type = given.name, given.content_type
        raw = given.value.encode()
        if len(raw) <= MAX_INLINE_INPUT_BYTES:
            return TaskInput(
                name=name, content_type=content_type, value=given.value, encoding=given.encoding
            )
        if given.encoding == "base64":
            raw = base64.b64decode(given.value)
        # Content-addressed: a retry of the same start finds its blob and counts it only once.
        blob_name = f"{task_id}:{name}:{hashlib.sha256(raw).hexdigest()[:16]}"
        key = storage.blob_key(company_id, user_id, blob_name)
        if await self.registry.client.set(key, raw, nx=True, ex=BLOB_TTL_S):
            limit_mb = (await self._quotas(company_id)).storage_limit_mb
            decision = await self.storage.reserve(company_id, len(raw), limit_mb, key)
            if not decision.allowed:
                await self.registry.client.delete(key)
                raise QuotaExceeded(
                    f"quota exceeded: company storage limit of {limit_mb} MB reached",
                    retry_after_s=3600,
                )
        return TaskInput(
            name=name,
            content_type=content_type,
            ref=InputRef(uri=storage.blob_ref(company_id, user_id, blob_name), size_bytes=len(raw)),
        )

    async def _quotas(self, company_id: str) -> Quotas:
        return await self.registry.effective_quotas(company_id)

    # ------------------------------------------------------------------ TASK.* reads

    async def _view(self, task_id: str) -> TaskStatusView | None:
        """The registry first; the resource's status when the registry has no (readable) doc."""
        redis_down = False
        try:
            doc = await self.registry.get_task(task_id)
        except DocumentError:
            doc = None
        except RedisError as exc:
            log.warning("task_read_fallback", task_id=task_id, error=type(exc).__name__)
            doc, redis_down = None, True
        if doc is not None:
            return TaskStatusView.from_doc(doc)
        stored = await self.tasks.get(task_id)
        if stored is not None:
            return TaskStatusView.from_resource(stored)
        if redis_down:
            raise Unavailable("registry unavailable: Redis did not answer, retry later")
        return None

    async def _owned_view(self, who: Principal, task_id: str, what: str = "task") -> TaskStatusView:
        """The caller's own task; "not yours" answers exactly as "not there" (no oracle)."""
        view = await self._view(task_id)
        if view is None or not self.access.owns(who, view.user_id):
            raise NotFound(f"unknown {what} {echo(task_id)}")
        return view

    async def get_task_status(self, who: Principal, args: TaskIdArgs) -> TaskStatusAnswer:
        return (await self._owned_view(who, args.task_id)).answer()

    async def cancel_task(self, who: Principal, args: TaskIdArgs) -> CancelAnswer:
        view = await self._owned_view(who, args.task_id)
        return await self.cancel_viewed(view, who)

    async def task_view(self, task_id: str) -> TaskStatusView | None:
        """A task as ``get_task_status`` sees it, without authorisation (the caller checks)."""
        return await self._view(task_id)

    async def cancel_viewed(self, view: TaskStatusView, who: Principal) -> CancelAnswer:
        """The cancel rules of ``TASK.cancel_task`` once the caller is authorised (also the
        web console's cancel button): a finished task is a 409, a vanished resource a 404."""
        if view.status in _FINISHED:
            raise Conflict(f"task already finished with status '{view.status.value}'")
        stored = await self.tasks.request_cancel(view.task_id)
        if stored is None and view.status is not RegistryStatus.CANCELLED:
            raise NotFound(f"unknown task {echo(view.task_id)}: its resource is gone")
        log.info(
            "task_cancel_requested", task_id=view.task_id, user_id=view.user_id, by=who.describe()
        )
        return CancelAnswer(task_id=view.task_id, status=view.status)

    async def list_user_tasks(self, who: Principal, args: UserIdArgs) -> TaskListAnswer:
        self.access.require_self(who, args.user_id)
        stored = await self.tasks.list_for_user(args.user_id, self.settings.list_tasks_limit)
        # A missing, unreadable or unreachable registry doc falls back to the resource.
        docs = await asyncio.gather(
            *(self.registry.get_task(t.spec.task_id) for t in stored), return_exceptions=True
        )
        views: list[TaskStatusAnswer] = []
        for task, doc in zip(stored, docs, strict=True):
            if isinstance(doc, TaskDoc):
                views.append(TaskStatusView.from_doc(doc).answer())
            else:
                views.append(TaskStatusView.from_resource(task).answer())
        return TaskListAnswer(user_id=args.user_id, tasks=views, count=len(views))

    # ------------------------------------------------------------------ LLM.*

    async def get_conversation_status(
        self, who: Principal, args: ConversationIdArgs
    ) -> ConversationStatusAnswer:
        task_id = f"{LLM_TASK_PREFIX}{args.conversation_id}"
        view = await self._view(task_id)
        if (
            view is None
            or view.task_type != TaskType.LLM_CONVERSATION.value
            or not self.access.owns(who, view.user_id)
        ):
            raise NotFound(f"unknown conversation {echo(args.conversation_id)}")
        try:
            conversation = await self.registry.get_conversation(
                view.company_id, view.user_id, args.conversation_id
            )
        except (DocumentError, RedisError):
            conversation = None
        return ConversationStatusAnswer(
            conversation_id=args.conversation_id,
            task_id=task_id,
            status=view.status,
            progress=ConversationProgress(
                current_step=view.current_step,
                progress_percent=view.progress,
                estimated_completion=view.estimated_completion,
            ),
            created_at=view.created_at,
            response=conversation.response if conversation else None,
            tokens_used=conversation.tokens_used if conversation else None,
            model=conversation.model if conversation else None,
            error=view.error,
        )

    # ------------------------------------------------------------------ UNIFIED_REGISTRY.*

    async def get_user_registry(self, who: Principal, args: UserIdArgs) -> UserRegistryAnswer:
        self.access.require_self(who, args.user_id)
        doc = await self.registry.get_user_registry(args.user_id)
        if doc is None:
            raise NotFound(f"user {echo(args.user_id)} is not registered")
        return UserRegistryAnswer(user_id=args.user_id, registry=doc)

    async def get_company_active_users(
        self, who: Principal, args: CompanyIdArgs
    ) -> CompanyUsersAnswer:
        require_company(who, args.company_id)
        users = await self.registry.get_company_active_users(args.company_id)
        return CompanyUsersAnswer(company_id=args.company_id, active_users=users, count=len(users))

    # ------------------------------------------------------------------ health

    async def health(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.registry.client.ping(), self.settings.redis_timeout_s)
            checks["redis"] = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        try:
            await self.tasks.ping()
            checks["kubernetes"] = "ok"
        except Unavailable as exc:
            checks["kubernetes"] = f"unavailable: {exc.message}"
        return checks
