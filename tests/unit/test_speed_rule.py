"""Overspeed episodes: start only after min_duration_s, exactly one end, no flapping."""

from __future__ import annotations

import pytest

from edge.config import SpeedRuleConfig
from edge.core.rules import Rules
from edge.core.speed import OverspeedTracker
from edge.model import Event
from tests.support.rules_kit import T0, circle, config, feed, fix, speed, zones


def ramp(t0: float, t1: float, kmh: float, hz: float = 100.0) -> list:
    n = round((t1 - t0) * hz)
    return [speed(t0 + i / hz, kmh) for i in range(n)]


def over(events: list[Event]) -> list[dict]:
    return [dict(e.body) for e in events if e.kind == "overspeed"]


@pytest.mark.parametrize("min_duration_s", [3.0, 0.5, 0.05])
def test_a_flicker_of_004_s_above_the_limit_starts_nothing(min_duration_s: float) -> None:
    rules = Rules(config(speed={"min_duration_s": min_duration_s}))
    samples = ramp(0, 10, 48) + ramp(10, 10.04, 70) + ramp(10.04, 20, 48)
    assert len([s for s in samples if s.speed_kmh > 50]) == 4  # 4 CAN frames at 100 Hz
    assert over(feed(rules, samples)) == []
    assert rules.health()["overspeed"]["active"] is False


def test_episode_starts_after_min_duration_and_ends_after_recovery() -> None:
    rules = Rules(config(speed={"min_duration_s": 3.0, "end_after_s": 3.0,
                                "recovery_kmh": 3.0}))
    samples = (ramp(0, 10, 45, hz=10) + ramp(10, 20, 62, hz=10) + ramp(20, 22, 70, hz=10)
               + ramp(22, 30, 40, hz=10))
    events = feed(rules, samples)
    start, end = [e for e in events if e.kind == "overspeed"]
    assert start.time == pytest.approx(T0 + 13)
    assert dict(start.body) == {"phase": "start", "speed_kmh": 62.0, "limit_kmh": 50.0,
                                "limit_source": "default", "peak_kmh": 62.0,
                                "duration_s": 3.0}
    assert end.time == pytest.approx(T0 + 25)
    assert dict(end.body) == {"phase": "end", "speed_kmh": 40.0, "limit_kmh": 50.0,
                              "limit_source": "default", "peak_kmh": 70.0,
                              "duration_s": 12.0, "reason": "recovered"}
    assert "type" not in start.body


def test_recovery_hysteresis_holds_the_episode_open_just_below_the_limit() -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0, "recovery_kmh": 5.0}))
    # 60 -> 48 (below 50, but not 5 below): one episode, still open; 44 ends it
    events = feed(rules, ramp(0, 5, 60, 10) + ramp(5, 60, 48, 10) + ramp(60, 70, 44, 10))
    assert [b["phase"] for b in over(events)] == ["start", "end"]
    assert over(events)[1]["duration_s"] == pytest.approx(60.0)


def test_oscillating_around_the_limit_gives_one_episode() -> None:
    rules = Rules(config(speed={"min_duration_s": 2.0, "end_after_s": 3.0}))
    samples = []
    for k in range(120):  # 52 / 49 km/h alternating every second for 2 minutes
        samples += ramp(k, k + 1, 56 if k % 2 == 0 else 49, hz=10)
    samples += ramp(120, 130, 30, 10)
    # never 2 s continuously above: no episode at all
    assert over(feed(rules, samples)) == []


def test_tolerance_kmh_and_pct() -> None:
    rules = Rules(config(speed={"tolerance_kmh": 3.0, "tolerance_pct": 10.0,
                                "min_duration_s": 1.0}))
    # threshold = 50 * 1.1 + 3 = 58
    assert over(feed(rules, ramp(0, 10, 57.9, 10))) == []
    assert [b["phase"] for b in over(feed(rules, ramp(10, 20, 58.5, 10)))] == ["start"]


def test_data_gap_ends_the_episode_as_unknown_via_tick() -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0, "gap_s": 10.0}))
    events = feed(rules, ramp(0, 5, 80, 10))
    assert [b["phase"] for b in over(events)] == ["start"]
    assert rules.tick(T0 + 12) == []
    (end,) = rules.tick(T0 + 20)
    assert end.body["phase"] == "end" and end.body["reason"] == "unknown"
    assert end.time == pytest.approx(T0 + 4.9 + 10)
    assert end.body["duration_s"] == pytest.approx(4.9)


