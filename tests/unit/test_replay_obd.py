"""`edge replay` of a drive recorded in OBD-II mode: the ECU's answers give the speed,
and engine speed and coolant temperature reach telemetry through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.commands.replay import main
from edge.config import config_from_dict

T0 = 1_790_000_000.0
RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
ECT = "Vehicle.Powertrain.CombustionEngine.ECT"


def test_edge_replay_of_an_obd_log_has_engine_signals_in_telemetry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    lines = []
    for k in range(40):  # 10 Hz: a request, then one answer (speed, rpm or coolant)
        t = T0 + k / 10
        pid, value = [(0x0D, bytes([30 + k])), (0x0C, (2000 * 4 + 40 * k).to_bytes(2, "big")),
                      (0x05, bytes([40 + 85]))][k % 3]
        lines.append(f"({t:.6f}) can0 7DF#0201{pid:02X}5555555555")
        body = bytes([2 + len(value), 0x41, pid, *value])
        lines.append(f"({t + 0.005:.6f}) can0 7E8#{(body + bytes(8 - len(body))).hex().upper()}")
    (drive / "can.log").write_text("\n".join(lines) + "\n")
    cfg = config_from_dict({"thing": "car", "can": {"interface": "virtual", "mode": "obd"},
                            "telemetry": {"interval_s": 1}})
    out = tmp_path / "out.jsonl"
    assert main(drive, cfg, out=out) == 0
    records = [json.loads(line)["payload"] for line in out.read_text().splitlines()]
    telemetry = [r for r in records if r["type"] == "telemetry"]
    # a record per second of bus time, paced by the speed answers (k = 0, 3, ..., 39):
    # each carries the last engine speed and coolant answered before it
    assert [(r.get(RPM), r.get(ECT), r["Vehicle.Speed"]) for r in telemetry] == [
        (None, None, 30.0), (2100.0, 85.0, 42.0), (2190.0, 85.0, 51.0), (2280.0, 85.0, 60.0)]
    assert {r["speed_source"] for r in telemetry} == {"obd"}
    assert ", 26 engine signal samples" in capsys.readouterr().err
