"""Per-task credentials: what lets a runner touch its own task's records, and nothing else.

The operator mints one token per task (HS256 JWT signed with ``REGTASK_TOKEN_SECRET``, a secret
shared only by the operator and the gateway), stores it in a Secret in the task's namespace, and
the Job reads it from there. The gateway verifies it and takes the task, user, company and
namespace from the claims, never from the request, so one tenant cannot name another's task.
"""

from __future__ import annotations

import time

import jwt
from pydantic import BaseModel, ConfigDict, Field

from regtask.identifiers import Identifier

ALGORITHM = "HS256"
AUDIENCE = "regtask-gateway"
ISSUER = "regtask-operator"
MIN_SECRET_BYTES = 32


class TokenError(ValueError):
    """The token is missing, expired, forged or for another audience."""


class TaskClaims(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: Identifier
    task_type: str
    user_id: Identifier
    company_id: Identifier
    namespace: str
    conversation_id: str | None = None
    expires_at: int = Field(description="epoch seconds")


def _check_secret(secret: str) -> bytes:
    raw = secret.encode()
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"token secret must be at least {MIN_SECRET_BYTES} bytes")
    return raw


def mint(claims: TaskClaims, secret: str) -> str:
    payload = {
        "sub": claims.task_id,
        "typ": claims.task_type,
        "uid": claims.user_id,
        "cid": claims.company_id,
        "ns": claims.namespace,
        "conv": claims.conversation_id,
        "exp": claims.expires_at,
        "iat": int(time.time()),
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    return jwt.encode(payload, _check_secret(secret), algorithm=ALGORITHM)


def verify(token: str, secret: str) -> TaskClaims:
    try:
        payload = jwt.decode(
            token,
            _check_secret(secret),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "sub", "aud", "iss"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid task token: {exc}") from exc
    return TaskClaims(
        task_id=payload["sub"],
        task_type=payload["typ"],
        user_id=payload["uid"],
        company_id=payload["cid"],
        namespace=payload["ns"],
        conversation_id=payload.get("conv"),
        expires_at=payload["exp"],
    )
