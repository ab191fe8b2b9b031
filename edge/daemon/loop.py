"""The event loop a command runs on (``VEHICLE_EDGE_EVENT_LOOP``: asyncio's own unless
uvloop is asked for, see ``edge.process``) and the stop signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from edge.process import event_loop_name

from .heap import limit_arenas

log = structlog.get_logger()
T = TypeVar("T")


async def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]],
) -> int:
    """Run ``main(stop)``; SIGTERM/SIGINT set ``stop``, a second one forces exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hits = 0

    def on_signal(signum: int) -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            log.info("signal received, stopping", signal=signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("second signal, forcing exit")
            os._exit(128 + signum)

    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        await main(stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 0


def run_loop(coro: Awaitable[T]) -> T:
    """Run ``coro`` to its result on a new event loop of the kind the environment names
    (``edge.process.event_loop_name``)."""
    limit_arenas()  # before the event loop's executor starts any thread
    if event_loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def loop_kind() -> str:
    """The running event loop's library: ``asyncio`` or ``uvloop`` (health)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
