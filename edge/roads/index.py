"""The road index on the car: one SQLite file with an R*Tree, queried, never loaded.

Schema (``PRAGMA user_version = 1``):

* ``meta(key, value)``: ``format``, ``country``, ``source`` (the extract), ``created``,
  ``ways``, ``segments``, ``bbox``.
* ``ways(id, highway, name, ref, oneway, fwd_kmh, bwd_kmh, fwd_src, bwd_src, cond, tz)``:
  one row per OSM way, ``id`` is the OSM id. ``*_kmh`` NULL: unknown (``signals``),
  ``-1``: no limit (``none``); ``*_src``: ``0`` a tag, ``1`` the country fallback;
  ``cond``: JSON ``{"f": [[kmh, "Mo-Fr 07:00-17:00"], ...], "b": [...]}`` or NULL;
  ``tz``: the IANA zone of the way (for conditional limits) or NULL; ``flags``: 1 a
  tunnel, 2 a bridge (the matcher doubts a GNSS fix in a tunnel).
* ``segs(id, way, n1, n2, lat1, lon1, lat2, lon2)``: one row per pair of consecutive
  nodes of a way, in the way's direction; coordinates in 1e-7 degrees (integers, as
  OSM stores them); ``n1``/``n2`` the OSM node ids (connectivity).
* ``segs_rtree``: ``rtree_i32(id, minlon, maxlon, minlat, maxlat)`` in 1e-7 degrees.

A lookup is one R*Tree range query joined to ``segs``; SQLite's page cache is capped
(``cache_kb``) so a country-size file costs the daemon a few MB whatever its size.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.core.geo import M_PER_DEG, MIN_COS
from edge.errors import EdgeError

FORMAT = 1
E7 = 10_000_000
NO_LIMIT_DB = -1.0
TUNNEL = 1
BRIDGE = 2
WAY_CACHE = 4096

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE ways(id INTEGER PRIMARY KEY, highway TEXT, name TEXT, ref TEXT,
                  oneway INTEGER NOT NULL, fwd_kmh REAL, bwd_kmh REAL,
                  fwd_src INTEGER NOT NULL, bwd_src INTEGER NOT NULL, cond TEXT, tz TEXT,
                  flags INTEGER NOT NULL);
CREATE TABLE segs(id INTEGER PRIMARY KEY, way INTEGER NOT NULL, n1 INTEGER NOT NULL,
                  n2 INTEGER NOT NULL, lat1 INTEGER NOT NULL, lon1 INTEGER NOT NULL,
                  lat2 INTEGER NOT NULL, lon2 INTEGER NOT NULL);
CREATE VIRTUAL TABLE segs_rtree USING rtree_i32(id, minlon, maxlon, minlat, maxlat);
"""


class RoadIndexError(EdgeError):
    """The file is not a road index this version reads (the message says why)."""


@dataclass(frozen=True, slots=True)
class Way:
    id: int
    highway: str
    name: str | None
    ref: str | None
    oneway: int  # 1 forward only, -1 backward only, 0 both
    fwd_kmh: float | None  # math.inf: no limit; None: unknown
    bwd_kmh: float | None
    fwd_default: bool  # the country fallback, not a tag
    bwd_default: bool
    fwd_cond: tuple[tuple[float, str], ...]
    bwd_cond: tuple[tuple[float, str], ...]
    tz: str | None
    flags: int = 0

    @property
    def tunnel(self) -> bool:
        return bool(self.flags & TUNNEL)

    @property
    def label(self) -> str | None:
        """What people call the road: ``name (ref)``, the name, or the ref."""
        if self.name and self.ref:
            return f"{self.name} ({self.ref})"
        return self.name or self.ref


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    way: int
    n1: int
    n2: int
    lat1: float
    lon1: float
    lat2: float
    lon2: float


def _kmh_to_db(v: float | None) -> float | None:
    return NO_LIMIT_DB if v is not None and math.isinf(v) else v


def _kmh_from_db(v: float | None) -> float | None:
    return math.inf if v is not None and v < 0 else v


