"""The web app's calls exactly as the design writes them ("Utilisation côté Reflex").

One sequence, used by ``make demo`` and by the chart test on kind, so both run the same calls:
positional ``args`` only (no ``kwargs``, no company named for the document), the answers
checked against the design's and CONTRACT.md's. ``call(method, args)`` must post
``{"method": method, "args": args}`` with the caller's credential and return the JSON answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Call = Callable[[str, list[Any]], dict[str, Any]]

DOCUMENT_TEXT = (
    "Facture 2025-042 de ACME SARL, 12 rue de la Paix, Paris. Total TTC : 1 250,00 EUR, "
    "payable sous 30 jours. Contact : billing@acme.example"
)
PROMPT = "What is the capital of France?"


class DesignCallMismatch(RuntimeError):
    """An answer differs from the one the design documents."""


@dataclass(frozen=True)
class DesignTasks:
    document_task_id: str
    conversation_task_id: str | None


def _expect(method: str, answer: dict[str, Any], wanted: dict[str, Any]) -> None:
    if any(answer.get(key) != value for key, value in wanted.items()):
        raise DesignCallMismatch(f"{method}: got {answer}, the design answers {wanted}")


def run(
    call: Call,
    *,
    user_id: str,
    session_id: str,
    backend_route: str,
    company_id: str,
    job_id: str,
    collection_name: str,
    with_llm: bool = True,
) -> DesignTasks:
    """Registry, Chroma, tasks, LLM and unified registry calls; the tasks it started."""
    register = "REGISTRY.register_user"
    _expect(
        register,
        call(register, [user_id, session_id, backend_route]),
        {"success": True, "user_id": user_id, "session_id": session_id},
    )
    chroma = {"success": True, "user_id": user_id, "collection_name": collection_name}
    method = "CHROMA_VECTOR.register_collection_user"
    _expect(method, call(method, [user_id, collection_name, session_id]), chroma)
    method = "CHROMA_VECTOR.heartbeat_collection"
    _expect(method, call(method, [user_id, collection_name]), chroma)

    method = "TASK.start_document_analysis"
    document_task = f"doc_analysis_{job_id}"
    answer = call(method, [user_id, {"text": DOCUMENT_TEXT}, job_id])
    wanted = {"success": True, "task_id": document_task, "status": "queued"}
    if answer != wanted:
        raise DesignCallMismatch(f"{method}: got {answer}, the design answers {wanted}")

    conversation_task = None
    if with_llm:
        method = "TASK.start_llm_conversation"
        answer = call(method, [user_id, company_id, PROMPT])
        _expect(method, answer, {"success": True, "status": "queued"})
        if not str(answer.get("conversation_id", "")).startswith("conv_"):
            raise DesignCallMismatch(f"{method}: no conv_ id in {answer}")
        conversation_task = str(answer["task_id"])

    method = "TASK.get_task_status"
    status = call(method, [document_task])
    if not {"status", "progress", "current_step"} <= status.keys():
        raise DesignCallMismatch(f"{method}: got {status}")
    method = "UNIFIED_REGISTRY.get_user_registry"
    _expect(method, call(method, [user_id]), {"success": True, "user_id": user_id})
    method = "UNIFIED_REGISTRY.get_company_active_users"
    _expect(method, call(method, [company_id]), {"success": True, "company_id": company_id})
    return DesignTasks(document_task, conversation_task)
