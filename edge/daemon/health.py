"""The health reporter: one health document from the counters each part owns, published
as a ``health`` message every ``health.interval_s`` and written to the status file that
``edge status`` reads (atomically, group-readable when ``health.group`` is set)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from edge import __version__
from edge.errors import EdgeError
from edge.model import Event
from edge.private import write_status

from .loop import loop_kind

if TYPE_CHECKING:
    from edge.app import Daemon

log = structlog.get_logger()


def merged_counters(*parts: dict[str, int]) -> dict[str, int]:
    """The daemon's counters: those of each part, summed where two count the same."""
    out: dict[str, int] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0) + v
    return out


class HealthReporter:
    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    def counters(self) -> dict[str, int]:
        d = self._d
        return merged_counters(d.ingest.counters, d.supervisor.all_counters())

    def health(self) -> dict[str, Any]:
        d = self._d
        assert d.engine is not None
        ingest = d.ingest.health()
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "uptime_s": round(time.monotonic() - d.started_mono, 1),
            # how the process runs (edge.process): python -OO, which event loop
            "process": {"optimize": sys.flags.optimize, "event_loop": loop_kind()},
            "uplink": d.supervisor.health(),
            "queue": ingest.pop("queue"),
            "outbox_mode": ingest.pop("outbox_mode"),
            "counters": self.counters(),
            **d.inputs.health(),
            **d.engine.health(),
        }
        if d.config.roads.index is not None:
            over = out["rules"]["overspeed"]
            over["roads"] = d.reloader.roads_health(over.get("roads"))
        out["config"] = d.reloader.health()
        if d.extra_health is not None:
            out["greengrass"] = d.extra_health()
        out.update(ingest)  # outbox, disk
        return out

    def log_status(self) -> None:
        """The periodic one-line status in the log."""
        d = self._d
        assert d.engine is not None
        t = d.engine.telemetry.record()
        log.info("status", fixes=d.engine.counts["fixes"],
                 speed_kmh=t.get("Vehicle.Speed"), speed_source=t.get("speed_source"),
                 lat=t.get("Vehicle.CurrentLocation.Latitude"),
                 lon=t.get("Vehicle.CurrentLocation.Longitude"),
                 uplink=str(d.supervisor.state),
                 published=d.supervisor.published, queued=d.ingest.pending)

    async def run(self) -> None:
        """Publish health and write the status file until cancelled."""
        d = self._d
        assert d.engine is not None
        while True:
            body = self.health()
            await asyncio.to_thread(self.write_file, dict(body))
            now, clock = d.engine.now(d.mono(), d.clock())
            d.ingest.enqueue([d.engine.envelopes.make(
                Event(kind="health", time=now, body=body, clock=clock))])
            await asyncio.sleep(d.config.health.interval_s)

    def write_file(self, data: dict[str, Any] | None = None, *, final: bool = False) -> None:
        d = self._d
        path = d.config.health_path
        try:
            if data is None:
                data = self.health() if d.engine is not None else {}
            data["written_at"] = time.time()
            data["running"] = not final
            data["interval_s"] = d.config.health.interval_s
            write_status(path, json.dumps(data, indent=1, default=str).encode(),
                         group=d.config.health.group)
        except (OSError, EdgeError) as exc:
            d.once(log, "health-file", "cannot write health file", path=str(path),
                   reason=str(exc))
