"""What each registry operation writes, as plain :class:`DocUpdate` data.

Pure functions (no I/O): the async facade used by the operator and the shim, and the sync one
used by tools and benchmarks, both execute these same lists, and unit tests can inspect them.

Long (about 430 lines) for a reason: it is the registry's whole write surface, one short function
per operation, so that every write to a web-app document can be read in one place.
"""

from __future__ import annotations

import json
from typing import Any

from regtask import keys
from regtask.docstore import (
    DocUpdate,
    ProgressUpdate,
    op_add,
    op_default,
    op_guard_equals,
    op_guard_not,
    op_remove,
    op_set,
)
from regtask.documents import (
    TERMINAL_STATUSES,
    ActiveUser,
    CompanyDoc,
    CompanyInfo,
    ConversationDoc,
    LegacyChromaDoc,
    LegacyUserDoc,
    Quotas,
    RegistryStatus,
    TaskDoc,
    UnifiedUserDoc,
    UserInfo,
    UserPresence,
)
from regtask.events import EventType, TaskProgressEvent, TaskProgressPayload
from regtask.timeutil import epoch_seconds, now_iso

_TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATUSES))


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")  # type: ignore[no-any-return]


def new_user_doc(user_id: str, presence: UserPresence = UserPresence.ONLINE) -> dict[str, Any]:
    return _dump(UnifiedUserDoc(user_info=UserInfo(user_id=user_id, status=presence)))


def new_company_doc(company_id: str, quotas: Quotas | None = None) -> dict[str, Any]:
    limits = quotas or Quotas()
    doc = CompanyDoc(company_info=CompanyInfo(company_id=company_id), quotas=limits)
    return {**doc.model_dump(mode="json", exclude={"quotas"}), "quotas": limits.contract_copy()}


def _user_update(user_id: str, ops: list[dict[str, Any]], **kw: Any) -> DocUpdate:
    """Unified user documents are created on first touch (offline until a session registers)."""
    return DocUpdate(
        key=keys.unified_user(user_id),
        ops=ops,
        init=new_user_doc(user_id, UserPresence.OFFLINE),
        ttl_s=keys.UNIFIED_USER_TTL_S,
        extra_fields={keys.LAST_UPDATE_FIELD: epoch_seconds()},
        **kw,
    )


def _company_update(company_id: str, ops: list[dict[str, Any]]) -> DocUpdate:
    return DocUpdate(
        key=keys.company(company_id),
        ops=ops,
        init=new_company_doc(company_id),
        ttl_s=keys.COMPANY_TTL_S,
    )


# ------------------------------------------------------------------ sessions (REGISTRY.*)


def legacy_register_user(user_id: str, session_id: str, backend_route: str) -> DocUpdate:
    doc = _dump(LegacyUserDoc(user_id=user_id, session_id=session_id, backend_route=backend_route))
    return DocUpdate(
        key=keys.legacy_user(user_id),
        ops=[op_set((name,), value) for name, value in doc.items()],
        init={},
        ttl_s=keys.LEGACY_USER_TTL_S,
    )


def session_index(session_id: str, user_id: str) -> DocUpdate:
    """Claim ``session_id`` for ``user_id``: refused (guard) when another user holds it.

    A session belongs to the first user who registered it until it is unregistered or its
    index expires; applied before anything else of a registration, so a refused claim writes
    nothing (issue 16, item 9: no re-pointing another user's session).
    """
    return DocUpdate(
        key=keys.session(session_id),
        ops=[
            op_default(("user_id",), user_id),
            op_guard_equals(("user_id",), user_id),
            op_set(("session_id",), session_id),
        ],
        init={},
        ttl_s=keys.LEGACY_USER_TTL_S,
    )


def unified_register_user(
    user_id: str,
    session_id: str,
    backend_route: str,
    company_id: str | None = None,
    authorized_companies: list[str] | None = None,
    company_roles: dict[str, str] | None = None,
) -> list[DocUpdate]:
    now = now_iso()
    ops = [
        op_set(("user_info", "session_id"), session_id),
        op_set(("user_info", "backend_route"), backend_route),
        op_set(("user_info", "last_seen_at"), now),
        op_set(("user_info", "status"), UserPresence.ONLINE.value),
        op_set(("heartbeat", "last_heartbeat"), now),
    ]
    updates: list[DocUpdate] = []
    if company_id is not None:
        ops.append(op_set(("companies", "current_company_id"), company_id))
    if authorized_companies is not None:
        ops.append(op_set(("companies", "authorized_companies_ids"), authorized_companies))
    if company_roles is not None:
        ops.append(op_set(("companies", "company_roles"), company_roles))
    updates.append(_user_update(user_id, ops))
    if company_id is not None:
        role = (company_roles or {}).get(company_id, "user")
        member = _dump(ActiveUser(role=role, last_activity=now, session_id=session_id))
        updates.append(_company_update(company_id, [op_set(("active_users", user_id), member)]))
    return updates


