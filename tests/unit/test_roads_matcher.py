"""Map matching and the road-limit hook on a small hand-built index: a main road, a
parallel frontage road, a bridge over the main road, a side street at a junction."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest

from edge.config import config_from_dict
from edge.core.engine import Engine
from edge.core.geo import LocalFrame
from edge.model import Fix
from edge.roads.index import E7, RoadIndex, RoadIndexError
from edge.roads.matcher import Matcher
from edge.roads.provider import RoadLimits

LAT0, LON0 = 48.1, 11.5
F = LocalFrame.at(LAT0, LON0)
T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z, a Thursday


def _e7(x: float, y: float) -> tuple[int, int]:
    lat, lon = F.latlon(x, y)
    return round(lat * E7), round(lon * E7)


def build(path: Path) -> Path:
    """Main (way 1, 50 km/h, two-way) along y=0 from x=-1000 to 1000 in 50 m segments;
    frontage (way 2, 30, not connected) along y=9; bridge (way 3, 80, one-way north)
    crossing x=0 without a shared node; side street (way 4, 30) leaving north at x=500
    from main's node; a one-way (way 5, 40) parallel at y=-60 heading west."""
    from edge.roads.index import IndexWriter

    w = IndexWriter(path)

    def line(way: int, pts: list[tuple[float, float]], node0: int) -> None:
        rows = []
        for i, (a, b) in enumerate(itertools.pairwise(pts)):
            la1, lo1 = _e7(*a)
            la2, lo2 = _e7(*b)
            n1 = node0 + i if not (way == 4 and i == 0) else 1000 + 30  # x=500 on main
            rows.append((n1, node0 + i + 1, la1, lo1, la2, lo2))
        w.add_segments(way, rows)

    w.add_way(id=1, highway="primary", name="Main Street", ref="B1", oneway=0,
              fwd=(50.0, False), bwd=(50.0, False))
    w.add_way(id=2, highway="service", name="Frontage", ref=None, oneway=0,
              fwd=(30.0, False), bwd=(30.0, False))
    w.add_way(id=3, highway="trunk", name=None, ref="A9", oneway=1, fwd=(80.0, False),
              bwd=(80.0, False), flags=2)
    w.add_way(id=4, highway="residential", name="Side", ref=None, oneway=0,
              fwd=(30.0, False), bwd=(30.0, False),
              cond_f=[(10.0, "Mo-Fr 07:00-09:00")], cond_b=[(10.0, "Mo-Fr 07:00-09:00")],
              tz="Europe/Berlin")
    w.add_way(id=5, highway="primary", name="One Way", ref=None, oneway=1,
              fwd=(40.0, True), bwd=(40.0, True))
    line(1, [(x, 0.0) for x in range(-1000, 1001, 50)], 1000)
    line(2, [(x, 9.0) for x in range(-600, 601, 100)], 2000)
    line(3, [(0.0, y) for y in range(-500, 501, 100)], 3000)
    line(4, [(500.0, y) for y in range(0, 401, 50)], 4000)
    line(5, [(x, -60.0) for x in range(1000, -1001, -100)], 5000)
    w.close({"country": "DE", "source": "test"})
    return path


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> RoadIndex:
    return RoadIndex(build(tmp_path_factory.mktemp("roads") / "roads.db"))


def drive(pts: list[tuple[float, float]], speed: float, *, noise: float = 3.0, seed: int = 1,
          t0: float = T0, hdop: float = 1.2) -> list[Fix]:
    """1 Hz fixes along the polyline at ``speed`` m/s with Gaussian noise."""
    rng = random.Random(seed)
    out = []
    seg = 0
    pos = 0.0
    t = t0
    while seg < len(pts) - 1:
        (x1, y1), (x2, y2) = pts[seg], pts[seg + 1]
        L = math.hypot(x2 - x1, y2 - y1)
        f = pos / L
        x, y = x1 + f * (x2 - x1), y1 + f * (y2 - y1)
        course = math.degrees(math.atan2(x2 - x1, y2 - y1)) % 360
        lat, lon = F.latlon(x + rng.gauss(0, noise), y + rng.gauss(0, noise))
        out.append(Fix(time=t, lat=lat, lon=lon, speed_mps=speed, valid=True, mode=3,
                       course_deg=(course + rng.gauss(0, 4)) % 360, hdop=hdop, mono=t))
        t += 1.0
        pos += speed
        while seg < len(pts) - 1 and pos >= math.hypot(pts[seg + 1][0] - pts[seg][0],
                                                        pts[seg + 1][1] - pts[seg][1]):
            pos -= math.hypot(pts[seg + 1][0] - pts[seg][0], pts[seg + 1][1] - pts[seg][1])
            seg += 1
    return out


