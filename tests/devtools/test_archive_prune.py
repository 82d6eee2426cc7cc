"""Image archives for `kind load image-archive` are pruned: each changed checkout builds new
ones (200-700 MB each), and unpruned they filled this machine's disk (61 archives, 22 GB) until
image loads failed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from regtask_dev.kind import prune_archives

pytestmark = pytest.mark.unit


def test_archives_unused_for_the_keep_time_are_deleted(tmp_path: Path) -> None:
    old, fresh, partial = tmp_path / "old.tar", tmp_path / "fresh.tar", tmp_path / "x.part"
    for path in (old, fresh, partial):
        path.write_bytes(b"layer")
    hours_ago = time.time() - 7 * 3600
    os.utime(old, (hours_ago, hours_ago))
    os.utime(partial, (hours_ago, hours_ago))
    removed = prune_archives(tmp_path, keep_s=6 * 3600)
    assert sorted(p.name for p in removed) == ["old.tar", "x.part"]
    assert [p.name for p in tmp_path.iterdir()] == ["fresh.tar"]