def legacy_unregister_session(user_id: str, session_id: str) -> DocUpdate:
    """Drop the legacy user key, but only if it still belongs to this session."""
    return DocUpdate(
        key=keys.legacy_user(user_id),
        ops=[op_guard_equals(("session_id",), session_id)],
        delete=True,
    )


def drop_session_index(session_id: str, user_id: str) -> DocUpdate:
    return DocUpdate(
        key=keys.session(session_id),
        ops=[op_guard_equals(("user_id",), user_id)],
        delete=True,
    )


def unified_unregister_session(
    user_id: str, session_id: str, company_id: str | None
) -> list[DocUpdate]:
    updates = [
        DocUpdate(
            key=keys.unified_user(user_id),
            ops=[
                op_guard_equals(("user_info", "session_id"), session_id),
                op_set(("user_info", "status"), UserPresence.OFFLINE.value),
                op_set(("user_info", "last_seen_at"), now_iso()),
            ],
            ttl_s=keys.UNIFIED_USER_TTL_S,
            extra_fields={keys.LAST_UPDATE_FIELD: epoch_seconds()},
        )
    ]
    if company_id:
        updates.append(
            DocUpdate(
                key=keys.company(company_id),
                ops=[
                    op_guard_equals(("active_users", user_id, "session_id"), session_id),
                    {"op": "del", "path": ["active_users", user_id]},
                ],
                ttl_s=keys.COMPANY_TTL_S,
            )
        )
    return updates


def unified_heartbeat(user_id: str) -> DocUpdate:
    now = now_iso()
    return DocUpdate(
        key=keys.unified_user(user_id),
        ops=[
            op_set(("user_info", "last_seen_at"), now),
            op_set(("user_info", "status"), UserPresence.ONLINE.value),
            op_set(("heartbeat", "last_heartbeat"), now),
        ],
        ttl_s=keys.UNIFIED_USER_TTL_S,
        extra_fields={keys.LAST_UPDATE_FIELD: epoch_seconds()},
    )


def mark_offline_if_stale(user_id: str, seen_heartbeat: str) -> DocUpdate:
    """Sweep one user offline, unless a heartbeat arrived since the sweeper read it."""
    return DocUpdate(
        key=keys.unified_user(user_id),
        ops=[
            op_guard_equals(("heartbeat", "last_heartbeat"), seen_heartbeat),
            op_set(("user_info", "status"), UserPresence.OFFLINE.value),
        ],
        extra_fields={keys.LAST_UPDATE_FIELD: epoch_seconds()},
    )


# ------------------------------------------------------------------ chroma (CHROMA_VECTOR.*)


def legacy_register_collection(user_id: str, collection_name: str, session_id: str) -> DocUpdate:
    doc = _dump(
        LegacyChromaDoc(user_id=user_id, collection_name=collection_name, session_id=session_id)
    )
    return DocUpdate(
        key=keys.legacy_chroma(user_id, collection_name),
        ops=[op_set((name,), value) for name, value in doc.items()],
        init={},
        ttl_s=keys.LEGACY_CHROMA_TTL_S,
    )


def legacy_heartbeat_collection(user_id: str, collection_name: str) -> DocUpdate:
    return DocUpdate(
        key=keys.legacy_chroma(user_id, collection_name),
        ops=[op_set(("last_heartbeat",), now_iso())],
        ttl_s=keys.LEGACY_CHROMA_TTL_S,
    )


def unified_register_collection(
    user_id: str, collection_name: str, company_id: str | None
) -> list[DocUpdate]:
    now = now_iso()
    updates = [
        _user_update(
            user_id,
            [
                op_add(("services", "chroma", "collections"), collection_name),
                op_set(("services", "chroma", "last_heartbeat"), now),
            ],
        )
    ]
    if company_id:
        updates.append(
            _company_update(
                company_id, [op_add(("services", "chroma_collections"), collection_name)]
            )
        )
    return updates


def unified_heartbeat_collection(user_id: str) -> DocUpdate:
    return _user_update(user_id, [op_set(("services", "chroma", "last_heartbeat"), now_iso())])


# ------------------------------------------------------------------ tasks


def register_task(doc: TaskDoc, unified: bool) -> list[DocUpdate]:
    """Create the task document (idempotent: an existing one keeps its status and progress)."""
    info = doc.task_info
    updates = [
        DocUpdate(
            key=keys.task(info.task_id),
            ops=[],
            init=_dump(doc),
            ttl_s=keys.task_ttl(doc.isolation.max_duration),
            init_fields={keys.CREATED_AT_FIELD: epoch_seconds()},
        )
    ]
    if unified:
        updates.append(
            _user_update(
                info.user_id, [op_add(("services", "tasks", "active_tasks"), info.task_id)]
            )
        )
        updates.append(
            _company_update(info.company_id, [op_add(("services", "active_tasks"), info.task_id)])
        )
    return updates