def test_data_gap_detected_by_the_next_sample() -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0, "gap_s": 10.0}))
    feed(rules, ramp(0, 5, 80, 10))
    events = feed(rules, ramp(100, 105, 80, 10))
    assert [(b["phase"], b.get("reason")) for b in over(events)] == [
        ("end", "unknown"), ("start", None)]
    assert [e.time for e in events] == sorted(e.time for e in events)


def test_episode_open_at_close_gets_an_end() -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0}))
    feed(rules, ramp(0, 5, 80, 10))
    (end,) = rules.close(T0 + 5)
    assert dict(end.body) == {"phase": "end", "speed_kmh": 80.0, "limit_kmh": 50.0,
                                   "limit_source": "default", "peak_kmh": 80.0,
                                   "duration_s": 5.0, "reason": "closed"}
    assert rules.close(T0 + 6) == []


def test_no_limit_no_episode() -> None:
    rules = Rules(config(speed={"limit_kmh": None, "min_duration_s": 0.0}))
    assert over(feed(rules, ramp(0, 10, 250, 10))) == []


SCHOOL = circle("school", 0, 0, 150, maxspeed="30")
MOTORWAY = circle("motorway", 1000, 0, 150, kind="speed", maxspeed=130)
MPH = circle("base", 2000, 0, 150, kind="speed", maxspeed="15 mph")


@pytest.mark.parametrize(
    ("policy", "default", "x", "limit", "source"),
    [
        ("lowest", 50.0, 0, 30.0, "zone:school"),
        ("lowest", 50.0, 1000, 50.0, "default"),  # 130 zone, 50 default: lowest wins
        ("lowest", None, 1000, 130.0, "zone:motorway"),
        ("lowest", 50.0, 2000, 24.1, "zone:base"),  # 15 mph
        ("lowest", 50.0, 5000, 50.0, "default"),
        ("zone", 50.0, 1000, 130.0, "zone:motorway"),
        ("default", 50.0, 0, 50.0, "default"),
    ],
)
def test_limit_policy(policy: str, default: float | None, x: float, limit: float,
                      source: str) -> None:
    rules = Rules(config(speed={"limit_policy": policy, "limit_kmh": default,
                                "min_duration_s": 1.0}), zones(SCHOOL, MOTORWAY, MPH))
    rules.on_fix(fix(0, x, 0))
    assert rules.health()["overspeed"]["limit_kmh"] == limit
    assert rules.health()["overspeed"]["limit_source"] == source
    (start,) = over(feed(rules, ramp(1, 4, limit + 10, 10)))
    assert (start["limit_kmh"], start["limit_source"]) == (limit, source)


def test_overlapping_zones_lowest_limit_wins() -> None:
    rules = Rules(config(speed={"limit_kmh": 100.0}),
                  zones(circle("town", 0, 0, 500, kind="speed", maxspeed=50), SCHOOL))
    rules.on_fix(fix(0, 10, 0))
    assert rules.health()["overspeed"]["limit_kmh"] == 30.0
    rules.on_fix(fix(30, 300, 0))  # left the school circle, still in town
    assert rules.health()["overspeed"]["limit_kmh"] == 50.0
    rules.on_fix(fix(60, 900, 0))
    assert rules.health()["overspeed"]["limit_kmh"] == 100.0


def test_reordered_speed_samples_are_dropped() -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0}))
    samples = ramp(0, 5, 80, 10)
    samples.insert(30, speed(0.5, 10))
    events = feed(rules, samples)
    assert [b["phase"] for b in over(events)] == ["start"]
    assert rules.health()["inputs"]["reordered_speed"] == 1


def test_tracker_alone_is_deterministic() -> None:
    a = OverspeedTracker(SpeedRuleConfig(limit_kmh=50, min_duration_s=0.5))
    b = OverspeedTracker(SpeedRuleConfig(limit_kmh=50, min_duration_s=0.5))
    seq = [(i * 0.1, 40 + (i % 30)) for i in range(600)]
    assert [a.on_speed(t, v) for t, v in seq] == [b.on_speed(t, v) for t, v in seq]


def segments(*parts: tuple[float, float, float], hz: float = 100.0) -> list:
    out: list = []
    for t0, t1, kmh in parts:
        out += ramp(t0, t1, kmh, hz)
    return out


