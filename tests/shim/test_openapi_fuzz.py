"""Schemathesis against the running shim's /openapi.json: no 5xx, no stack trace, no lie.

The server is the production entry point (``python -m regtask_shim``) in its own process, on
real Redis and the real control plane. The benchmark (``make bench-rpc``) runs the same fuzzer
with more than 2,000 cases; here a few hundred keep the suite quick.
"""

from __future__ import annotations

import pytest
from bench.bench_rpc import fuzz_openapi

from regtask_dev.stack import ServiceProcess
from tests.fixtures.shim import SERVICE_TOKEN

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def test_fuzzing_the_openapi_document_finds_no_server_error(shim_server: ServiceProcess) -> None:
    stats = fuzz_openapi(shim_server.url, SERVICE_TOKEN, examples_per_operation=12)
    assert stats["operations"] >= 17
    assert stats["cases"] >= 300, stats
    assert stats["5xx"] == 0, stats
    assert stats["stack_traces"] == 0, stats
    assert stats["failures"] == [], "\n".join(stats["failures"])
    assert "Traceback" not in shim_server.log_text()
