"""Who may open the console, and which companies they see.

* the shim's service credential: every company (``Scope.companies`` None);
* a Firebase user with role ``admin`` in a company (``companies.admin_companies``: the
  token's ``company_roles`` claim): that company only, pages, API and live stream alike;
* anyone else: 403 (no credential, or a bad one: 401).
"""

from __future__ import annotations

from dataclasses import dataclass

from regtask_shim.auth import Principal
from regtask_shim.companies import admin_companies
from regtask_shim.errors import Forbidden, NotFound, echo


@dataclass(frozen=True)
class Scope:
    principal: Principal
    companies: frozenset[str] | None  # None: all

    def sees(self, company_id: str) -> bool:
        return self.companies is None or company_id in self.companies

    def require(self, company_id: str) -> None:
        if not self.sees(company_id):
            raise Forbidden(f"not authorized for company {echo(company_id)}")

    def require_task(self, company_id: str, task_id: str) -> None:
        """Another company's task answers like an unknown one would not: 403, never its data."""
        if not self.sees(company_id):
            raise Forbidden(f"not authorized for task {echo(task_id)}")


def console_scope(principal: Principal) -> Scope:
    if principal.is_service:
        return Scope(principal, None)
    admin_of = admin_companies(principal)
    if not admin_of:
        raise Forbidden("not authorized: the console needs the role 'admin' in a company")
    return Scope(principal, frozenset(admin_of))


__all__ = ["NotFound", "Scope", "console_scope"]
