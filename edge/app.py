"""The one composition root: config -> adapters -> task group -> ordered shutdown.

Tasks (all named, all held by the daemon):

* ``gnss`` / ``can``  sources, each calling back into the pure engine
* ``outbox-writer``   moves envelopes from a bounded in-memory queue into SQLite in
                      group commits (alerts fsync'd before they count as accepted)
* ``uplink``          connects with capped, jittered backoff and drains the outbox
                      (alerts first, telemetry batched, IoT Core quotas respected)
* ``ticker``          gives the rules the passage of time (gaps, timeouts)
* ``health``          publishes health and writes the status file for ``edge status``

Shutdown order on SIGTERM/SIGINT: sources stop, rules flush (open episodes end),
the writer commits what is queued, the uplink gets a short grace to deliver, then it
is disconnected and the outbox closed. A second signal forces exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edge import __version__
from edge.checks import check_runtime
from edge.config import Config
from edge.core.backoff import Backoff
from edge.core.engine import Engine
from edge.errors import (
    ConfigError,
    EdgeError,
    OutboxError,
    UplinkAuthError,
    UplinkError,
    ZonesError,
)
from edge.logconf import Once
from edge.model import Envelope, Fix, Ignition, Lane, SignalSample, SpeedSample
from edge.outbox import EVICT_ORDER, Outbox, disk_report, free_bytes
from edge.private import check_status_path, write_status
from edge.uplinks.base import Uplink

if TYPE_CHECKING:
    from edge.forwarder import Forwarder

log = structlog.get_logger()

QUEUE_MAX = 10_000  # envelopes waiting for the outbox writer
MB = 1024 * 1024
CLAIM = 100  # rows claimed from the outbox per round
SHUTDOWN_BUDGET_S = 4.0  # SIGTERM -> exit, all steps together
DRAIN_GRACE_S = 1.0  # of which the uplink may spend this delivering what is queued
TRIM_EVERY_S = 10.0  # hand freed heap back to the OS this often (see _trim_heap)
STATE_EVERY_S = 10.0  # rule state saved at least this often while messages flow


def _libc(name: str) -> Any:
    """glibc's function ``name`` through ctypes, or None (no libc found, or not glibc)."""
    import ctypes.util

    try:
        lib = ctypes.util.find_library("c")
        return None if lib is None else getattr(ctypes.CDLL(lib), name)
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
MALLOC_ARENAS = 2  # glibc arenas the daemon's threads share (M_ARENA_MAX)
_M_ARENA_MAX = -8  # mallopt parameter number, glibc's malloc.h


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


def _trim_heap() -> None:
    global _TRIM, _TRIM_LOADED
    if not _TRIM_LOADED:
        _TRIM, _TRIM_LOADED = _load_trim(), True
    if _TRIM is not None:
        _TRIM()


def make_uplink(config: Config) -> Uplink:
    """Pick the uplink by ``uplink.kind``; optional libraries are imported only here."""
    kind = config.uplink.kind
    if kind == "mqtt":
        from edge.uplinks.mqtt import MqttUplink

        return MqttUplink(config.uplink, client_id=config.thing)
    if kind == "file":
        from edge.uplinks.file import FileUplink

        assert config.uplink.path is not None
        return FileUplink(config.uplink.path)
    if kind == "iotcore":
        from edge.uplinks.iotcore import IotCoreUplink

        return IotCoreUplink(config.uplink, client_id=config.thing)
    if kind == "greengrass":
        from edge.greengrass.uplink import GreengrassUplink

        return GreengrassUplink(config.uplink)
    raise EdgeError(f"unknown uplink kind {kind!r}")


def zones_missing(path: Path) -> str:
    """The health error while the zones file a config names does not exist."""
    return (f"zones file {path} does not exist: running without zones until it appears "
            "(is com.vehicleedge.Zones deployed?)")


def roads_missing(path: Path) -> str:
    """The health error while the road index a config names does not exist."""
    return (f"road index {path} does not exist: running without road limits until it "
            "appears (is com.vehicleedge.Roads deployed?)")


