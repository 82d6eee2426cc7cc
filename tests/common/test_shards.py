"""Company placement over operator shards: stable across processes and releases, spread evenly,
and each shard's objects named and labelled apart (regtask.shards)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from regtask import shards

pytestmark = pytest.mark.unit


def test_placement_is_pinned() -> None:
    """Moving a company between shards is a migration: these values must never change."""
    assert [shards.shard_of(c, 3) for c in ("acme", "globex", "initech")] == [0, 1, 1]
    assert shards.shard_of("acme", 1) == 0


def test_placement_is_the_same_in_another_process() -> None:
    """Not Python's salted hash(): another interpreter places companies the same way."""
    code = "from regtask import shards; print([shards.shard_of(f'c{i}', 7) for i in range(50)])"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == str([shards.shard_of(f"c{i}", 7) for i in range(50)])


def test_a_thousand_companies_spread_evenly_over_three_shards() -> None:
    counts = Counter(shards.shard_of(f"company-{i}", 3) for i in range(1000))
    assert set(counts) == {0, 1, 2}
    assert max(counts.values()) - min(counts.values()) < 100  # ~333 each


def test_namespaces() -> None:
    assert shards.control_namespace("regtask-system", 0, 1) == "regtask-system"
    assert shards.all_control_namespaces("ns", 3) == ["ns-shard-0", "ns-shard-1", "ns-shard-2"]
    assert shards.company_namespace("ns", "acme", 3) == "ns-shard-0"
    with pytest.raises(ValueError):
        shards.control_namespace("ns", 3, 3)
    with pytest.raises(ValueError):
        shards.shard_of("acme", 0)
