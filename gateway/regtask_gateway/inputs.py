"""A task's inputs as its runner receives them: inline ones as they are, references read here.

Only ``redis://`` references under the tenant's own blob prefix (:func:`regtask.storage.
blob_prefix`) are read: a spec naming another tenant's key is refused (403), whatever the task.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import structlog
from fastapi import HTTPException

from regtask.crmodels import TaskInput
from regtask.gateway_api import ResolvedInput
from regtask.storage import REDIS_REF_SCHEME, blob_prefix
from regtask.tokens import TaskClaims
from regtask_gateway.state import GatewayState

log = structlog.get_logger(__name__)


async def resolve_input(state: GatewayState, claims: TaskClaims, item: TaskInput) -> ResolvedInput:
    """Inline inputs as they are; ``redis://`` references read from the tenant's blob keys."""
    if item.value is not None:
        encoding: Literal["utf-8", "base64"] = "base64" if item.encoding == "base64" else "utf-8"
        if encoding == "base64":
            try:
                size = len(base64.b64decode(item.value, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise HTTPException(422, f"input {item.name!r} is not valid base64") from exc
        else:
            size = len(item.value.encode())
        return ResolvedInput(
            name=item.name,
            content_type=item.content_type,
            value=item.value,
            encoding=encoding,
            size_bytes=size,
        )
    assert item.ref is not None  # TaskInput guarantees value xor ref
    uri = item.ref.uri
    if not uri.startswith(REDIS_REF_SCHEME):
        raise HTTPException(422, f"input {item.name!r}: unsupported reference {uri.split(':')[0]}")
    key = uri[len(REDIS_REF_SCHEME) :]
    if not key.startswith(blob_prefix(claims.company_id, claims.user_id)):
        log.warning("gateway_foreign_ref_refused", task_id=claims.task_id, key=key)
        raise HTTPException(403, f"input {item.name!r} refers outside the tenant's blobs")
    size = int(await state.redis.strlen(key))
    if size > state.settings.max_input_bytes:
        raise HTTPException(413, f"input {item.name!r} is {size} bytes, above the limit")
    raw = await state.redis.get(key)
    if raw is None:
        raise HTTPException(404, f"input {item.name!r} not found at {key}")
    data = raw if isinstance(raw, bytes) else str(raw).encode()
    if item.content_type.startswith("text/"):
        try:
            return ResolvedInput(
                name=item.name,
                content_type=item.content_type,
                value=data.decode(),
                encoding="utf-8",
                size_bytes=len(data),
            )
        except UnicodeDecodeError:
            pass
    return ResolvedInput(
        name=item.name,
        content_type=item.content_type,
        value=base64.b64encode(data).decode(),
        encoding="base64",
        size_bytes=len(data),
    )
