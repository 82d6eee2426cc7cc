"""``make demo`` when something fails: one line saying what, where the logs are, what it started
stopped; and a second ``make demo`` takes the first one down before starting."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from regtask_dev import demo
from regtask_dev.kind import ClusterError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def process_logging_untouched(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``demo.up`` configures the process's logging for a terminal: structlog with loggers
    cached on first use (after which ``structlog.testing.capture_logs`` in later tests sees
    nothing) and quieter stdlib levels. In a test process that stays as the suite had it."""
    monkeypatch.setattr(demo, "configure_logging", lambda debug=False: None)
    levels = {name: logging.getLogger(name).level for name in ("httpx", "regtask_dev")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_a_failure_is_one_line_with_the_logs_and_stops_what_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stopped: list[str] = []

    def failing_start(stack: demo.Stack) -> dict[str, object]:
        stack.record("redis", 999_999)
        raise ClusterError(
            "kind create cluster regtask-demo failed (log: /x/kind-create.log):\n"
            "ERROR: failed to create cluster: command podman run ... exited 125\n"
            "  a long traceback of the provider ..."
        )

    monkeypatch.setattr(demo, "start", failing_start)

    def stop_all(self: demo.Stack) -> list[str]:
        stopped.append("all")
        return []

    monkeypatch.setattr(demo.Stack, "stop_all", stop_all)
    assert demo.up(tmp_path) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "the demo failed: kind create cluster regtask-demo failed (log: /x/kind-create.log):",
        f"logs: {tmp_path} (cluster, services, port-forward); stopping what it started",
    ]
    assert stopped == ["all"]


def test_a_second_demo_takes_the_first_down_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state.json").write_text(
        json.dumps({"pids": {"redis": 1234}, "urls": {}, "cluster": "regtask-demo"})
    )
    events: list[str] = []

    def stop_all(self: demo.Stack) -> list[str]:
        events.append(f"stop {sorted(self.pids)} {self.cluster}")
        return []

    def start(stack: demo.Stack) -> dict[str, object]:
        events.append("start")
        return {}

    monkeypatch.setattr(demo.Stack, "stop_all", stop_all)
    monkeypatch.setattr(demo, "start", start)
    monkeypatch.setattr(demo, "submit_and_follow", lambda env: True)
    assert demo.up(tmp_path) == 0
    assert events == ["stop ['redis'] regtask-demo", "start"]
    assert "a previous demo is still up: taking it down first ..." in capsys.readouterr().out
