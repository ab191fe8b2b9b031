"""The passage of time for the rules (gaps, timeouts, a restart's resume), the periodic
status line, and heap trims (after start-up, periodically, and at once after a burst of
publishes: ``edge.daemon.heap.TrimSchedule``)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .heap import TrimSchedule, trim_heap
from .supervisor import UplinkState

if TYPE_CHECKING:
    from edge.app import Daemon

TICK_S = 1.0


async def run_ticker(d: Daemon) -> None:
    assert d.engine is not None
    next_status = time.monotonic() + min(5.0, d.config.log.status_interval_s)
    trims = TrimSchedule()
    while True:
        await asyncio.sleep(TICK_S)
        engine = d.engine
        if engine.resume_pending and (time.monotonic() - d.started_mono
                                      > d.config.rules.trip.resume_gap_s):
            # no GNSS time to measure the restart's gap: the old trip ends
            d.ingest.enqueue(engine.resume_now(None))
        now, _ = engine.now(d.mono(), d.clock())
        if d.drive_clock and engine.latest_time is not None:
            # under edge sim the readers trail the replay's clock by what sits in the
            # sources' queues: time passes for the rules as far as they have read
            now = min(now, engine.latest_time)
        d.ingest.enqueue(engine.tick(now))
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + d.config.log.status_interval_s
            d.reporter.log_status()
        if trims.due(time.monotonic(), d.supervisor.published,
                     d.supervisor.state == UplinkState.CONNECTED):
            trim_heap()
