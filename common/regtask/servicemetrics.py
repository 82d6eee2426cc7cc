"""Prometheus metrics of the HTTP services (RPC shim and gateway), served on their ``/metrics``.

Each process has its own registry, so tests that build several apps in one process never clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
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