def ways(index: RoadIndex, fixes: list[Fix]) -> list[int | None]:
    m = Matcher(index)
    out = []
    for f in fixes:
        assert f.time is not None and f.lat is not None and f.lon is not None
        r = m.on_fix(f.time, f.lat, f.lon, hdop=f.hdop, speed_mps=f.speed_mps,
                     course_deg=f.course_deg)
        out.append(None if r is None else r.way.id)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_main_road_under_a_bridge_and_beside_a_frontage_road_never_flickers(
        index: RoadIndex, seed: int) -> None:
    got = ways(index, drive([(-900.0, 0.0), (900.0, 0.0)], 14.0, noise=4.0, seed=seed))
    assert set(got) == {1}


@pytest.mark.parametrize("seed", range(3))
def test_the_frontage_road_is_matched_when_driven(index: RoadIndex, seed: int) -> None:
    got = ways(index, drive([(-550.0, 9.0), (550.0, 9.0)], 8.0, noise=2.0, seed=seed))
    assert got.count(2) >= 0.95 * len(got)


def test_the_bridge_is_matched_when_driven_north(index: RoadIndex) -> None:
    got = ways(index, drive([(0.0, -450.0), (0.0, 450.0)], 20.0))
    assert set(got) == {3}


def test_a_turn_at_the_junction_switches_once(index: RoadIndex) -> None:
    got = ways(index, drive([(0.0, 0.0), (500.0, 0.0), (500.0, 380.0)], 10.0, noise=2.0))
    assert got[0] == 1 and got[-1] == 4
    changes = sum(1 for a, b in itertools.pairwise(got) if a != b)
    assert changes == 1
    first4 = got.index(4)
    assert abs(first4 - 50) <= 2  # the car reaches the junction after 50 s


def test_one_way_against_its_direction_is_not_matched(index: RoadIndex) -> None:
    # driving east on the westbound one-way: nothing fits (the main road is 60 m away)
    got = ways(index, drive([(-800.0, -60.0), (800.0, -60.0)], 14.0, noise=1.0))
    assert 5 not in got
    west = ways(index, drive([(800.0, -60.0), (-800.0, -60.0)], 14.0, noise=1.0))
    assert set(west) == {5}


def test_off_road_is_unmatched_after_two_fixes(index: RoadIndex) -> None:
    fixes = drive([(-300.0, 0.0), (0.0, 0.0)], 10.0, noise=1.0)
    fixes += drive([(200.0, 300.0), (260.0, 300.0)], 3.0, noise=1.0, t0=fixes[-1].time + 1)
    got = ways(index, fixes)
    off = len(fixes) - 20
    assert got[off - 1] == 1
    assert got[off] == 1  # one stray fix keeps the match
    assert all(g is None for g in got[off + 1:])


def _engine(index_path: Path, tmp: Path, **roads: object) -> Engine:
    cfg = config_from_dict({
        "thing": "t", "rules": {"speed": {"limit_kmh": 90, "min_duration_s": 3}},
        "roads": {"index": str(index_path), **roads}, "telemetry": {"interval_s": 1},
        "uplink": {"kind": "file", "path": str(tmp / "o.jsonl")},
        "outbox": {"path": str(tmp / "ob.db")}}, base=tmp)
    roads_ = RoadLimits.for_config(cfg)
    assert roads_ is not None
    return Engine(cfg, roads=roads_, seed=1)


def test_overspeed_events_name_the_road_and_end_when_its_limit_changes(
        index: RoadIndex, tmp_path: Path) -> None:
    # 60 km/h on Main (50) then turning into Side (30): one episode per road
    eng = _engine(index.path, tmp_path)
    fixes = drive([(0.0, 0.0), (500.0, 0.0), (500.0, 380.0)], 60 / 3.6, noise=2.0,
                  t0=T0 + 3 * 3600)  # 23:26 local: the Side street's morning window is shut
    bodies = [e.body for f in fixes for e in eng.on_fix(f) if e.type == "overspeed"]
    bodies += [e.body for e in eng.close(fixes[-1].time) if e.type == "overspeed"]
    starts = [b for b in bodies if b["phase"] == "start"]
    ends = [b for b in bodies if b["phase"] == "end"]
    assert [(b["limit_kmh"], b["limit_source"], b["road"]) for b in starts] == [
        (50.0, "road:osm:way/1", "Main Street (B1)"), (30.0, "road:osm:way/4", "Side")]
    assert [b["reason"] for b in ends] == ["limit_changed", "closed"]


def test_telemetry_carries_the_posted_limit(index: RoadIndex, tmp_path: Path) -> None:
    eng = _engine(index.path, tmp_path)
    recs = [e.body for f in drive([(-300.0, 0.0), (300.0, 0.0)], 10.0) for e in eng.on_fix(f)
            if e.type == "telemetry"]
    assert recs and all(r["speed_limit_kmh"] == 50.0 for r in recs[2:])
    assert recs[-1]["speed_limit_source"] == "road:osm:way/1"
    assert recs[-1]["road"] == "Main Street (B1)"


