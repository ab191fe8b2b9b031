"""The engine's clock contract: GNSS time when a valid fix exists, system time flagged."""

from __future__ import annotations

import json

from edge.config import config_from_dict
from edge.core.engine import Engine
from edge.model import Fix, SignalSample, SpeedSample

GNSS_T0 = 1_778_000_000.0  # May 2026
SYSTEM_T0 = GNSS_T0 + 200 * 86400  # a Pi without RTC whose clock is 200 days off


def fix(t: float, mono: float, lat: float = 48.0) -> Fix:
    return Fix(time=t, lat=lat, lon=11.0, speed_mps=20.0, course_deg=0.0, mode=3, hdop=0.8,
               sats=10, quality=1, valid=True, mono=mono)


def engine() -> Engine:
    cfg = config_from_dict({"thing": "car", "rules": {"speed": {
        "limit_kmh": 50, "min_duration_s": 2}}, "can": {"stale_s": 1.0}})
    return Engine(cfg, seed=1)


def payloads(envs) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [json.loads(e.to_bytes()) for e in envs]


def test_can_before_the_first_fix_then_gnss_time_takes_over() -> None:
    e = engine()
    out = []
    # 3 s of CAN at 10 Hz before any fix: stamped with the (wrong) system clock
    for i in range(30):
        out += e.on_speed(SpeedSample(time=SYSTEM_T0 + i / 10, speed_kmh=30.0, source="can",
                                      mono=i / 10))
    pre = payloads(out)
    assert pre and all(p.get("clock") == "system" for p in pre)
    # the first valid fix: the time base steps back 200 days
    out = []
    for k in range(30):
        mono = 3.0 + k
        out += e.on_fix(fix(GNSS_T0 + k, mono, 48.0 + k * 1e-4))
        for j in range(10):
            out += e.on_speed(SpeedSample(time=SYSTEM_T0 + mono + j / 10, speed_kmh=80.0,
                                          source="can", mono=mono + j / 10))
    post = payloads(out)
    assert e.counts["clock_steps"] == 1
    assert abs(e.clock_step_s + 200 * 86400 + 3) < 5  # type: ignore[operator]
    tel = [p for p in post if p["type"] == "telemetry"]
    assert len(tel) >= 25, "telemetry keeps flowing on GNSS time"
    assert all(abs(p["ts"] / 1000 - GNSS_T0) < 60 for p in tel)
    over = [p for p in post if p["type"] == "overspeed"]
    assert over and over[0]["phase"] == "start" and "clock" not in over[0]
    assert abs(over[0]["ts"] / 1000 - GNSS_T0) < 60, "alert stamped with GNSS time"
    # an episode opened on the system clock is closed, not left dangling
    trips = [p for p in pre + post if p["type"] == "trip"]
    if trips and trips[0].get("clock") == "system":
        ends = [t for t in trips if t["phase"] == "end" and t.get("reason") == "clock_step"]
        assert ends


def test_no_step_when_the_system_clock_agrees() -> None:
    e = engine()
    for i in range(10):
        e.on_speed(SpeedSample(time=GNSS_T0 - 1 + i / 10, speed_kmh=30.0, source="can",
                               mono=i / 10))
    e.on_fix(fix(GNSS_T0, 1.0))
    assert e.counts["clock_steps"] == 0


RPM = "Vehicle.Powertrain.CombustionEngine.Speed"


def test_telemetry_carries_bus_signals_until_they_go_stale() -> None:
    e = engine()
    assert e.on_signal(SignalSample(time=GNSS_T0 - 0.5, name=RPM, value=2110.0)) == []
    out = payloads(e.on_fix(fix(GNSS_T0, 1.0)))
    tel = [p for p in out if p["type"] == "telemetry"]
    assert tel and tel[0][RPM] == 2110.0
    # the ECU stopped answering: 10 s on, the value is no longer reported
    later = [p for i in range(1, 13) for p in payloads(e.on_fix(fix(GNSS_T0 + i, 1.0)))
             if p["type"] == "telemetry"]
    assert later[0][RPM] == 2110.0
    assert RPM not in later[-1]