def load_zones_for(config: Config, *, optional: bool = False) -> Any:
    """The zones ``config`` names; ``optional``: a file that does not exist yet is no
    zones for now (a Greengrass Zones component deploys it later; the watcher loads it)."""
    if config.rules.zones is None:
        return None
    if optional and not config.rules.zones.exists():
        log.warning("zones file not there yet, running without zones",
                    path=str(config.rules.zones), reason=zones_missing(config.rules.zones))
        return None
    from edge.core.zones import load_zones

    return load_zones(config.rules.zones)


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
        self._drive_clock = clock is not None
        self._can_clock = can_clock or clock  # edge sim: the time of the CAN reader
        self.started_mono = time.monotonic()
        self.engine: Engine | None = None
        self.outbox: Outbox | None = None
        self._queue: deque[Envelope] = deque()
        # rule-state snapshots (numbered) by the id() of the queued envelope they follow
        self._state_for: dict[int, tuple[int, dict[str, Any]]] = {}
        self._snapped_at = -1e18
        self._snaps = 0
        self._snap_written = 0  # the newest snapshot committed
        self._queued = asyncio.Event()
        self._new_rows = asyncio.Event()
        self._writer_idle = asyncio.Event()
        self._sources: list[Any] = []
        self._once = Once()
        self.uplink_state = "disconnected"
        self.forwarder: Forwarder | None = None
        self.counters: dict[str, int] = {
            "accepted": 0,
            "queue_dropped": 0,
            "outbox_errors": 0,
            "uplink_errors": 0,
            "connects": 0,
        }
        self.outbox_mode = "disk"
        self.outbox_error: str | None = None
        self._outbox_open = asyncio.Event()
        self.last_uplink_error: str | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._uplink_task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.restart_required: list[str] = []
        self.extra_health: Callable[[], dict[str, Any]] | None = None
        self.zones_optional = False  # Greengrass: the Zones and Roads components may come later
        # [roads] index: reloads of the file, and why there is no road provider now
        self.roads_reloads = 0
        self.roads_error: str | None = None

    # ------------------------------------------------------------------ inputs

    def on_fix(self, fix: Fix) -> None:
        assert self.engine is not None
        pending = self.engine.resume_pending
        self._enqueue(self.engine.on_fix(fix))
        if pending and not self.engine.resume_pending:
            log.info("rule state restored", **(self.engine.resume_summary or {}))

    def on_speed(self, sample: SpeedSample | Ignition) -> None:
        """What the CAN source decoded: a speed sample or an ignition change."""
        assert self.engine is not None
        if isinstance(sample, Ignition):
            self._enqueue(self.engine.on_ignition(sample))
        else:
            self._enqueue(self.engine.on_speed(sample))

    def _enqueue(self, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        if self.engine is not None:
            mono = time.monotonic()
            if mono - self._snapped_at >= STATE_EVERY_S or any(
                    e.lane <= Lane.TRIP for e in envelopes):
                # the rules' state after these events rides with the last of them
                self._snaps += 1
                self._state_for[id(envelopes[-1])] = (self._snaps, self.engine.snapshot())
                self._snapped_at = mono
        for env in envelopes:
            if len(self._queue) >= QUEUE_MAX:
                self._drop_one()
            self._queue.append(env)
            if env.lane <= Lane.TRIP and self.config.log.events:
                body = {k: v for k, v in env.body.items()
                        if k in ("phase", "transition", "fence", "poi", "speed_kmh", "limit_kmh",
                                 "distance_m", "reason", "clock")}
                log.info(env.type, ts=env.ts, id=env.id, **body)
            if env.type == "diagnostic" and env.body.get("phase") == "start":
                # once per episode of disagreement (the end is logged as an event)
                log.warning("speed sources disagree", ts=env.ts,
                            **{k: env.body.get(k) for k in (
                                "can_kmh", "gnss_kmh", "diff_kmh", "policy", "using")})
        self._queued.set()

    def _drop_one(self) -> None:
        """Queue full (the disk is stalled): drop the oldest least-important message
        (telemetry, then health, then trips, alerts last); counted per lane."""
        for lane in EVICT_ORDER:
            for i, env in enumerate(self._queue):
                if env.lane == lane:
                    del self._queue[i]
                    self._state_for.pop(id(env), None)
                    name = lane.name.lower()
                    self.counters["queue_dropped"] += 1
                    key = f"queue_dropped_{name}"
                    self.counters[key] = self.counters.get(key, 0) + 1
                    self._once(log, f"queue-full:{name}", "queue full, dropping",
                               lane=name)
                    return

    # ------------------------------------------------------------------ main

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        await asyncio.to_thread(check_runtime, cfg, zones=False,
                                roads_must_exist=not self.zones_optional)
        await asyncio.to_thread(check_status_path, cfg.health_path, group=cfg.health.group)
        zones = self._zones_or_config_error(cfg)
        built = self._build_sources(cfg)
        roads = None
        if cfg.roads.index is None:
            pass  # no [roads]: edge.roads (R*Tree matcher, sqlite index) is not imported
        elif not cfg.roads.index.exists():
            # only here under Greengrass (check_runtime refuses it otherwise): the Roads
            # component may deploy after the Daemon; the watcher loads it when it comes
            self.roads_error = roads_missing(cfg.roads.index)
            log.warning("road index not there yet, running without road limits",
                        path=str(cfg.roads.index), reason=self.roads_error)
        else:
            from edge.roads.provider import RoadLimits

            roads = RoadLimits.for_config(cfg)
        self.engine = Engine(cfg, zones=zones, roads=roads)
        if zones is None and cfg.rules.zones is not None:  # optional and not there yet
            self.engine.rules.zones_rejected(zones_missing(cfg.rules.zones))
        await self._open_outbox(starting=True)
        if self.outbox is not None:
            with contextlib.suppress(OutboxError):
                saved = (await asyncio.to_thread(self.outbox.load_state)).get("rules")
                if saved:
                    self.engine.resume(saved)
                    log.info("rule state found, restored at the first valid fix",
                             trip_open=bool((saved.get("trip") or {}).get("open")))
        log.info("daemon starting", version=__version__, thing=cfg.thing,
                 uplink=cfg.uplink.kind, outbox=str(cfg.outbox.path),
                 recovered_inflight=self.outbox.recovered if self.outbox else None,
                 outbox_mode=self.outbox_mode)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                writer = tg.create_task(self._writer(), name="outbox-writer")
                self._uplink_task = tg.create_task(self._uplink_loop(), name="uplink")
                aux = [
                    tg.create_task(self._ticker(), name="ticker"),
                    tg.create_task(self._health_loop(), name="health"),
                    tg.create_task(self._zones_watch(), name="zones-watch"),
                ]
                if cfg.roads.index is not None:
                    aux.append(tg.create_task(self._roads_watch(), name="roads-watch"))
                self._start_sources(tg, built)
                await stop.wait()
                log.info("shutting down")
                await self._shutdown(list(self._source_tasks.values()), writer,
                                     self._uplink_task, aux)
        finally:
            await asyncio.to_thread(self._close_outbox)
            self._write_health_file(final=True)
            log.info("daemon stopped", **self.all_counters())

    def _space_low(self) -> bool:
        cfg = self.config.outbox
        free = free_bytes(cfg.path.parent)
        return free is not None and free < max(cfg.min_free_mb, cfg.reserve_mb) * MB

    async def _open_outbox(self, *, starting: bool = False) -> bool:
        """Open the outbox. At start-up on a disk too full to even create it, the daemon
        runs on: messages wait in memory (alerts last to go) and the open is retried by
        the writer; any other failure to open is fatal (a clear error, exit 1)."""
        try:
            self.outbox = await asyncio.to_thread(Outbox.from_config, self.config.outbox)
        except OutboxError as exc:
            if not await asyncio.to_thread(self._space_low):
                if starting:
                    raise
                self._once(log, "outbox-open", "outbox cannot be opened, holding in memory",
                           reason=str(exc))
                return False
            self.outbox_mode = "memory-fallback"
            self.outbox_error = str(exc)
            self._once(log, "outbox-open", "outbox: disk too full to open, holding messages"
                       " in memory and retrying", path=str(self.config.outbox.path),
                       reason=str(exc))
            return False
        self.outbox_error = None
        self.outbox_mode = "disk"
        self._outbox_open.set()
        return True

    def _zones_or_config_error(self, cfg: Config) -> Any:
        try:
            return load_zones_for(cfg, optional=self.zones_optional)
        except ZonesError as exc:
            raise ConfigError("rules.zones", str(exc)) from exc

    def sources(self) -> list[tuple[str, Any]]:
        """The running sources as (name, source): ``edge sim`` asks the GNSS source
        whether it has its port open before it writes the drive into it."""
        return list(self._sources)

    def _build_sources(self, cfg: Config, only: set[str] | None = None) -> list[tuple[str, Any]]:
        """Source objects for ``cfg`` (constructing one checks its config: a bad DBC
        signal is a ConfigError here, before anything runs)."""
        built: list[tuple[str, Any]] = []
        if cfg.gnss.port and (only is None or "gnss" in only):
            from edge.sources.gnss import GnssSource

            built.append(("gnss", GnssSource(
                cfg.gnss, clock=self.clock if self._drive_clock else None)))
        if cfg.can.interface != "none" and (only is None or "can" in only):
            from edge.sources.can import CanSource

            built.append(("can", CanSource(cfg.can, clock=self._can_clock)))
        return built

    def _start_sources(self, tg: asyncio.TaskGroup, built: list[tuple[str, Any]]) -> None:
        for name, src in built:
            self._sources.append((name, src))
            emit = self.on_fix if name == "gnss" else self.on_speed
            self._source_tasks[name] = tg.create_task(src.run(emit), name=name)

    # ------------------------------------------------------------------ hot reload

    async def apply_config(self, new: Config) -> None:
        """Switch to a validated new config without a restart where that is safe.

        Sources and the uplink whose section changed are restarted (in-flight rows go
        back to ready); rules and telemetry switch in place; the outbox location and
        the thing name need a restart, which is logged and shown in health."""
        old = self.config
        changed = {f for f in ("thing", "gnss", "can", "rules", "telemetry", "uplink", "outbox",
                               "health", "log", "roads") if getattr(old, f) != getattr(new, f)}
        if not changed:
            return
        # everything that can fail is checked and built before anything changes: an
        # update that cannot run is rejected whole (ConfigError) and the old config stays
        await asyncio.to_thread(check_runtime, new, zones=False,
                                roads_must_exist=not self.zones_optional)
        restart = changed & {"gnss", "can"}
        built = await asyncio.to_thread(self._build_sources, new, restart) if restart else []
        new_rules = None
        if "rules" in changed and self.engine is not None:
            from edge.core.rules import Rules

            new_rules = Rules(new.rules, self._zones_or_config_error(new),
                              self.engine.rules.roads)
        self.restart_required = sorted(changed & {"thing", "outbox", "roads"})
        live = changed - {"thing", "outbox", "roads"}
        import dataclasses

        self.config = dataclasses.replace(new, thing=old.thing, outbox=old.outbox,
                                          roads=old.roads)
        self.reloads += 1
        log.info("config reloaded", changed=sorted(live),
                 restart_required=self.restart_required or None)
        if "log" in live:
            from edge.logconf import configure

            configure(new.log.level, new.log.format)
        engine = self.engine
        if engine is not None:
            if "telemetry" in live:
                engine.telemetry.interval_s = new.telemetry.interval_s
            if "rules" in live and new_rules is not None:
                if dataclasses.replace(old.rules, zones=None) == dataclasses.replace(
                        new.rules, zones=None):
                    # same rules, other zones: swap them, state carries over
                    self._enqueue(engine.reload(new_rules.zones))
                else:
                    engine.rules = new_rules
            if "can" in live or (
                    "rules" in live
                    and old.rules.speed.source_policy != new.rules.speed.source_policy):
                from edge.core.engine import make_arbiter

                engine.arbiter = make_arbiter(new)
        tg = self._tg
        if tg is None:
            return
        for name in restart:
            task = self._source_tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self._sources = [(n, s) for n, s in self._sources if n != name]
        if built:
            self._start_sources(tg, built)
        if "uplink" in live and self._uplink_task is not None:
            self._uplink_task.cancel()
            await asyncio.gather(self._uplink_task, return_exceptions=True)
            self._uplink_task = tg.create_task(self._uplink_loop(), name="uplink")

    def _reload_zones(self) -> None:
        engine = self.engine
        path = self.config.rules.zones
        if engine is None:
            return
        if path is None:
            from edge.core.zones import empty_zones

            self._enqueue(engine.reload(empty_zones()))
            return
        try:
            zones = load_zones_for(self.config)
        except ZonesError as exc:
            engine.rules.zones_rejected(str(exc))
            self._once(log, f"zones:{exc}", "zones update rejected, keeping the old zones",
                       path=str(path), reason=str(exc))
            return
        self._enqueue(engine.reload(zones))
        log.info("zones reloaded", path=str(path), **zones.counts())

    async def _zones_watch(self, period_s: float = 2.0) -> None:
        """Reload the zones file when it changes (a Greengrass Zones deployment or an
        operator replaces it atomically)."""

        def stamp() -> tuple[int, int, int] | None:
            p = self.config.rules.zones
            if p is None:
                return None
            try:
                st = p.stat()
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size, st.st_ino)

        last = await asyncio.to_thread(stamp)
        while True:
            await asyncio.sleep(period_s)
            now = await asyncio.to_thread(stamp)
            if now != last and now is not None:
                self._reload_zones()
            last = now

    async def _roads_watch(self, period_s: float = 5.0) -> None:
        """Swap to a new road index when the file is replaced (a Greengrass Roads
        deployment renames the new file over the old one); a file that is not an index
        keeps the old one and is logged."""
        from edge.roads.provider import RoadLimits, file_stamp

        path = self.config.roads.index
        assert path is not None
        last = await asyncio.to_thread(file_stamp, path)
        while True:
            await asyncio.sleep(period_s)
            now = await asyncio.to_thread(file_stamp, path)
            if now == last or now is None or self.engine is None:
                continue
            last = now
            try:
                new = await asyncio.to_thread(RoadLimits.open, self.config.roads)
            except EdgeError as exc:
                self.roads_error = f"not reloaded, keeping the old index: {exc}"
                log.warning("road index not reloaded, keeping the old one", reason=str(exc))
                continue
            old = self.engine.rules.roads
            self.engine.rules.roads = new
            self.roads_error = None
            if old is not None:
                old.index.close()
                self.roads_reloads += 1
            log.info("road index reloaded", path=str(path), segments=new.index.meta.get(
                "segments"))

    async def _shutdown(
        self,
        sources: list[asyncio.Task[None]],
        writer: asyncio.Task[None],
        uplink: asyncio.Task[None],
        aux: list[asyncio.Task[None]],
    ) -> None:
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        # 1. sources stop
        for t in sources + aux:
            t.cancel()
        await asyncio.gather(*sources, *aux, return_exceptions=True)
        # 2. rules flush: open overspeed episodes and trips end
        assert self.engine is not None
        now, _ = self.engine.now(self.mono(), self.clock())
        self._enqueue(self.engine.close(now))
        # 3. the writer commits everything queued
        self._writer_idle.clear()
        self._queued.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.1, deadline - time.monotonic() - DRAIN_GRACE_S)):
                while self._queue:
                    await self._writer_idle.wait()
                    self._writer_idle.clear()
                    self._queued.set()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        # 4. the uplink gets a short grace to deliver what is ready, then disconnects
        grace = min(DRAIN_GRACE_S, max(0.0, deadline - time.monotonic() - 0.5))
        if self.uplink_state == "connected" and grace > 0:
            with contextlib.suppress(TimeoutError, OutboxError):
                async with asyncio.timeout(grace):
                    while await asyncio.to_thread(self._ready_count) > 0:
                        self._new_rows.set()
                        await asyncio.sleep(0.05)
        uplink.cancel()
        await asyncio.gather(uplink, return_exceptions=True)

    def _ready_count(self) -> int:
        if self.outbox is None:
            return 0
        return int(self.outbox.stats()["pending"])

    def _close_outbox(self) -> None:
        if self.outbox is None and self._queue:
            with contextlib.suppress(OutboxError):
                self.outbox = Outbox.from_config(self.config.outbox)
        if self._queue:
            # what the writer could not commit in time: last attempt, synchronously
            try:
                if self.outbox is None:
                    raise OutboxError(self.outbox_error or "outbox not open")
                self.outbox.put(list(self._queue))
                self.counters["accepted"] += len(self._queue) - self.outbox.batch_dropped
                self._queue.clear()
            except OutboxError as exc:
                lanes: dict[str, int] = {}
                for env in self._queue:
                    lanes[env.lane.name.lower()] = lanes.get(env.lane.name.lower(), 0) + 1
                log.error("outbox: messages lost at shutdown", count=len(self._queue),
                          lanes=lanes, reason=str(exc))
        if self.outbox is not None:
            self.outbox.close()

    # ------------------------------------------------------------------ writer

    async def _writer(self) -> None:
        """Group commits from the queue. A disk too full for the telemetry and health
        rows of a batch (after the outbox evicted what it could) stores its alerts and
        trip edges anyway; the lower rows stay queued in memory and are offered again
        after a short backoff, while alerts keep being committed at once."""
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        lower_backoff = Backoff(base_s=0.2, cap_s=2.0)
        lower_after = 0.0  # lower-lane rows held back by a full disk wait until then
        while True:
            if not self._queue:
                self._writer_idle.set()
                await self._queued.wait()
                self._queued.clear()
                continue
            if self.outbox is None and not await self._open_outbox():
                self.counters["outbox_errors"] += 1
                await asyncio.sleep(backoff.next())
                continue
            assert self.outbox is not None
            held = time.monotonic() < lower_after
            if held:
                batch = [e for e in self._queue if e.lane <= Lane.TRIP][:500]
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, lower_after - time.monotonic())):
                            await self._queued.wait()
                    self._queued.clear()
                    continue
            else:
                batch = list(itertools.islice(self._queue, 500))
            snap_n, state = self._state_of(batch)
            try:
                await asyncio.to_thread(self.outbox.put, batch, state, hold_lower=True)
            except OutboxError as exc:
                # disk full or failing: keep the messages in memory (bounded by
                # QUEUE_MAX, least important dropped first), retry with backoff
                self.counters["outbox_errors"] += 1
                self.outbox_mode = "memory-fallback"
                self._once(log, "outbox-write", "outbox write failed, holding in memory",
                           reason=str(exc), queued=len(self._queue))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._snap_written = snap_n
            left = self.outbox.batch_left
            self._remove(batch, keep=left)
            if left:
                lower_after = time.monotonic() + lower_backoff.next()
                if self.outbox_mode != "memory-fallback":
                    self.outbox_mode = "memory-fallback"
                    self._once(log, "outbox-write", "disk full: telemetry and health held"
                               " in memory, alerts still committed", queued=len(self._queue))
            elif not held:
                lower_backoff.reset()
                lower_after = 0.0
                if self.outbox_mode != "disk":
                    log.info("outbox writable again", queued=len(self._queue))
                    self._once.clear("outbox-write")
                self.outbox_mode = "disk"
            # rows a full disk had no room for are counted by the outbox
            # (dropped_full_<lane>) or held here, never counted as accepted
            self.counters["accepted"] += len(batch) - len(left) - self.outbox.batch_dropped
            self._new_rows.set()

    def _state_of(self, batch: list[Envelope]) -> tuple[int, dict[str, Any] | None]:
        """The newest rule-state snapshot taken with an envelope of ``batch``: it is
        committed in the same transaction as the events it follows — unless a newer one
        went already (telemetry held back by a full disk commits after newer alerts)."""
        best: tuple[int, dict[str, Any]] | None = None
        for env in batch:
            got = self._state_for.get(id(env))
            if got is not None and (best is None or got[0] > best[0]):
                best = got
        if best is None or best[0] <= self._snap_written:
            return self._snap_written, None
        return best[0], {"rules": best[1]}

    def _remove(self, batch: list[Envelope], *, keep: list[Envelope]) -> None:
        """Take the committed envelopes of ``batch`` off the queue (by identity: the
        queue may have changed while the commit ran)."""
        gone = {id(e) for e in batch} - {id(e) for e in keep}
        for i in gone:
            self._state_for.pop(i, None)
        if len(gone) == len(batch) and all(
                a is b for a, b in zip(batch, itertools.islice(self._queue, len(batch)),
                                       strict=False)):
            for _ in range(len(batch)):
                self._queue.popleft()
            return
        self._queue = deque(e for e in self._queue if id(e) not in gone)

    # ------------------------------------------------------------------ uplink

    async def _uplink_loop(self) -> None:
        cfg = self.config.uplink
        backoff = Backoff(base_s=0.5, cap_s=cfg.backoff_max_s)
        while True:
            await self._outbox_open.wait()  # nothing to deliver from before that
            uplink = make_uplink(self.config)
            try:
                self.uplink_state = "connecting"
                async with uplink:
                    self.uplink_state = "connected"
                    self.counters["connects"] += 1
                    backoff.reset()
                    self._once.clear("uplink")
                    log.info("uplink connected", kind=uplink.name)
                    await self._drain(uplink)
            except UplinkAuthError as exc:
                backoff.to_cap()
                self._uplink_failed(exc)
            except UplinkError as exc:
                self._uplink_failed(exc)
            self.uplink_state = "disconnected"
            await self._backoff_wait(backoff.next())

    def _publish_error(self, reason: str | None) -> None:
        """Publishes fail on a working connection (``reason``), or work again (None)."""
        self.uplink_state = "connected" if reason is None else "publish failing"
        if reason is not None:
            self.last_uplink_error = reason

    def _uplink_failed(self, exc: Exception) -> None:
        self.counters["uplink_errors"] += 1
        self.last_uplink_error = str(exc)
        self._once(log, "uplink", "uplink unavailable, will retry", reason=str(exc))

    async def _backoff_wait(self, delay: float) -> None:
        """Sleep ``delay`` (capped, jittered backoff) — but when the broker's TCP port
        was closed at the failure and opens during the wait, reconnect at once.

        A closed port (broker restarting, network back) is cheap to watch: one TCP
        SYN every ``uplink.probe_s``. A port that is open while connecting fails (TLS
        or credentials refused, broker overloaded) gets the full backoff, so a fleet
        does not hammer a sick broker with TLS handshakes.
        """
        cfg = self.config.uplink
        target = self._probe_target()
        if target is None or cfg.probe_s <= 0 or await self._port_open(*target):
            await asyncio.sleep(delay)
            return
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(cfg.probe_s, left))
            if await self._port_open(*target):
                log.debug("uplink port open again, reconnecting now", host=target[0],
                          port=target[1])
                return

    def _probe_target(self) -> tuple[str, int] | None:
        cfg = self.config.uplink
        if cfg.kind not in ("mqtt", "iotcore"):
            return None
        tls = cfg.tls if cfg.tls is not None else (cfg.cert is not None or cfg.ca is not None)
        default = 8883 if cfg.kind == "iotcore" or tls else 1883
        return cfg.endpoint, cfg.port or default

    @staticmethod
    async def _port_open(host: str, port: int, limit_s: float = 1.0) -> bool:
        try:
            async with asyncio.timeout(limit_s):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _drain(self, uplink: Uplink) -> None:
        """Serve one connection (``edge.forwarder``): alerts first, telemetry batched
        (optionally compressed), IoT Core quotas kept, every claimed row settled."""
        from edge.forwarder import Forwarder

        assert self.outbox is not None
        cfg = self.config
        # a previous connection's drain may have failed to settle (full disk): nothing
        # else owns in-flight rows now, so they are ready again
        with contextlib.suppress(OutboxError):
            stuck = await asyncio.to_thread(self.outbox.recover_inflight)
            if stuck:
                log.info("outbox: rows left in flight are ready again", rows=stuck)
        if self.forwarder is None:  # one per daemon: it owns its counters
            self.forwarder = Forwarder(
                self.outbox, thing=cfg.thing, batch_max=cfg.telemetry.batch_max,
                compression=cfg.uplink.compression, window=cfg.uplink.window,
                once=self._once, retry=Backoff(base_s=0.5, cap_s=cfg.uplink.backoff_max_s),
                on_publish_error=self._publish_error,
            )
        await self.forwarder.run(uplink, self._new_rows)

    def all_counters(self) -> dict[str, int]:
        """The daemon's counters and the forwarder's (it owns those)."""
        from edge.forwarder import COUNTERS

        out = dict.fromkeys(COUNTERS, 0)
        owned = self.forwarder.health()["counters"] if self.forwarder is not None else {}
        for part in (self.counters, owned):
            for k, v in part.items():
                out[k] = out.get(k, 0) + v
        return out

    # ------------------------------------------------------------------ time & health

    async def _ticker(self) -> None:
        assert self.engine is not None
        next_status = time.monotonic() + min(5.0, self.config.log.status_interval_s)
        next_trim = time.monotonic() + TRIM_EVERY_S
        trimmed_at = 0
        while True:
            await asyncio.sleep(1.0)
            engine = self.engine
            if engine.resume_pending and (time.monotonic() - self.started_mono
                                          > self.config.rules.trip.resume_gap_s):
                # no GNSS time to measure the restart's gap: the old trip ends
                self._enqueue(engine.resume_now(None))
            now, _ = engine.now(self.mono(), self.clock())
            if self._drive_clock and engine.latest_time is not None:
                # under edge sim the readers trail the replay's clock by what sits in the
                # sources' queues: time passes for the rules as far as they have read
                now = min(now, engine.latest_time)
            self._enqueue(engine.tick(now))
            for name, src in self._sources:
                if name == "can":  # until the CAN source emits SignalSamples itself
                    for signal, value in src.telemetry().items():
                        engine.on_signal(SignalSample(time=self.clock(), name=signal,
                                                      value=value, mono=self.mono()))
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + self.config.log.status_interval_s
                self._log_status()
            published = self.all_counters()["published"]
            burst = published - trimmed_at > 1000
            if burst or time.monotonic() >= next_trim:
                # periodically, and at once after a burst (a backlog drained)
                next_trim = time.monotonic() + TRIM_EVERY_S
                trimmed_at = published
                _trim_heap()

    def _log_status(self) -> None:
        assert self.engine is not None
        t = self.engine.telemetry.record()
        log.info("status", fixes=self.engine.counts["fixes"],
                 speed_kmh=t.get("Vehicle.Speed"), speed_source=t.get("speed_source"),
                 lat=t.get("Vehicle.CurrentLocation.Latitude"),
                 lon=t.get("Vehicle.CurrentLocation.Longitude"),
                 uplink=self.uplink_state, published=self.all_counters()["published"],
                 queued=len(self._queue))

    def health(self) -> dict[str, Any]:
        assert self.engine is not None
        out: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "uplink": {"kind": self.config.uplink.kind, "state": self.uplink_state,
                       "last_error": self.last_uplink_error},
            "queue": len(self._queue),
            "outbox_mode": self.outbox_mode,
            "counters": self.all_counters(),
        }
        for name, src in self._sources:
            with contextlib.suppress(Exception):
                out[name] = src.health()
        out.update(self.engine.health())
        if self.config.roads.index is not None:
            over = out["rules"]["overspeed"]
            over["roads"] = {**over.get("roads", {"index": str(self.config.roads.index)}),
                             "reloads": self.roads_reloads, "error": self.roads_error}
        out["config"] = {"reloads": self.reloads, "restart_required": self.restart_required,
                         "source": str(self.config.source) if self.config.source else None}
        if self.extra_health is not None:
            with contextlib.suppress(Exception):
                out["greengrass"] = self.extra_health()
        if self.outbox is not None:
            with contextlib.suppress(OutboxError):
                out["outbox"] = self.outbox.stats()
            out["disk"] = self.outbox.disk()
        else:
            ocfg = self.config.outbox
            out["outbox"] = {"path": str(ocfg.path), "error": self.outbox_error}
            out["disk"] = disk_report(ocfg.path, min_free_bytes=int(ocfg.min_free_mb * MB),
                                      reserve_target=int(ocfg.reserve_mb * MB))
        return out

    async def _health_loop(self) -> None:
        assert self.engine is not None
        from edge.model import Event

        while True:
            body = self.health()
            await asyncio.to_thread(self._write_health_file, dict(body))
            now, clock = self.engine.now(self.mono(), self.clock())
            self._enqueue([self.engine.envelopes.make(
                Event(kind="health", time=now, body=body, clock=clock))])
            await asyncio.sleep(self.config.health.interval_s)

    def _write_health_file(self, data: dict[str, Any] | None = None, *,
                           final: bool = False) -> None:
        path = self.config.health_path
        try:
            if data is None:
                data = self.health() if self.engine is not None else {}
            data["written_at"] = time.time()
            data["running"] = not final
            data["interval_s"] = self.config.health.interval_s
            write_status(path, json.dumps(data, indent=1, default=str).encode(),
                         group=self.config.health.group)
        except (OSError, EdgeError) as exc:
            self._once(log, "health-file", "cannot write health file", path=str(path),
                       reason=str(exc))


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


