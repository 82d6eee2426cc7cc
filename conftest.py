"""Registers the shared fixtures of tests/fixtures (real servers on loopback)."""

pytest_plugins = [
    "tests.fixtures.redis",
]
