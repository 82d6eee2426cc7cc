"""The company's headroom gauges (``regtask_llm_headroom{company,resource}``), set from what a
call through this replica just saw: the LLM log after a reservation or settlement, the storage
counter after a reservation.

Hazard: per replica and as of the company's last call through it (another replica's calls move
the truth in between); ``regtask quota`` reads the same figures from Redis at once.
"""

from __future__ import annotations

from regtask.ratelimit import LlmLimits, LlmUsage
from regtask.servicemetrics import GatewayMetrics
from regtask.storage import StorageDecision


def show_llm(metrics: GatewayMetrics, company: str, limits: LlmLimits, usage: LlmUsage) -> None:
    gauge = metrics.headroom
    gauge.labels(company, "requests_per_hour").set(
        max(limits.requests_per_hour - usage.requests, 0)
    )
    for resource, cap, used in (
        ("tokens_per_hour", limits.tokens_per_hour, usage.tokens_hour),
        ("tokens_per_day", limits.tokens_per_day, usage.tokens_day),
    ):
        if cap is not None:
            gauge.labels(company, resource).set(max(cap - used, 0))


def show_storage(metrics: GatewayMetrics, company: str, decision: StorageDecision) -> None:
    metrics.headroom.labels(company, "storage_bytes").set(
        max(decision.limit_bytes - decision.used_bytes, 0)
    )
