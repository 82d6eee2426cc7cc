"""Every failure the shim answers, as ``{"success": false, "error": "..."}`` with its HTTP status.

The web app shows ``error`` to people, so messages name what was wrong (the parameter, the
method, the quota) and never carry a stack trace. Exception handlers installed by
:func:`install_error_handlers` turn anything raised below a route into one of these answers.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from regtask.docstore import DocumentError

log = structlog.get_logger(__name__)

MAX_ECHO = 80
_PHRASES = frozenset(status.phrase for status in HTTPStatus)


class ErrorAnswer(BaseModel):
    """The one shape of every refusal."""

    success: Literal[False] = False
    error: str


class ShimError(Exception):
    """A refusal with a status code; the message is meant for the caller."""

    status: ClassVar[int] = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadArguments(ShimError):
    status = 400


class Unauthenticated(ShimError):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ShimError):
    status = 403


class NotFound(ShimError):
    status = 404


class Conflict(ShimError):
    status = 409


class TooLarge(ShimError):
    status = 413


class QuotaExceeded(ShimError):
    status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(retry_after_s, 1))})


class Unavailable(ShimError):
    status = 503


def echo(value: object) -> str:
    """A caller-supplied value, quoted and cut short, safe to put inside an error message."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:MAX_ECHO] + ("..." if len(text) > MAX_ECHO else ""))


def describe_validation(errors: list[Any], *, skip_prefix: tuple[str, ...] = ()) -> str:
    """``bad argument 'job_id': String should match pattern ...`` from pydantic's first error."""
    if not errors:
        return "bad arguments"
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if str(part) not in skip_prefix]
    name = ".".join(loc) or "body"
    kind = first.get("type", "")
    if kind == "missing":
        return f"missing argument '{name}'"
    if kind == "extra_forbidden":
        return f"unexpected argument '{name}'"
    return f"bad argument '{name}': {first.get('msg', 'invalid value')}"


def bad_arguments(exc: ValidationError) -> BadArguments:
    return BadArguments(describe_validation(exc.errors(include_input=False, include_url=False)))


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorAnswer(error=message).model_dump(), status_code=status, headers=headers
    )


def answer_for(exc: BaseException) -> JSONResponse:
    """Map any exception to its answer; unknown ones are logged and answered without detail."""
    if isinstance(exc, ShimError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, ValidationError):
        return answer_for(bad_arguments(exc))
    if isinstance(exc, RedisError):
        log.warning("redis_unavailable", error=f"{type(exc).__name__}: {exc}")
        return error_response(503, "registry unavailable: Redis did not answer, retry later")
    if isinstance(exc, DocumentError):
        log.error("registry_document_unreadable", error=str(exc))
        return error_response(500, "a stored registry document is unreadable; see the shim logs")
    log.error("unexpected_error", error_type=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal error; see the shim logs")


def install_error_handlers(app: FastAPI) -> None:
    async def on_shim_error(_: Request, exc: Exception) -> JSONResponse:
        return answer_for(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = describe_validation(list(exc.errors()), skip_prefix=("body", "path", "query"))
        return error_response(400, message)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        messages = {
            404: "not found: no such route (the RPC endpoint is POST /rpc)",
            405: "method not allowed",
            413: "request too large",
        }
        detail = exc.detail if isinstance(exc.detail, str) else ""
        # Starlette's own details are bare reason phrases: say something more useful.
        if not detail or detail in _PHRASES:
            detail = messages.get(exc.status_code, "request refused")
        message = detail
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, message, headers)

    app.add_exception_handler(ShimError, on_shim_error)
    app.add_exception_handler(RedisError, on_shim_error)
    app.add_exception_handler(DocumentError, on_shim_error)
    app.add_exception_handler(ValidationError, on_shim_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
