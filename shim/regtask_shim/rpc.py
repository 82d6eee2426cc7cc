"""The published RPC methods and how a call ``{"method", "args", "kwargs"}`` is bound to one.

Dispatch is a lookup in :data:`METHODS`, a fixed table: a name that is not a key (``__class__``,
``TASK.__init__``, ``TASK._private``...) is an unknown method (404), never an attribute lookup.
Positional ``args`` bind to the argument model's fields in order, ``kwargs`` by name; anything
missing, extra, of the wrong type or invalid is a 400 that names the parameter.

Answers (every one also carries ``"success": true``; refusals are
``{"success": false, "error": "..."}`` with the HTTP status of the failure)::

    REGISTRY.register_user(user_id, session_id, backend_route="")
        -> {user_id, session_id}
        service credential only, by name: company_id, authorized_companies_ids, company_roles
    REGISTRY.unregister_session(session_id)          -> {session_id, unregistered: bool}
    CHROMA_VECTOR.register_collection_user(user_id, collection_name, session_id)
        -> {user_id, collection_name}
    CHROMA_VECTOR.heartbeat_collection(user_id, collection_name)
        -> {user_id, collection_name}; 404 when not (or no longer) registered
    TASK.start_document_analysis(user_id, document_data, job_id)
        -> {task_id: "doc_analysis_{job_id}", status: "queued"}
    TASK.start_vector_computation(user_id, company_id, documents, collection_name, job_id=None)
        -> {task_id: "vector_{job_id or 16 hex}", status, collection_name}
    TASK.start_llm_conversation(user_id, company_id, prompt, conversation_id=None)
        -> {conversation_id: "conv_{12 hex}", task_id: "llm_{conversation_id}", status}
    LLM.start_conversation(user_id, company_id, prompt, model=None, temperature=None,
                           conversation_id=None)  -> same as TASK.start_llm_conversation
    TASK.get_task_status(task_id)
        -> {task_id, task_type, status, progress, current_step, created_at,
            conversation_id?, error?, result?, queue_position?, estimated_start?,
            estimated_completion?}
    TASK.cancel_task(task_id)   -> {task_id, status, cancel_requested: true}; 409 when finished
    TASK.list_user_tasks(user_id)   -> {user_id, tasks: [get_task_status answers], count}
    LLM.get_conversation_status(conversation_id)
        -> {conversation_id, task_id, status, progress: {current_step, progress_percent,
            estimated_completion?}, created_at, response?, tokens_used?, model?, error?}
    UNIFIED_REGISTRY.get_user_registry(user_id)    -> {user_id, registry: {user_info, ...}}
    UNIFIED_REGISTRY.get_company_active_users(company_id)
        -> {company_id, active_users: [ids], count}

A repeated start (same job_id / conversation_id) answers the existing task with its current
status and never starts a second one; an id already used by another user's task is a 409.
Statuses: queued, waiting_quota, processing, completed, failed, cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from regtask_shim.auth import Principal
from regtask_shim.errors import BadArguments, NotFound, bad_arguments, echo
from regtask_shim.models import (
    Args,
    CompanyIdArgs,
    ConversationIdArgs,
    DocumentAnalysisArgs,
    HeartbeatCollectionArgs,
    LlmConversationArgs,
    LlmStartArgs,
    RegisterCollectionArgs,
    RegisterUserArgs,
    RpcMethodInfo,
    TaskIdArgs,
    UnregisterSessionArgs,
    UserIdArgs,
    VectorComputationArgs,
)
from regtask_shim.service import ShimService

Handler = Callable[[ShimService, Principal, Any], Awaitable[BaseModel]]


@dataclass(frozen=True)
class RpcMethod:
    name: str
    params: type[Args]
    handler: Handler
    summary: str

    def info(self) -> RpcMethodInfo:
        fields = self.params.model_fields
        return RpcMethodInfo(
            name=self.name,
            params=list(fields),
            required=[name for name, field in fields.items() if field.is_required()],
            summary=self.summary,
        )


def _table(*methods: RpcMethod) -> Mapping[str, RpcMethod]:
    return MappingProxyType({method.name: method for method in methods})


METHODS: Mapping[str, RpcMethod] = _table(
    RpcMethod(
        "REGISTRY.register_user",
        RegisterUserArgs,
        ShimService.register_user,
        "Register a user's session (legacy keys; unified registry too when switched on).",
    ),
    RpcMethod(
        "REGISTRY.unregister_session",
        UnregisterSessionArgs,
        ShimService.unregister_session,
        "Forget a session.",
    ),
    RpcMethod(
        "CHROMA_VECTOR.register_collection_user",
        RegisterCollectionArgs,
        ShimService.register_collection_user,
        "Register a user's Chroma collection (90 s heartbeat TTL).",
    ),
    RpcMethod(
        "CHROMA_VECTOR.heartbeat_collection",
        HeartbeatCollectionArgs,
        ShimService.heartbeat_collection,
        "Keep a registered collection alive.",
    ),
    RpcMethod(
        "TASK.start_document_analysis",
        DocumentAnalysisArgs,
        ShimService.start_document_analysis,
        "Start doc_analysis_{job_id}; idempotent on job_id.",
    ),
    RpcMethod(
        "TASK.start_vector_computation",
        VectorComputationArgs,
        ShimService.start_vector_computation,
        "Start embeddings of documents into a collection; idempotent when job_id is given.",
    ),
    RpcMethod(
        "TASK.start_llm_conversation",
        LlmConversationArgs,
        ShimService.start_llm_conversation,
        "Start an LLM conversation task; idempotent when conversation_id is given.",
    ),
    RpcMethod(
        "TASK.get_task_status",
        TaskIdArgs,
        ShimService.get_task_status,
        "Status, progress and current step of a task.",
    ),
    RpcMethod(
        "TASK.cancel_task",
        TaskIdArgs,
        ShimService.cancel_task,
        "Ask the operator to stop a task (spec.cancel = true).",
    ),
    RpcMethod(
        "TASK.list_user_tasks",
        UserIdArgs,
        ShimService.list_user_tasks,
        "The user's tasks, newest first.",
    ),
    RpcMethod(
        "LLM.start_conversation",
        LlmStartArgs,
        ShimService.llm_start_conversation,
        "Start an LLM conversation with a model and temperature.",
    ),
    RpcMethod(
        "LLM.get_conversation_status",
        ConversationIdArgs,
        ShimService.get_conversation_status,
        "Status of a conversation, and its response once complete.",
    ),
    RpcMethod(
        "UNIFIED_REGISTRY.get_user_registry",
        UserIdArgs,
        ShimService.get_user_registry,
        "The user's registry document (legacy keys answer when the unified one is missing).",
    ),
    RpcMethod(
        "UNIFIED_REGISTRY.get_company_active_users",
        CompanyIdArgs,
        ShimService.get_company_active_users,
        "Ids of the company's active users.",
    ),
)


def resolve(name: str) -> RpcMethod:
    method = METHODS.get(name)
    if method is None:
        raise NotFound(f"unknown method {echo(name)}")
    return method


def bind(method: RpcMethod, args: list[Any], kwargs: Mapping[str, Any]) -> Args:
    names = list(method.params.model_fields)
    if len(args) > len(names):
        raise BadArguments(
            f"{method.name} takes at most {len(names)} arguments ({', '.join(names)}), "
            f"got {len(args)}"
        )
    data: dict[str, Any] = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in method.params.model_fields:
            raise BadArguments(
                f"unexpected argument {echo(key)}: {method.name} takes {', '.join(names)}"
            )
        if key in data:
            raise BadArguments(f"argument '{key}' given both by position and by name")
        data[key] = value
    try:
        return method.params.model_validate(data)
    except ValidationError as exc:
        raise bad_arguments(exc) from None


async def call(
    service: ShimService, who: Principal, name: str, args: list[Any], kwargs: Mapping[str, Any]
) -> BaseModel:
    method = resolve(name)
    return await method.handler(service, who, bind(method, args, kwargs))