# (name, samples, config overrides, expected (phase, reason) sequence) — limit 50 km/h
TABLE = [
    ("cruise below the limit", segments((0, 30, 49.9)), {}, []),
    ("0.04 s flicker at 100 Hz", segments((0, 5, 45), (5, 5.04, 90), (5.04, 10, 45)),
     {"min_duration_s": 0.5}, []),
    ("2.9 s above with min 3 s", segments((0, 5, 45), (5, 7.9, 60), (7.9, 20, 45)), {}, []),
    ("3.5 s above then recovered", segments((0, 5, 45), (5, 8.5, 60), (8.5, 20, 40)), {},
     [("start", None), ("end", "recovered")]),
    ("dip below threshold but not recovery keeps it open",
     segments((0, 5, 60), (5, 15, 48), (15, 20, 60), (20, 30, 40)), {"min_duration_s": 1.0},
     [("start", None), ("end", "recovered")]),
    ("two separate episodes", segments((0, 5, 60), (5, 15, 40), (15, 20, 60), (20, 30, 40)),
     {"min_duration_s": 1.0}, [("start", None), ("end", "recovered")] * 2),
    ("end needs end_after_s of recovery",
     segments((0, 5, 60), (5, 6, 40), (6, 7, 60), (7, 8, 40), (8, 9, 60)),
     {"min_duration_s": 1.0, "end_after_s": 2.0}, [("start", None)]),
    ("sparse GNSS speed at 1 Hz", segments((0, 10, 60), (10, 20, 30), hz=1.0),
     {"min_duration_s": 3.0}, [("start", None), ("end", "recovered")]),
    ("gap inside an episode", segments((0, 5, 60), (30, 40, 60)), {"min_duration_s": 1.0},
     [("start", None), ("end", "unknown"), ("start", None)]),
]


@pytest.mark.parametrize(("name", "samples", "over_cfg", "expected"), TABLE,
                         ids=[t[0] for t in TABLE])
def test_overspeed_table(name: str, samples: list, over_cfg: dict,
                         expected: list[tuple[str, str | None]]) -> None:
    rules = Rules(config(speed=over_cfg))
    events = feed(rules, samples)
    assert [(b["phase"], b.get("reason")) for b in over(events)] == expected
    assert [e.time for e in events] == sorted(e.time for e in events)


# ---------------------------------------------------------------- limit semantics

AUTOBAHN = circle("autobahn", 5000, 0, 400, kind="speed", maxspeed="none")
ROADWORKS = circle("roadworks", 5000, 0, 100, kind="speed", maxspeed=80)
NONE_FENCE = circle("track", 8000, 0, 300, maxspeed="none")


@pytest.mark.parametrize("policy", ["lowest", "zone"])
@pytest.mark.parametrize(("x", "source"), [(5200, "zone:autobahn"), (8000, "zone:track")])
def test_maxspeed_none_means_no_limit_and_wins_over_the_default(
        policy: str, x: float, source: str) -> None:
    rules = Rules(config(speed={"limit_policy": policy, "limit_kmh": 60.0,
                                "min_duration_s": 1.0}), zones(AUTOBAHN, ROADWORKS, NONE_FENCE))
    rules.on_fix(fix(0, x, 0))
    assert rules.health()["overspeed"]["limit_kmh"] is None
    assert rules.health()["overspeed"]["limit_source"] == source
    assert over(feed(rules, ramp(1, 30, 200, 10))) == []


def test_a_limit_inside_a_none_zone_still_applies() -> None:
    rules = Rules(config(speed={"limit_kmh": 60.0, "min_duration_s": 1.0}),
                  zones(AUTOBAHN, ROADWORKS))
    rules.on_fix(fix(0, 5000, 0))
    assert rules.health()["overspeed"]["limit_kmh"] == 80.0  # the roadworks, not the default
    assert rules.health()["overspeed"]["limit_source"] == "zone:roadworks"


def test_default_policy_ignores_a_none_zone() -> None:
    rules = Rules(config(speed={"limit_policy": "default", "limit_kmh": 60.0}),
                  zones(AUTOBAHN))
    rules.on_fix(fix(0, 5200, 0))
    assert rules.health()["overspeed"]["limit_kmh"] == 60.0


SCHOOL_MPH = circle("school-30mph", 0, 0, 150, maxspeed="30 mph")


def test_leaving_the_zone_mid_episode_ends_it_as_decided() -> None:
    # the episode is decided against the zone's 48.3 km/h; outside, the default 60 applies
    # and 51.4 km/h is not over it: the end says limit_changed at the zone's limit
    rules = Rules(config(speed={"limit_kmh": 60.0, "min_duration_s": 1.0}),
                  zones(SCHOOL_MPH))
    events = feed(rules, [fix(0, 0, 0)] + ramp(0.1, 5, 60, 10))
    (start,) = over(events)
    assert (start["limit_kmh"], start["limit_source"]) == (48.3, "zone:school-30mph")
    events = feed(rules, ramp(5, 10, 51.4, 10) + [fix(10, 300, 0)] + ramp(10, 30, 51.4, 10))
    (end,) = [e for e in events if e.kind == "overspeed"]
    assert end.time == pytest.approx(T0 + 10)
    assert dict(end.body) == {"phase": "end", "speed_kmh": 51.4, "limit_kmh": 48.3,
                              "limit_source": "zone:school-30mph", "peak_kmh": 60.0,
                              "duration_s": pytest.approx(9.9), "reason": "limit_changed"}


