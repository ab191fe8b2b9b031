"""``edge replay``: a drive through the pure engine, every would-be publish to a file.

Deterministic: event time comes from the recorded data and envelope ids from a seeded
generator, so the same drive and config give byte-identical output.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import itertools
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from edge.config import Config
from edge.core.engine import Engine
from edge.errors import EdgeError
from edge.model import Envelope, Fix, Ignition, SpeedSample

BULK_WINDOW = 50_000  # fixes whose geometry is computed at once (bounds the memory)


def _fixes(path: Path, date: dt.date | None, reference: dt.date | None, engine: Engine | None
           ) -> Iterator[tuple[float, int, Fix | SpeedSample | Ignition]]:
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
            ) -> Iterator[tuple[float, int, Fix | SpeedSample | Ignition]]:
    """CAN samples of the drive; ``offset_s`` (drive.toml ``can_time_offset_s``) moves
    the log's timestamps onto GNSS time when the recorder's clock was off. At the end,
    ``warn`` hears of skipped lines, and of a log that gave no speed at all."""
    from edge.core.obd import ObdSpeedDecoder
    from edge.sources.canlog import LogStats, iter_log_speed
    from edge.sources.dbc import decoder_for

    decoder = ObdSpeedDecoder() if cfg.can.mode == "obd" else decoder_for(cfg.can)
    stats = LogStats()
    try:
        for s in iter_log_speed(path, decoder, stats):
            t = s.time + offset_s
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
    if stats.samples == 0:
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
    streams: list[Iterator[tuple[float, int, Fix | SpeedSample | Ignition]]] = []
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
        else:
            assert isinstance(item, SpeedSample)
            if stats is not None:
                stats["speed_samples"] += 1
            out = engine.on_speed(item)
        yield from out
    yield from engine.close(last)


def main(drive: Path, cfg: Config, *, out: Path) -> int:
    from edge.uplinks.file import format_line

    started = time.process_time()
    wall = time.perf_counter()
    stats: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    from edge.commands import out_folder_error

    why = out_folder_error(out)
    if why is not None:
        print(f"edge replay: cannot write {out}: {why}", file=sys.stderr)
        return 2
    fh: IO[str]
    try:
        fh = sys.stdout if str(out) == "-" else out.open("w", encoding="utf-8")
    except OSError as exc:
        print(f"edge replay: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    def warn(message: str) -> None:
        print(f"edge replay: warning: {message}", file=sys.stderr)

    try:
        for env in replay_events(drive, cfg, stats=stats, warn=warn):
            kinds[env.type] += 1
            fh.write(format_line(env.topic, env.to_bytes()))
    except (EdgeError, OSError) as exc:
        print(f"edge: replay {drive}: {exc}", file=sys.stderr)
        return 1
    finally:
        if fh is not sys.stdout:
            fh.close()
    n = sum(kinds.values())
    detail = " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
    print(
        f"replay {drive}: {stats['fixes']} fixes, {stats['speed_samples']} speed samples -> "
        f"{n} messages ({detail}) in {time.perf_counter() - wall:.2f} s "
        f"({time.process_time() - started:.2f} s CPU)",
        file=sys.stderr,
    )
    return 0
