"""Registers the shared fixtures of tests/fixtures (real servers on loopback), and keeps the
``unit`` marker honest: a test marked ``unit`` (``make unit``) may use no fixture that starts a
server."""

from __future__ import annotations

import pytest

from regtask import logconfig

# A main() run in-process configures logging; its loggers must stay capturable (see logconfig).
logconfig.CACHE_LOGGERS = False

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.firestore",
    "tests.fixtures.firebase_auth",
    "tests.fixtures.kube",
    "tests.fixtures.platform",
    "tests.fixtures.shim",
    "tests.fixtures.llm",
    "tests.fixtures.gateway",
    "tests.fixtures.cli",
    "tests.fixtures.browser",
]

# The fixtures that start a real server; every other fixture that needs one depends on one of
# these, so a test's fixture closure names one whenever it needs a server.
SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "cluster",
        "firestore_emulator",
        "firebase_auth_emulator",
        "llm_server",
        "chroma_server",
        "browser",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("unit") is None:
            continue
        servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if servers:
            raise pytest.UsageError(
                f"{item.nodeid} is marked unit but starts {', '.join(sorted(servers))}"
            )
