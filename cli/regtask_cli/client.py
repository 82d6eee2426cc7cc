"""The shim as the CLI sees it: one ``POST /rpc`` per call, the web app's methods and answers.

The CLI goes through the same door as the web app (``{"method", "args", "kwargs"}`` with
``Authorization: Bearer <service token>``), so what it shows is what the app would get. Answers
are validated into small models here; every failure becomes a :class:`CliError` whose exit code
says what kind of failure it was.
"""

from __future__ import annotations

from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from regtask_cli.errors import CliError, ExitCode

DEFAULT_SHIM_URL = "http://127.0.0.1:8080"
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

_Answer = TypeVar("_Answer", bound="ShimAnswer")


class ShimAnswer(BaseModel):
    # Tolerant: fields the shim adds later must not break an older CLI.
    model_config = ConfigDict(extra="ignore", frozen=True)


class TaskStarted(ShimAnswer):
    task_id: str
    status: str
    conversation_id: str | None = None
    collection_name: str | None = None


class TaskStatus(ShimAnswer):
    task_id: str
    task_type: str
    status: str
    progress: int
    current_step: str
    created_at: str | None = None
    conversation_id: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class CancelRequested(ShimAnswer):
    task_id: str
    status: str
    cancel_requested: bool


class TaskList(ShimAnswer):
    user_id: str
    tasks: list[TaskStatus]
    count: int


def _refusal(status: int, message: str) -> CliError:
    """Map an HTTP refusal to the exit code a script can branch on."""
    if status == 401:
        return CliError(
            f"shim refused the credentials (401): {message}; set REGTASK_SHIM_TOKEN or --token",
            ExitCode.DENIED,
        )
    if status == 403:
        return CliError(f"not authorized (403): {message}", ExitCode.DENIED)
    if status == 404:
        return CliError(message, ExitCode.NOT_FOUND)
    if status == 503:
        return CliError(f"shim backend unavailable (503): {message}", ExitCode.UNREACHABLE)
    return CliError(f"shim refused the call (HTTP {status}): {message}", ExitCode.REFUSED)


class ShimClient:
    """Synchronous RPC client; one connection pool for the life of a command."""

    def __init__(
        self,
        base_url: str = DEFAULT_SHIM_URL,
        token: str | None = None,
        *,
        timeout_s: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``rpc_call(method, args=[...], kwargs={...})``: the answer's fields, or a CliError."""
        body: dict[str, Any] = {"method": method, "args": list(args)}
        if kwargs:
            body["kwargs"] = kwargs
        try:
            response = self._http.post("/rpc", json=body)
        except httpx.TimeoutException:
            raise CliError(
                f"shim at {self.base_url} did not answer in time", ExitCode.UNREACHABLE
            ) from None
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise CliError(
                f"shim unreachable at {self.base_url}: {reason}", ExitCode.UNREACHABLE
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise CliError(
                f"unexpected answer from {self.base_url}/rpc (HTTP {response.status_code}, "
                "not a JSON object): is this the regtask shim?",
                ExitCode.REFUSED,
            )
        if response.is_success and answer.get("success") is True:
            return answer
        message = str(answer.get("error") or response.reason_phrase or "no error message")
        status = response.status_code if not response.is_success else 400
        raise _refusal(status, message)

    def _typed(
        self, answer_type: type[_Answer], method: str, /, *args: Any, **kwargs: Any
    ) -> _Answer:
        # Positional-only: RPC keyword arguments (``model``...) must never meet these names.
        answer = self.call(method, *args, **kwargs)
        try:
            return answer_type.model_validate(answer)
        except ValidationError as exc:
            raise CliError(
                f"unexpected answer to {method}: {exc.error_count()} field(s) do not fit "
                f"(first: {exc.errors()[0]['loc']})",
                ExitCode.REFUSED,
            ) from None

    # ------------------------------------------------------------------ TASK.* / LLM.*

    def start_document_analysis(
        self, user_id: str, document_data: dict[str, Any], job_id: str
    ) -> TaskStarted:
        return self._typed(
            TaskStarted, "TASK.start_document_analysis", user_id, document_data, job_id
        )

    def start_vector_computation(
        self,
        user_id: str,
        company_id: str,
        documents: list[Any],
        collection_name: str,
        job_id: str | None = None,
    ) -> TaskStarted:
        extra = {"job_id": job_id} if job_id is not None else {}
        return self._typed(
            TaskStarted,
            "TASK.start_vector_computation",
            user_id,
            company_id,
            documents,
            collection_name,
            **extra,
        )

    def start_llm_conversation(
        self,
        user_id: str,
        company_id: str,
        prompt: str,
        model: str | None = None,
        temperature: float | None = None,
    ) -> TaskStarted:
        """``TASK.start_llm_conversation``; ``LLM.start_conversation`` when a model or a
        temperature is chosen (the only method of the contract that takes them)."""
        if model is None and temperature is None:
            return self._typed(
                TaskStarted, "TASK.start_llm_conversation", user_id, company_id, prompt
            )
        chosen = {
            name: value
            for name, value in (("model", model), ("temperature", temperature))
            if value is not None
        }
        return self._typed(
            TaskStarted, "LLM.start_conversation", user_id, company_id, prompt, **chosen
        )

    def task_status(self, task_id: str) -> TaskStatus:
        return self._typed(TaskStatus, "TASK.get_task_status", task_id)

    def cancel_task(self, task_id: str) -> CancelRequested:
        return self._typed(CancelRequested, "TASK.cancel_task", task_id)

    def list_user_tasks(self, user_id: str) -> TaskList:
        return self._typed(TaskList, "TASK.list_user_tasks", user_id)
