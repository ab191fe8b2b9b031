"""Hot reload: a validated new config switched in without a restart where that is safe,
and the watchers of the zones file and the road index.

Sources and the uplink whose section changed are restarted (in-flight rows go back to
ready); rules, telemetry and the speed arbiter switch in place through
``Engine.reconfigure``; ``[log]`` is applied at once; the outbox location, the thing
name and ``[roads]`` need a restart, which is logged and shown in health.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edge.config import Config, changed_sections
from edge.config_files import check_runtime, file_stamp
from edge.errors import ConfigError, EdgeError, ZonesError

if TYPE_CHECKING:
    from edge.app import Daemon

log = structlog.get_logger()

RESTART_ONLY = frozenset({"thing", "outbox", "roads"})  # sections a running daemon keeps


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
    from edge.sources.zonesfile import load_zones

    return load_zones(config.rules.zones)


def zones_or_config_error(config: Config, *, optional: bool) -> Any:
    """``load_zones_for``, a bad file being an error of the config field naming it."""
    try:
        return load_zones_for(config, optional=optional)
    except ZonesError as exc:
        raise ConfigError("rules.zones", str(exc)) from exc


class Reloader:
    """Applies config updates and file changes to the parts of ``daemon``."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon
        self.reloads = 0
        self.restart_required: list[str] = []
        self.roads_reloads = 0
        self.roads_error: str | None = None  # why there is no road provider now
        self.roads_state = "loaded"  # or "missing", "not deployed"

    def open_roads(self, cfg: Config) -> Any:
        """The road provider ``[roads]`` names at start-up (None: no [roads], or, under
        Greengrass, an index not deployed yet: the watcher loads it when it comes).

        An index the configuration names is an error in health while it is missing. The
        one the Daemon's recipe offers (``VEHICLE_EDGE_ROADS``, ``roads_offered``) is not:
        a fleet that does not deploy com.vehicleedge.Roads runs on zone and default
        limits, and health says ``not deployed``, without an error."""
        if cfg.roads.index is None:
            return None  # no [roads]: edge.roads (R*Tree matcher, sqlite index) not imported
        if not cfg.roads.index.exists():
            # only here under Greengrass (check_runtime refuses it otherwise)
            if cfg.roads.index == self._d.roads_offered:
                self.roads_state = "not deployed"
                log.info("no road index deployed (com.vehicleedge.Roads): road limits off "
                         "until one is", path=str(cfg.roads.index))
                return None
            self.roads_state = "missing"
            self.roads_error = roads_missing(cfg.roads.index)
            log.warning("road index not there yet, running without road limits",
                        path=str(cfg.roads.index), reason=self.roads_error)
            return None
        from edge.roads.provider import RoadLimits

        return RoadLimits.for_config(cfg)

    async def apply_config(self, new: Config) -> None:
        """Switch to ``new`` (validated). Everything that can fail is checked and built
        before anything changes: an update that cannot run is rejected whole
        (``ConfigError``) and the old config stays."""
        d = self._d
        old = d.config
        changed = set(changed_sections(old, new))
        if not changed:
            return
        optional = d.zones_optional
        await asyncio.to_thread(check_runtime, new, zones=False, roads_must_exist=not optional)
        restart = changed & {"gnss", "can"}
        built = await asyncio.to_thread(d.inputs.build, new, restart) if restart else []
        zones = None
        if "rules" in changed:
            zones = zones_or_config_error(new, optional=optional)
            if zones is None:
                from edge.core.zones import empty_zones

                zones = empty_zones()
        self.restart_required = sorted(changed & RESTART_ONLY)
        live = changed - RESTART_ONLY
        d.config = dataclasses.replace(new, thing=old.thing, outbox=old.outbox,
                                       roads=old.roads)
        self.reloads += 1
        log.info("config reloaded", changed=sorted(live),
                 restart_required=self.restart_required or None)
        if "log" in live:
            from edge.logconf import configure

            configure(new.log.level, new.log.format)
        if d.engine is not None:
            d.ingest.enqueue(d.engine.reconfigure(d.config, zones=zones))
        if d.task_group is None:
            return
        await d.inputs.stop(restart)
        if built:
            d.inputs.start(d.task_group, built)
        if "uplink" in live:
            await d.restart_uplink()

    def reload_zones(self) -> None:
        d = self._d
        engine, path = d.engine, d.config.rules.zones
        if engine is None:
            return
        if path is None:
            from edge.core.zones import empty_zones

            d.ingest.enqueue(engine.reload(empty_zones()))
            return
        try:
            zones = load_zones_for(d.config)
        except ZonesError as exc:
            engine.reject_zones(str(exc))
            d.once(log, f"zones:{exc}", "zones update rejected, keeping the old zones",
                   path=str(path), reason=str(exc))
            return
        d.ingest.enqueue(engine.reload(zones))
        log.info("zones reloaded", path=str(path), **zones.counts())

    async def watch_zones(self, period_s: float = 2.0) -> None:
        """Reload the zones file when it changes (a Greengrass Zones deployment or an
        operator replaces it atomically)."""

        def stamp() -> tuple[int, int, int] | None:
            p = self._d.config.rules.zones
            return None if p is None else file_stamp(p)

        last = await asyncio.to_thread(stamp)
        while True:
            await asyncio.sleep(period_s)
            now = await asyncio.to_thread(stamp)
            if now != last and now is not None:
                self.reload_zones()
            last = now

    async def watch_roads(self, period_s: float = 5.0) -> None:
        """Swap to a new road index when the file is replaced (a Greengrass Roads
        deployment renames the new file over the old one); a file that is not an index
        keeps the old one and is logged."""
        from edge.roads.provider import RoadLimits

        d = self._d
        path = d.config.roads.index
        assert path is not None
        last = await asyncio.to_thread(file_stamp, path)
        while True:
            await asyncio.sleep(period_s)
            now = await asyncio.to_thread(file_stamp, path)
            if now == last or now is None or d.engine is None:
                continue
            last = now
            try:
                new = await asyncio.to_thread(RoadLimits.open, d.config.roads)
            except EdgeError as exc:
                self.roads_error = f"not reloaded, keeping the old index: {exc}"
                log.warning("road index not reloaded, keeping the old one", reason=str(exc))
                continue
            old = d.engine.use_roads(new)
            self.roads_error = None
            self.roads_state = "loaded"
            if old is not None:
                old.index.close()
                self.roads_reloads += 1
            log.info("road index reloaded", path=str(path), segments=new.index.meta.get(
                "segments"))

    def health(self) -> dict[str, Any]:
        source = self._d.config.source
        return {"reloads": self.reloads, "restart_required": self.restart_required,
                "source": str(source) if source else None}

    def roads_health(self, roads: dict[str, Any] | None) -> dict[str, Any]:
        """The road provider's health with the reloads and the error of the watcher."""
        index = self._d.config.roads.index
        return {**(roads or {"index": str(index)}), "state": self.roads_state,
                "reloads": self.roads_reloads, "error": self.roads_error}