def test_a_limit_change_while_still_over_starts_a_new_episode_at_once() -> None:
    rules = Rules(config(speed={"limit_kmh": 50.0, "min_duration_s": 3.0}),
                  zones(SCHOOL))
    events = feed(rules, [fix(0, 1000, 0)] + ramp(0.1, 10, 70, 10) + [fix(10, 0, 0)]
                  + ramp(10, 15, 70, 10) + [fix(15, 1000, 0)] + ramp(15, 20, 70, 10)
                  + ramp(20, 30, 20, 10))
    got = [(b["phase"], b["limit_kmh"], b["limit_source"], b.get("reason")) for b in over(events)]
    assert got == [("start", 50.0, "default", None),
                   ("end", 50.0, "default", "limit_changed"),
                   ("start", 30.0, "zone:school", None),  # entering the school at 70
                   ("end", 30.0, "zone:school", "limit_changed"),
                   ("start", 50.0, "default", None),
                   ("end", 50.0, "default", "recovered")]
    ts = [e.time - T0 for e in events if e.kind == "overspeed"]
    assert ts[1:5] == pytest.approx([10, 10, 15, 15])


def test_entering_a_none_zone_mid_episode_ends_it_with_no_limit() -> None:
    rules = Rules(config(speed={"limit_kmh": 60.0, "min_duration_s": 1.0}), zones(AUTOBAHN))
    events = feed(rules, [fix(0, 4000, 0)] + ramp(0.1, 5, 130, 10) + [fix(5, 5000, 0)]
                  + ramp(5, 60, 180, 10))
    assert [(b["phase"], b.get("reason")) for b in over(events)] == [
        ("start", None), ("end", "no_limit")]


def test_two_zones_with_the_same_limit_keep_one_episode() -> None:
    rules = Rules(config(speed={"limit_kmh": 100.0, "min_duration_s": 1.0}),
                  zones(circle("a", 0, 0, 150, kind="speed", maxspeed=30),
                        circle("b", 250, 0, 150, kind="speed", maxspeed=30)))
    events = feed(rules, [fix(0, 0, 0)] + ramp(0.1, 5, 50, 10) + [fix(5, 120, 0)]
                  + ramp(5, 8, 50, 10) + [fix(8, 250, 0)] + ramp(8, 20, 10, 10))
    got = [(b["phase"], b["limit_source"], b.get("reason")) for b in over(events)]
    assert got == [("start", "zone:a", None), ("end", "zone:a", "recovered")]


def test_a_run_above_a_lower_limit_does_not_count_toward_a_higher_one() -> None:
    rules = Rules(config(speed={"limit_kmh": 35.0, "min_duration_s": 3.0}), zones(SCHOOL))
    # 40 km/h: over the school's 30 from t=0, over the default 35 only once out (t=2)
    events = feed(rules, [fix(0, 0, 0)] + ramp(0, 2, 40, 10) + [fix(2, 400, 0)]
                  + ramp(2, 10, 40, 10))
    (start,) = [e for e in events if e.kind == "overspeed"]
    assert start.time == pytest.approx(T0 + 5)
    assert (start.body["limit_kmh"], start.body["duration_s"]) == (35.0, 3.0)


def test_samples_stopped_long_before_a_limit_change_end_the_episode_as_unknown() -> None:
    rules = Rules(config(speed={"limit_kmh": 50.0, "min_duration_s": 1.0, "gap_s": 10.0}),
                  zones(SCHOOL))
    feed(rules, [fix(0, 1000, 0)] + ramp(0.1, 5, 80, 10))
    events = rules.on_fix(fix(60, 0, 0))  # into the school a minute after the last sample
    assert [(e.body["phase"], e.body["reason"]) for e in events if e.kind == "overspeed"] == [
        ("end", "unknown")]


def test_a_reload_without_speed_zones_puts_the_default_back() -> None:
    rules = Rules(config(speed={"limit_kmh": 50.0}), zones(SCHOOL))
    rules.on_fix(fix(0, 0, 0))
    assert rules.health()["overspeed"]["limit_kmh"] == 30.0
    rules.reload(zones(circle("plain", 0, 0, 150)))
    assert rules.health()["overspeed"]["limit_kmh"] == 50.0
    rules.on_fix(fix(1, 500, 0))
    rules.on_fix(fix(2, 0, 0))
    assert rules.health()["overspeed"]["limit_kmh"] == 50.0
