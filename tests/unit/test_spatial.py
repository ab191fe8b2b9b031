"""Plain-Python geometry and index for the zones: agrees with shapely (imported in this
file only), and the daemon path never imports shapely or numpy."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.spatial import BoxTree, Circle, Corridor, Polygon, SegmentGrid, polygon_problem
from edge.core.zones import parse_zones
from edge.errors import ZonesError
from tests.unit.test_rules_kit import ll

ROOT = Path(__file__).resolve().parents[2]
PROFILE = settings(max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

Ring = list[tuple[float, float]]


def test_daemon_path_with_zones_never_imports_shapely_or_numpy() -> None:
    code = textwrap.dedent("""
        import sys
        import edge.app
        from edge.config import load_config
        from edge.core.engine import Engine
        from edge.core.rules import Rules
        from edge.core.zones import load_zones
        from edge.model import Fix

        zones = load_zones('sim/drives/city/zones.geojson')
        engine = Engine(load_config('sim/drives/city/config.toml'), zones=zones)
        assert isinstance(engine.rules, Rules)
        yard = zones.by_id['depot-yard']
        events = []
        for i in range(120):  # west to east through the depot yard, 10 m/s
            lat, lon = yard.frame.latlon(-600.0 + 10.0 * i, 0.0)
            fix = Fix(time=1.75e9 + i, lat=lat, lon=lon, speed_mps=10.0, hdop=0.9,
                      mode=3, valid=True)
            events += engine.rules.on_fix(fix)
        kinds = [(e.kind, e.body.get('transition')) for e in events]
        assert ('geofence', 'enter') in kinds and ('geofence', 'exit') in kinds, kinds
        bad = sorted(m for m in ('shapely', 'numpy') if m in sys.modules)
        print('OK' if not bad else 'IMPORTED ' + ' '.join(bad))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK"


# ---------------------------------------------------------------- random polygons


def _star(rng: random.Random, n: int, r0: float, r1: float, cx: float = 0.0,
          cy: float = 0.0) -> Ring:
    # every angular gap < 180 degrees: the centre is inside, the ring is simple
    angles = [(k + rng.uniform(0.0, 0.4)) / n * math.tau for k in range(n)]
    ring = [(cx + (r := rng.uniform(r0, r1)) * math.cos(a), cy + r * math.sin(a))
            for a in angles]
    ring.append(ring[0])
    return ring


