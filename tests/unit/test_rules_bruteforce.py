"""Geofence events against an independent brute-force evaluation.

Each fence is a random set of grid cells: non-star shapes, holes, rings that touch at a
corner, parts that share edges. It reaches the zones file either as a MultiPolygon of
the bare squares (shared edges: the engine must union them) or as their union
polygonised (polygons with holes, touching rings). The expected events come from
arithmetic on the cells alone — which cell a point falls in, distances to squares,
segment-square clipping — and a minimal restatement of the geofence rules (debounce 0,
fixed hysteresis, no gaps). The rules are run fix by fix and with the drive's geometry
computed in bulk; both must give exactly the expected events.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.drivegeo import DriveGeometry
from edge.core.geofence import hysteresis_for
from edge.core.rules import Rules
from edge.core.zones import parse_zones
from edge.model import Event
from tests.support.rules_kit import config, fix, ll

G = 6  # cells per side
H = 5.0  # hysteresis, metres
MARGIN = 0.05  # closer than this to a decision line is ambiguous (frames differ ~1 cm)

Cell = tuple[int, int]
Grid = tuple[float, float, float, frozenset[Cell]]  # x0, y0, cell size, member cells


def _square(g: Grid, c: Cell) -> tuple[float, float, float, float]:
    x0, y0, s, _ = g
    return x0 + c[0] * s, y0 + c[1] * s, x0 + (c[0] + 1) * s, y0 + (c[1] + 1) * s


def _box_dist(b: tuple[float, float, float, float], x: float, y: float) -> float:
    dx = max(b[0] - x, 0.0, x - b[2])
    dy = max(b[1] - y, 0.0, y - b[3])
    return math.hypot(dx, dy)


def signed_distance(g: Grid, x: float, y: float) -> float:
    """Brute force: negative inside the union of the cells, positive outside."""
    x0, y0, s, cells = g
    cx, cy = math.floor((x - x0) / s), math.floor((y - y0) / s)
    if (cx, cy) in cells:  # distance to the nearest non-member: in the grid or beyond it
        out = [_square(g, (i, j)) for i in range(G) for j in range(G) if (i, j) not in cells]
        d = min([x - x0, x0 + G * s - x, y - y0, y0 + G * s - y]
                + [_box_dist(b, x, y) for b in out])
        return -d
    return min(_box_dist(_square(g, c), x, y) for c in cells)


def _clip(b: tuple[float, float, float, float], a: tuple[float, float],
          c: tuple[float, float]) -> bool:
    """Liang-Barsky: does the closed segment a-c meet the closed box b?"""
    t0, t1 = 0.0, 1.0
    dx, dy = c[0] - a[0], c[1] - a[1]
    for p, q in ((-dx, a[0] - b[0]), (dx, b[2] - a[0]), (-dy, a[1] - b[1]), (dy, b[3] - a[1])):
        if p == 0:
            if q < 0:
                return False
        else:
            r = q / p
            if p < 0:
                t0 = max(t0, r)
            else:
                t1 = min(t1, r)
            if t0 > t1:
                return False
    return True


def segment_hits(g: Grid, a: tuple[float, float], c: tuple[float, float], grow: float) -> bool:
    return any(_clip((b[0] - grow, b[1] - grow, b[2] + grow, b[3] + grow), a, c)
               for b in (_square(g, cell) for cell in g[3]))


def expected(grids: dict[str, Grid], path: list[tuple[float, float]]) -> list[tuple[str, str]]:
    """The geofence rules restated for debounce 0, a fixed hysteresis and no gaps."""
    state: dict[str, bool | None] = {}
    out: list[tuple[str, str]] = []
    prev: tuple[float, float] | None = None
    for k, (x, y) in enumerate(path):
        sd = {f: signed_distance(g, x, y) for f, g in grids.items()}
        crossed = []
        if prev is not None and math.hypot(x - prev[0], y - prev[1]) > 2 * H:
            for f, g in grids.items():
                was_in = signed_distance(g, *prev) <= 0
                if not was_in and sd[f] > 0 and state.get(f) is not True \
                        and segment_hits(g, prev, (x, y), 0.0):
                    crossed.append(f)
        for f in sorted(grids):
            d = sd[f]
            st = state.get(f, None if k == 0 else False)
            if k == 0:
                if d <= 0:
                    out.append((f, "inside"))
                    state[f] = True
                else:
                    state[f] = None if d <= H else False
            elif st is None:
                if d <= 0:
                    out.append((f, "inside"))
                    state[f] = True
                elif d > H:
                    state[f] = False
            elif st:
                if d > H:
                    out.append((f, "exit"))
                    state[f] = False
            elif d <= 0:
                out.append((f, "enter"))
                state[f] = True
        out += [(f, "crossed") for f in sorted(crossed)]
        prev = (x, y)
    return out


def _ambiguous(grids: dict[str, Grid], p: tuple[float, float],
               prev: tuple[float, float] | None) -> bool:
    for g in grids.values():
        d = signed_distance(g, *p)
        if abs(d) < MARGIN or abs(d - H) < MARGIN:
            return True
        if prev is not None and abs(math.hypot(p[0] - prev[0], p[1] - prev[1]) - 2 * H) < 0.5:
            return True
        if prev is not None and segment_hits(g, prev, p, MARGIN) != segment_hits(
                g, prev, p, -MARGIN):
            return True
    return False


# ---------------------------------------------------------------- zones from cells


def _ring(b: tuple[float, float, float, float]) -> list[list[float]]:
    x0, y0, x1, y1 = b
    return [ll(x0, y0), ll(x1, y0), ll(x1, y1), ll(x0, y1), ll(x0, y0)]


def _feature(fid: str, g: Grid, as_union: bool) -> dict[str, Any]:
    squares = [_square(g, c) for c in sorted(g[3])]
    if not as_union:
        return {"type": "Feature", "properties": {"id": fid}, "geometry": {
            "type": "MultiPolygon", "coordinates": [[_ring(b)] for b in squares]}}
    import shapely  # builds the input only; the expectation never uses it

    union = shapely.union_all([shapely.box(*b) for b in squares])
    polys = list(getattr(union, "geoms", [union]))
    coords = [[[ll(x, y) for x, y in r.coords]
               for r in (p.exterior, *p.interiors)] for p in polys]
    return {"type": "Feature", "properties": {"id": fid},
            "geometry": {"type": "MultiPolygon", "coordinates": coords}}


cells = st.frozensets(st.tuples(st.integers(0, G - 1), st.integers(0, G - 1)),
                      min_size=1, max_size=G * G)
moves = st.lists(st.tuples(st.floats(0, math.tau), st.sampled_from([0.0, 1.5, 3.0, 14.0, 25.0,
                                                                    40.0, 70.0])),
                 min_size=1, max_size=60)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells, cells, st.booleans(), st.booleans(), moves,
       st.tuples(st.floats(-150, 150), st.floats(-150, 150)))
def test_geofence_events_match_a_brute_force_evaluation(
        a: frozenset[Cell], b: frozenset[Cell], a_union: bool, b_union: bool,
        steps: list[tuple[float, float]], start: tuple[float, float]) -> None:
    grids: dict[str, Grid] = {"a": (-120.0, -120.0, 40.0, a), "b": (-75.0, -95.0, 30.0, b)}
    zs = parse_zones({"type": "FeatureCollection", "features": [
        _feature("a", grids["a"], a_union), _feature("b", grids["b"], b_union)]})
    path: list[tuple[float, float]] = []
    p = start
    for ang, d in [(0.0, 0.0), *steps]:
        q = (max(-170.0, min(170.0, p[0] + d * math.cos(ang))),
             max(-170.0, min(170.0, p[1] + d * math.sin(ang))))
        prev = path[-1] if path else None
        while _ambiguous(grids, q, prev):  # step off decision lines
            q = (q[0] + 0.37, q[1] + 0.21)
        path.append(q)
        p = q
    want = expected(grids, path)
    fixes = [fix(k, x, y, hdop=1.0) for k, (x, y) in enumerate(path)]
    rc = config(geofence={"hysteresis_m": H, "debounce_s": 0.0, "gap_s": 30.0})
    for bulk in (False, True):
        rules = Rules(rc, zs)
        if bulk:
            rules.use_drive_geometry(DriveGeometry(
                zs, fixes, lambda hdop: hysteresis_for(rc.geofence, hdop)))
        events: list[Event] = []
        for f in fixes:
            events += rules.on_fix(f)
        got = [(str(e.body["fence"]), str(e.body["transition"]))
               for e in events if e.kind == "geofence"]
        assert got == want, ("bulk" if bulk else "fix by fix", path)


def test_the_brute_force_itself() -> None:
    g: Grid = (0.0, 0.0, 10.0, frozenset({(0, 0), (1, 0), (1, 1)}))  # an L
    assert signed_distance(g, 5, 5) == -5.0
    assert signed_distance(g, 10, 5) == -5.0  # on the shared edge: inside the union
    assert signed_distance(g, 5, 15) == 5.0  # the notch of the L
    assert signed_distance(g, 30, 5) == 10.0
    assert segment_hits(g, (-5, 15), (5, 25), 0.0) is False
    assert segment_hits(g, (-5, 5), (-1, 5), 0.0) is False
    assert segment_hits(g, (-5, 5), (25, 5), 0.0) is True
    assert expected({"g": g}, [(5, 5), (50, 5), (5, 5), (5, 40), (15, 40), (15, -20)]) == [
        ("g", "inside"), ("g", "exit"), ("g", "enter"), ("g", "exit"), ("g", "crossed")]


