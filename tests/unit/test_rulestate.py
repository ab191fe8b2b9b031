"""Rule state across a restart (``edge.core.rulestate`` through the engine): a restart
within ``rules.trip.resume_gap_s`` continues the trip, offers no POI twice and opens no
second overspeed episode; a longer one ends the old trip with ``power_loss``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge.config import config_from_dict
from edge.core.engine import Engine
from edge.model import Fix, SpeedSample
from edge.sources.zonesfile import load_zones

T0 = 1_778_000_000.0
LAT0, LON0 = 48.1351, 11.5820
STEP = 0.00018  # ~20 m per second: 72 km/h north
POIS = {"cafe": 44, "fuel": 90}  # the fix index at which the car passes each POI


def _zones(tmp: Path) -> Path:
    feats = [{"type": "Feature",
              "properties": {"id": pid, "name": pid, "radius_m": 100, "offer": {"t": pid}},
              "geometry": {"type": "Point", "coordinates": [LON0, LAT0 + k * STEP]}}
             for pid, k in POIS.items()]
    path = tmp / "zones.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def engine(tmp: Path) -> Engine:
    cfg = config_from_dict({"thing": "car", "rules": {
        "zones": str(_zones(tmp)), "speed": {"limit_kmh": 50, "min_duration_s": 2},
        "trip": {"resume_gap_s": 300}}})
    return Engine(cfg, zones=load_zones(cfg.rules.zones), seed=1)  # type: ignore[arg-type]


def fix(k: float) -> Fix:
    return Fix(time=T0 + k, lat=LAT0 + k * STEP, lon=LON0, speed_mps=20.0, course_deg=0.0,
               mode=3, hdop=0.8, sats=10, quality=1, valid=True, mono=k)


def drive(e: Engine, ks: range) -> list[dict[str, Any]]:
    out = []
    for k in ks:
        out += e.on_fix(fix(k))
    return [json.loads(x.to_bytes()) for x in out]


def kinds(ps: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [p for p in ps if p["type"] == kind and all(p.get(k) == v for k, v in match.items())]


def saved(e: Engine) -> dict[str, Any]:
    return dict(json.loads(json.dumps(e.snapshot())))  # as the outbox stores it


def test_a_restart_within_the_gap_continues_the_trip_and_offers_nothing_twice(
        tmp_path: Path) -> None:
    before = drive(a := engine(tmp_path), range(0, 46))
    (start,) = kinds(before, "trip", phase="start")
    assert [p["poi"] for p in kinds(before, "poi")] == ["cafe"]
    assert len(kinds(before, "overspeed", phase="start")) == 1
    doc = saved(a)  # the daemon was killed here; 3 s later it runs again

    b = engine(tmp_path)
    b.resume(doc)
    assert b.resume_pending
    after = drive(b, range(49, 120))  # still within the cafe's radius at first
    after += [json.loads(x.to_bytes()) for x in b.close(T0 + 120)]
    assert b.resume_summary is not None and b.resume_summary["resumed"] is True
    assert not kinds(after, "trip", phase="start")
    assert not kinds(after, "overspeed", phase="start")
    assert [p["poi"] for p in kinds(after, "poi")] == ["fuel"]  # cafe not again
    (end,) = kinds(after, "trip", phase="end")
    assert end["start_ts"] == start["start_ts"] and end["reason"] == "closed"
    # the distance before the restart counts; the 3 s gap does not
    assert end["distance_m"] == pytest.approx(20.0 * (45 + 119 - 49), rel=0.01)
    (ov_end,) = kinds(after, "overspeed", phase="end")
    assert ov_end["duration_s"] > 100  # one episode across the restart


def test_a_restart_after_a_long_gap_ends_the_old_trip_with_power_loss(tmp_path: Path) -> None:
    drive(a := engine(tmp_path), range(0, 46))
    doc = saved(a)
    b = engine(tmp_path)
    b.resume(doc)
    after = drive(b, range(45 + 900, 45 + 960))  # 15 min later
    (end,) = kinds(after, "trip", phase="end")
    assert end["reason"] == "power_loss"
    assert end["ts"] == round((T0 + 45) * 1000)  # when it was last seen
    assert end["distance_m"] == pytest.approx(20.0 * 45, rel=0.01)
    assert end["lat"] == pytest.approx(LAT0 + 45 * STEP, abs=1e-6)  # its last position
    (ov,) = kinds(after, "overspeed", phase="end")
    assert ov["reason"] == "power_loss"
    # then a new trip and a new episode, later in time than the old trip's end
    (start,) = kinds(after, "trip", phase="start")
    assert start["ts"] > end["ts"]
    assert len(kinds(after, "overspeed", phase="start")) == 1
    assert b.resume_summary is not None and b.resume_summary["resumed"] is False


def test_no_gnss_time_after_the_restart_ends_the_old_trip(tmp_path: Path) -> None:
    drive(a := engine(tmp_path), range(0, 46))
    b = engine(tmp_path)
    b.resume(saved(a))
    # CAN speed before any fix does not reach the rules (no time to measure the gap)
    assert b.on_speed(SpeedSample(time=T0 + 9e6, speed_kmh=90.0, source="can", mono=1.0)) == []
    assert b.tick(T0 + 9e6) == []
    assert b.snapshot()["trip"]["open"] is not None  # still what was saved
    out = [json.loads(x.to_bytes()) for x in b.resume_now(None)]
    assert [p["reason"] for p in kinds(out, "trip", phase="end")] == ["power_loss"]
    assert not b.resume_pending


def test_a_snapshot_from_other_code_restores_what_fits(tmp_path: Path) -> None:
    drive(a := engine(tmp_path), range(0, 46))
    doc = saved(a)
    doc["trip"]["open"] = {"start": "not-a-stats-record", "bogus": 1}
    doc["speed"]["open"] = {"unknown_field": 1}
    b = engine(tmp_path)
    b.resume(doc)
    after = drive(b, range(49, 60))
    assert b.resume_summary is not None
    assert set(b.resume_summary["skipped"]) >= {"overspeed"}
    assert not kinds(after, "poi")  # the POIs still restored


def test_time_going_backwards_is_not_a_continuation(tmp_path: Path) -> None:
    """The same recording replayed again on the same outbox: its first fix is older
    than the saved state; the old trip ends, the drive starts afresh (POIs offered)."""
    drive(a := engine(tmp_path), range(0, 46))
    b = engine(tmp_path)
    b.resume(saved(a))
    again = drive(b, range(0, 60))
    assert [p["reason"] for p in kinds(again, "trip", phase="end")] == ["power_loss"]
    assert len(kinds(again, "trip", phase="start")) == 1
    assert [p["poi"] for p in kinds(again, "poi")] == ["cafe"]


def test_an_older_snapshot_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    """The daemon's writer: telemetry held back by a full disk may commit after newer
    alerts; the rule state it carries is older and must not replace theirs."""
    from edge.daemon.ingest import RuleStates
    from edge.model import Envelope, Lane

    d = RuleStates()

    def e(i: int, lane: Lane) -> Envelope:
        return Envelope(id=f"e{i}", thing="car", type="t", ts=i, seq=i, topic="t",
                        lane=lane, body={})

    tel, alert = e(1, Lane.TELEMETRY), e(2, Lane.ALERT)
    d.by_env[id(tel)] = (1, {"old": True})
    d.by_env[id(alert)] = (2, {"new": True})
    n, state = d.of([alert])  # the alert commits first (telemetry held)
    assert (n, state) == (2, {"rules": {"new": True}})
    d.written = n
    assert d.of([tel]) == (2, None)  # later: the telemetry, without its state
    assert d.of([tel, alert]) == (2, None)
