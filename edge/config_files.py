"""Checks of a config against the machine it runs on: files it names exist and parse.

``edge.config`` validates the file's shape without touching the disk; this goes one step
further and is run by ``edge check-config``, at daemon start and before a hot reload is
applied, so a DBC signal that is not in the DBC or a zones file that does not parse is
one clear error naming the field, never a traceback or a half-applied update.
"""

from __future__ import annotations

from pathlib import Path

from edge.config import Config
from edge.errors import ConfigError, ZonesError


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(mtime, size, inode) of a file a config names, None when it is not there: what the
    daemon's watchers compare to see it replaced."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _readable(field: str, path: Path | None) -> None:
    if path is None:
        return
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror or exc}") from exc


def check_runtime(cfg: Config, *, zones_must_exist: bool = True, zones: bool = True,
                  roads_must_exist: bool = True) -> None:
    """Raise ConfigError naming the field when ``cfg`` cannot run here. ``zones=False``
    skips parsing the zones file, for callers that load it right after anyway;
    ``roads_must_exist=False`` lets a road index that is not there yet pass (a Greengrass
    Roads component deploys it later), one that is there must be an index."""
    if zones and cfg.rules.zones is not None and (zones_must_exist
                                                   or cfg.rules.zones.exists()):
        from edge.sources.zonesfile import load_zones

        try:
            load_zones(cfg.rules.zones)
        except ZonesError as exc:
            raise ConfigError("rules.zones", str(exc)) from exc
    if cfg.roads.index is not None and (roads_must_exist or cfg.roads.index.exists()):
        from edge.roads.provider import RoadLimits

        RoadLimits.for_config(cfg).index.close()  # type: ignore[union-attr]  # roads.index
    if cfg.can.interface != "none" and cfg.can.mode == "dbc":
        _readable("can.dbc", cfg.can.dbc)
        from edge.sources.dbc import decoder_for

        decoder_for(cfg.can)  # names can.dbc / can.speed_signal / can.ignition_signal
    if cfg.uplink.kind in ("mqtt", "iotcore"):
        for name in ("ca", "cert", "key"):
            _readable(f"uplink.{name}", getattr(cfg.uplink, name))
        if cfg.uplink.key is not None:
            from edge.uplinks.base import key_problem

            why = key_problem(cfg.uplink.key)
            if why:
                raise ConfigError("uplink.key", why)
    if cfg.outbox.encryption != "none":
        from edge.seal import KeyFileError, read_key

        keys = [("outbox.key_file", cfg.outbox.key_file)]
        keys += [("outbox.old_key_files", p) for p in cfg.outbox.old_key_files]
        for field, path in keys:
            try:
                read_key(path)  # type: ignore[arg-type]  # key_file is set: config checked
            except KeyFileError as exc:
                raise ConfigError(field, str(exc)) from exc
