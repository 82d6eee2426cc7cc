"""Prometheus metrics of the HTTP services (RPC shim and gateway), served on their ``/metrics``.

Each process has its own registry, so tests that build several apps in one process never clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics", "ShimMetrics"]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.llm_requests = Counter(
            "regtask_llm_requests_total",
            "LLM requests through the gateway, per company and outcome (allowed, rate_limited).",
            ["company", "kind", "outcome"],
            registry=self.registry,
        )
        self.llm_tokens = Counter(
            "regtask_llm_tokens_total",
            "LLM tokens settled per company (the provider's usage, else the gateway's count).",
            ["company", "kind"],
            registry=self.registry,
        )
        self.headroom = Gauge(
            "regtask_llm_headroom",
            "What a company may still spend, as of its last LLM call or storage write through"
            " this replica: requests_per_hour, tokens_per_hour, tokens_per_day (rolling"
            " windows; absent = no limit), storage_bytes.",
            ["company", "resource"],
            registry=self.registry,
        )
        self.limiter_unavailable = Counter(
            "regtask_llm_limiter_unavailable_total",
            "LLM calls refused (fail closed, 503) because Redis could not be asked, and"
            " settlements that could not be written (the reservation stays), per operation.",
            ["operation"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ShimMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_calls = Counter(
            "regtask_rpc_calls_total",
            "RPC calls answered by the shim, per method and HTTP status.",
            ["method", "status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
