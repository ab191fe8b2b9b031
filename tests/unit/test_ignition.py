"""Trips follow the ignition signal when `[can] ignition_signal` is configured."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from edge.config import config_from_dict
from edge.core.canspeed import MultiDecoder
from edge.errors import ConfigError
from edge.model import Ignition, SpeedSample
from edge.replay import replay_events
from edge.sources.dbc import decoder_for, ignition_decoder
from tests.support.nmea import T0, epoch

DBC = """VERSION ""
NS_ :
BS_:
BU_: ABS BODY GW
BO_ 1001 VEHICLE_SPEED: 8 ABS
 SG_ SPEED_KMH : 0|16@1+ (0.01,0) [0|655.35] "km/h" GW
BO_ 800 BODY_STATUS: 2 BODY
 SG_ IGNITION_ON : 0|1@1+ (1,0) [0|1] "" GW
 SG_ DOORS_OPEN : 8|4@1+ (1,0) [0|15] "" GW
"""


@pytest.fixture
def dbc(tmp_path: Path) -> Path:
    p = tmp_path / "car.dbc"
    p.write_text(DBC)
    return p


def can_cfg(dbc: Path, **kw: object) -> object:
    cfg = config_from_dict({"thing": "car", "can": {
        "interface": "virtual", "dbc": str(dbc), "speed_signal": "VEHICLE_SPEED.SPEED_KMH",
        **kw}})
    return cfg.can


def test_ignition_decoder_reports_changes_only(dbc: Path) -> None:
    d = ignition_decoder(dbc, "BODY_STATUS.IGNITION_ON")
    got = [d.decode(800, bytes([on, 0]), float(i), float(i))
           for i, on in enumerate([0, 0, 1, 1, 1, 0])]
    assert [g.on if isinstance(g, Ignition) else None for g in got] == [
        False, None, True, None, None, False]


def test_decoder_for_combines_speed_and_ignition(dbc: Path) -> None:
    d = decoder_for(can_cfg(dbc, ignition_signal="BODY_STATUS.IGNITION_ON"))
    assert isinstance(d, MultiDecoder) and d.frame_ids == {800, 1001}
    s = d.decode(1001, (5000).to_bytes(2, "little") + bytes(6), 1.0, 1.0)
    assert isinstance(s, SpeedSample) and s.speed_kmh == pytest.approx(50.0)
    assert isinstance(d.decode(800, b"\x01\x00", 1.0, 1.0), Ignition)


def test_ignition_in_the_speed_message_is_refused(dbc: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        decoder_for(can_cfg(dbc, ignition_signal="VEHICLE_SPEED.SPEED_KMH"))
    assert ei.value.field == "can.ignition_signal"


def test_config_checks_the_ignition_signal() -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"thing": "c", "can": {"ignition_signal": "NODOT"}})
    assert ei.value.field == "can.ignition_signal"


def test_replay_trip_follows_ignition(tmp_path: Path, dbc: Path) -> None:
    """The car idles with the ignition on (a trip by ignition, not by movement), then
    ignition off ends it at once instead of after trip.end_s of standstill."""
    drive = tmp_path / "drive"
    drive.mkdir()
    with (drive / "gnss.nmea").open("wb") as f:
        for i in range(60):
            f.write(epoch(T0 + timedelta(seconds=i), 48.0 + (i * 1e-4 if i < 30 else 30e-4),
                          11.0, 36.0 if i < 30 else 0.0))
    t0 = T0.timestamp()
    lines = []
    for k in range(600):  # 10 Hz speed, ignition status every 0.5 s
        t = t0 + k / 10
        kmh = 36.0 if k < 300 else 0.0
        lines.append(f"({t:.6f}) can0 3E9#{int(kmh * 100).to_bytes(2, 'little').hex().upper()}"
                     "000000000000")
        if k % 5 == 0:
            on = 1 if 20 <= k < 450 else 0
            lines.append(f"({t + 0.001:.6f}) can0 320#{on:02X}00")
    (drive / "can.log").write_text("\n".join(lines) + "\n")
    cfg = config_from_dict({
        "thing": "car",
        "can": {"interface": "virtual", "dbc": str(dbc),
                "speed_signal": "VEHICLE_SPEED.SPEED_KMH",
                "ignition_signal": "BODY_STATUS.IGNITION_ON"},
        "rules": {"trip": {"end_s": 300}},
    })
    trips = [json.loads(e.to_bytes()) for e in replay_events(drive, cfg) if e.type == "trip"]
    assert [t["phase"] for t in trips] == ["start", "end"]
    assert trips[0]["ts"] / 1000 == pytest.approx(t0 + 2.0, abs=0.2)
    assert trips[1]["reason"] == "ignition"
    assert trips[1]["ts"] / 1000 == pytest.approx(t0 + 45.0, abs=0.2)
