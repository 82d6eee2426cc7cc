"""Registers the shared fixtures of tests/fixtures (real servers on loopback)."""

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
]
