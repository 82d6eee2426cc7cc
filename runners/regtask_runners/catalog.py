"""The runners' catalog: the one place that maps a task type to its runner; adding a type = a
module + one entry. (Not the Redis registry: that word names only :mod:`regtask.registry`.)

Runner modules are imported on lookup only, so a runner process loads what its own type needs
(the LLM runner does not import pypdf, the document runner does not import openai).
"""

from __future__ import annotations

import importlib
from typing import cast

from regtask.tasktypes import TASK_TYPES, TaskType
from regtask_runners.errors import PermanentError
from regtask_runners.framework import Runner

# TaskType -> "module:function" under regtask_runners.
RUNNERS: dict[TaskType, str] = {
    TaskType.DOCUMENT_ANALYSIS: "document_analysis:run",
    TaskType.VECTOR_COMPUTATION: "vector_computation:run",
    TaskType.LLM_CONVERSATION: "llm_conversation:run",
}


def lookup(task_type: str) -> Runner:
    try:
        kind = TaskType(task_type)
    except ValueError:
        raise PermanentError(f"unknown task type {task_type!r}") from None
    if kind not in RUNNERS:
        raise PermanentError(f"no runner registered for {task_type!r}")
    module_name, function = RUNNERS[kind].split(":")
    module = importlib.import_module(f"regtask_runners.{module_name}")
    return cast(Runner, getattr(module, function))


def cataloged() -> set[TaskType]:
    """For the test that every declared task type has a runner."""
    return set(RUNNERS) & set(TASK_TYPES)
