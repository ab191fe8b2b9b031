"""OSM extract (.osm.pbf) -> road index (``edge.roads.index``), with pyosmium.

Runs on a laptop or in CI, not in the car: ``edge roads import EXTRACT.osm.pbf --out
roads.db [--bbox W,S,E,N] [--country CC]``. One streaming pass over the file with
node locations (pyosmium's ``flex_mem`` location store); each drivable ``highway=*``
way becomes a row of ``ways`` (its limits per direction, ``edge.roads.maxspeed``) and
one row of ``segs`` per pair of consecutive nodes. Without ``--country`` the country
of implicit defaults is the most common ``addr:country`` of the extract's first
objects that carry one (a short first pass); ways with ``maxspeed:conditional`` get
their time zone (tzfpy) so that the car evaluates the window in local time.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.roads.index import BRIDGE, E7, TUNNEL, IndexWriter
from edge.roads.maxspeed import DEFAULTS, drivable, oneway, way_limits

COUNTRY_SAMPLE = 2000  # addr:country values looked at to guess the country


@dataclass(slots=True, kw_only=True)
class Summary:
    source: str
    country: str
    highway_ways: int = 0  # every highway=* way seen
    ways: int = 0  # imported (drivable, in the bbox, with geometry)
    segments: int = 0
    explicit_ways: int = 0  # a maxspeed tag (explicit or implicit) in some direction
    conditional_ways: int = 0
    rejects: Counter[str] = field(default_factory=Counter)  # way left out: reason
    tag_problems: Counter[str] = field(default_factory=Counter)  # tag ignored: reason
    seconds: float = 0.0

    @property
    def explicit_share(self) -> float:
        return self.explicit_ways / self.ways if self.ways else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "country": self.country,
            "highway_ways": self.highway_ways, "ways": self.ways, "segments": self.segments,
            "explicit_limit_share": round(self.explicit_share, 4),
            "conditional_ways": self.conditional_ways,
            "rejects": dict(sorted(self.rejects.items())),
            "tag_problems": dict(sorted(self.tag_problems.items())),
            "seconds": round(self.seconds, 2),
            "ways_per_s": round(self.highway_ways / self.seconds) if self.seconds else None,
        }


def guess_country(path: Path) -> str | None:
    """The most common ``addr:country`` among the first objects carrying one."""
    import osmium

    seen: Counter[str] = Counter()
    fp = osmium.FileProcessor(str(path)).with_filter(osmium.filter.KeyFilter("addr:country"))
    for obj in fp:
        cc = (obj.tags.get("addr:country") or "").strip().upper()
        if len(cc) == 2 and cc.isalpha():
            seen[cc] += 1
            if sum(seen.values()) >= COUNTRY_SAMPLE:
                break
    return seen.most_common(1)[0][0] if seen else None


def import_extract(src: Path, out: Path, *, bbox: tuple[float, float, float, float] | None = None,
                   country: str | None = None) -> Summary:
    """Build ``out`` from ``src``; the summary says what was kept and what was not."""
    import osmium

    started = time.perf_counter()
    cc = (country or guess_country(src) or "*").upper()
    summary = Summary(source=src.name, country=cc if cc in DEFAULTS else f"{cc} (no table: *)")
    box = None
    if bbox is not None:
        import shapely  # only a clipped import needs geometry

        box = shapely.box(*bbox)
    tzf = _TimeZones()
    writer = IndexWriter(out)
    try:
        fp = (osmium.FileProcessor(str(src), osmium.osm.NODE | osmium.osm.WAY)
              .with_locations()
              .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY))
              .with_filter(osmium.filter.KeyFilter("highway")))
        for w in fp:
            summary.highway_ways += 1
            tags: Mapping[str, str] = {t.k: t.v for t in w.tags}
            why = drivable(tags)
            if why is not None:
                summary.rejects[why] += 1
                continue
            rows = _segments(w, box)
            if isinstance(rows, str):
                summary.rejects[rows] += 1
                continue
            lim = way_limits(tags, cc)
            summary.tag_problems.update(lim.problems)
            if lim.forward.source == "osm" or lim.backward.source == "osm":
                summary.explicit_ways += 1
            tz = None
            if lim.forward_conditional or lim.backward_conditional:
                summary.conditional_ways += 1
                tz = tzf.at(rows[0][2] / E7, rows[0][3] / E7)
            writer.add_way(
                id=w.id, highway=tags["highway"], name=tags.get("name"), ref=tags.get("ref"),
                oneway=oneway(tags),
                fwd=(lim.forward.kmh, lim.forward.source == "default"),
                bwd=(lim.backward.kmh, lim.backward.source == "default"),
                cond_f=lim.forward_conditional, cond_b=lim.backward_conditional, tz=tz,
                flags=_flags(tags))
            summary.segments += writer.add_segments(w.id, rows)
            summary.ways += 1
        summary.seconds = time.perf_counter() - started
        meta = {"country": cc, "source": src.name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "bbox": ",".join(str(v) for v in bbox) if bbox else ""}
        writer.close(meta)
    except BaseException:
        writer.abort()
        raise
    summary.seconds = time.perf_counter() - started
    return summary


def _segments(way: Any, box: Any) -> list[tuple[int, int, int, int, int, int]] | str:
    """(n1, n2, lat1, lon1, lat2, lon2) per pair of consecutive nodes, or a reject reason."""
    pts = []
    for n in way.nodes:
        loc = n.location
        # a way leaving the extract keeps its part inside (None: a node not in the file)
        pts.append((n.ref, loc.y, loc.x) if loc.valid() else None)  # 1e-7 degrees
    rows = [(a[0], b[0], a[1], a[2], b[1], b[2]) for a, b in itertools.pairwise(pts)
            if a is not None and b is not None and (a[1], a[2]) != (b[1], b[2])]
    if not rows:
        return "missing_nodes" if None in pts else "no_geometry"
    if box is not None:
        import numpy as np
        import shapely

        coords = np.array([[[r[3], r[2]], [r[5], r[4]]] for r in rows], dtype=float) / E7
        keep = shapely.intersects(box, shapely.linestrings(coords))
        rows = [r for r, k in zip(rows, keep, strict=True) if k]
        if not rows:
            return "outside_bbox"
    return rows


def _flags(tags: Mapping[str, str]) -> int:
    flags = 0
    if tags.get("tunnel", "no") not in ("no", "building_passage") or tags.get("covered") == "yes":
        flags |= TUNNEL
    if tags.get("bridge", "no") != "no":
        flags |= BRIDGE
    return flags


class _TimeZones:
    """IANA time zone of a position (tzfpy), cached per 0.1 degree cell."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], str | None] = {}

    def at(self, lat: float, lon: float) -> str | None:
        key = (round(lat * 10), round(lon * 10))
        if key not in self._cache:
            import tzfpy

            self._cache[key] = tzfpy.get_tz(lon, lat) or None
        return self._cache[key]