class IndexWriter:
    """Builds an index file (the importer and the synthetic-index generator)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        self._tmp = tmp
        self.db = sqlite3.connect(tmp)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                              "PRAGMA page_size=4096;" + SCHEMA)
        self.db.execute(f"PRAGMA user_version={FORMAT}")
        self.ways = 0
        self.segments = 0

    def add_way(self, *, id: int, highway: str, name: str | None, ref: str | None,
                oneway: int, fwd: tuple[float | None, bool], bwd: tuple[float | None, bool],
                cond_f: Iterable[tuple[float, str]] = (),
                cond_b: Iterable[tuple[float, str]] = (), tz: str | None = None,
                flags: int = 0) -> None:
        cf, cb = [list(c) for c in cond_f], [list(c) for c in cond_b]
        cond = json.dumps({"f": cf, "b": cb}, separators=(",", ":")) if cf or cb else None
        self.db.execute(
            "INSERT OR REPLACE INTO ways VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (id, highway, name, ref, oneway, _kmh_to_db(fwd[0]), _kmh_to_db(bwd[0]),
             int(fwd[1]), int(bwd[1]), cond, tz if cond else None, flags))
        self.ways += 1

    def add_segments(self, way: int, rows: Iterable[tuple[int, int, int, int, int, int]]
                     ) -> int:
        """rows: (n1, n2, lat1, lon1, lat2, lon2), coordinates in 1e-7 degrees."""
        start = self.segments
        segs = []
        boxes = []
        for n1, n2, la1, lo1, la2, lo2 in rows:
            self.segments += 1
            sid = self.segments
            segs.append((sid, way, n1, n2, la1, lo1, la2, lo2))
            boxes.append((sid, min(lo1, lo2), max(lo1, lo2), min(la1, la2), max(la1, la2)))
        self.db.executemany("INSERT INTO segs VALUES (?,?,?,?,?,?,?,?)", segs)
        self.db.executemany("INSERT INTO segs_rtree VALUES (?,?,?,?,?)", boxes)
        return self.segments - start

    def close(self, meta: dict[str, str]) -> None:
        meta = {**meta, "format": str(FORMAT), "ways": str(self.ways),
                "segments": str(self.segments)}
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)", meta.items())
        self.db.commit()
        self.db.execute("VACUUM")
        self.db.close()
        self._tmp.replace(self.path)

    def abort(self) -> None:
        self.db.close()
        self._tmp.unlink(missing_ok=True)


class RoadIndex:
    """Read-only access to an index file. Not thread-safe: one per thread."""

    def __init__(self, path: Path, *, cache_kb: int = 2048) -> None:
        self.path = path
        if not path.is_file():
            raise RoadIndexError(f"{path}: no such file")
        try:
            self.db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                                      check_same_thread=False)
            self.db.execute(f"PRAGMA cache_size=-{int(cache_kb)}")
            self.db.execute("PRAGMA mmap_size=0")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise RoadIndexError(f"{path}: not a road index ({exc})") from exc
        if version != FORMAT or meta.get("format") != str(FORMAT):
            raise RoadIndexError(f"{path}: index format {version}, this version reads {FORMAT}")
        self.meta = meta
        self._ways: OrderedDict[int, Way] = OrderedDict()
        self.lookups = 0

    def close(self) -> None:
        self.db.close()

    def near(self, lat: float, lon: float, radius_m: float) -> list[Segment]:
        """Segments whose bounding box lies within ``radius_m`` of (lat, lon)."""
        self.lookups += 1
        dlat = radius_m / M_PER_DEG
        dlon = radius_m / (M_PER_DEG * max(math.cos(math.radians(lat)), MIN_COS))
        la, lo = lat * E7, lon * E7
        rows = self.db.execute(
            "SELECT s.id, s.way, s.n1, s.n2, s.lat1, s.lon1, s.lat2, s.lon2 "
            "FROM segs_rtree r JOIN segs s ON s.id = r.id "
            "WHERE r.minlon <= ? AND r.maxlon >= ? AND r.minlat <= ? AND r.maxlat >= ?",
            (int(lo + dlon * E7) + 1, int(lo - dlon * E7) - 1,
             int(la + dlat * E7) + 1, int(la - dlat * E7) - 1)).fetchall()
        return [Segment(r[0], r[1], r[2], r[3], r[4] / E7, r[5] / E7, r[6] / E7, r[7] / E7)
                for r in rows]

    def way(self, way_id: int) -> Way:
        w = self._ways.get(way_id)
        if w is not None:
            self._ways.move_to_end(way_id)
            return w
        r = self.db.execute("SELECT * FROM ways WHERE id = ?", (way_id,)).fetchone()
        if r is None:
            raise KeyError(way_id)
        cond = json.loads(r[9]) if r[9] else {}
        w = Way(r[0], r[1], r[2], r[3], r[4], _kmh_from_db(r[5]), _kmh_from_db(r[6]),
                bool(r[7]), bool(r[8]),
                tuple((float(k), str(c)) for k, c in cond.get("f", ())),
                tuple((float(k), str(c)) for k, c in cond.get("b", ())), r[10], r[11])
        self._ways[way_id] = w
        if len(self._ways) > WAY_CACHE:
            self._ways.popitem(last=False)
        return w

    def all_segments(self) -> Iterator[Segment]:
        for r in self.db.execute("SELECT id, way, n1, n2, lat1, lon1, lat2, lon2 FROM segs "
                                 "ORDER BY id"):
            yield Segment(r[0], r[1], r[2], r[3], r[4] / E7, r[5] / E7, r[6] / E7, r[7] / E7)
