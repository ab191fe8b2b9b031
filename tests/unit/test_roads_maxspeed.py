"""OSM maxspeed tagging -> posted limit per direction (edge.roads.maxspeed)."""

from __future__ import annotations

import math

import pytest

from edge.roads.maxspeed import (
    DEFAULTS,
    drivable,
    oneway,
    parse_conditional,
    value_kmh,
    way_limits,
)


@pytest.mark.parametrize(("value", "kmh"), [
    ("50", 50.0), ("50 km/h", 50.0), ("30 mph", 48.3), ("10 knots", 18.5),
    ("none", math.inf), ("walk", 7.0), ("DE:urban", 50.0), ("DE:rural", 100.0),
    ("FR:rural", 80.0), ("FR:urban", 50.0), ("DE:motorway", math.inf),
    ("DE:zone30", 30.0), ("DE:zone:30", 30.0), ("DE:living_street", 7.0),
    ("GB:nsl_single", 96.6), ("GB:nsl_dual", 112.7), ("DE:bicycle_road", 30.0),
    ("signals", None), ("variable", None),
])
def test_values(value: str, kmh: float | None) -> None:
    got = value_kmh(value, "DE")
    if kmh is None or math.isinf(kmh):
        assert got == kmh
    else:
        assert got == pytest.approx(kmh, abs=0.06)


@pytest.mark.parametrize(("value", "reason"), [
    ("fast", "bad_value"), ("50;30", "multiple_values"), ("XX:urban", "unknown_country"),
    ("DE:moon", "unknown_context"),
])
def test_bad_values_say_why(value: str, reason: str) -> None:
    from edge.roads.maxspeed import TagError

    with pytest.raises(TagError) as exc:
        value_kmh(value, "DE")
    assert exc.value.reason == reason


def test_directions_and_sources() -> None:
    lim = way_limits({"highway": "primary", "maxspeed": "50", "maxspeed:backward": "30"}, "DE")
    assert (lim.forward.kmh, lim.forward.source) == (50.0, "osm")
    assert (lim.backward.kmh, lim.backward.source) == (30.0, "osm")
    lim = way_limits({"highway": "primary", "maxspeed:forward": "70"}, "DE")
    assert (lim.forward.kmh, lim.forward.source) == (70.0, "osm")
    assert (lim.backward.kmh, lim.backward.source) == (100.0, "default")  # DE rural fallback


@pytest.mark.parametrize(("tags", "kmh"), [
    ({"highway": "residential", "maxspeed:type": "DE:urban"}, 50.0),
    ({"highway": "residential", "source:maxspeed": "FR:zone30"}, 30.0),
    ({"highway": "residential", "zone:maxspeed": "DE:30"}, 30.0),
    ({"highway": "tertiary", "source:maxspeed": "survey"}, None),  # not implicit: fallback
])
def test_implicit_keys_when_maxspeed_is_missing(tags: dict[str, str], kmh: float | None
                                                ) -> None:
    lim = way_limits(tags, "DE")
    if kmh is None:
        assert lim.forward.source == "default"
    else:
        assert (lim.forward.kmh, lim.forward.source) == (kmh, "osm")


def test_fallback_by_class_and_country() -> None:
    assert way_limits({"highway": "motorway"}, "FR").forward.kmh == 130.0
    assert way_limits({"highway": "motorway"}, "DE").forward.kmh == math.inf
    assert way_limits({"highway": "residential"}, "FI").forward.kmh == 50.0
    assert way_limits({"highway": "secondary"}, "FI").forward.kmh == 80.0
    assert way_limits({"highway": "living_street"}, "FI").forward.kmh == 20.0
    assert way_limits({"highway": "residential"}, "ZZ").forward.kmh == DEFAULTS["*"]["urban"]
    assert way_limits({"highway": "residential"}, "GB").forward.kmh == pytest.approx(48.28,
                                                                                     abs=0.01)


def test_bad_tag_falls_back_and_is_reported() -> None:
    lim = way_limits({"highway": "residential", "maxspeed": "fast"}, "FI")
    assert (lim.forward.kmh, lim.forward.source) == (50.0, "default")
    assert lim.problems == ("bad_value",)


def test_signals_is_unknown_not_a_default() -> None:
    lim = way_limits({"highway": "motorway", "maxspeed": "signals"}, "DE")
    assert (lim.forward.kmh, lim.forward.source) == (None, "osm")


def test_conditional_time_windows() -> None:
    rules, dropped = parse_conditional(
        "30 @ (Mo-Fr 07:00-17:00); 50 @ 22:00-06:00; 60 @ wet; 40 @ (weight>7.5)", "DE")
    assert rules == [(30.0, "Mo-Fr 07:00-17:00"), (50.0, "22:00-06:00")]
    assert dropped == ["conditional_not_time", "conditional_not_time"]
    lim = way_limits({"highway": "primary", "maxspeed": "50",
                      "maxspeed:backward:conditional": "30 @ (Mo-Fr 07:00-17:00)"}, "DE")
    assert lim.forward_conditional == ()
    assert lim.backward_conditional == ((30.0, "Mo-Fr 07:00-17:00"),)


@pytest.mark.parametrize(("tags", "want"), [
    ({"highway": "residential"}, 0), ({"highway": "residential", "oneway": "yes"}, 1),
    ({"highway": "residential", "oneway": "-1"}, -1), ({"highway": "motorway"}, 1),
    ({"highway": "primary", "junction": "roundabout"}, 1),
    ({"highway": "motorway", "oneway": "no"}, 0),
])
def test_oneway(tags: dict[str, str], want: int) -> None:
    assert oneway(tags) == want


@pytest.mark.parametrize(("tags", "why"), [
    ({"highway": "residential"}, None), ({"highway": "footway"}, "not_drivable"),
    ({"building": "yes"}, "not_highway"), ({"highway": "service", "access": "no"},
                                           "no_motor_vehicles"),
    ({"highway": "service", "access": "no", "motor_vehicle": "yes"}, None),
    ({"highway": "service", "service": "parking_aisle"}, "parking_aisle"),
    ({"highway": "pedestrian", "area": "yes"}, "not_drivable"),
])
def test_drivable(tags: dict[str, str], why: str | None) -> None:
    assert drivable(tags) == why