@st.composite
def polygons(draw: Any) -> list[Ring]:
    """A star-shaped shell (3-300 vertices, so both the scan and the grid paths run)
    with 0-3 star-shaped holes that neither touch the shell nor each other."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([3, 4, 7, 20, 49, 120, 300]))
    shell = _star(rng, n, 200.0, 1000.0)
    holes = []
    for k in range(draw(st.integers(0, 3))):
        a = k * math.tau / 3 + 0.5
        holes.append(_star(rng, rng.choice([3, 5, 30, 80]), 10.0, 40.0,
                           100.0 * math.cos(a), 100.0 * math.sin(a)))
    return [shell, *holes]


def _points(rng: random.Random, n: int) -> list[tuple[float, float]]:
    return [(rng.uniform(-1200, 1200), rng.uniform(-1200, 1200)) for _ in range(n)]


@PROFILE
@given(polygons(), st.integers(0, 2**32 - 1))
def test_polygon_inside_and_boundary_distance_agree_with_shapely(
    rings: list[Ring], seed: int
) -> None:
    import shapely

    ref = shapely.Polygon(rings[0], rings[1:])
    if not ref.is_valid:  # a hole crosses the shell or lies outside: both checks say so
        assert polygon_problem(rings) is not None, shapely.is_valid_reason(ref)
        rings = rings[:1]
        ref = shapely.Polygon(rings[0])
    assert polygon_problem(rings) is None
    mine = Polygon([rings])
    rng = random.Random(seed)
    pts = _points(rng, 30) + [(x + rng.gauss(0, 1), y + rng.gauss(0, 1))
                              for r in rings for x, y in r[:5]]
    for x, y in pts:
        want_in = bool(shapely.contains_xy(ref, x, y))
        want_d = float(shapely.distance(ref.boundary, shapely.Point(x, y)))
        sd = mine.signed_distance(x, y)
        assert abs(abs(sd) - want_d) <= 1e-7, (x, y)
        if want_d > 1e-7:
            assert (sd < 0) is want_in, (x, y)


@PROFILE
@given(polygons(), st.integers(0, 2**32 - 1))
def test_segment_hits_polygon_as_shapely_says(rings: list[Ring], seed: int) -> None:
    import shapely

    ref = shapely.Polygon(rings[0], rings[1:])
    if not ref.is_valid:
        rings = rings[:1]
        ref = shapely.Polygon(rings[0])
    mine = Polygon([rings])
    rng = random.Random(seed)
    for _ in range(20):
        (ax, ay), (bx, by) = _points(rng, 2)
        if rng.random() < 0.5:  # short segments: many start and end outside near edges
            bx, by = ax + rng.gauss(0, 60), ay + rng.gauss(0, 60)
        line = shapely.LineString([(ax, ay), (bx, by)])
        if float(shapely.distance(ref.boundary, line)) < 1e-6 and not ref.intersects(line):
            continue  # grazing within rounding: either answer is fine
        assert mine.intersects_segment(ax, ay, bx, by) is bool(ref.intersects(line))


@PROFILE
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 10, 60, 200]))
def test_corridor_is_a_distance_from_its_centre_line(seed: int, n: int) -> None:
    import shapely

    rng = random.Random(seed)
    line = [(rng.uniform(-1000, 1000), rng.uniform(-1000, 1000)) for _ in range(n)]
    half = rng.uniform(1.0, 50.0)
    ref = shapely.LineString(line)
    mine = Corridor(line, half)
    for x, y in _points(rng, 40):
        want = float(shapely.distance(ref, shapely.Point(x, y))) - half
        assert mine.signed_distance(x, y) == pytest.approx(want, abs=1e-7)
    for _ in range(20):
        (ax, ay), (bx, by) = _points(rng, 2)
        d = float(shapely.distance(ref, shapely.LineString([(ax, ay), (bx, by)])))
        if abs(d - half) > 1e-6:
            assert mine.intersects_segment(ax, ay, bx, by) is (d <= half)


def test_circle() -> None:
    c = Circle(50.0)
    assert c.bounds == (-50.0, -50.0, 50.0, 50.0)
    assert c.signed_distance(30.0, 40.0) == pytest.approx(0.0)
    assert c.signed_distance(0.0, 10.0) == pytest.approx(-40.0)
    assert c.intersects_segment(-100.0, 49.0, 100.0, 49.0)
    assert not c.intersects_segment(-100.0, 51.0, 100.0, 51.0)


def test_segment_grid_nearest_edge_is_exact() -> None:
    rng = random.Random(5)
    edges = []
    for _ in range(2000):
        x, y = rng.uniform(-5000, 5000), rng.uniform(-5000, 5000)
        edges.append((x, y, x + rng.gauss(0, 50), y + rng.gauss(0, 50)))
    grid = SegmentGrid(edges)
    from edge.core.spatial import point_segment_d2

    for x, y in _points(rng, 200) + [(20000.0, -30000.0), (0.0, 9000.0)]:
        want = math.sqrt(min(point_segment_d2(x, y, *e) for e in edges))
        assert grid.distance(x, y) == pytest.approx(want, abs=1e-9)


def test_box_tree_finds_exactly_the_boxes_that_meet() -> None:
    rng = random.Random(11)
    boxes = []
    for _ in range(3000):
        x, y = rng.uniform(0, 1000), rng.uniform(0, 1000)
        w, h = rng.uniform(0, 30), rng.uniform(0, 30)
        boxes.append((x, y, x + w, y + h))
    tree = BoxTree(boxes)
    for _ in range(300):
        x, y = rng.uniform(-50, 1050), rng.uniform(-50, 1050)
        q = (x, y, x + rng.uniform(0, 60), y + rng.uniform(0, 60))
        want = {i for i, b in enumerate(boxes)
                if b[0] <= q[2] and b[2] >= q[0] and b[1] <= q[3] and b[3] >= q[1]}
        assert set(tree.query(*q)) == want
    assert BoxTree([]).query(0, 0, 1, 1) == []
    assert BoxTree([(0.0, 0.0, 1.0, 1.0)]).query(1.0, 1.0, 1.0, 1.0) == [0]


# ---------------------------------------------------------------- multipolygons, validity


def _sq(x0: float, y0: float, x1: float, y1: float) -> Ring:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def test_touching_parts_are_one_shape_without_the_seam() -> None:
    two = Polygon([[_sq(0, 0, 100, 100)], [_sq(100, 0, 200, 100)]])
    assert two.signed_distance(100.0, 50.0) == pytest.approx(-50.0)  # on the seam
    assert two.signed_distance(95.0, 50.0) == pytest.approx(-50.0)
    assert two.signed_distance(250.0, 50.0) == pytest.approx(50.0)
    assert not two.intersects_segment(-10, 150, 210, 150)
    overlap = Polygon([[_sq(0, 0, 100, 100)], [_sq(50, 0, 150, 100)]])
    assert overlap.signed_distance(75.0, 50.0) == pytest.approx(-50.0)  # union, not xor
    assert overlap.signed_distance(75.0, -3.0) == pytest.approx(3.0)


def test_multipolygon_against_shapely_union() -> None:
    import shapely

    rng = random.Random(2)
    parts = [[_star(rng, 12, 100, 300, cx, 0.0)] for cx in (0.0, 350.0, 700.0)]
    ref = shapely.union_all([shapely.Polygon(p[0]) for p in parts])
    mine = Polygon(parts)
    for x, y in [(rng.uniform(-400, 1100), rng.uniform(-400, 400)) for _ in range(2000)]:
        want_d = float(shapely.distance(ref.boundary, shapely.Point(x, y)))
        want = -want_d if shapely.contains_xy(ref, x, y) else want_d
        assert mine.signed_distance(x, y) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(("rings", "reason"), [
    ([[(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)]], "Self-intersection"),
    ([_sq(0, 0, 10, 10), _sq(20, 20, 30, 30)], "Hole lies outside shell"),
    ([_sq(0, 0, 10, 10), _sq(5, 5, 15, 15)], "Self-intersection"),
    ([_sq(0, 0, 100, 100), _sq(10, 10, 90, 90), _sq(20, 20, 30, 30)], "Holes are nested"),
    ([[(0, 0), (10, 0), (20, 0), (0, 0)]], "Self-intersection"),
    ([[(0, 0), (10, 0), (10, 0), (0, 0)]], "Too few points"),
    ([[(0, 0), (10, 0), (10, 10), (0, 0), (5, -5), (0, 0)]], "Self-intersection"),
    ([[(0, 0), (1, 1), (0, 0), (0, 0)]], "Too few points"),
])
def test_invalid_polygons_are_named(rings: list[Ring], reason: str) -> None:
    problem = polygon_problem(rings)
    assert problem is not None and reason in problem


def test_valid_polygons_pass() -> None:
    assert polygon_problem([_sq(0, 0, 100, 100), _sq(10, 10, 20, 20)]) is None
    assert polygon_problem([_sq(0, 0, 100, 100), [(0, 50), (10, 40), (10, 60), (0, 50)]]) is None
    assert polygon_problem([[(0, 0), (5, 0), (10, 0), (10, 10), (0, 10), (0, 0)]]) is None
    assert polygon_problem([[(0, 0), (10, 0), (10, 0), (10, 10), (0, 0)]]) is None


def test_zones_file_rejects_a_hole_outside_its_shell() -> None:
    outer = [ll(0, 0), ll(100, 0), ll(100, 100), ll(0, 100), ll(0, 0)]
    hole = [ll(200, 200), ll(210, 200), ll(210, 210), ll(200, 200)]
    feat = {"type": "Feature", "properties": {"id": "bad"},
            "geometry": {"type": "Polygon", "coordinates": [outer, hole]}}
    with pytest.raises(ZonesError, match=r"feature 0 .*invalid polygon: Hole lies outside"):
        parse_zones({"type": "FeatureCollection", "features": [feat]})


def test_big_zones_use_the_grid_and_agree_with_small_ones() -> None:
    # the same 300-vertex ring, as a zone (grid) and scanned edge by edge
    ring = [ll(300 * math.cos(a / 300 * math.tau), 300 * math.sin(a / 300 * math.tau))
            for a in range(300)]
    ring.append(ring[0])
    line = [ll(x, 20 * math.sin(x / 50)) for x in range(-500, 500, 10)]
    z = parse_zones({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "round"},
         "geometry": {"type": "Polygon", "coordinates": [ring]}},
        {"type": "Feature", "properties": {"id": "road", "width_m": 10},
         "geometry": {"type": "LineString", "coordinates": line}}]})
    rnd, road = z.zones
    assert rnd.coords == () and road.coords == ()
    frame = rnd.frame
    rings_m = (tuple(frame.xy(lat, lon) for lon, lat in ring),)
    from edge.core.zones import _rings_signed_distance

    rng = random.Random(1)
    for _ in range(500):
        x, y = rng.uniform(-400, 400), rng.uniform(-400, 400)
        assert rnd.signed_distance_xy(x, y) == pytest.approx(
            _rings_signed_distance(rings_m, x, y), abs=1e-9)
