"""The registered task types: adding one is a runner module plus one entry here.

The CRD's ``spec.taskType`` enum, the RPC shim's id prefixes and the operator's defaults are all
read from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskType(StrEnum):
    DOCUMENT_ANALYSIS = "document_analysis"
    VECTOR_COMPUTATION = "vector_computation"
    LLM_CONVERSATION = "llm_conversation"


@dataclass(frozen=True)
class TaskTypeInfo:
    task_type: TaskType
    # Prefix of task ids minted by the RPC shim (``doc_analysis_{job_id}`` in the contract).
    id_prefix: str
    default_max_duration_s: int
    # Whether each run consumes one unit of the company's hourly LLM quota at admission.
    uses_llm: bool


TASK_TYPES: dict[TaskType, TaskTypeInfo] = {
    TaskType.DOCUMENT_ANALYSIS: TaskTypeInfo(
        TaskType.DOCUMENT_ANALYSIS, "doc_analysis_", 1800, False
    ),
    TaskType.VECTOR_COMPUTATION: TaskTypeInfo(TaskType.VECTOR_COMPUTATION, "vector_", 3600, False),
    TaskType.LLM_CONVERSATION: TaskTypeInfo(TaskType.LLM_CONVERSATION, "llm_", 300, True),
}
