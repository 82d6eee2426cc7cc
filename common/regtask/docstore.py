"""Atomic updates of the JSON documents stored in Redis hashes.

Every change to a registry document is a list of small operations (set, add to a set-like
array, remove, guard...) applied by one Lua script in one round trip, so concurrent writers never
lose each other's updates. Each script touches one key (plus an optional PUBLISH), which keeps
it valid on Redis Cluster / serverless Valkey where multi-key scripts must share a slot.

The operation lists are plain data built by :mod:`regtask.registry`; :class:`DocStore` and
:class:`AsyncDocStore` only carry them to Redis, so sync and async callers share one logic.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ValidationError

from regtask import keys
from regtask.keys import DATA_FIELD

log = structlog.get_logger(__name__)

Path = tuple[str, ...]
Model = TypeVar("Model", bound=BaseModel)

DOC_APPLY_LUA = resources.files("regtask").joinpath("lua/doc_apply.lua").read_text()
TASK_PROGRESS_LUA = resources.files("regtask").joinpath("lua/task_progress.lua").read_text()


class DocumentError(RuntimeError):
    """A stored document is not what the contract says (not JSON, wrong shape).

    Raised instead of overwriting it: the stored bytes stay for an operator to inspect.
    """

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"malformed registry document at {key!r}: {detail}")
        self.key = key
        self.detail = detail


class DocumentMissing(KeyError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no registry document at {self.key!r}"


def op_set(path: Path, value: Any) -> dict[str, Any]:
    return {"op": "set", "path": list(path), "value": value}


def op_default(path: Path, value: Any) -> dict[str, Any]:
    """Set only where nothing is stored yet (keeps ``created_at`` on re-registration)."""
    return {"op": "default", "path": list(path), "value": value}


def op_delete(path: Path) -> dict[str, Any]:
    return {"op": "del", "path": list(path)}


def op_add(path: Path, value: Any, cap: int | None = None) -> dict[str, Any]:
    """Append ``value`` to the array unless present; keep the newest ``cap`` items."""
    return {"op": "add", "path": list(path), "value": value, "cap": cap}


def op_remove(path: Path, value: Any) -> dict[str, Any]:
    return {"op": "remove", "path": list(path), "value": value}


def op_guard_not(path: Path, values: list[Any]) -> dict[str, Any]:
    """Abort the whole update (nothing written, nothing published) if the value is one of these."""
    return {"op": "guard", "path": list(path), "none_of": values}


def op_guard_equals(path: Path, value: Any) -> dict[str, Any]:
    """Abort the whole update unless the stored value is exactly ``value``."""
    return {"op": "guard", "path": list(path), "equals": value}


@dataclass(frozen=True)
class DocUpdate:
    key: str
    ops: list[dict[str, Any]]
    # Document to start from when the key does not exist; None = fail with DocumentMissing.
    init: dict[str, Any] | None = None
    ttl_s: int = 0
    extra_fields: dict[str, str | int | float] = field(default_factory=dict)
    # Hash fields written only when this update creates the key (``created_at``).
    init_fields: dict[str, str | int | float] = field(default_factory=dict)
    # Remove the key once every guard passed (the ops' writes are then moot).
    delete: bool = False
    publish: tuple[str, str] | None = None
    return_doc: bool = False

    def script_arg(self) -> str:
        return json.dumps(
            {
                "field": DATA_FIELD,
                "ops": json.dumps(self.ops),
                "init": json.dumps(self.init) if self.init is not None else None,
                "ttl": self.ttl_s,
                "fields": {k: str(v) for k, v in self.extra_fields.items()} or None,
                "init_fields": {k: str(v) for k, v in self.init_fields.items()} or None,
                "delete": self.delete,
                "publish": list(self.publish) if self.publish else None,
                "nonce": -(10**12 + secrets.randbelow(9 * 10**12)),
                "return_doc": self.return_doc,
            }
        )


@dataclass(frozen=True)
class ProgressUpdate:
    """A live task's progress and its event: the one update runners send many times a minute.

    Carried by ``task_progress.lua`` with positional arguments (no generic operation list), so
    that it costs little more than a trivial EVAL (``make bench-registry``).
    """

    key: str
    status: str
    progress: int
    current_step: str
    ttl_s: int
    channel: str
    message: str
    terminal: tuple[str, ...]
    estimated_completion: str = ""
    # A waiting task's place, JSON {"queue_position": n, "estimated_start": iso|null}; "" when
    # the task is not waiting (the script then removes both).
    place: str = ""
    # The entry of the task's step history (JSON {at, step, progress, data}); "" records none.
    step_entry: str = ""

    def script_args(self) -> list[str | int]:
        return [
            self.status,
            self.progress,
            self.current_step,
            self.ttl_s,
            self.channel,
            self.message,
            self.estimated_completion,
            -(10**12 + secrets.randbelow(9 * 10**12)),
            self.place,
            self.step_entry,
            keys.TASK_STEP_HISTORY_CAP,
            keys.TASK_STEP_COUNT_FIELD,
            keys.TASK_STEP_FIELD_PREFIX,
            *self.terminal,
        ]


def _progress_result(update: ProgressUpdate, reply: Any) -> bool:
    code = int(reply)
    if code == -1:
        raise DocumentMissing(update.key)
    if code == -2:
        log.error("registry_document_malformed", key=update.key, detail="not a task document")
        raise DocumentError(update.key, "not a task document (task_info/progress missing)")
    return code == 1


@dataclass(frozen=True)
class DocResult:
    applied: bool
    doc: dict[str, Any] | None = None


def _interpret(update: DocUpdate, reply: list[Any]) -> DocResult:
    code = _text(reply[0])
    detail = _text(reply[1])
    if code == "ok":
        return DocResult(True, json.loads(detail) if detail else None)
    if code == "guard":
        return DocResult(False)
    if code == "missing":
        raise DocumentMissing(update.key)
    log.error("registry_document_malformed", key=update.key, detail=detail)
    raise DocumentError(update.key, detail)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_document(key: str, raw: bytes | str | None, model: type[Model]) -> Model | None:
    """Validate a stored document; a malformed one is logged and raised, never patched over."""
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        log.error("registry_document_malformed", key=key, detail=str(exc))
        raise DocumentError(key, str(exc)) from exc


class DocStore:
    """Synchronous carrier of :class:`DocUpdate` (runners, CLI, benchmarks)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(DOC_APPLY_LUA)
        self._progress = client.register_script(TASK_PROGRESS_LUA)

    def apply(self, update: DocUpdate) -> DocResult:
        reply = self._script(keys=[update.key], args=[update.script_arg()])
        return _interpret(update, reply)

    def progress(self, update: ProgressUpdate) -> bool:
        """True when applied; False when the task had already finished."""
        return _progress_result(
            update, self._progress(keys=[update.key], args=update.script_args())
        )

    def read(self, key: str, model: type[Model]) -> Model | None:
        return parse_document(key, self.client.hget(key, DATA_FIELD), model)


class AsyncDocStore:
    """asyncio carrier of :class:`DocUpdate` (operator, shim)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._script = client.register_script(DOC_APPLY_LUA)
        self._progress = client.register_script(TASK_PROGRESS_LUA)

    async def apply(self, update: DocUpdate) -> DocResult:
        reply = await self._script(keys=[update.key], args=[update.script_arg()])
        return _interpret(update, reply)

    async def progress(self, update: ProgressUpdate) -> bool:
        """True when applied; False when the task had already finished."""
        reply = await self._progress(keys=[update.key], args=update.script_args())
        return _progress_result(update, reply)

    async def read(self, key: str, model: type[Model]) -> Model | None:
        return parse_document(key, await self.client.hget(key, DATA_FIELD), model)

    async def read_many(self, keys: list[str], model: type[Model]) -> list[Model | None]:
        """Many documents in one round trip (a pipeline of HGETs, no transaction). A malformed
        one is logged (:func:`parse_document`) and given as None: one bad document must not
        hide the others."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, DATA_FIELD)
        raws = await pipe.execute()
        found: list[Model | None] = []
        for key, raw in zip(keys, raws, strict=True):
            try:
                found.append(parse_document(key, raw, model))
            except DocumentError:
                found.append(None)
        return found
