"""Timestamps in the one format the web app reads: ISO-8601 UTC with a trailing ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_z(moment: datetime) -> str:
    """Render ``2025-09-24T10:30:00Z`` style (seconds precision, as the contract shows)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_iso() -> str:
    return iso_z(utc_now())


def parse_iso(value: str) -> datetime:
    """Parse what :func:`iso_z` writes, and the ``+00:00`` form older writers used."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def epoch_seconds() -> float:
    return time.time()
