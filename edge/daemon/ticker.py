"""The passage of time for the rules (gaps, timeouts, a restart's resume), the periodic
status line, and heap trims (periodically, and at once after a burst of publishes)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .heap import TRIM_EVERY_S, trim_heap

if TYPE_CHECKING:
    from edge.app import Daemon

TICK_S = 1.0
TRIM_AFTER_PUBLISHED = 1000  # a burst: a backlog drained


async def run_ticker(d: Daemon) -> None:
    assert d.engine is not None
    next_status = time.monotonic() + min(5.0, d.config.log.status_interval_s)
    next_trim = time.monotonic() + TRIM_EVERY_S
    trimmed_at = 0
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
        published = d.supervisor.published
        if published - trimmed_at > TRIM_AFTER_PUBLISHED or time.monotonic() >= next_trim:
            next_trim = time.monotonic() + TRIM_EVERY_S
            trimmed_at = published
            trim_heap()
