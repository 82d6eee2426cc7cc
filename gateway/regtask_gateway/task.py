"""Routes of the runner's own task: read it, report progress, store its result, publish its
conversation events and store its conversation.

Every write is scoped by the caller's claims (:mod:`regtask_gateway.auth`): the task, user,
company and conversation come from the task's spec, never from the body. The end of a task is
not written here: the operator records it from the Job's outcome.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from regtask import keys
from regtask.docstore import DocumentError, DocumentMissing
from regtask.documents import ConversationDoc, RegistryStatus
from regtask.events import (
    EventType,
    LlmConversationCompleteEvent,
    LlmConversationCompletePayload,
    LlmConversationUpdateEvent,
    LlmConversationUpdatePayload,
)
from regtask.gateway_api import (
    CONVERSATION_PATH,
    EVENTS_PATH,
    MAX_PROGRESS_DATA_BYTES,
    PROGRESS_PATH,
    RESULT_PATH,
    TASK_PATH,
    ConversationIn,
    ConversationOut,
    EventIn,
    EventOut,
    ProgressIn,
    ProgressOut,
    ResultIn,
    ResultOut,
    RunnerTask,
)
from regtask.storage import store_result
from regtask_gateway import headroom
from regtask_gateway.auth import ClaimsDep
from regtask_gateway.inputs import resolve_input
from regtask_gateway.state import (
    GatewayState,
    StateDep,
    claimed_spec,
    company_quotas,
    json_size,
)

log = structlog.get_logger(__name__)

router = APIRouter()


@router.get(TASK_PATH)
async def get_task(state: StateDep, claims: ClaimsDep) -> RunnerTask:
    spec = await claimed_spec(state, claims, fresh=True)
    inputs = [await resolve_input(state, claims, item) for item in spec.inputs]
    preferences = await _model_preferences(state, claims.user_id)
    return RunnerTask(
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
        model_preferences=preferences,
    )


@router.post(PROGRESS_PATH, response_model=ProgressOut)
async def post_progress(body: ProgressIn, state: StateDep, claims: ClaimsDep) -> Response:
    if json_size(body.data) > MAX_PROGRESS_DATA_BYTES:
        raise HTTPException(413, f"progress data above {MAX_PROGRESS_DATA_BYTES} bytes")
    if not state.throttle.admit(claims.task_id, body.current_step, body.progress):
        return JSONResponse(ProgressOut(accepted=False).model_dump(), status_code=202)
    spec = await claimed_spec(state, claims)
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
            record_step=True,
        )
    except DocumentMissing as exc:
        raise HTTPException(404, "task document not found in the registry") from exc
    return JSONResponse(ProgressOut(accepted=True, applied=applied).model_dump())


@router.post(RESULT_PATH)
async def post_result(request: Request, state: StateDep, claims: ClaimsDep) -> ResultOut:
    limit = state.settings.max_result_bytes
    declared = int(request.headers.get("content-length") or 0)
    if declared > 4 * limit:
        raise HTTPException(413, _too_big(declared, limit))
    try:
        body = ResultIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False)) from exc
    size = json_size(body.result)
    if size > limit:
        raise HTTPException(413, _too_big(size, limit))
    spec = await claimed_spec(state, claims)
    quotas = await company_quotas(state, claims.company_id)
    # Held as the task's document: released once that expires (maintenance reconciles).
    item = keys.task(claims.task_id)
    decision = await state.storage.reserve(claims.company_id, size, quotas.storage_limit_mb, item)
    headroom.show_storage(state.metrics, claims.company_id, decision)
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
        await state.storage.release(claims.company_id, size, item)
        raise HTTPException(404, "task document not found in the registry") from exc
    if not applied:
        await state.storage.release(claims.company_id, size, item)
        raise HTTPException(409, "task already finished; result not stored")
    log.info("task_result_stored", task_id=claims.task_id, size_bytes=size)
    return ResultOut(stored=True, size_bytes=size, storage_used_bytes=decision.used_bytes)


@router.post(EVENTS_PATH)
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
    if json_size(body.payload) > state.settings.max_result_bytes:
        raise HTTPException(413, "event payload too large")
    receivers = await state.publisher.publish(event)
    return EventOut(published=True, receivers=receivers)


@router.post(CONVERSATION_PATH)
async def post_conversation(
    body: ConversationIn, state: StateDep, claims: ClaimsDep
) -> ConversationOut:
    if body.conversation_id != claims.conversation_id:
        raise HTTPException(403, "conversation_id does not belong to this task")
    if json_size(body.model_dump()) > state.settings.max_result_bytes:
        raise HTTPException(413, "conversation too large")
    # The body's fields as sent; whose conversation it is comes from the claims.
    await state.registry.store_conversation(
        ConversationDoc(user_id=claims.user_id, company_id=claims.company_id, **body.model_dump())
    )
    return ConversationOut(stored=True, conversation_id=body.conversation_id)


def _too_big(size: int, limit: int) -> str:
    return (
        f"result is {size} bytes, above the {limit}-byte inline limit: store the data as a blob "
        "and return its reference instead"
    )


async def _model_preferences(state: GatewayState, user_id: str) -> dict[str, Any]:
    """The user's LLM defaults from the registry; none when the document is unreadable."""
    try:
        doc = await state.registry.get_user_registry(user_id)
    except DocumentError:
        return {}
    return dict(doc.services.llm.model_preferences) if doc else {}
