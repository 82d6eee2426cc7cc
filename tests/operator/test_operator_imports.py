"""The operator process runs without the Kubernetes client libraries (see regtask_operator.kube)
nor other libraries' unused extras (structlog's `rich`, redis-py's OpenTelemetry SDK).

Kopf imports them only to recognise their models, and they cost ~60 MB of resident memory, so
``python -m regtask_operator`` blocks them; any operator module importing one would then fail at
start-up in production. This runs the operator's imports the way its entry point does.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PROBE = """
from regtask_operator.__main__ import block_unused_clients
block_unused_clients()
import kopf  # noqa: F401
from regtask_operator import handlers, maintenance, runtime  # noqa: F401
import sys
blocked = ("kubernetes", "kubernetes_asyncio", "rich", "opentelemetry.sdk")
loaded = sorted(m for m in blocked if sys.modules.get(m) is not None)
print("loaded:", ",".join(loaded))
"""


def test_operator_modules_import_without_kubernetes_client_libraries() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded:"


def test_the_probe_would_catch_a_client_import() -> None:
    """The block is real: an import of a blocked library fails as if it were not installed."""
    probe = PROBE.replace("import kopf  # noqa: F401", "import kubernetes_asyncio.client")
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


def test_the_allocator_is_tuned_where_glibc_runs() -> None:
    """Big buffers mapped apart from the heap (see regtask_operator.memory.tune)."""
    probe = "from regtask_operator import memory; print(memory.tune(), memory.trim())"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]  # this machine's C library is glibc
