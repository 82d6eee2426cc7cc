"""Hands freed heap back to the operating system after bursts.

A burst of watch events (thousands of tasks created at once, a re-list after a restart) grows
glibc's heap; once those objects are freed, glibc keeps most of the pages mapped because live
objects are scattered between them, so the resident size stays at the burst's peak. Measured here
with 3,000 tasks known: 197 MB resident, 119 MB after ``malloc_trim(0)``, which releases every
free page, not only the top of the heap (the same remedy Dask documents for its workers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def _malloc_trim() -> Any | None:
    """glibc's ``malloc_trim``, or None on another C library (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> bool:
    """Release free heap pages; True when the C library supports it."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True


def resident_mb() -> float | None:
    """This process's resident set size (Linux), for the logs and the benchmark."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
