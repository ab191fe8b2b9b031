"""Trips: start/end from movement (or ignition) with the numbers a fleet report shows."""

from __future__ import annotations

import pytest

from edge.core.rules import Rules
from edge.model import Event, SpeedSample
from tests.support.rules_kit import T0, config, feed, fix, speed


def profile(points: list[tuple[float, float]], hz: float = 10.0) -> list[SpeedSample]:
    """Piecewise-linear speed (t, km/h) sampled at hz, first to last point inclusive."""
    out = []
    n = round((points[-1][0] - points[0][0]) * hz)
    k = 0
    for i in range(n + 1):
        t = points[0][0] + i / hz
        while k + 1 < len(points) - 1 and t > points[k + 1][0]:
            k += 1
        (t0, v0), (t1, v1) = points[k], points[k + 1]
        v = v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
        out.append(speed(round(t, 6), round(v, 6)))
    return out


def trips(events: list[Event]) -> list[dict]:
    return [dict(e.body) for e in events if e.kind == "trip"]


DRIVE = [(0, 0), (10, 0), (13, 50), (73, 50), (75.5, 0), (105.5, 0), (110, 30), (170, 30),
         (180, 0), (500, 0)]


def test_trip_start_and_end_with_statistics() -> None:
    rules = Rules(config())
    events = feed(rules, profile(DRIVE))
    start, end = [e for e in events if e.kind == "trip"]
    # moving (>= 5 km/h) from t=10.3; start confirmed 5 s later
    assert start.time == pytest.approx(T0 + 15.3)
    assert dict(start.body) == {"phase": "start", "start_ts": round((T0 + 10.3) * 1000),
                                "speed_kmh": pytest.approx(50.0)}
    # last stop from t=178.4 (below 5 km/h); confirmed 300 s later
    assert end.time == pytest.approx(T0 + 478.4)
    b = dict(end.body)
    assert b["phase"] == "end" and b["reason"] == "stopped"
    assert b["start_ts"] == start.body["start_ts"]
    assert b["duration_s"] == pytest.approx(168.1, abs=0.05)
    assert b["distance_m"] == pytest.approx(1431.9, abs=2.0)
    assert b["max_kmh"] == 50.0
    assert b["mean_kmh"] == pytest.approx(1431.9 / 168.1 * 3.6, abs=0.2)
    assert b["idle_s"] == pytest.approx(31.0, abs=0.05)  # the 30 s stop at the light
    assert (b["harsh_accel"], b["harsh_brake"]) == (1, 1)  # +16.7 km/h/s, -20 km/h/s
    assert "type" not in b


def test_gentle_driving_has_no_harsh_events() -> None:
    rules = Rules(config())
    events = feed(rules, profile([(0, 0), (10, 50), (70, 50), (80, 0), (400, 0)]))
    (_, end) = trips(events)
    assert (end["harsh_accel"], end["harsh_brake"]) == (0, 0)


def test_thresholds_are_inclusive_and_configurable() -> None:
    rules = Rules(config(trip={"harsh_accel_kmhs": 8.0, "harsh_brake_kmhs": -8.0}))
    events = feed(rules, profile([(0, 0), (5, 50), (70, 50), (75, 0), (400, 0)]))
    (_, end) = trips(events)
    assert (end["harsh_accel"], end["harsh_brake"]) == (1, 1)  # exactly +-10 km/h/s


def test_short_movement_is_not_a_trip() -> None:
    rules = Rules(config())
    events = feed(rules, profile([(0, 0), (1, 8), (4, 8), (5, 0), (400, 0)]))
    assert trips(events) == []


def test_open_trip_is_closed_with_an_end() -> None:
    rules = Rules(config())
    feed(rules, profile([(0, 0), (5, 40), (60, 40)]))
    (end,) = rules.close(T0 + 60)
    assert end.body["phase"] == "end" and end.body["reason"] == "closed"
    assert end.body["duration_s"] == pytest.approx(60 - 0.7, abs=0.1)
    assert rules.close(T0 + 61) == []


def test_tick_ends_a_trip_whose_data_stopped() -> None:
    rules = Rules(config())
    feed(rules, profile([(0, 0), (5, 40), (60, 40)]))
    assert rules.tick(T0 + 200) == []
    (end,) = rules.tick(T0 + 400)
    assert end.body["reason"] == "no_data"
    assert end.time == pytest.approx(T0 + 360)
    assert end.body["duration_s"] == pytest.approx(60 - 0.7, abs=0.1)


def test_data_resuming_after_a_long_silence_starts_a_new_trip() -> None:
    rules = Rules(config())
    events = feed(rules, profile([(0, 0), (5, 40), (60, 40)]) +
                  profile([(1000, 40), (1100, 40), (1110, 0), (1500, 0)]))
    assert [(b["phase"], b.get("reason")) for b in trips(events)] == [
        ("start", None), ("end", "no_data"), ("start", None), ("end", "stopped")]
    assert [e.time for e in events] == sorted(e.time for e in events)


def test_ignition_drives_trips_when_fed() -> None:
    rules = Rules(config())
    (start,) = rules.on_ignition(T0, True)
    assert start.body["phase"] == "start"
    # 10 minutes idling in a queue do not end an ignition trip
    assert trips(feed(rules, profile([(1, 0), (600, 0), (610, 30), (700, 30)]))) == []
    (end,) = rules.on_ignition(T0 + 700, False)
    assert end.body["reason"] == "ignition"
    assert end.body["duration_s"] == pytest.approx(700)
    assert end.body["distance_m"] == pytest.approx(30 / 3.6 * 95, abs=2)


def test_gnss_speed_drives_trips_when_no_speed_samples_arrive() -> None:
    rules = Rules(config())
    fixes = [fix(i, i * 10.0, 0, speed_mps=10.0) for i in range(60)]
    fixes += [fix(60 + i, 600, 0, speed_mps=0.0) for i in range(400)]
    events = feed(rules, fixes)
    _, end = trips(events)
    assert end["distance_m"] == pytest.approx(600, abs=10)
    assert end["max_kmh"] == 36.0


def test_trip_events_are_monotone_with_overspeed() -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0}))
    events = feed(rules, profile([(0, 0), (5, 80), (30, 80), (40, 0), (400, 0)]))
    assert [e.kind for e in events] == ["overspeed", "trip", "overspeed", "trip"] or \
        [e.kind for e in events] == ["trip", "overspeed", "overspeed", "trip"]
    assert [e.time for e in events] == sorted(e.time for e in events)


@pytest.mark.parametrize("hz", [1.0, 10.0, 100.0])
def test_the_launch_that_starts_a_trip_is_counted(hz: float) -> None:
    # 0 -> 60 km/h in 3 s (20 km/h/s), cruise, stop at a light, the same launch again
    rules = Rules(config())
    events = feed(rules, profile([(0, 0), (10, 0), (13, 60), (60, 60), (70, 0), (90, 0),
                                  (93, 60), (140, 60), (150, 0), (600, 0)], hz=hz))
    (_, end) = trips(events)
    assert end["harsh_accel"] == 2
    assert end["harsh_brake"] == 0  # -6 km/h/s


def test_a_hard_launch_that_ends_before_a_trip_counts_nowhere() -> None:
    rules = Rules(config())
    # a 2 s hop (no trip: start_s is 5 s), then a gentle trip
    events = feed(rules, profile([(0, 0), (1, 20), (2, 0), (20, 0), (40, 40), (100, 40),
                                  (120, 0), (500, 0)], hz=1.0))
    (_, end) = trips(events)
    assert end["harsh_accel"] == 0
