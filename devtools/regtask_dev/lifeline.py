"""Tie a child process's life to its parent's, so a killed test run leaves no server behind."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> Callable[[], None]:
    """Return a ``preexec_fn`` that makes the child get SIGKILL when its parent thread dies.

    ``atexit`` and fixture teardowns do not run when the parent is SIGKILLed (or a test runner
    calls ``os._exit``); the kernel's parent-death signal still does. Linux sends it when the
    *thread* that forked the child exits, so spawn from a thread that outlives the child.
    """
    parent = os.getpid()

    def preexec() -> None:
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            os._exit(127)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(127)

    return preexec
