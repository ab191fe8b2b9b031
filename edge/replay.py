"""The replay library: a recorded drive through the pure engine, every envelope the
daemon would publish (``edge replay``, ``edge report``, the golden and sim tests).

Deterministic: event time comes from the recorded data and envelope ids from a seeded
generator, so the same drive and config give byte-identical output. The CAN log is read
by the adapters the live daemon's decoders come from (``edge.sources.canlog``,
``edge.sources.dbc``): DBC speed and ignition, or recorded OBD-II answers -- speed, and the
engine speed and coolant temperature the live source emits for telemetry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import itertools
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from edge.config import Config
from edge.core.engine import Engine
from edge.model import Envelope, Fix, Ignition, SignalSample, SpeedSample

BULK_WINDOW = 50_000  # fixes whose geometry is computed at once (bounds the memory)

Item = Fix | SpeedSample | Ignition | SignalSample


def _fixes(path: Path, date: dt.date | None, reference: dt.date | None, engine: Engine | None
           ) -> Iterator[tuple[float, int, Item]]:
    """The drive's fixes; with ``engine``, the geometry of each window of
    ``BULK_WINDOW`` fixes is computed in bulk before the window is fed (a fix the
    engine meets before its window's geometry is ready is measured the live way: the
    events are the same)."""
    from edge.core.nmea import iter_fixes

    with path.open("rb") as fh:
        # one clock per drive: rollover corrected only against the drive's other clock;
        # a capture's fixes carry mono = their GNSS time
        fixes = (f for f in iter_fixes(fh, date=date, reference_date=reference)
                 if f.time is not None)
        while True:
            window = list(itertools.islice(fixes, BULK_WINDOW))
            if not window:
                return
            if engine is not None:
                engine.use_drive_geometry(window)
            for f in window:
                assert f.time is not None
                yield f.time, 0, f


def _speeds(path: Path, cfg: Config, offset_s: float = 0.0,
            warn: Callable[[str], None] | None = None,
            ) -> Iterator[tuple[float, int, Item]]:
    """CAN samples of the drive; ``offset_s`` (drive.toml ``can_time_offset_s``) moves
    the log's timestamps onto GNSS time when the recorder's clock was off. At the end,
    ``warn`` hears of skipped lines, and of a log that gave no speed at all."""
    from edge.sources.canlog import LogStats, iter_log_obd, iter_log_speed

    stats = LogStats()
    samples: Iterator[SpeedSample | Ignition | SignalSample]
    if cfg.can.mode == "obd":
        samples = iter_log_obd(path, stats)
    else:
        from edge.sources.dbc import decoder_for

        samples = iter_log_speed(path, decoder_for(cfg.can), stats)
    speeds = 0
    try:
        for s in samples:
            t = s.time + offset_s
            speeds += not isinstance(s, SignalSample)
            yield t, 1, dataclasses.replace(s, time=t, mono=t)
    except ValueError as exc:  # an unreadable log: said, and the GNSS part goes on
        if warn is not None:
            warn(f"{path.name}: {exc}")
        return
    if warn is None:
        return
    problems = stats.problems()
    if problems:
        warn(f"{path.name}: {problems}")
    if speeds == 0:
        what = "OBD-II speed" if cfg.can.mode == "obd" else f"{cfg.can.speed_signal}"
        warn(f"{path.name} gave no {what} samples ({stats.summary()})")


def replay_events(drive: Path, cfg: Config, *, stats: Counter[str] | None = None,
                  warn: Callable[[str], None] | None = None,
                  bulk: bool = True) -> Iterator[Envelope]:
    """Every envelope the daemon would publish for ``drive``, in publish order
    (health aside: it describes a live process, not the drive). ``bulk``: the zone
    geometry of all fixes is computed at once up front (``edge.core.drivegeo``); the
    events are the same as fix by fix (``bulk=False``, the live daemon's way)."""
    from sim.drive import check_clocks, load_drive, reference

    d = load_drive(drive)
    ref, _ = reference(d)
    if warn is not None and d.gnss is not None and d.can is not None:
        clocks = check_clocks(d)
        if not clocks.agree:
            warn(clocks.message(d))
    from edge.app import load_zones_for
    from edge.roads.provider import RoadLimits

    engine = Engine(cfg, zones=load_zones_for(cfg), seed=zlib.crc32(cfg.thing.encode()),
                    roads=RoadLimits.for_config(cfg))
    streams: list[Iterator[tuple[float, int, Item]]] = []
    if d.gnss is not None:
        streams.append(_fixes(d.gnss, d.date, ref, engine if bulk else None))
    if d.can is not None and (cfg.can.mode == "obd" or (cfg.can.dbc is not None
                                                        and cfg.can.speed_signal)):
        streams.append(_speeds(d.can, cfg, d.can_time_offset_s, warn))
    last = None
    for t, kind, item in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
        last = t
        if kind == 0:
            assert isinstance(item, Fix)
            if stats is not None:
                stats["fixes"] += 1
            out = engine.on_fix(item)
        elif isinstance(item, Ignition):
            if stats is not None:
                stats["ignition"] += 1
            out = engine.on_ignition(item)
        elif isinstance(item, SignalSample):
            if stats is not None:
                stats["signal_samples"] += 1
            out = engine.on_signal(item)
        else:
            assert isinstance(item, SpeedSample)
            if stats is not None:
                stats["speed_samples"] += 1
            out = engine.on_speed(item)
        yield from out
    yield from engine.close(last)