def run_daemon(config: Config) -> int:
    """``edge run``: the daemon until a signal. Returns the exit status."""

    async def main(stop: asyncio.Event) -> None:
        await Daemon(config).run(stop)

    try:
        return _run(run_until_signalled(main))
    except ConfigError as exc:
        print(f"edge: invalid config {config.source or ''}: {exc.field}: {exc.reason}",
              file=sys.stderr)
        return 2
    except ZonesError as exc:
        print(f"edge: zones: {exc}", file=sys.stderr)
        return 2
    except OutboxError as exc:
        print(f"edge: outbox: {exc}", file=sys.stderr)
        return 1


def run_greengrass() -> int:
    """``edge run --greengrass``: config from the nucleus (GetConfiguration), validated
    hot reload on SubscribeToConfigurationUpdate."""
    from edge.errors import ConfigError
    from edge.ggconfig import GreengrassConfigWatcher
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
            d.extra_health = watcher.health
            holder["daemon"] = d
            await d.run(stop)

    try:
        return _run(run_until_signalled(main))
    except ConfigError as exc:
        print(f"edge: invalid component configuration: {exc.field}: {exc.reason}",
              file=sys.stderr)
        return 2
    except (ZonesError, UplinkError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 1


def _run(coro: Awaitable[int]) -> int:
    limit_arenas()  # before the event loop's executor starts any thread
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def read_status(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))
