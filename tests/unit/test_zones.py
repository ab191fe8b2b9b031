"""The zones file: parsing, errors that name the feature, metres, the antimeridian."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from edge.core.geo import LocalFrame, haversine_m
from edge.core.zones import ZoneLocator, parse_maxspeed, parse_zones
from edge.errors import ZonesError
from edge.sources.zonesfile import load_zones
from tests.support.rules_kit import ORIGIN, circle, ll, square, zones

DATA = Path(__file__).parent.parent / "data" / "zones"


def test_city_file_kinds_and_properties() -> None:
    z = load_zones(DATA / "city.geojson")
    assert z.counts() == {"fence": 2, "speed": 2, "poi": 1}
    assert [(x.id, x.kind, x.shape) for x in z.zones] == [
        ("depot", "fence", "polygon"), ("school", "fence", "circle"),
        ("ring", "speed", "corridor"), ("base", "speed", "polygon"), ("42", "poi", "circle")]
    assert z.by_id["school"].maxspeed_kmh == 30.0
    assert z.by_id["base"].maxspeed_kmh == 24.1  # "15 mph"
    assert z.by_id["depot"].dwell_s == 60
    assert z.by_id["42"].offer == {"text": "2-for-1 espresso", "code": "EDGE42"}
    assert z.by_id["42"].name == "Coffee corner"
    assert [x.id for x in z.at(48.1365, 11.5720)] == ["depot"]
    assert [x.id for x in z.at(48.1301, 11.5700)] == ["ring"]  # 11 m off the centre line
    assert [x.id for x in z.at(48.1303, 11.5700)] == []  # 33 m: outside a 40 m corridor


@pytest.mark.parametrize(
    ("value", "kmh"),
    [(50, 50.0), ("50", 50.0), ("30 mph", 48.3), ("50 km/h", 50.0), (" 80 ", 80.0),
     ("10 knots", 18.5), ("none", None), (32.5, 32.5)],
)
def test_maxspeed_as_osm_tags_it(value: Any, kmh: float | None) -> None:
    assert parse_maxspeed(value) == kmh


@pytest.mark.parametrize("value", ["fast", "RU:urban", 0, -5, True, "50 mp/h", [50]])
def test_maxspeed_rejects_nonsense(value: Any) -> None:
    with pytest.raises(ValueError, match="maxspeed"):
        parse_maxspeed(value)


def test_circle_radius_is_metres() -> None:
    z = zones(circle("c", 0, 0, 150))
    c = z.zones[0]
    lat0, lon0 = ORIGIN.latlon(0, 0)
    for bearing_xy in [(1, 0), (0, 1), (-0.6, 0.8)]:
        for r, inside in [(149.0, True), (151.0, False)]:
            lat, lon = ORIGIN.latlon(bearing_xy[0] * r, bearing_xy[1] * r)
            assert haversine_m(lat0, lon0, lat, lon) == pytest.approx(r, rel=1e-3)
            assert (c.signed_distance_m(lat, lon) <= 0) is inside


def test_signed_distance_of_polygon_and_corridor() -> None:
    z = zones(square("sq", 0, 0, 100),
              {"type": "Feature", "properties": {"id": "road", "width_m": 20},
               "geometry": {"type": "LineString", "coordinates": [ll(-500, 0), ll(500, 0)]}})
    sq, road = z.zones
    lat, lon = ORIGIN.latlon(0, 0)
    assert sq.signed_distance_m(lat, lon) == pytest.approx(-100, abs=0.2)
    lat, lon = ORIGIN.latlon(130, 0)
    assert sq.signed_distance_m(lat, lon) == pytest.approx(30, abs=0.2)
    lat, lon = ORIGIN.latlon(0, 25)
    assert road.signed_distance_m(lat, lon) == pytest.approx(15, abs=0.1)
    lat, lon = ORIGIN.latlon(0, -4)
    assert road.signed_distance_m(lat, lon) == pytest.approx(-6, abs=0.1)


def test_big_polygon_distances_in_metres() -> None:
    ring = [ll(300 * math.cos(a / 50 * math.tau), 300 * math.sin(a / 50 * math.tau))
            for a in range(50)]
    ring.append(ring[0])
    feat = {"type": "Feature", "properties": {"id": "round"},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}
    (z,) = zones(feat).zones
    lat, lon = ORIGIN.latlon(0, 0)
    assert z.signed_distance_m(lat, lon) == pytest.approx(-300, abs=2)
    lat, lon = ORIGIN.latlon(400, 0)
    assert z.signed_distance_m(lat, lon) == pytest.approx(100, abs=1)


def test_polygon_with_a_hole() -> None:
    outer = [ll(-100, -100), ll(100, -100), ll(100, 100), ll(-100, 100), ll(-100, -100)]
    hole = [ll(-20, -20), ll(20, -20), ll(20, 20), ll(-20, 20), ll(-20, -20)]
    feat = {"type": "Feature", "properties": {"id": "donut"},
            "geometry": {"type": "Polygon", "coordinates": [outer, hole]}}
    (d,) = zones(feat).zones
    assert d.signed_distance_m(*ORIGIN.latlon(0, 0)) == pytest.approx(20, abs=0.1)
    assert d.signed_distance_m(*ORIGIN.latlon(50, 0)) == pytest.approx(-30, abs=0.1)


def _fc(*features: Any) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


GOOD = circle("good", 0, 0, 10)
BAD: list[tuple[str, Any, str]] = [
    ("point without radius", {"type": "Feature", "properties": {"id": "lamp"},
                              "geometry": {"type": "Point", "coordinates": [11.5, 48.1]}},
     "radius_m"),
    ("line without width", {"type": "Feature", "properties": {"id": "road"},
                            "geometry": {"type": "LineString",
                                         "coordinates": [[11.5, 48.1], [11.6, 48.1]]}},
     "width_m"),
    ("no id", {"type": "Feature", "properties": {"radius_m": 5},
               "geometry": {"type": "Point", "coordinates": [11.5, 48.1]}}, "id"),
    ("bad maxspeed", circle("school", 0, 0, 10, maxspeed="fast"), "maxspeed"),
    ("poi without offer", circle("shop", 0, 0, 10, kind="poi"), "offer"),
    ("poi polygon", square("mall", 0, 0, 10, offer="x"), "POI must be a Point"),
    ("speed zone without maxspeed", circle("zone", 0, 0, 10, kind="speed"), "maxspeed"),
    ("self-intersecting", {"type": "Feature", "properties": {"id": "bowtie"}, "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}},
     "invalid polygon"),
    ("open ring", {"type": "Feature", "properties": {"id": "open"}, "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1]]]}}, "closed"),
    ("latitude out of range", {"type": "Feature", "properties": {"id": "mars", "radius_m": 5},
                               "geometry": {"type": "Point", "coordinates": [10, 95]}},
     "out of range"),
    ("unknown geometry", {"type": "Feature", "properties": {"id": "gc"}, "geometry": {
        "type": "GeometryCollection", "geometries": []}}, "not supported"),
    ("negative radius", circle("neg", 0, 0, -1), "radius_m"),
    ("unknown kind", circle("k", 0, 0, 5, kind="shop"), "kind"),
    ("duplicate id", circle("good", 10, 10, 5), "duplicate id"),
]


@pytest.mark.parametrize(("name", "feature", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_feature_is_named(name: str, feature: Any, reason: str) -> None:
    with pytest.raises(ZonesError) as err:
        parse_zones(_fc(GOOD, feature), source="zones.geojson")
    msg = str(err.value)
    assert msg.startswith("zones.geojson: feature 1")
    assert reason in msg
    fid = feature["properties"].get("id")
    if fid is not None:
        assert repr(fid) in msg


def test_bad_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ZonesError, match="FeatureCollection"):
        parse_zones({"type": "Feature"})
    p = tmp_path / "z.geojson"
    p.write_text("{not json")
    with pytest.raises(ZonesError, match="not valid JSON"):
        load_zones(p)
    with pytest.raises(ZonesError, match="cannot read"):
        load_zones(tmp_path / "missing.geojson")
    with pytest.raises(ZonesError, match=r"feature 1 \(id 'lamp-post'\).*radius_m"):
        load_zones(DATA / "bad_no_radius.geojson")


def test_antimeridian_file() -> None:
    z = load_zones(DATA / "antimeridian.geojson")
    cases = [((-16.79, 179.995), ["taveuni"]), ((-16.79, -179.995), ["taveuni"]),
             ((-16.69, 179.995), ["split"]), ((-16.69, -179.995), ["split"]),
             ((-16.60, -179.999), ["dateline-circle"]), ((-16.60, 179.999), ["dateline-circle"]),
             ((-16.79, 179.98), []), ((-16.79, -179.98), [])]
    for (lat, lon), ids in cases:
        assert [x.id for x in z.at(lat, lon)] == ids, (lat, lon)
    # the split halves are one zone, 0.02 deg wide (about 2.1 km at 16.7 S)
    split = z.by_id["split"]
    x0, _, x1, _ = split.geom.bounds
    assert x1 - x0 == pytest.approx(0.02 * 111_195 * 0.9578, rel=1e-3)


def test_locator_agrees_with_exact_answers() -> None:
    import random

    rng = random.Random(7)
    feats = []
    for i in range(300):
        cx, cy = rng.uniform(-3000, 3000), rng.uniform(-3000, 3000)
        if i % 2:
            feats.append(circle(f"c{i}", cx, cy, rng.uniform(20, 300)))
        else:
            feats.append(square(f"s{i}", cx, cy, rng.uniform(20, 300)))
    z = zones(*feats)
    loc = ZoneLocator(z)
    x = y = 0.0
    for _ in range(3000):
        x += rng.gauss(0, 15)
        y += rng.gauss(0, 15)
        if rng.random() < 0.01:
            x, y = rng.uniform(-3000, 3000), rng.uniform(-3000, 3000)
        lat, lon = ORIGIN.latlon(x, y)
        h = rng.choice([5.0, 10.0, 30.0])
        watch = set(range(0, 300, 3))
        inside, near = loc.locate(lat, lon, h, watch)
        exact = {zz.index: zz.signed_distance_m(lat, lon) for zz in z.zones}
        assert sorted(inside) == sorted(i for i, d in exact.items() if d <= 0)
        near_w = {i for i in near if i in watch}
        assert near_w == {i for i, d in exact.items() if d <= h and i in watch}
    assert loc.evaluations < 3000 * 3  # the cache does its job


def test_local_frame_wraps_longitude() -> None:
    f = LocalFrame.at(-16.7, 179.999)
    x, _ = f.xy(-16.7, -179.999)
    assert x == pytest.approx(0.002 * 111_195 * 0.9578, rel=1e-3)


def test_zones_file_round_trip_through_json(tmp_path: Path) -> None:
    p = tmp_path / "z.geojson"
    p.write_text(json.dumps(_fc(GOOD, square("sq", 500, 0, 50))))
    z = load_zones(p)
    assert z.source == str(p) and [x.id for x in z.zones] == ["good", "sq"]


def test_locator_across_the_antimeridian_agrees_with_exact_answers() -> None:
    import random

    rng = random.Random(3)
    frame = LocalFrame.at(-16.7, 180.0)
    feats = []
    for i in range(80):
        cx, cy = rng.uniform(-2000, 2000), rng.uniform(-2000, 2000)
        lat, lon = frame.latlon(cx, cy)
        lon = (lon + 180.0) % 360.0 - 180.0
        feats.append({"type": "Feature", "properties": {"id": f"c{i}",
                                                        "radius_m": rng.uniform(30, 400)},
                      "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    z = parse_zones(_fc(*feats))
    loc = ZoneLocator(z)
    x = -2000.0
    for _ in range(400):  # east across 180 and back
        x += 10.0
        y = 300 * math.sin(x / 700)
        lat, lon = frame.latlon(x, y)
        lon = (lon + 180.0) % 360.0 - 180.0
        inside, _ = loc.locate(lat, lon, 10.0)
        exact = sorted(zz.index for zz in z.zones if zz.signed_distance_m(lat, lon) <= 0)
        assert sorted(inside) == exact
        assert sorted(zz.index for zz in z.at(lat, lon)) == exact


def test_maxspeed_none_is_accepted_on_speed_zones_and_fences() -> None:
    z = zones(circle("autobahn", 0, 0, 100, kind="speed", maxspeed="none"),
              circle("track", 500, 0, 100, maxspeed="none"),
              circle("plain", 1000, 0, 100))
    assert [(x.id, x.maxspeed_kmh, x.no_limit) for x in z.zones] == [
        ("autobahn", None, True), ("track", None, True), ("plain", None, False)]
