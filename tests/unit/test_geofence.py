"""Geofence scenarios: what a driver's phone would see, fix by fix.

Fence "a": a 200 m square around the origin. Hysteresis 10 m, debounce 2 s, gap 30 s
unless a scenario says otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.core.rules import Rules
from edge.model import Fix
from edge.sources.zonesfile import load_zones
from tests.support.rules_kit import (
    T0,
    circle,
    config,
    feed,
    fix,
    line,
    square,
    transitions,
    zones,
)

DATA = Path(__file__).parent.parent / "data" / "zones"
A = square("a", 0, 0, 100)


def jitter(t0: float, x: float, y: float, n: int, amp: float) -> list[Fix]:
    """n fixes 1 s apart alternating ±amp metres east-west of (x, y)."""
    return [fix(t0 + i, x + (amp if i % 2 else -amp), y) for i in range(n)]


SCENARIOS: list[tuple[str, list[Fix], list[tuple[str, str]]]] = [
    ("parked inside at start", [fix(i, 0, 0) for i in range(30)], [("a", "inside")]),
    ("parked outside at start", [fix(i, 300, 0) for i in range(30)], []),
    ("parked at the edge at start, first fix just outside",
     [fix(0, 105, 0)] + jitter(1, 97, 0, 30, 2), [("a", "inside")]),
    ("at the edge at start, then drives away",
     [fix(0, 105, 0), fix(1, 106, 0)] + line(2, 106, 0, 400, 0, 30), []),
    ("drive through", line(0, -300, 0, 300, 0, 61), [("a", "enter"), ("a", "exit")]),
    ("drive in, sit at the edge with ±6 m jitter",
     line(0, -300, 0, 95, 0, 40) + jitter(40, 100, 0, 300, 6), [("a", "enter")]),
    ("parked just outside, jitter across the edge",
     jitter(0, 103, 0, 300, 5), []),
    ("one spike inside while parked outside",
     [fix(i, 120, 0) for i in range(10)] + [fix(10, 95, 0)] +
     [fix(11 + i, 120, 0) for i in range(10)], []),
    ("inside at start then drives out",
     [fix(i, 0, 0) for i in range(5)] + line(5, 0, 0, 400, 0, 41),
     [("a", "inside"), ("a", "exit")]),
    ("sparse fixes, 10 s apart, two inside",
     line(0, -350, 0, 450, 0, 9, dt=10.0), [("a", "enter"), ("a", "exit")]),
    ("sparse fixes, one inside: a crossing",
     [fix(0, -250, 0), fix(20, -50, 0), fix(40, 150, 0), fix(60, 350, 0)],
     [("a", "crossed")]),
    ("fast past a corner, no fix inside: crossed",
     [fix(0, -150, 40), fix(2, -80, 110), fix(4, -10, 180)], [("a", "crossed")]),
    ("jitter segment across a corner is not a crossing",
     [fix(i, 105 if i % 2 else 95, 105 if i % 2 else 95) for i in range(1, 10, 2)] +
     [fix(i, 108, 93) for i in range(10, 12)], []),
]


@pytest.mark.parametrize(("name", "fixes", "expected"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_geofence_scenarios(name: str, fixes: list[Fix], expected: list[tuple[str, str]]) -> None:
    rules = Rules(config(), zones(A))
    events = feed(rules, fixes)
    assert transitions(events) == expected
    times = [e.time for e in events]
    assert times == sorted(times)


def test_enter_is_stamped_by_the_confirming_fix_and_carries_its_position() -> None:
    rules = Rules(config(), zones(A))
    events = feed(rules, line(0, -130, 0, 70, 0, 21))  # 10 m/s
    (enter,) = events
    assert enter.kind == "geofence"
    assert dict(enter.body) == {"fence": "a", "name": "A", "transition": "enter"}
    # first fix inside at x=-100 (t=3, on the edge); debounce 2 s -> the fix at t=5
    assert enter.time == T0 + 5
    assert enter.lat is not None and enter.lon is not None
    assert enter.clock == "gnss"


def test_debounce_zero_commits_on_the_first_fix() -> None:
    rules = Rules(config(geofence={"debounce_s": 0.0}), zones(A))
    events = feed(rules, [fix(0, 200, 0), fix(1, 50, 0)])
    assert [(e.time, e.body["transition"]) for e in events] == [(T0 + 1, "enter")]


def test_only_valid_fixes_move_state() -> None:
    rules = Rules(config(), zones(A))
    fixes = [fix(i, 300, 0) for i in range(5)] + [fix(5 + i, 0, 0, valid=False) for i in range(20)]
    assert feed(rules, fixes) == []
    assert rules.health()["inputs"]["invalid_fixes"] == 20
    assert rules.health()["geofence"]["inside"] == []


def test_gap_then_outside_exits_with_after_gap() -> None:
    rules = Rules(config(), zones(A))
    events = feed(rules, [fix(i, 0, 0) for i in range(5)])
    assert transitions(events) == [("a", "inside")]
    rules.tick(T0 + 60)  # no fix for 56 s: state unknown
    assert rules.health()["geofence"]["state"] == "unknown"
    events = feed(rules, [fix(100 + i, 500, 0) for i in range(5)])
    assert [dict(e.body) for e in events] == [
        {"fence": "a", "name": "A", "transition": "exit", "after_gap": True}]
    assert rules.health()["geofence"]["state"] == "known"


def test_gap_then_still_inside_is_silent_and_later_exit_is_normal() -> None:
    rules = Rules(config(), zones(A))
    feed(rules, [fix(i, 0, 0) for i in range(5)])
    assert feed(rules, [fix(100 + i, 10, 0) for i in range(5)]) == []
    events = feed(rules, line(105, 10, 0, 400, 0, 40))
    assert [dict(e.body) for e in events] == [{"fence": "a", "name": "A", "transition": "exit"}]


def test_outage_outside_then_inside_enters_with_after_gap() -> None:
    rules = Rules(config(), zones(A))
    feed(rules, [fix(i, 400, 0) for i in range(5)])
    events = feed(rules, [fix(200 + i, 0, 0) for i in range(5)])
    assert [dict(e.body) for e in events] == [
        {"fence": "a", "name": "A", "transition": "enter", "after_gap": True}]


def test_no_crossing_is_invented_across_a_gap() -> None:
    rules = Rules(config(), zones(A))
    events = feed(rules, [fix(0, -400, 0), fix(1, -390, 0), fix(100, 400, 0), fix(101, 410, 0)])
    assert events == []


def test_reordered_fixes_are_dropped_and_counted() -> None:
    clean = line(0, -300, 0, 300, 0, 61)
    shuffled = list(clean)
    # a late fix from inside the fence arrives after the car left; a duplicate too
    shuffled.insert(50, clean[30])
    shuffled.insert(20, clean[19])
    a = Rules(config(), zones(A))
    b = Rules(config(), zones(A))
    assert transitions(feed(b, shuffled)) == transitions(feed(a, clean)) == [
        ("a", "enter"), ("a", "exit")]
    assert b.health()["inputs"]["reordered_fixes"] == 2


def test_dwell_once_per_stay() -> None:
    rules = Rules(config(), zones(square("a", 0, 0, 100, dwell_s=60)))
    events = feed(rules, line(0, -200, 0, 0, 0, 21) + [fix(21 + i, 0, 0) for i in range(200)]
                  + line(221, 0, 0, 300, 0, 31) + line(252, 300, 0, 0, 0, 31)
                  + [fix(283 + i, 0, 0) for i in range(70)])
    tr = [(e.time - T0, e.body["transition"]) for e in events]
    assert [k for _, k in tr] == ["enter", "dwell", "exit", "enter", "dwell"]
    assert tr[1][0] - tr[0][0] == pytest.approx(60, abs=1)


def test_hysteresis_follows_hdop_when_not_configured() -> None:
    rules = Rules(config(geofence={"hysteresis_m": None}), zones(A))
    feed(rules, [fix(i, 0, 0, hdop=3.0) for i in range(5)])
    assert rules.health()["geofence"]["hysteresis_m"] == 30.0
    # 25 m outside with HDOP 3: still inside the grown fence, no exit
    assert feed(rules, [fix(5 + i, 125, 0, hdop=3.0) for i in range(10)]) == []
    # with a good fix the hysteresis is 10 m (floor 5): the same place is an exit
    events = feed(rules, [fix(15 + i, 125, 0, hdop=1.0) for i in range(5)])
    assert transitions(events) == [("a", "exit")]


@pytest.mark.parametrize("x0", [-125.0, -137.5], ids=["one fix inside", "no fix inside"])
def test_small_circle_passed_at_speed_is_crossed(x0: float) -> None:
    rules = Rules(config(), zones(circle("kiosk", 0, 0, 8)))
    events = feed(rules, line(0, x0, 3, x0 + 250, 3, 11))  # 25 m/s, 1 Hz
    assert [dict(e.body) for e in events] == [
        {"fence": "kiosk", "name": "Kiosk", "transition": "crossed"}]


def test_events_carry_last_valid_fix_position_rounded() -> None:
    rules = Rules(config(), zones(A))
    (ev,) = feed(rules, [fix(i, 0, 0) for i in range(3)])
    last = fix(2, 0, 0)
    assert ev.lat == round(last.lat or 0, 7) and ev.lon == round(last.lon or 0, 7)


def test_antimeridian_fences_from_file() -> None:
    z = load_zones(DATA / "antimeridian.geojson")
    rules = Rules(config(), z)
    # drive east along lat -16.79 from 179.98 to -179.98 (crosses 180)
    fixes = []
    for i in range(41):
        lon = 179.98 + i * 0.001
        lon = (lon + 180.0) % 360.0 - 180.0
        fixes.append(Fix(time=T0 + i * 3, lat=-16.79, lon=lon, hdop=1.0, valid=True, mode=3))
    events = feed(rules, fixes)
    assert transitions(events) == [("taveuni", "enter"), ("taveuni", "exit")]
    enter, exit_ = events
    # the fence spans 179.99..180.01: entry west of 180, exit east of it
    assert enter.lon is not None and 179.99 < enter.lon < 180.0
    assert exit_.lon is not None and -179.99 < exit_.lon < -179.98


def test_antimeridian_split_multipolygon_is_one_fence() -> None:
    z = load_zones(DATA / "antimeridian.geojson")
    rules = Rules(config(), z)
    fixes = [Fix(time=T0 + i * 3, lat=-16.69, lon=((179.985 + i * 0.001 + 180) % 360) - 180,
                 hdop=1.0, valid=True, mode=3) for i in range(31)]
    assert transitions(feed(rules, fixes)) == [("split", "enter"), ("split", "exit")]


def test_parked_inside_circle_on_the_antimeridian() -> None:
    z = load_zones(DATA / "antimeridian.geojson")
    rules = Rules(config(), z)
    fixes = [Fix(time=T0 + i, lat=-16.60, lon=-179.999 if i % 2 else 179.999, hdop=1.0,
                 valid=True, mode=3) for i in range(10)]
    assert transitions(feed(rules, fixes)) == [("dateline-circle", "inside")]


def test_invalid_fixes_for_gap_s_make_state_unknown() -> None:
    rules = Rules(config(), zones(A))
    feed(rules, [fix(i, 0, 0) for i in range(5)])
    # the receiver keeps talking but has no fix (tunnel): 40 s of invalid fixes
    feed(rules, [fix(5 + i, 0, 0, valid=False) for i in range(40)])
    assert rules.health()["geofence"]["state"] == "unknown"
    events = feed(rules, [fix(45 + i, 600, 0) for i in range(4)])
    assert [dict(e.body) for e in events] == [
        {"fence": "a", "name": "A", "transition": "exit", "after_gap": True}]


def test_reload_with_a_moved_fence_keeps_its_state_then_exits_normally() -> None:
    rules = Rules(config(), zones(A))
    feed(rules, [fix(i, 0, 0) for i in range(5)])
    assert rules.reload(zones(square("a", 1000, 0, 100))) == []  # same id: no new "inside"
    events = feed(rules, [fix(5 + i, 0, 0) for i in range(4)])
    assert [dict(e.body) for e in events] == [{"fence": "a", "name": "A", "transition": "exit"}]


# --- the tracker's skip: the same answer again, no timer due, changes nothing ---------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.tuples(
        st.sampled_from([0.05, 0.1, 0.3, 0.7, 1.0, 2.9999999, 3.0, 40.0]),  # time step
        st.sets(st.integers(0, 3), max_size=3),  # inside
        st.sets(st.integers(0, 3), max_size=2),  # near beyond inside
        st.booleans(),  # same answer as the step before
        st.booleans(),  # a gap is marked before it
    ), min_size=1, max_size=40),
    debounce=st.sampled_from([0.0, 0.3, 2.0]),
    t0=st.sampled_from([0.0, 1_750_000_000.0, 1_750_000_000.1]),
)
# near at boot, a gap, clearly out (state known, still stale), the same answer (the full
# pass settles the stale state), then in: an ordinary enter, not "after_gap"
@example(steps=[(1.0, set(), {0}, False, False), (1.0, set(), set(), False, True),
                (1.0, set(), set(), True, False), (1.0, {0}, set(), False, False)],
         debounce=0.0, t0=0.0)
# the debounce deadline met by the same answer exactly (1.3 - 1.0 >= 0.3 in floats)
@example(steps=[(1.0, {0}, set(), False, False), (0.3, set(), set(), True, False)],
         debounce=0.3, t0=0.0)
def test_skipping_a_repeated_answer_changes_no_transition(
        steps: list[tuple[float, set[int], set[int], bool, bool]], debounce: float,
        t0: float) -> None:
    """Fed the same answers at the same times, a tracker that may skip (answer unchanged,
    no debounce or dwell deadline reached) reports exactly what one that always runs
    the full pass reports, dwell and timer edges (fractional times) included."""
    from edge.core.geofence import GeofenceTracker

    zs = zones(square("f0", 0, 0, 50, dwell_s=2.0), square("f1", 0, 0, 60),
               circle("f2", 30, 0, 40, dwell_s=0.3), square("f3", 500, 0, 20))
    cfg = config(geofence={"debounce_s": debounce}).geofence
    skipping, full = GeofenceTracker(cfg, zs), GeofenceTracker(cfg, zs)
    t = t0
    inside: list[int] = []
    near: list[int] = []
    got: list[list[tuple[str, str, bool]]] = [[], []]
    for dt, ins, nr, same, gap in steps:
        t += dt
        if not same:
            inside, near = sorted(ins), sorted(ins | nr)
        for k, tracker in enumerate((skipping, full)):
            if gap:
                tracker.mark_gap()
            if k == 1:
                tracker.quiet_until = -math.inf  # never skips
            got[k] += [(tr.zone.id, tr.transition, tr.after_gap)
                       for tr in tracker.update(t, inside, near)]
    assert got[0] == got[1]