def task_progress(
    task_id: str,
    user_id: str,
    status: RegistryStatus,
    progress: int,
    current_step: str,
    max_duration_s: int,
    data: dict[str, Any] | None = None,
    estimated_completion: str | None = None,
    queue_position: int | None = None,
    estimated_start: str | None = None,
    record_step: bool = False,
) -> ProgressUpdate:
    """One round trip: update a live task and publish its event; a finished task is left alone.

    The event is the contract's ``task.progress_update`` (:class:`TaskProgressEvent`), written
    as a plain dict here because this is the hottest path of the platform; a test checks that
    it parses back into the model. ``record_step``: also append the update to the task's step
    history (:class:`regtask.documents.TaskStep`; a runner's report, not a waiting report).
    """
    if not 0 <= progress <= 100:
        raise ValueError(f"progress must be within 0..100, got {progress}")
    at = now_iso()
    message = json.dumps(
        {
            "type": EventType.TASK_PROGRESS.value,
            "uid": user_id,
            "timestamp": at,
            "payload": {
                "task_id": task_id,
                "status": status.value,
                "progress": progress,
                "current_step": current_step,
                "data": data or {},
            },
        }
    )
    return ProgressUpdate(
        key=keys.task(task_id),
        status=status.value,
        progress=progress,
        current_step=current_step,
        ttl_s=keys.task_ttl(max_duration_s),
        channel=keys.events_channel(user_id),
        message=message,
        terminal=_TERMINAL,
        estimated_completion=estimated_completion or "",
        place=(
            json.dumps({"queue_position": queue_position, "estimated_start": estimated_start})
            if queue_position is not None
            else ""
        ),
        step_entry=(
            json.dumps({"at": at, "step": current_step, "progress": progress, "data": data or {}})
            if record_step
            else ""
        ),
    )


def finish_task(
    task_id: str,
    user_id: str,
    company_id: str,
    status: RegistryStatus,
    max_duration_s: int,
    unified: bool,
    history_limit: int,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> list[DocUpdate]:
    """Record the end once; the user/company bookkeeping is idempotent and always applied."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"{status} is not a terminal status")
    progress = 100 if status is RegistryStatus.COMPLETED else None
    data: dict[str, Any] = {}
    if error:
        data["error"] = error
    event = TaskProgressEvent(
        uid=user_id,
        payload=TaskProgressPayload(
            task_id=task_id,
            status=status.value,
            progress=progress if progress is not None else 0,
            current_step=status.value,
            data=data,
        ),
    )
    ops = [
        op_guard_not(("task_info", "status"), list(_TERMINAL)),
        op_set(("task_info", "status"), status.value),
        op_set(("progress", "current_step"), status.value),
    ]
    if progress is not None:
        ops.append(op_set(("progress", "progress_percent"), progress))
    if result is not None:
        ops.append(op_set(("result",), result))
    if error is not None:
        ops.append(op_set(("error",), error))
    updates = [
        DocUpdate(
            key=keys.task(task_id),
            ops=ops,
            ttl_s=keys.task_ttl(max_duration_s),
            publish=(event.channel(), event.to_json()),
        )
    ]
    if unified:
        updates.append(
            _user_update(
                user_id,
                [
                    op_remove(("services", "tasks", "active_tasks"), task_id),
                    op_add(("services", "tasks", "task_history"), task_id, cap=history_limit),
                ],
            )
        )
        updates.append(
            _company_update(company_id, [op_remove(("services", "active_tasks"), task_id)])
        )
    return updates


# ------------------------------------------------------------------ companies and conversations


def company_quotas(company_id: str, quotas: Quotas, company_name: str | None = None) -> DocUpdate:
    ops = [op_set(("quotas",), quotas.contract_copy())]
    if company_name is not None:
        ops.append(op_set(("company_info", "company_name"), company_name))
    return _company_update(company_id, ops)


def store_conversation(doc: ConversationDoc, unified: bool) -> list[DocUpdate]:
    body = _dump(doc)
    updates = [
        DocUpdate(
            key=keys.conversation(doc.company_id, doc.user_id, doc.conversation_id),
            ops=[op_set((name,), value) for name, value in body.items()],
            init={},
            ttl_s=keys.CONVERSATION_TTL_S,
            init_fields={keys.CREATED_AT_FIELD: epoch_seconds()},
        )
    ]
    if unified:
        updates.append(
            _user_update(
                doc.user_id,
                [op_add(("services", "llm", "active_conversations"), doc.conversation_id, cap=100)],
            )
        )
        updates.append(
            _company_update(
                doc.company_id,
                [op_add(("services", "llm_conversations"), doc.conversation_id, cap=1000)],
            )
        )
    return updates


def prune_list(key: str, path: tuple[str, ...], stale: list[str]) -> DocUpdate:
    """Remove ids found stale by the cleanup (no init: a vanished document stays vanished)."""
    return DocUpdate(key=key, ops=[op_remove(path, item) for item in stale])
