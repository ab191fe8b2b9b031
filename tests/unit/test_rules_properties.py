"""Property tests: whatever the fixes and samples, the event stream stays coherent.

* every ``enter``/``inside`` is followed by an ``exit``, or the drive ends inside
  (and health says so); ``exit``/``dwell`` only while inside, ``crossed`` only outside;
* overspeed and trip phases alternate start/end, and ``close`` leaves nothing open;
* events are monotone in time and deterministic.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.geofence import GeofenceTracker
from edge.core.rules import Rules
from edge.model import Event
from tests.support.rules_kit import T0, circle, config, fix, speed, square, zones

ZONES = zones(
    square("a", 0, 0, 60, dwell_s=20),
    square("b", 50, 0, 40),
    circle("c", -80, 40, 15),
    circle("slow", 0, 0, 150, kind="speed", maxspeed=30),
    circle("poi", 60, 60, 30, offer="coffee"),
)

step = st.tuples(
    st.sampled_from(["fix", "fix", "fix", "speed", "speed", "speed", "tick", "late"]),
    st.sampled_from([0.04, 0.1, 0.5, 1.0, 1.0, 1.0, 2.0, 5.0, 45.0]),  # dt; 45 s is a gap
    st.floats(-30.0, 30.0),  # dx
    st.floats(-30.0, 30.0),  # dy
    st.booleans(),  # valid
    st.sampled_from([None, 0.8, 1.5, 4.0]),  # hdop
    st.floats(-15.0, 15.0),  # speed change, km/h
)

PROFILE = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


def run(steps: list[tuple[Any, ...]], **cfg: Any) -> tuple[Rules, list[Event]]:
    cfg.setdefault("speed", {"min_duration_s": 1.0, "end_after_s": 1.0})
    rules = Rules(config(**cfg), ZONES)
    out: list[Event] = []
    t = x = y = kmh = 0.0
    for kind, dt, dx, dy, valid, hdop, dv in steps:
        t += dt
        kmh = max(0.0, min(130.0, kmh + dv))
        if kind == "fix":
            x = max(-300.0, min(300.0, x + dx))
            y = max(-300.0, min(300.0, y + dy))
            out += rules.on_fix(fix(t, x, y, hdop=hdop, valid=valid or dt > 1,
                                    speed_mps=kmh / 3.6))
        elif kind == "late":
            out += rules.on_fix(fix(t - 2 * dt, x + dx, y + dy, hdop=hdop))
        elif kind == "speed":
            out += rules.on_speed(speed(t, kmh))
        else:
            out += rules.tick(T0 + t)
    out += rules.close(T0 + t + 1)
    return rules, out


def check(rules: Rules, events: list[Event]) -> None:
    times = [e.time for e in events]
    assert times == sorted(times)
    inside: dict[str, bool] = {}
    for e in events:
        b = e.body
        assert "type" not in b
        if e.kind == "geofence":
            f, tr = b["fence"], b["transition"]
            if tr in ("enter", "inside"):
                assert not inside.get(f), (f, tr)
                inside[f] = True
            elif tr in ("exit", "dwell"):
                assert inside.get(f), (f, tr)
                if tr == "exit":
                    inside[f] = False
            else:
                assert tr == "crossed" and not inside.get(f)
    still = sorted(f for f, v in inside.items() if v)
    assert still == rules.health()["geofence"]["inside"]
    for kind in ("overspeed", "trip"):
        phases = [e.body["phase"] for e in events if e.kind == kind]
        assert phases == ["start", "end"] * (len(phases) // 2), (kind, phases)


@PROFILE
@given(st.lists(step, max_size=120))
def test_event_stream_is_coherent(steps: list[tuple[Any, ...]]) -> None:
    rules, events = run(steps)
    check(rules, events)


@PROFILE
@given(st.lists(step, max_size=80))
def test_coherent_without_debounce_or_hysteresis(steps: list[tuple[Any, ...]]) -> None:
    rules, events = run(steps, geofence={"debounce_s": 0.0, "hysteresis_m": 0.0},
                        speed={"min_duration_s": 0.0, "end_after_s": 0.0})
    check(rules, events)


@settings(max_examples=30, deadline=None)
@given(st.lists(step, max_size=80))
def test_deterministic(steps: list[tuple[Any, ...]]) -> None:
    assert run(steps)[1] == run(steps)[1]


@st.composite
def drives(draw: st.DrawFn) -> list[tuple[str, float, float, float, float | None, float]]:
    """A car driving between waypoints at 1 Hz with GNSS noise, outages and speed frames:
    (kind, t, x, y, hdop, km/h)."""
    rnd = draw(st.randoms(use_true_random=False))
    waypoints = draw(st.lists(st.tuples(st.floats(-250, 250), st.floats(-250, 250)),
                              min_size=2, max_size=8))
    sigma = draw(st.sampled_from([0.0, 2.0, 6.0]))

    def noise() -> float:
        return max(-4 * sigma, min(4 * sigma, rnd.gauss(0, sigma)))

    v = draw(st.sampled_from([3.0, 8.0, 15.0, 30.0]))
    out: list[tuple[str, float, float, float, float | None, float]] = []
    t = 0.0
    (x, y) = waypoints[0]
    for tx, ty in [*waypoints[1:], waypoints[-1]]:
        while True:
            d = ((tx - x) ** 2 + (ty - y) ** 2) ** 0.5
            step_ = min(v, d)
            if d > 0:
                x += (tx - x) / d * step_
                y += (ty - y) / d * step_
            t += rnd.choice([1.0] * 30 + [40.0])  # now and then an outage
            kmh = step_ * 3.6
            out.append(("speed", t - 0.5, 0.0, 0.0, None, kmh * rnd.uniform(0.9, 1.6)))
            out.append(("fix", t, x + noise(), y + noise(), rnd.choice([0.8, 1.2, None]), kmh))
            if d <= v:
                break
        for _ in range(rnd.randint(0, 30)):  # a stop
            t += 1.0
            out.append(("fix", t, x + noise(), y + noise(), 1.0, 0.0))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drives())
def test_drives_are_coherent(drive: list[tuple[Any, ...]]) -> None:
    rules = Rules(config(speed={"min_duration_s": 1.0, "end_after_s": 1.0},
                         trip={"end_s": 20.0}), ZONES)
    events = feed_drive(rules, drive)
    events += rules.close(T0 + drive[-1][1] + 1)
    check(rules, events)


def feed_drive(rules: Rules, drive: list[tuple[Any, ...]], tick: bool = False) -> list[Event]:
    events: list[Event] = []
    for kind, t, x, y, hdop, kmh in drive:
        if kind == "fix":
            events += rules.on_fix(fix(t, x, y, hdop=hdop))
        else:
            events += rules.on_speed(speed(t, kmh))
            if tick:
                events += rules.tick(T0 + t)
    return events


class _NoShortcut(GeofenceTracker):
    """The tracker without its 'same answer, nothing pending' shortcut."""

    def update(self, *args: Any, **kwargs: Any) -> Any:
        self._quiet = False
        return super().update(*args, **kwargs)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drives(), st.sampled_from([0.0, 2.0]))
def test_the_geofence_shortcut_changes_nothing(drive: list[tuple[Any, ...]],
                                               debounce: float) -> None:
    out = []
    for shortcut in (True, False):
        rc = config(geofence={"debounce_s": debounce, "gap_s": 30.0})
        rules = Rules(rc, ZONES)
        if not shortcut:
            rules.geofence = _NoShortcut(rc.geofence, ZONES)
        out.append(feed_drive(rules, drive, tick=True))
    assert out[0] == out[1]
