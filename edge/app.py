"""The one composition root: config -> parts -> task group -> ordered shutdown.

The parts live in ``edge.daemon`` (one job each); the tasks, all named and held:

* ``gnss`` / ``can``  sources (``daemon.sources``), each calling back into the pure engine
* ``outbox-writer``   the ingest: a bounded queue into SQLite in group commits
* ``uplink``          the uplink supervisor: connect, drain the outbox, back off
* ``ticker``          the passage of time for the rules, status line, heap trims
* ``health``          publishes health and writes the status file for ``edge status``
* ``zones-watch`` / ``roads-watch``  the reloader's file watchers

Shutdown order on SIGTERM/SIGINT: sources stop, rules flush (open episodes end),
the writer commits what is queued, the uplink gets a short grace to deliver, then it
is disconnected and the outbox closed. A second signal forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from edge import __version__
from edge.config import Config
from edge.config_files import check_runtime
from edge.core.engine import Engine
from edge.daemon.health import HealthReporter
from edge.daemon.ingest import Ingest
from edge.daemon.loop import run_loop, run_until_signalled
from edge.daemon.reloader import Reloader, load_zones_for, zones_missing
from edge.daemon.reloader import zones_or_config_error as _zones_or_config_error
from edge.daemon.sources import Sources
from edge.daemon.supervisor import UplinkState, UplinkSupervisor
from edge.daemon.ticker import run_ticker
from edge.errors import EdgeError, OutboxError, describe, exit_code
from edge.logconf import Once
from edge.model import Fix, Ignition, SignalSample, SpeedSample
from edge.private import check_status_path

__all__ = ["Daemon", "load_zones_for", "run_daemon", "run_greengrass", "run_loop",
           "run_until_signalled"]

log = structlog.get_logger()

SHUTDOWN_BUDGET_S = 4.0  # SIGTERM -> exit, all steps together
DRAIN_GRACE_S = 1.0  # of which the uplink may spend this delivering what is queued


class Daemon:
    def __init__(self, config: Config, *, clock: Callable[[], float] | None = None,
                 can_clock: Callable[[], float] | None = None) -> None:
        self.config = config
        # the wall clock events fall back on before a valid fix (and the GNSS source's
        # rollover reference): the host's; ``edge sim`` passes the replayed drive's
        self.clock: Callable[[], float] = clock or time.time
        # and the clock of durations that maps sample times onto GNSS time: the monotonic
        # clock live; the drive's clock under ``edge sim`` (like a log's in edge replay)
        self.mono: Callable[[], float] = clock or time.monotonic
        self.drive_clock = clock is not None
        self.started_mono = time.monotonic()
        self.once = Once()
        self.engine: Engine | None = None
        self.zones_optional = False  # Greengrass: the Zones and Roads components may come later
        self.roads_offered: Path | None = None  # Greengrass: the index the recipe offers
        self.extra_health: Callable[[], dict[str, Any]] | None = None
        self.task_group: asyncio.TaskGroup | None = None
        self.inputs = Sources({"gnss": self.on_fix, "can": self.on_can},
                              clock=clock, can_clock=can_clock)
        self.ingest = Ingest(lambda: self.config, once=self.once)
        self.supervisor = UplinkSupervisor(lambda: self.config, self.ingest, once=self.once)
        self.reloader = Reloader(self)
        self.reporter = HealthReporter(self)
        self._uplink_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ inputs

    def on_fix(self, fix: Fix) -> None:
        assert self.engine is not None
        pending = self.engine.resume_pending
        self.ingest.enqueue(self.engine.on_fix(fix))
        if pending and not self.engine.resume_pending:
            log.info("rule state restored", **(self.engine.resume_summary or {}))

    def on_can(self, sample: SpeedSample | Ignition | SignalSample) -> None:
        """What the CAN source decoded: a speed sample, an ignition change, or another
        bus signal for telemetry (OBD-II rpm, coolant) — all through the engine, so
        ``edge replay`` reproduces them."""
        assert self.engine is not None
        if isinstance(sample, Ignition):
            self.ingest.enqueue(self.engine.on_ignition(sample))
        elif isinstance(sample, SignalSample):
            self.ingest.enqueue(self.engine.on_signal(sample))
        else:
            self.ingest.enqueue(self.engine.on_speed(sample))

    def sources(self) -> list[tuple[str, Any]]:
        """The running sources as (name, source): ``edge sim`` asks the GNSS source
        whether it has its port open before it writes the drive into it."""
        return list(self.inputs.running)

    def health(self) -> dict[str, Any]:
        return self.reporter.health()

    @property
    def reloads(self) -> int:
        return self.reloader.reloads

    async def apply_config(self, new: Config) -> None:
        """A validated config update, applied live where safe (``edge.daemon.reloader``)."""
        await self.reloader.apply_config(new)

    async def restart_uplink(self) -> None:
        if self._uplink_task is not None and self.task_group is not None:
            self._uplink_task.cancel()
            await asyncio.gather(self._uplink_task, return_exceptions=True)
            self._uplink_task = self.task_group.create_task(self.supervisor.run(),
                                                            name="uplink")

    # ------------------------------------------------------------------ main

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        await asyncio.to_thread(check_runtime, cfg, zones=False,
                                roads_must_exist=not self.zones_optional)
        await asyncio.to_thread(check_status_path, cfg.health_path, group=cfg.health.group)
        zones = _zones_or_config_error(cfg, optional=self.zones_optional)
        built = self.inputs.build(cfg)
        roads = self.reloader.open_roads(cfg)
        self.engine = Engine(cfg, zones=zones, roads=roads)
        self.ingest.snapshot = self.engine.snapshot
        if zones is None and cfg.rules.zones is not None:  # optional and not there yet
            self.engine.reject_zones(zones_missing(cfg.rules.zones))
        await self.ingest.open(starting=True)
        saved = await self.ingest.saved_rules()
        if saved:
            self.engine.resume(saved)
            log.info("rule state found, restored at the first valid fix",
                     trip_open=bool((saved.get("trip") or {}).get("open")))
        outbox = self.ingest.outbox
        log.info("daemon starting", version=__version__, thing=cfg.thing,
                 uplink=cfg.uplink.kind, outbox=str(cfg.outbox.path),
                 recovered_inflight=outbox.recovered if outbox else None,
                 outbox_mode=self.ingest.mode)
        try:
            async with asyncio.TaskGroup() as tg:
                self.task_group = tg
                writer = tg.create_task(self.ingest.run_writer(), name="outbox-writer")
                self._uplink_task = tg.create_task(self.supervisor.run(), name="uplink")
                aux = [
                    tg.create_task(run_ticker(self), name="ticker"),
                    tg.create_task(self.reporter.run(), name="health"),
                    tg.create_task(self.reloader.watch_zones(), name="zones-watch"),
                ]
                if cfg.roads.index is not None:
                    aux.append(tg.create_task(self.reloader.watch_roads(), name="roads-watch"))
                self.inputs.start(tg, built)
                await stop.wait()
                log.info("shutting down")
                await self._shutdown(writer, aux)
        finally:
            await asyncio.to_thread(self.ingest.close)
            self.reporter.write_file(final=True)
            log.info("daemon stopped", **self.reporter.counters())

    async def _shutdown(self, writer: asyncio.Task[None], aux: list[asyncio.Task[None]]) -> None:
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        # 1. sources stop
        for t in aux:
            t.cancel()
        await self.inputs.stop_all()
        await asyncio.gather(*aux, return_exceptions=True)
        # 2. rules flush: open overspeed episodes and trips end
        assert self.engine is not None
        now, _ = self.engine.now(self.mono(), self.clock())
        self.ingest.enqueue(self.engine.close(now))
        # 3. the writer commits everything queued
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, deadline - time.monotonic() - DRAIN_GRACE_S)):
                await self.ingest.flush()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        # 4. the uplink gets a short grace to deliver what is ready, then disconnects
        grace = min(DRAIN_GRACE_S, max(0.0, deadline - time.monotonic() - 0.5))
        if self.supervisor.state == UplinkState.CONNECTED and grace > 0:
            with contextlib.suppress(TimeoutError, OutboxError):
                async with asyncio.timeout(grace):
                    while await asyncio.to_thread(self.ingest.ready_rows) > 0:
                        self.ingest.new_rows.set()
                        await asyncio.sleep(0.05)
        if self._uplink_task is not None:
            self._uplink_task.cancel()
            await asyncio.gather(self._uplink_task, return_exceptions=True)


def run_daemon(config: Config) -> int:
    """``edge run``: the daemon until a signal. Returns the exit status."""

    async def main(stop: asyncio.Event) -> None:
        await Daemon(config).run(stop)

    try:
        return run_loop(run_until_signalled(main))
    except EdgeError as exc:
        print(describe(exc, config=f"config {config.source or ''}"), file=sys.stderr)
        return exit_code(exc)


def run_greengrass() -> int:
    """``edge run --greengrass``: config from the nucleus (GetConfiguration), validated
    hot reload on SubscribeToConfigurationUpdate."""
    from edge.greengrass.config import GreengrassConfigWatcher, roads_offered
    from edge.logconf import configure

    holder: dict[str, Daemon] = {}

    async def on_config(new: Config) -> None:
        d = holder.get("daemon")
        if d is not None:
            await d.apply_config(new)

    async def main(stop: asyncio.Event) -> None:
        async with GreengrassConfigWatcher(on_config=on_config) as watcher:
            cfg = watcher.config
            configure(cfg.log.level, cfg.log.format)
            d = Daemon(cfg)
            d.zones_optional = True  # the Zones component may deploy its file later
            d.roads_offered = roads_offered()  # a fleet may not deploy the Roads component
            d.extra_health = watcher.health
            holder["daemon"] = d
            await d.run(stop)

    try:
        return run_loop(run_until_signalled(main))
    except EdgeError as exc:
        print(describe(exc, config="component configuration"), file=sys.stderr)
        return exit_code(exc)