def test_leaving_the_road_ends_the_episode_and_the_default_applies(
        index: RoadIndex, tmp_path: Path) -> None:
    eng = _engine(index.path, tmp_path)
    fixes = drive([(-400.0, 0.0), (-100.0, 0.0)], 70 / 3.6, noise=1.0)
    fixes += drive([(-100.0, 200.0), (-100.0, 400.0)], 70 / 3.6, noise=1.0,
                   t0=fixes[-1].time + 1)  # off the map: the default 90 applies
    bodies = [e.body for f in fixes for e in eng.on_fix(f) if e.type == "overspeed"]
    assert [(b["phase"], b.get("reason")) for b in bodies] == [("start", None),
                                                                ("end", "left_road")]
    assert eng.rules.speed.limit == 90.0 and eng.rules.speed.source == "default"


def test_conditional_window_in_local_time(index: RoadIndex, tmp_path: Path) -> None:
    # Side street: 30, but 10 on weekdays 07:00-09:00 Berlin time (05:00-07:00 UTC in May)
    pts = [(500.0, 20.0), (500.0, 380.0)]
    for t0, want in [(1_779_944_400.0, 10.0),  # Thu 2026-05-28 05:00Z = 07:00 CEST
                     (1_779_937_200.0, 30.0),  # Thu 03:00Z = 05:00 CEST
                     (1_780_117_200.0, 30.0)]:  # Sat 2026-05-30 07:00 CEST
        eng = _engine(index.path, tmp_path)
        for f in drive(pts, 8.0, noise=1.0, t0=t0):
            eng.on_fix(f)
        assert eng.rules.speed.limit == want, t0


def test_zone_outranks_the_road_by_default_and_priority_is_configurable(
        index: RoadIndex, tmp_path: Path) -> None:
    from edge.config import SpeedRuleConfig
    from edge.core.limits import Limit, LimitClaim
    from edge.roads.provider import RoadLimit

    def decide(zone: tuple[float, str] | None, default: float) -> tuple[float | None, str,
                                                                       str | None]:
        claims = [LimitClaim(zone[0], f"zone:{zone[1]}")] if zone else []
        lim, road = roads.decide(claims, SpeedRuleConfig(limit_kmh=default))
        assert isinstance(lim, Limit)
        return lim.kmh, lim.source, road

    roads = RoadLimits(index)
    roads.current = None
    assert decide((30.0, "school"), 90.0) == (30.0, "zone:school", None)
    roads.current = RoadLimit(50.0, "road:osm:way/1", "Main", 1)
    assert decide((70.0, "z"), 90.0) == (70.0, "zone:z", None)
    assert decide(None, 90.0) == (50.0, "road:osm:way/1", "Main")
    roads.priority = "road>zone>default"
    assert decide((30.0, "z"), 90.0) == (50.0, "road:osm:way/1", "Main")
    roads.priority = "lowest"
    assert decide((70.0, "z"), 40.0) == (40.0, "default", None)
    assert decide((70.0, "z"), 90.0) == (50.0, "road:osm:way/1", "Main")
    roads.priority = "zone>road>default"
    roads.current = RoadLimit(math.inf, "road:osm:way/7", "Autobahn", 7)
    assert decide(None, 90.0) == (None, "road:osm:way/7", "Autobahn")
    roads.current = None
    assert decide(None, 90.0) == (90.0, "default", None)


def test_not_an_index_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.db"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(RoadIndexError, match="not a road index"):
        RoadIndex(bad)
    with pytest.raises(RoadIndexError, match="no such file"):
        RoadIndex(tmp_path / "missing.db")


def test_an_index_that_fails_to_read_counts_in_health_and_the_default_applies(
        tmp_path: Path) -> None:
    path = build(tmp_path / "roads.db")
    eng = _engine(path, tmp_path)
    fixes = drive([(-300.0, 0.0), (300.0, 0.0)], 10.0)
    for f in fixes[:10]:
        eng.on_fix(f)
    assert eng.rules.speed.limit == 50.0
    roads = eng.rules.roads
    assert roads is not None
    roads.index.db.close()  # the file gone bad under the daemon
    for f in fixes[10:20]:
        eng.on_fix(f)
    assert eng.rules.speed.limit == 90.0 and eng.rules.speed.source == "default"
    h = eng.health()["rules"]["overspeed"]["roads"]
    assert h["read_errors"] == 10 and "ProgrammingError" in h["last_error"]


@pytest.mark.parametrize(("roads", "field"), [
    ({"radius_m": -1}, "roads.radius_m"), ({"priority": "road"}, "roads.priority"),
    ({"index": 7}, "roads.index"), ({"colour": "red"}, "roads.colour"),
])
def test_bad_roads_config_names_the_field(tmp_path: Path, roads: dict[str, object],
                                          field: str) -> None:
    from edge.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        config_from_dict({"thing": "t", "roads": roads}, base=tmp_path)
    assert exc.value.field == field