def test_a_wrong_dbc_scale_raises_one_diagnostic_and_overspeed_follows_gnss() -> None:
    """The issue's report: the DBC's speed scale doubled (CAN ~86 km/h, GNSS ~43), a
    50 km/h limit. Once they disagreed for can.disagree_s the rules get GNSS speed:
    the overspeed episode CAN started ends, no new one starts, one diagnostic alert."""
    cfg = config_from_dict({"thing": "car", "rules": {"speed": {
        "limit_kmh": 50, "min_duration_s": 2, "end_after_s": 2}},
        "can": {"stale_s": 1.0, "disagree_kmh": 15, "disagree_s": 10}})
    e = Engine(cfg, seed=1)
    out = []
    for k in range(60):
        out += e.on_fix(Fix(time=GNSS_T0 + k, lat=48.0 + k * 1e-4, lon=11.0,
                            speed_mps=43.0 / 3.6, mode=3, hdop=0.8, valid=True, mono=k))
        for j in range(10):
            out += e.on_speed(SpeedSample(time=GNSS_T0 + k + j / 10, speed_kmh=86.0,
                                          source="can", mono=k + j / 10))
    ps = payloads(out)
    diags = [p for p in ps if p["type"] == "diagnostic"]
    assert [d["phase"] for d in diags] == ["start"]
    assert diags[0]["can_kmh"] == 86.0 and diags[0]["gnss_kmh"] == 43.0
    assert out[[p["type"] for p in ps].index("diagnostic")].lane.name == "ALERT"
    over = [p for p in ps if p["type"] == "overspeed"]
    # the episode CAN started before the disagreement was established ends on GNSS
    assert [(o["phase"], o["speed_source"]) for o in over] == [("start", "can"),
                                                               ("end", "gnss")]
    assert e.health()["speed"]["source"] == "gnss"


def test_reconfigure_switches_rules_telemetry_and_arbiter_and_keeps_the_config() -> None:
    import dataclasses

    e = engine()
    old_rules, old_arbiter = e.rules, e.arbiter
    cfg = e.config
    # telemetry interval only: rules and arbiter untouched
    new = dataclasses.replace(cfg, telemetry=dataclasses.replace(cfg.telemetry, interval_s=5.0))
    assert e.reconfigure(new) == []
    assert e.telemetry.interval_s == 5.0 and e.rules is old_rules and e.arbiter is old_arbiter
    assert e.config is new
    # a [can] threshold: a new arbiter with it
    new = dataclasses.replace(new, can=dataclasses.replace(new.can, stale_s=2.5))
    e.reconfigure(new)
    assert e.arbiter is not old_arbiter and e.rules is old_rules
    # a speed limit: the rules start over under it
    new = dataclasses.replace(new, rules=dataclasses.replace(
        new.rules, speed=dataclasses.replace(new.rules.speed, limit_kmh=30)))
    e.reconfigure(new)
    assert e.rules is not old_rules and e.config.rules.speed.limit_kmh == 30


def test_reconfigure_with_new_zones_alone_keeps_the_rule_state() -> None:
    from edge.core.zones import parse_zones

    e = engine()
    for k in range(5):
        e.on_fix(fix(GNSS_T0 + k, 1.0 + k, 48.0 + k * 1e-4))
    rules = e.rules
    circle = parse_zones({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"id": "town", "radius_m": 5000},
        "geometry": {"type": "Point", "coordinates": [11.0, 48.0]}}]})
    out = payloads(e.reconfigure(e.config, zones=circle))
    assert e.rules is rules  # same rules, other zones: swapped in, state carried over
    assert [(p["fence"], p["transition"]) for p in out if p["type"] == "geofence"] == [
        ("town", "inside")]


def test_a_rules_reload_mid_trip_carries_the_trip_and_the_overspeed_episode_on() -> None:
    """A configuration push while the car drives (a Greengrass merge, a new tolerance) is
    no new trip and no second overspeed start: the rules' state carries over into the
    rules rebuilt under the new settings, as it does across a restart."""
    import dataclasses

    e = engine()
    before = [p for k in range(10)
              for p in payloads(e.on_fix(fix(GNSS_T0 + k, 1.0 + k, 48.0 + k * 2e-4)))]
    kinds = [(p["type"], p.get("phase")) for p in before]
    assert kinds.count(("trip", "start")) == 1 and kinds.count(("overspeed", "start")) == 1
    cfg = e.config
    new = dataclasses.replace(cfg, rules=dataclasses.replace(
        cfg.rules, poi=dataclasses.replace(cfg.rules.poi, cooldown_s=60.0),
        speed=dataclasses.replace(cfg.rules.speed, tolerance_kmh=1.0)))
    rules = e.rules
    after = payloads(e.reconfigure(new))
    assert e.rules is not rules and e.rules.speed.episodes == 1
    after += [p for k in range(10, 20)
              for p in payloads(e.on_fix(fix(GNSS_T0 + k, 1.0 + k, 48.0 + k * 2e-4)))]
    phases = [(p["type"], p.get("phase")) for p in after if p["type"] in ("trip", "overspeed")]
    assert phases == [], phases  # the same trip and episode go on
    closing = payloads(e.close(GNSS_T0 + 20))
    trip_end = [p for p in closing if p["type"] == "trip" and p["phase"] == "end"]
    assert len(trip_end) == 1 and trip_end[0]["start_ts"] == before[
        kinds.index(("trip", "start"))]["start_ts"]
