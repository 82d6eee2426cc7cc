"""The waiting tasks' ETA, through one call.

The estimate lives in the CLI (:mod:`regtask_cli.quota`) and is moving into the operator; the
console reaches it only through :func:`company_plan`, so that move changes this one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from regtask_cli.quota import QuotaPlan, plan_company, record_from_resource


def company_plan(
    tasks: Iterable[Mapping[str, Any]], company_id: str, limit: int, now: datetime
) -> QuotaPlan:
    """Queue order, ETA of each waiting task and remaining time of each running one."""
    records = [r for r in (record_from_resource(t) for t in tasks) if r is not None]
    return plan_company(records, company_id, limit, now=now)
