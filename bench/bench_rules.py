"""Benchmark: geofence evaluations per second, one fix at a time and a drive in bulk.

For 10, 1,000 and 10,000 fences (rectangles, rotated quads and circles of 60-400 m,
scattered over 20 km x 20 km around Munich, so at 10,000 they overlap ~1.5 deep):

* ``rules.on_fix drive @ N``: a 1 Hz drive at 30-70 km/h fed fix by fix through
  ``Rules.on_fix`` (the live daemon's path: ``ZoneLocator`` on ``shapely.STRtree``);
  baseline: the bare ``shapely.STRtree.query(Point)`` over the same zone boxes, same
  fixes, same run. Goal at 10,000: >= 50,000 fixes/s.
* ``rules.on_fix random @ N``: random, unrelated points (every fix teleports: the worst
  case for the locator's cache). Goal at 10,000: >= 50,000 fixes/s.
* ``rules.replay drive @ N``: the same drive as ``edge replay`` runs it: the geometry of
  every fix computed at once (``edge.core.drivegeo``: one STRtree query, array
  predicates), then the stateful rules fix by fix; wall time of both over the fixes.
  Baseline: the fix-by-fix rate of the same drive in the same run. Goal at 10,000:
  >= 250,000 fixes/s.

Run: ``python -m bench.bench_rules`` (or ``python -m bench --only rules``).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from edge.config import RulesConfig
from edge.core.geo import M_PER_DEG
from edge.core.rules import Rules
from edge.core.zones import Zones, parse_zones
from edge.model import Fix

LAT0, LON0 = 48.10, 11.50
AREA_M = 20_000.0
GOAL_FIXES_PER_S = 50_000.0
GOAL_REPLAY_FIXES_PER_S = 250_000.0
KX = M_PER_DEG * math.cos(math.radians(LAT0))


def _lonlat(x: float, y: float) -> list[float]:
    return [LON0 + x / KX, LAT0 + y / M_PER_DEG]


def make_zones(n: int, seed: int = 1) -> Zones:
    rng = random.Random(seed)
    feats: list[dict[str, Any]] = []
    for i in range(n):
        x, y = rng.uniform(0, AREA_M), rng.uniform(0, AREA_M)
        size = rng.uniform(60.0, 400.0)
        props: dict[str, Any] = {"id": f"f{i}", "name": f"fence {i}"}
        if i % 3 == 0:
            props["radius_m"] = size / 2
            geom = {"type": "Point", "coordinates": _lonlat(x, y)}
        else:
            a = rng.uniform(0, math.pi)
            pts = []
            for k in range(4):
                ang = a + k * math.pi / 2 + rng.uniform(-0.3, 0.3)
                pts.append(_lonlat(x + size / 2 * math.cos(ang), y + size / 2 * math.sin(ang)))
            pts.append(pts[0])
            geom = {"type": "Polygon", "coordinates": [pts]}
        feats.append({"type": "Feature", "properties": props, "geometry": geom})
    return parse_zones({"type": "FeatureCollection", "features": feats}, source=f"bench-{n}")


def drive(n: int, seed: int = 2) -> list[Fix]:
    rng = random.Random(seed)
    x, y, heading, v = AREA_M / 2, AREA_M / 2, 0.0, 14.0
    t0 = 1_700_000_000.0
    fixes = []
    for i in range(n):
        heading += rng.gauss(0, 0.15)
        v = min(20.0, max(8.0, v + rng.gauss(0, 0.5)))
        x += v * math.cos(heading)
        y += v * math.sin(heading)
        if not 0 < x < AREA_M or not 0 < y < AREA_M:
            heading += math.pi
            x = min(max(x, 1.0), AREA_M - 1)
            y = min(max(y, 1.0), AREA_M - 1)
        lon, lat = _lonlat(x + rng.gauss(0, 2), y + rng.gauss(0, 2))
        fixes.append(Fix(time=t0 + i, lat=lat, lon=lon, speed_mps=v, hdop=0.9, mode=3,
                         valid=True))
    return fixes


def teleports(n: int, seed: int = 3) -> list[Fix]:
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    out = []
    for i in range(n):
        lon, lat = _lonlat(rng.uniform(0, AREA_M), rng.uniform(0, AREA_M))
        out.append(Fix(time=t0 + i, lat=lat, lon=lon, speed_mps=10.0, hdop=0.9, mode=3,
                       valid=True))
    return out


def _rate(fn: Any, items: list[Any], runs: int = 3) -> float:
    best = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        fn(items)
        dt = time.perf_counter() - t
        best = max(best, len(items) / dt)
    return best


def _replay(zones: Zones, fixes: list[Fix]) -> float:
    """fixes/s of a whole drive with its geometry computed in bulk."""
    from edge.core.drivegeo import DriveGeometry
    from edge.core.geofence import hysteresis_for

    cfg = RulesConfig()
    zones.table()  # the zone columns are built once per zone set, not per drive

    def replay(fs: list[Fix]) -> None:
        r = Rules(cfg, zones)
        r.use_drive_geometry(DriveGeometry(zones, fs,
                                           lambda h: hysteresis_for(cfg.geofence, h)))
        on_fix = r.on_fix
        for f in fs:
            on_fix(f)

    return _rate(replay, fixes, runs=5)


def _measure(zones: Zones, fixes: list[Fix]) -> tuple[float, float]:
    import shapely  # the bare STRtree baseline

    tree = shapely.STRtree([shapely.box(*z.bounds) for z in zones.zones])

    def bare(fs: list[Fix]) -> None:
        q = tree.query
        for f in fs:
            q(shapely.Point(f.lon, f.lat))

    def rules(fs: list[Fix]) -> None:
        r = Rules(RulesConfig(), zones)
        on_fix = r.on_fix
        for f in fs:
            on_fix(f)

    return _rate(rules, fixes), _rate(bare, fixes)


def run(n_fixes: int = 20_000) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in (10, 1_000, 10_000):
        zones = make_zones(n)
        the_drive = drive(n_fixes)
        live = 0.0
        for label, fixes in (("drive", the_drive), ("random", teleports(n_fixes // 4))):
            value, base = _measure(zones, fixes)
            if label == "drive":
                live = value
            rows.append(_row(f"rules.on_fix {label} @ {n} fences", value, base,
                             GOAL_FIXES_PER_S if n == 10_000 else None))
        rows.append(_row(f"rules.replay drive @ {n} fences (bulk geometry)",
                         _replay(zones, the_drive), live,
                         GOAL_REPLAY_FIXES_PER_S if n == 10_000 else None))
    return rows


def _row(metric: str, value: float, base: float, goal: float | None) -> dict[str, Any]:
    return {"metric": metric, "value": round(value), "unit": "fixes/s",
            "baseline": round(base), "ratio": round(value / base, 2), "goal": goal,
            "ok": goal is None or value >= goal}


if __name__ == "__main__":
    for row in run():
        print(f"{row['metric']:50s} {row['value']:>9} {row['unit']}  baseline "
              f"{row['baseline']:>9}  x{row['ratio']:<5} goal {row['goal']}  ok={row['ok']}")
