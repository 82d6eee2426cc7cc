"""The operator's maintenance round without a cluster: what runs in which round."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from regtask_operator import maintenance
from regtask_operator.config import OperatorSettings
from regtask_operator.maintenance import Maintenance
from regtask_operator.tenants import Tenants

pytestmark = pytest.mark.unit


def test_repair_clock_first_round_then_every_interval() -> None:
    clock = maintenance.RepairClock()
    assert clock.due(300, now=1000.0)
    assert not clock.due(300, now=1001.0)
    assert not clock.due(300, now=1299.9)
    assert clock.due(300, now=1300.0)
    assert not clock.due(300, now=1300.5)


async def test_run_once_repairs_on_the_first_round_then_at_the_repair_cadence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, Any]] = []

    async def step(name: str, result: Any = None) -> Any:
        calls.append((name, None))
        return result

    class FakeTenants:
        async def remove_idle(self, busy: Callable[[], Awaitable[set[str]]]) -> list[str]:
            calls.append(("remove", None))
            return ["rt-removed"]

        async def repair(self, skip: Any = ()) -> int:
            calls.append(("repair", list(skip)))
            return 0

    async def busy() -> set[str]:
        return set()

    async def delete_expired() -> int:
        calls.append(("expire", None))
        return 0

    monkeypatch.setattr(maintenance, "retry_mirrors", lambda *_: step("retry"))
    monkeypatch.setattr(maintenance, "sweep_registry", lambda *_: step("sweep"))
    upkeep = Maintenance(
        mirror=cast(Any, None),
        registry=cast(Any, None),
        firestore=None,
        tenants=cast(Tenants, FakeTenants()),
        busy_namespaces=busy,
        delete_expired=delete_expired,
        repair_interval_s=3600,
    )
    await upkeep.run_once()
    await upkeep.run_once()
    assert calls == [
        ("retry", None),
        ("sweep", None),
        ("expire", None),
        ("remove", None),
        ("repair", ["rt-removed"]),  # what this round removed is not re-applied
        ("retry", None),
        ("sweep", None),
        ("expire", None),
        ("remove", None),
    ]


def test_idle_seconds_may_be_a_few_seconds_and_repair_has_a_default_cadence() -> None:
    assert OperatorSettings(namespace_idle_seconds=1).namespace_idle_seconds == 1
    defaults = OperatorSettings()
    assert defaults.namespace_idle_seconds == 3600
    assert defaults.namespace_repair_interval_s == 300
    with pytest.raises(ValueError, match="namespace_idle_seconds"):
        OperatorSettings(namespace_idle_seconds=0)
    with pytest.raises(ValueError, match="namespace_repair_interval_s"):
        OperatorSettings(namespace_repair_interval_s=0)
