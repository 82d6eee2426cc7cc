"""Timestamps in the one format the web app reads: ISO-8601 UTC with a trailing ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime) -> str:
    """Render ``2025-09-24T10:30:00Z`` style (seconds precision, as the contract shows)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_last_second = -1
_last_text = ""


def now_iso() -> str:
    """The current time as ``…Z``; strftime runs at most once a second (a hot path)."""
    global _last_second, _last_text
    now = time.time()
    second = int(now)
    if second != _last_second:
        _last_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        _last_second = second
    return _last_text


def iso_in(now: float, seconds: float | None) -> str | None:
    """``now + seconds`` (epoch) as :func:`iso_z` renders it; None when unknown."""
    if seconds is None:
        return None
    return iso_z(datetime.fromtimestamp(now + seconds, UTC))


def parse_iso(value: str) -> datetime:
    """Parse what :func:`iso_z` writes, and the ``+00:00`` form older writers used."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def epoch_seconds() -> float:
    return time.time()
