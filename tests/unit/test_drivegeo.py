"""Bulk geometry for a known drive gives the live path's events, byte for byte."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import load_config
from edge.core.drivegeo import DriveGeometry
from edge.core.geo import LocalFrame
from edge.core.geofence import hysteresis_for
from edge.core.rules import Rules
from edge.core.zones import Zones, parse_zones
from edge.model import Event, Fix, SpeedSample
from edge.replay import replay_events
from tests.support.rules_kit import T0, circle, config, fix, ll, speed, square, zones

ROOT = Path(__file__).resolve().parents[2]
DRIVES = sorted(p for p in (ROOT / "sim" / "drives").iterdir() if (p / "config.toml").exists())


@pytest.mark.parametrize("drive", DRIVES, ids=[d.name for d in DRIVES])
def test_bundled_drive_replays_the_same_in_bulk_and_fix_by_fix(drive: Path) -> None:
    cfg = load_config(drive / "config.toml")
    bulk = [e.to_bytes() for e in replay_events(drive, cfg, bulk=True)]
    live = [e.to_bytes() for e in replay_events(drive, cfg, bulk=False)]
    assert len(bulk) > 10
    assert bulk == live


def test_replay_in_small_windows_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.replay as replay

    drive = DRIVES[0]
    cfg = load_config(drive / "config.toml")
    live = [e.to_bytes() for e in replay_events(drive, cfg, bulk=False)]
    monkeypatch.setattr(replay, "BULK_WINDOW", 7)  # windows change inside every stretch
    assert [e.to_bytes() for e in replay_events(drive, cfg, bulk=True)] == live


def _both(zs: Zones, items: list[Fix | SpeedSample], **cfg: Any) -> tuple[list[Event], ...]:
    out = []
    rc = config(**cfg)
    for bulk in (False, True):
        rules = Rules(rc, zs)
        if bulk:
            fixes = [i for i in items if isinstance(i, Fix)]
            rules.use_drive_geometry(DriveGeometry(
                zs, fixes, lambda hdop: hysteresis_for(rc.geofence, hdop)))
        events: list[Event] = []
        for it in items:
            events += rules.on_fix(it) if isinstance(it, Fix) else rules.on_speed(it)
        events += rules.close(T0 + 10_000)
        out.append(events)
    return tuple(out)


ZONES = zones(
    square("a", 0, 0, 60, dwell_s=20),
    square("b", 50, 0, 40),
    circle("c", -80, 40, 15),
    circle("slow", 0, 0, 150, kind="speed", maxspeed=30),
    circle("none", 200, 200, 80, kind="speed", maxspeed="none"),
    circle("poi", 60, 60, 30, offer="coffee"),
    {"type": "Feature", "properties": {"id": "road", "width_m": 12, "maxspeed": 40},
     "geometry": {"type": "LineString", "coordinates": [ll(-300, -100), ll(300, -90),
                                                         ll(300, 300)]}},
    {"type": "Feature", "properties": {"id": "twin"}, "geometry": {
        "type": "MultiPolygon", "coordinates": [
            [[ll(-250, 150), ll(-150, 150), ll(-150, 250), ll(-250, 250), ll(-250, 150)]],
            [[ll(-150, 150), ll(-50, 150), ll(-50, 250), ll(-150, 250), ll(-150, 150)],
             [ll(-120, 180), ll(-80, 180), ll(-80, 220), ll(-120, 220), ll(-120, 180)]]]}},
)

step = st.tuples(
    st.sampled_from(["fix", "fix", "fix", "speed", "late", "invalid"]),
    st.sampled_from([0.1, 0.5, 1.0, 1.0, 2.0, 45.0]),
    st.floats(-40.0, 40.0), st.floats(-40.0, 40.0),
    st.sampled_from([None, 0.8, 1.5, 4.0]),
    st.floats(-15.0, 15.0),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=150), st.sampled_from([None, 0.0, 10.0]))
def test_generated_drives_give_the_same_events_both_ways(
        steps: list[tuple[Any, ...]], hyst: float | None) -> None:
    items: list[Fix | SpeedSample] = []
    t = x = y = kmh = 0.0
    for kind, dt, dx, dy, hdop, dv in steps:
        t += dt
        kmh = max(0.0, min(130.0, kmh + dv))
        if kind == "speed":
            items.append(speed(t, kmh))
            continue
        x = max(-320.0, min(320.0, x + dx))
        y = max(-320.0, min(320.0, y + dy))
        if kind == "late":
            items.append(fix(t - 3 * dt, x, y, hdop=hdop))
        else:
            items.append(fix(t, x, y, hdop=hdop, valid=kind == "fix", speed_mps=kmh / 3.6))
    live, bulk = _both(ZONES, items, geofence={"hysteresis_m": hyst, "debounce_s": 1.0},
                       speed={"min_duration_s": 1.0})
    assert bulk == live


def test_across_the_antimeridian_both_ways() -> None:
    frame = LocalFrame.at(-16.7, 180.0)
    rng = random.Random(3)
    feats: list[dict[str, Any]] = []
    for i in range(40):
        lat, lon = frame.latlon(rng.uniform(-2000, 2000), rng.uniform(-600, 600))
        feats.append({"type": "Feature", "properties": {"id": f"c{i}",
                                                        "radius_m": rng.uniform(30, 300)},
                      "geometry": {"type": "Point", "coordinates": [
                          (lon + 180.0) % 360.0 - 180.0, lat]}})
    zs = parse_zones({"type": "FeatureCollection", "features": feats})
    items: list[Fix | SpeedSample] = []
    for k in range(400):  # east across 180 and back
        x = -2000.0 + 10.0 * k if k < 200 else 2000.0 - 10.0 * (k - 200)
        items.append(fix(k, x, 300 * math.sin(x / 700), frame=frame))
    live, bulk = _both(zs, items, geofence={"debounce_s": 0.0})
    assert bulk == live
    assert sum(e.kind == "geofence" for e in live) > 10


def test_fixes_not_foreseen_fall_back_to_the_live_answer() -> None:
    rc = config(geofence={"debounce_s": 0.0})
    rules = Rules(rc, ZONES)
    rules.use_drive_geometry(DriveGeometry(ZONES, [fix(0, 500, 500)],
                                           lambda h: hysteresis_for(rc.geofence, h)))
    (inside,) = [e for e in rules.on_fix(fix(1, 0, 0)) if e.kind == "geofence"]
    assert inside.body["fence"] == "a"


def test_drive_geometry_belongs_to_its_zones() -> None:
    rules = Rules(config(), ZONES)
    other = zones(circle("x", 0, 0, 10))
    with pytest.raises(ValueError, match="other zones"):
        rules.use_drive_geometry(DriveGeometry(other, [], lambda h: 10.0))


@pytest.mark.parametrize("seed", range(4))
def test_sparse_fixes_through_small_fences_cross_the_same_both_ways(seed: int) -> None:
    rng = random.Random(seed)
    feats = []
    for i in range(150):
        cx, cy = rng.uniform(-1500, 1500), rng.uniform(-1500, 1500)
        r = rng.uniform(5, 25)
        if i % 3 == 0:
            feats.append(circle(f"c{i}", cx, cy, r))
        elif i % 3 == 1:
            feats.append(square(f"s{i}", cx, cy, r))
        else:
            feats.append({"type": "Feature", "properties": {"id": f"r{i}", "width_m": r / 2},
                          "geometry": {"type": "LineString", "coordinates": [
                              ll(cx - 3 * r, cy), ll(cx + 3 * r, cy + r)]}})
    zs = zones(*feats)
    items: list[Fix | SpeedSample] = []
    x = y = 0.0
    for k in range(600):  # 40-80 m between fixes: fences fall between them
        a = rng.uniform(0, math.tau)
        d = rng.uniform(40, 80)
        x = max(-1500.0, min(1500.0, x + d * math.cos(a)))
        y = max(-1500.0, min(1500.0, y + d * math.sin(a)))
        items.append(fix(k, x, y, hdop=0.8))
    live, bulk = _both(zs, items, geofence={"debounce_s": 2.0})
    assert bulk == live
    assert any(e.body.get("transition") == "crossed" for e in live)


def test_limits_along_a_track_are_the_rules_limits() -> None:
    from edge.core.drivegeo import limits_along

    rc = config(speed={"limit_kmh": 60.0})
    path = [(x, y) for x in range(-400, 420, 15) for y in (-95.0, 0.0, 210.0)]
    points = [tuple(reversed(ll(x, y))) for x, y in path]
    got = limits_along(ZONES, rc.speed, points)  # type: ignore[arg-type]
    seen = set()
    for k, ((x, y), lim) in enumerate(zip(path, got, strict=True)):
        rules = Rules(rc, ZONES)
        rules.on_fix(fix(k, x, y))
        want = rules.health()["overspeed"]
        assert (lim.kmh, lim.source) == (want["limit_kmh"], want["limit_source"]), (x, y)
        seen.add(lim.source)
    assert {"default", "zone:slow", "zone:road", "zone:none"} <= seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_fixes_fed_other_than_foreseen_give_the_live_events(rng: random.Random,
                                                             how: int) -> None:
    """The geometry was computed for one list of fixes and the rules are fed another:
    fixes left out, fixes it never saw, a fix twice, fixes swapped. The drive's answers
    are used where they fit and the rest is measured live: the same events."""
    path = []
    y = rng.uniform(-50.0, 50.0)
    for k in range(160):  # west to east through "a" and "b", wandering a little
        y = max(-55.0, min(55.0, y + rng.uniform(-6.0, 6.0)))
        path.append(fix(k, -300.0 + 4.0 * k, y, hdop=rng.choice([0.8, 1.5]),
                         speed_mps=4.0))
    fed = list(path)
    foreseen = list(path)
    if how == 0:  # the geometry misses some fixes
        foreseen = [f for f in path if rng.random() > 0.2]
    elif how == 1:  # the rules get fixes the geometry never saw (moved a little)
        for k in rng.sample(range(len(fed)), 20):
            f = fed[k]
            assert f.lat is not None
            fed[k] = dataclasses.replace(f, lat=f.lat + 1e-5)
    elif how == 2:  # a fix twice (the second is dropped as not newer) and swapped pairs
        for k in rng.sample(range(1, len(fed) - 1), 15):
            fed[k], fed[k + 1] = fed[k + 1], fed[k]
        fed.insert(50, fed[49])
    else:  # the geometry computed for the drive backwards
        foreseen = list(reversed(path))
    rc = config(geofence={"debounce_s": 1.0})
    out = []
    for bulk in (False, True):
        rules = Rules(rc, ZONES)
        if bulk:
            rules.use_drive_geometry(DriveGeometry(
                ZONES, foreseen, lambda hdop: hysteresis_for(rc.geofence, hdop)))
        events: list[Event] = []
        for f in fed:
            events += rules.on_fix(f)
        out.append(events + rules.close(T0 + 10_000))
    live, bulk_events = out
    assert bulk_events == live
    assert any(e.kind == "geofence" for e in live)
