"""Zone geometry on shapely: metres, unions, validity named by GEOS, lazy import.

The containment and distance answers are checked against independent arithmetic
(squares and circles whose answers are known in closed form), not against shapely.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edge.core.zones import Zones, parse_zones
from edge.errors import ZonesError
from tests.support.rules_kit import ORIGIN, ll

ROOT = Path(__file__).resolve().parents[2]

Ring = list[tuple[float, float]]


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_shapely_loads_only_when_a_zones_file_is_loaded() -> None:
    out = _run("""
        import sys
        import edge.app, edge.core.zones, edge.core.rules, edge.core.engine
        from edge.config import load_config
        from edge.core.engine import Engine
        cfg = load_config('sim/drives/city/config.toml')
        Engine(cfg)  # no zones: the rules run without shapely
        before = sorted(m for m in ('shapely', 'numpy') if m in sys.modules)
        from edge.sources.zonesfile import load_zones
        zones = load_zones('sim/drives/city/zones.geojson')
        after = sorted(m for m in ('shapely', 'numpy') if m in sys.modules)
        print(before, after)
    """)
    assert out == "[] ['numpy', 'shapely']"


def test_daemon_path_with_zones_finds_fences() -> None:
    out = _run("""
        from edge.config import load_config
        from edge.core.engine import Engine
        from edge.sources.zonesfile import load_zones
        from edge.model import Fix

        zones = load_zones('sim/drives/city/zones.geojson')
        engine = Engine(load_config('sim/drives/city/config.toml'), zones=zones)
        yard = zones.by_id['depot-yard']
        events = []
        for i in range(120):  # west to east through the depot yard, 10 m/s
            lat, lon = yard.frame.latlon(-600.0 + 10.0 * i, 0.0)
            fix = Fix(time=1.75e9 + i, lat=lat, lon=lon, speed_mps=10.0, hdop=0.9,
                      mode=3, valid=True)
            events += engine.rules.on_fix(fix)
        print([e.body.get('transition') for e in events if e.kind == 'geofence'])
    """)
    assert out == "['enter', 'dwell', 'exit']"


# ---------------------------------------------------------------- helpers


def _sq(x0: float, y0: float, x1: float, y1: float) -> Ring:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def _feature(zid: str, gtype: str, coords: Any, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": {"id": zid, **props},
            "geometry": {"type": gtype, "coordinates": coords}}


def _lonlat(rings: list[Ring]) -> list[list[list[float]]]:
    return [[ll(x, y) for x, y in r] for r in rings]


def _zones(*features: dict[str, Any]) -> Zones:
    return parse_zones({"type": "FeatureCollection", "features": list(features)},
                       source="z.geojson")


def _sd(z: Zones, zid: str, x: float, y: float) -> float:
    return z.by_id[zid].signed_distance_m(*ORIGIN.latlon(x, y))


# ---------------------------------------------------------------- shapes in metres


def test_touching_parts_are_one_shape_without_the_seam() -> None:
    z = _zones(_feature("two", "MultiPolygon", [_lonlat([_sq(0, 0, 100, 100)]),
                                                _lonlat([_sq(100, 0, 200, 100)])]),
               _feature("overlap", "MultiPolygon", [_lonlat([_sq(0, 0, 100, 100)]),
                                                    _lonlat([_sq(50, 0, 150, 100)])]))
    assert _sd(z, "two", 100.0, 50.0) == pytest.approx(-50.0, abs=0.01)  # on the seam
    assert _sd(z, "two", 95.0, 50.0) == pytest.approx(-50.0, abs=0.01)
    assert _sd(z, "two", 250.0, 50.0) == pytest.approx(50.0, abs=0.01)
    two = z.by_id["two"]
    assert not two.segment_hits(*ORIGIN.latlon(-10, 150), *ORIGIN.latlon(210, 150))
    assert two.segment_hits(*ORIGIN.latlon(100, 150), *ORIGIN.latlon(100, -50))
    assert _sd(z, "overlap", 75.0, 50.0) == pytest.approx(-50.0, abs=0.01)  # union, not xor
    assert _sd(z, "overlap", 75.0, -3.0) == pytest.approx(3.0, abs=0.01)


def test_polygon_with_holes_and_a_ring_touching_the_shell() -> None:
    # a hole touching the shell at one point is valid; points in the hole are outside
    shell = _sq(0, 0, 100, 100)
    notch = [(0, 50), (10, 40), (10, 60), (0, 50)]
    hole = _sq(40, 40, 60, 60)
    z = _zones(_feature("p", "Polygon", _lonlat([shell, notch, hole])))
    assert _sd(z, "p", 50, 50) == pytest.approx(10.0, abs=0.01)  # centre of the hole
    assert _sd(z, "p", 30, 50) == pytest.approx(-10.0, abs=0.01)
    assert _sd(z, "p", 5, 50) > 0  # in the notch
    assert _sd(z, "p", 80, 80) == pytest.approx(-20.0, abs=0.01)


def test_circle_and_corridor_are_exact_at_the_boundary() -> None:
    z = _zones(_feature("c", "Point", ll(0, 0), radius_m=50.0),
               _feature("road", "LineString", [ll(-500, 0), ll(0, 0), ll(0, 500)], width_m=20))
    # not a buffered 32-gon: the round edge is where the radius says, all the way round
    for k in range(64):
        a = k / 64 * math.tau
        assert _sd(z, "c", 49.9 * math.cos(a), 49.9 * math.sin(a)) < 0
        assert _sd(z, "c", 50.1 * math.cos(a), 50.1 * math.sin(a)) > 0
    # the outer corner of the bend (south-east) is round: 10 m from the vertex
    d = 10.0 / math.sqrt(2)
    assert _sd(z, "road", d - 0.05, -d + 0.05) < 0 < _sd(z, "road", d + 0.05, -d - 0.05)
    assert _sd(z, "road", 7.0, -7.0) == pytest.approx(math.hypot(7, 7) - 10, abs=0.01)
    road = z.by_id["road"]
    assert road.segment_hits(*ORIGIN.latlon(-100, 9.9), *ORIGIN.latlon(-50, 9.9))
    assert not road.segment_hits(*ORIGIN.latlon(-100, 10.1), *ORIGIN.latlon(-50, 10.1))


def test_random_points_against_closed_form_answers() -> None:
    rng = random.Random(4)
    z = _zones(_feature("sq", "Polygon", _lonlat([_sq(-100, -100, 100, 100)])),
               _feature("c", "Point", ll(300, 0), radius_m=80.0))
    for _ in range(500):
        x, y = rng.uniform(-300, 500), rng.uniform(-300, 300)
        dx, dy = abs(x) - 100, abs(y) - 100
        want = (math.hypot(max(dx, 0), max(dy, 0)) if max(dx, dy) > 0 else max(dx, dy))
        assert _sd(z, "sq", x, y) == pytest.approx(want, abs=0.02)
        assert _sd(z, "c", x, y) == pytest.approx(math.hypot(x - 300, y) - 80, abs=0.02)


# ---------------------------------------------------------------- validity


@pytest.mark.parametrize(("rings", "reason"), [
    ([[(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)]], "Self-intersection"),
    ([_sq(0, 0, 10, 10), _sq(20, 20, 30, 30)], "Hole lies outside shell"),
    ([_sq(0, 0, 10, 10), _sq(5, 5, 15, 15)], "Self-intersection"),
    ([_sq(0, 0, 100, 100), _sq(10, 10, 90, 90), _sq(20, 20, 30, 30)], "Holes are nested"),
    ([[(0, 0), (10, 0), (20, 0), (0, 0)]], "Self-intersection"),
    ([[(0, 0), (10, 0), (10, 0), (0, 0)]], "Too few points"),
    ([[(0, 0), (10, 0), (10, 10), (0, 0), (5, -5), (0, 0)]], "Ring Self-intersection"),
])
def test_invalid_polygons_are_named_by_geos(rings: list[Ring], reason: str) -> None:
    with pytest.raises(ZonesError) as err:
        _zones(_feature("bad", "Polygon", _lonlat(rings)))
    msg = str(err.value)
    assert msg.startswith("z.geojson: feature 0 (id 'bad'): invalid polygon: ")
    assert reason in msg
    assert "11.57" in msg  # the place is given in lon/lat, as the file has it


def test_valid_polygons_pass() -> None:
    _zones(_feature("a", "Polygon", _lonlat([_sq(0, 0, 100, 100), _sq(10, 10, 20, 20)])),
           _feature("b", "Polygon", _lonlat([[(0, 0), (5, 0), (10, 0), (10, 10), (0, 10),
                                              (0, 0)]])),
           _feature("c", "Polygon", _lonlat([[(0, 0), (10, 0), (10, 0), (10, 10), (0, 0)]])))


def test_a_part_of_a_multipolygon_is_judged_alone() -> None:
    bowtie = [(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)]
    with pytest.raises(ZonesError, match="invalid polygon: Self-intersection"):
        _zones(_feature("m", "MultiPolygon", [_lonlat([_sq(0, 0, 5, 5)]),
                                              _lonlat([[(x + 50, y) for x, y in bowtie]])]))


def test_polygon_without_area_is_refused() -> None:
    with pytest.raises(ZonesError, match=r"invalid polygon|no area"):
        _zones(_feature("flat", "Polygon", _lonlat([[(0, 0), (10, 0), (5, 0), (0, 0)]])))
