"""Subcommand implementations, imported lazily by ``edge.cli``."""

from __future__ import annotations

import os
import sys


def reader_went_away() -> int:
    """stdout's reader closed the pipe (``edge decode ... | head``): not an error. Point
    stdout at /dev/null so that the interpreter's final flush stays quiet; exit 0."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
