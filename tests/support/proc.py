"""Child processes of a test or a bench that do not outlive it."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """``preexec_fn`` for a daemon under test: SIGKILL when the test's process dies.

    A daemon left behind by a killed test run keeps reopening its GNSS port, a pty path
    such as ``/dev/pts/3`` that a later test's pty gets again, and reads that test's
    bytes (seen: five failures in one ``make test``). The signal survives the daemon
    starting itself over as ``python -OO`` (``execve``). Linux only; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
