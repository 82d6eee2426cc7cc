"""Which company a call acts for: authorisation (who may name what) and the resolution ladder.

**Authorisation.** The service credential may act for any company (CONTRACT.md: the microservice
acts for any user it names). A Firebase caller may act for the companies of its token's
``authorized_companies_ids`` claim and for its own default tenant, nothing else: the claim, or
its absence, is the truth. The registry's copy of that list is never consulted for a Firebase
caller, because the user's own ``REGISTRY.register_user`` refreshes it from whatever token it
presented, so it would keep a removed claim alive (issue 16, item 8).

**Resolution** of a call that names no company (``TASK.start_document_analysis`` whose
``document_data`` has no ``company_id``), first rung that answers:

1. ``token_claim``: the Firebase token's claim when it holds exactly one company;
2. ``current_company``: the unified registry's ``companies.current_company_id``, when the caller
   may act for it (only the service credential can set it);
3. ``presence``: ``listeners_registry/{uid}.authorized_companies_ids`` in Firestore, restricted
   to what the caller may act for, when exactly one company remains;
4. ``default_tenant``: the user's own default tenant, :func:`default_company_id` (``default.``
   + the user id), with the operator's default quotas (no CompanyQuota names it).

A call that names no company is therefore never refused for want of one; only a caller naming a
company it may not act for is (403). Hazard: ``default.`` is a reserved prefix; a real company
whose id starts with it would share ids with a user's default tenant.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

import structlog
from redis.exceptions import RedisError

from regtask.docstore import DocumentError
from regtask.identifiers import ID_MAX_LENGTH
from regtask.registry import Registry
from regtask_shim.auth import ADMIN_ROLE, Principal
from regtask_shim.errors import Forbidden, echo
from regtask_shim.presence import PresenceReader

log = structlog.get_logger(__name__)

DEFAULT_TENANT_PREFIX = "default."


def default_company_id(user_id: str) -> str:
    """The user's own default tenant (a valid Identifier; long user ids are hashed)."""
    name = DEFAULT_TENANT_PREFIX + user_id
    if len(name) <= ID_MAX_LENGTH:
        return name
    return DEFAULT_TENANT_PREFIX + hashlib.sha256(user_id.encode()).hexdigest()


def may_act_for(principal: Principal, company_id: str) -> bool:
    """The one authorisation rule for companies (see the module docstring)."""
    if principal.is_service:
        return True
    if principal.uid is not None and company_id == default_company_id(principal.uid):
        return True
    return principal.token_companies is not None and company_id in principal.token_companies


def admin_companies(principal: Principal) -> tuple[str, ...]:
    """The companies whose web console the caller may open: role ``admin`` in the token's
    ``company_roles`` claim, for a company it may act for. Like the company claim, the token is
    the truth (the registry's copy is never consulted). The service credential sees all; the
    console handles it before asking."""
    roles = dict(principal.token_roles or ())
    return tuple(
        sorted(c for c, role in roles.items() if role == ADMIN_ROLE and may_act_for(principal, c))
    )


def require_company(principal: Principal, company_id: str) -> None:
    if not may_act_for(principal, company_id):
        raise Forbidden(f"not authorized for company {echo(company_id)}")


class Rung(StrEnum):
    NAMED = "named"
    TOKEN_CLAIM = "token_claim"  # noqa: S105 - a rung name, not a secret
    CURRENT_COMPANY = "current_company"
    PRESENCE = "presence"
    DEFAULT_TENANT = "default_tenant"


@dataclass(frozen=True)
class Resolution:
    company_id: str
    rung: Rung


def from_claim(principal: Principal) -> str | None:
    claim = principal.token_companies
    if not principal.is_service and claim is not None and len(claim) == 1:
        return claim[0]
    return None


def from_current(principal: Principal, current: str | None) -> str | None:
    return current if current is not None and may_act_for(principal, current) else None


def from_presence(principal: Principal, listed: tuple[str, ...] | None) -> str | None:
    allowed = sorted({c for c in listed or () if may_act_for(principal, c)})
    return allowed[0] if len(allowed) == 1 else None


class CompanyResolver:
    """Runs the ladder; each rung's source is read only when the rungs above gave nothing."""

    def __init__(self, registry: Registry, presence: PresenceReader | None) -> None:
        self.registry = registry
        self.presence = presence

    async def resolve(self, principal: Principal, user_id: str) -> Resolution:
        resolution = await self._resolve(principal, user_id)
        log.info(
            "company_resolved",
            user_id=user_id,
            company_id=resolution.company_id,
            rung=resolution.rung.value,
            caller=principal.describe(),
        )
        return resolution

    async def _resolve(self, principal: Principal, user_id: str) -> Resolution:
        claimed = from_claim(principal)
        if claimed is not None:
            return Resolution(claimed, Rung.TOKEN_CLAIM)
        current = from_current(principal, await self._current_company(user_id))
        if current is not None:
            return Resolution(current, Rung.CURRENT_COMPANY)
        if self.presence is not None:
            listed = from_presence(principal, await self.presence.companies(user_id))
            if listed is not None:
                return Resolution(listed, Rung.PRESENCE)
        return Resolution(default_company_id(user_id), Rung.DEFAULT_TENANT)

    async def _current_company(self, user_id: str) -> str | None:
        try:
            doc = await self.registry.get_user_registry(user_id)
        except (DocumentError, RedisError) as exc:
            log.warning("current_company_unreadable", user_id=user_id, error=type(exc).__name__)
            return None
        return doc.companies.current_company_id if doc is not None else None
