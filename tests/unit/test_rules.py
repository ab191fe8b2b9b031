"""The rules engine as the daemon uses it: reload, health, a whole drive, close."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.core.rules import Rules
from edge.errors import ZonesError
from edge.model import Event, Fix, SpeedSample
from edge.sources.zonesfile import load_zones
from tests.support.rules_kit import (
    T0,
    circle,
    config,
    feed,
    fix,
    line,
    speed,
    square,
    transitions,
    zones,
)

DATA = Path(__file__).parent.parent / "data" / "zones"


def test_reload_keeps_state_of_unchanged_ids_and_reports_new_fences_inside() -> None:
    a = square("a", 0, 0, 100)
    rules = Rules(config(), zones(a))
    assert transitions(feed(rules, [fix(i, 0, 0) for i in range(5)])) == [("a", "inside")]
    events = rules.reload(zones(a, circle("b", 50, 0, 100), circle("far", 5000, 0, 10)))
    assert transitions(events) == [("b", "inside")]  # a carried over: no second inside
    assert events[0].time == T0 + 4  # the last input's time, never earlier
    out = feed(rules, line(5, 0, 0, 600, 0, 61))
    assert transitions(out) == [("a", "exit"), ("b", "exit")]
    assert rules.health()["zones"]["reloads"] == 1


def test_reload_removing_a_fence_drops_its_state_silently() -> None:
    rules = Rules(config(), zones(square("a", 0, 0, 100), square("b", 1000, 0, 100)))
    feed(rules, [fix(i, 0, 0) for i in range(5)])
    assert rules.reload(zones(square("b", 1000, 0, 100))) == []
    assert rules.health()["geofence"]["inside"] == []
    # driving on does not produce an exit for a fence that no longer exists
    assert transitions(feed(rules, line(5, 0, 0, 400, 0, 41))) == []


def test_reload_before_any_fix_reports_nothing() -> None:
    rules = Rules(config())
    assert rules.reload(zones(square("a", 0, 0, 100))) == []
    assert transitions(feed(rules, [fix(i, 0, 0) for i in range(5)])) == [("a", "inside")]


def test_invalid_file_is_rejected_and_old_zones_stay(tmp_path: Path) -> None:
    good = tmp_path / "zones.geojson"
    shutil.copy(DATA / "city.geojson", good)
    rules = Rules(config(), load_zones(good))
    # as the daemon's reloader does: the file read, its error handed to the rules
    with pytest.raises(ZonesError) as bad:
        load_zones(DATA / "bad_no_radius.geojson")
    rules.zones_rejected(str(bad.value))
    h = rules.health()["zones"]
    assert h["source"] == str(good) and h["fence"] == 2
    assert "lamp-post" in h["error"] and "radius_m" in h["error"]
    assert h["rejected"] == 1
    # a good file later clears the error
    assert rules.reload(load_zones(DATA / "antimeridian.geojson")) == []
    h = rules.health()["zones"]
    assert h["error"] is None and h["fence"] == 3


def test_health_is_json_serialisable_and_counts() -> None:
    rules = Rules(config(), load_zones(DATA / "city.geojson"))
    feed(rules, [Fix(time=T0, lat=None, lon=None), fix(1, 0, 0), speed(1, 30)])
    h = rules.health()
    json.dumps(h)
    assert h["inputs"] == {"fixes": 2, "invalid_fixes": 1, "reordered_fixes": 0,
                           "speed_samples": 1, "invalid_speed": 0, "reordered_speed": 0}


@pytest.mark.parametrize(("lat", "lon"), [(95.0, 11.0), (48.0, 181.0), (float("nan"), 11.0),
                                          (48.0, float("inf"))])
def test_impossible_coordinates_are_invalid_fixes(lat: float, lon: float) -> None:
    rules = Rules(config(), zones(square("a", 0, 0, 100)))
    assert rules.on_fix(Fix(time=T0, lat=lat, lon=lon, valid=True, hdop=1.0)) == []
    assert rules.health()["inputs"]["invalid_fixes"] == 1


@pytest.mark.parametrize("kmh", [float("nan"), -3.0, float("inf")])
def test_impossible_speeds_are_counted_not_used(kmh: float) -> None:
    rules = Rules(config(speed={"min_duration_s": 0.0}))
    assert rules.on_speed(speed(0, kmh)) == []
    assert rules.health()["inputs"]["invalid_speed"] == 1


def city_drive() -> list[Fix | SpeedSample]:
    """Through the depot, past the coffee corner, into the school zone too fast."""
    z = load_zones(DATA / "city.geojson")
    depot = z.by_id["depot"].frame  # centre of the depot, 300 m x 333 m
    items: list[Fix | SpeedSample] = []
    t = 0.0
    # parked inside the depot at boot for 90 s (dwell is 60 s)
    for _ in range(90):
        items += [fix(t, 0, 0, frame=depot, speed_mps=0.0), speed(t, 0.0)]
        t += 1
    # drive east at 12.5 m/s (45 km/h) along the depot's centre line, 60 s
    for i in range(60):
        items += [fix(t, 12.5 * i, 0, frame=depot, speed_mps=12.5), speed(t, 45.0)]
        t += 1
    return items


def test_golden_city_drive() -> None:
    z = load_zones(DATA / "city.geojson")
    rules = Rules(config(speed={"limit_kmh": 50.0}), z)
    events = feed(rules, city_drive()) + rules.close(T0 + 150)
    got = [(e.kind, e.body.get("fence") or e.body.get("poi") or e.body.get("phase"),
            e.body.get("transition")) for e in events]
    assert got == [
        ("geofence", "depot", "inside"),
        ("geofence", "depot", "dwell"),
        ("trip", "start", None),
        ("geofence", "depot", "exit"),
        ("poi", "42", None),
        ("trip", "end", None),
    ]
    assert [e.time for e in events] == sorted(e.time for e in events)
    for e in events:
        json.dumps(dict(e.body))
        assert "type" not in e.body
        assert e.lat is not None and e.lon is not None


def test_close_twice_and_tick_without_input_are_harmless() -> None:
    rules = Rules(config())
    assert rules.tick(T0) == []
    assert rules.close(T0) == []
    assert rules.close(T0 + 1) == []


def test_events_never_go_back_in_time_across_rules() -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0, "gap_s": 5.0}),
                  zones(square("a", 0, 0, 100)))
    out: list[Event] = []
    for i in range(20):
        out += rules.on_speed(speed(i, 80))
    out += rules.on_fix(fix(10, 0, 0))  # a fix older than the last sample
    out += rules.tick(T0 + 60)  # the episode ends as unknown at 19 + 5 = 24
    out += rules.on_fix(fix(11, 0, 0))
    out += rules.on_fix(fix(12, 0, 0))
    assert [e.time for e in out] == sorted(e.time for e in out)
    assert len(out) >= 3


@pytest.mark.parametrize("valid", [True, False])
def test_fix_without_time_is_ignored(valid: bool) -> None:
    rules = Rules(config(), zones(square("a", 0, 0, 100)))
    assert rules.on_fix(Fix(time=None, lat=48.137, lon=11.575, valid=valid)) == []
    assert rules.health()["inputs"]["invalid_fixes"] == 1


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("geofence", "hysteresis_m", -1.0), ("geofence", "debounce_s", -1.0),
     ("geofence", "gap_s", 0.0), ("speed", "gap_s", 0.0), ("speed", "end_after_s", -1.0),
     ("poi", "cooldown_s", -1.0), ("poi", "max_per_hour", -1), ("trip", "start_kmh", 0.0),
     ("trip", "end_s", 0.0), ("trip", "harsh_accel_kmhs", -1.0),
     ("trip", "harsh_brake_kmhs", 2.0)],
)
def test_rules_config_is_checked(section: str, key: str, value: float) -> None:
    from edge.config import config_from_dict
    from edge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_dict({"thing": "t", "rules": {section: {key: value}}})
    assert err.value.field == f"rules.{section}.{key}"
