"""The waiting tasks' ETA, through one call.

The estimate is the operator's model (:mod:`regtask.eta`) over the listed tasks
(:mod:`regtask.queueplan`, shared with the CLI's ``regtask quota``); the console reaches it only
through :func:`company_plan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from regtask.queueplan import QuotaPlan, plan_company, record_from_resource


def company_plan(
    tasks: Iterable[Mapping[str, Any]],
    company_id: str,
    limit: int,
    now: datetime,
    company_cap: int | None = None,
) -> QuotaPlan:
    """Queue order (fair share), ETA of each waiting task and remaining time of each running
    one."""
    records = [r for r in (record_from_resource(t) for t in tasks) if r is not None]
    return plan_company(records, company_id, limit, now=now, company_cap=company_cap)
