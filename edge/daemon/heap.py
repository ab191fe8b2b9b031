"""Process-wide glibc heap knobs: fewer malloc arenas, freed memory handed back to the OS."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

TRIM_EVERY_S = 10.0  # hand freed heap back to the OS this often (see trim_heap)
TRIM_AFTER_PUBLISHED = 1000  # and at once after a burst of publishes: a backlog drained
MALLOC_ARENAS = 2  # glibc arenas the daemon's threads share (M_ARENA_MAX)
_M_ARENA_MAX = -8  # mallopt parameter number, glibc's malloc.h


def _libc(name: str) -> Any:
    """glibc's function ``name`` through ctypes, or None (not glibc, or no such symbol).
    The symbol is looked up in the running process (``dlopen(NULL)``), where Python has
    linked libc already: ``ctypes.util.find_library`` would import tempfile, shutil and
    subprocess and run ``ldconfig -p`` at every start for the same library."""
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def _load_trim() -> Callable[[], None] | None:
    """glibc keeps memory freed after a burst (a backlog drained, a fast replay) in its
    arenas; ``malloc_trim(0)`` returns it, so RSS on a Pi follows the working set
    instead of the high-water mark. A no-op where there is no glibc."""
    import ctypes

    trim = _libc("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]

    def run() -> None:
        trim(0)

    return run


_TRIM: Callable[[], None] | None = None
_TRIM_LOADED = False


def limit_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts. By default every thread that
    allocates (the asyncio executor's outbox and start-up workers, up to cores + 4, the
    CAN reader) gets an arena of its own, each holding its freed memory apart: capping
    them saved 0.5 MB of RSS and 1.1 MB of peak on the bench's GNSS + CAN + MQTT +
    zones daemon. The daemon's threads allocate little and seldom at once. Returns
    whether the limit took (False without glibc or when ``MALLOC_ARENA_MAX`` is set:
    the operator's choice wins)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    import ctypes

    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


class TrimSchedule:
    """When the daemon hands its free heap back (``trim_heap``): at its first tick, again
    when the uplink has connected for the first time, then every ``TRIM_EVERY_S`` and
    after every ``TRIM_AFTER_PUBLISHED`` publishes.

    Start-up frees megabytes it does not use again: the modules compiled from source
    where no bytecode cache fits (under ``python -OO`` pip's caches do not, and a
    read-only install or PYTHONDONTWRITEBYTECODE keeps Python from writing them), the
    argument parser, the config's and the zones' parse trees. glibc keeps that memory
    until a trim: the bench's encrypted CAN daemon under -OO stayed 4.4 MB above its
    working set for its first 10 s (72.2 -> 67.8 MB at the first periodic trim; with the
    start-up trims its peak is its working set). The uplink's first connect imports its
    MQTT library and builds its TLS context, the last work of a normal start."""

    def __init__(self) -> None:
        self._next = 0.0  # due at the first look
        self._published = 0
        self._connected = False

    def due(self, now: float, published: int, connected: bool) -> bool:
        """Whether to trim now (monotonic ``now``, publishes so far, uplink connected);
        a True answer starts the next period."""
        first_connect = connected and not self._connected
        self._connected = self._connected or connected
        if not (first_connect or now >= self._next
                or published - self._published > TRIM_AFTER_PUBLISHED):
            return False
        self._next = now + TRIM_EVERY_S
        self._published = published
        return True


def trim_heap() -> None:
    """Hand the heap glibc holds free back to the OS (loaded on first use)."""
    global _TRIM, _TRIM_LOADED
    if not _TRIM_LOADED:
        _TRIM, _TRIM_LOADED = _load_trim(), True
    if _TRIM is not None:
        _TRIM()
