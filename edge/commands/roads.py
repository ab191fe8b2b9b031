"""``edge roads import EXTRACT.osm.pbf --out roads.db [--bbox W,S,E,N] [--country CC]``
builds the road index; ``edge roads info roads.db`` shows what one holds;
``edge roads match roads.db LAT LON [--heading DEG --speed KMH --hdop H]`` shows the
road and limit one fix matches (a quick check of an index on the bench)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from edge.errors import ExitCode


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``W,S,E,N`` in degrees; raises ValueError with the reason."""
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError(f"--bbox must be W,S,E,N (4 numbers), got {text!r}")
    w, s, e, n = (float(p) for p in parts)
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ValueError(f"--bbox {text!r}: need -180 <= W < E <= 180 and -90 <= S < N <= 90")
    return w, s, e, n


def import_main(src: Path, out: Path, *, bbox: str | None, country: str | None,
                stdout: TextIO) -> int:
    try:
        box = parse_bbox(bbox) if bbox else None
    except ValueError as exc:
        print(f"edge roads import: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if not src.is_file():
        print(f"edge roads import: {src}: no such file", file=sys.stderr)
        return ExitCode.USAGE
    from edge.commands import out_refused

    if out_refused("edge roads import", out):
        return ExitCode.USAGE
    try:
        import osmium  # noqa: F401
    except ImportError:
        print("edge roads import needs pyosmium: pip install 'vehicle-edge[roads]'",
              file=sys.stderr)
        return ExitCode.USAGE
    from edge.roads.importer import import_extract

    try:
        summary = import_extract(src, out, bbox=box, country=country)
    except RuntimeError as exc:  # pyosmium's error for a file it cannot read
        print(f"edge roads import: {src}: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    print(json.dumps(summary.to_json(), indent=2), file=stdout)
    return ExitCode.OK


def info_main(index: Path, *, stdout: TextIO) -> int:
    from edge.roads.index import RoadIndex

    idx = RoadIndex(index)
    print(json.dumps({**idx.meta, "bytes": index.stat().st_size}, indent=2), file=stdout)
    return ExitCode.OK


def match_main(index: Path, lat: float, lon: float, *, heading: float | None,
               speed_kmh: float | None, hdop: float | None, stdout: TextIO) -> int:
    from edge.roads.index import RoadIndex
    from edge.roads.matcher import Matcher

    m = Matcher(RoadIndex(index)).on_fix(
        0.0, lat, lon, hdop=hdop, course_deg=heading,
        speed_mps=None if speed_kmh is None else speed_kmh / 3.6)
    if m is None:
        print(json.dumps({"matched": False}), file=stdout)
        return ExitCode.FAILED
    w = m.way
    kmh = w.fwd_kmh if m.forward else w.bwd_kmh
    default = w.fwd_default if m.forward else w.bwd_default
    print(json.dumps({
        "matched": True, "way": w.id, "road": w.label, "highway": w.highway,
        "forward": m.forward, "distance_m": round(m.distance_m, 1),
        "limit_kmh": None if kmh is None or kmh == float("inf") else kmh,
        "no_limit": kmh == float("inf"),
        "limit_source": "road:default" if default else f"road:osm:way/{w.id}",
        "conditional": [list(c) for c in (w.fwd_cond if m.forward else w.bwd_cond)],
    }), file=stdout)
    return ExitCode.OK
