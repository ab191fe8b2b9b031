"""A real ``edge run`` process polling OBD-II through an slcan adapter on a pty: the
engine speed and coolant temperature the ECU answers reach published telemetry under
their VSS names (through the engine, as ``edge replay`` of a recorded log has them)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sim.slcan import SlcanPtyAdapter

RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
ECT = "Vehicle.Powertrain.CombustionEngine.ECT"


def _ecu(ad: SlcanPtyAdapter) -> Any:
    def answer(arb: int, data: bytes, extended: bool) -> None:
        if arb != 0x7DF or data[1] != 0x01:
            return
        pid = data[2]
        value = {0x0D: bytes([36]), 0x0C: (3000 * 4).to_bytes(2, "big"),
                 0x05: bytes([90 + 40])}.get(pid)
        if value is not None:
            body = bytes([2 + len(value), 0x41, pid, *value])
            ad.send(0x7E8, body + b"\x55" * (8 - len(body)))

    return answer


def _telemetry(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            payload = json.loads(line)["payload"]
        except (ValueError, KeyError):
            continue  # a line being written
        for p in payload if isinstance(payload, list) else [payload]:
            if isinstance(p, dict) and p.get("type") == "telemetry":
                out.append(p)
            elif isinstance(p, dict) and isinstance(p.get("records"), list):
                out.extend(r for r in p["records"] if r.get("type") == "telemetry")
    return out


def test_obd_engine_signals_reach_published_telemetry(tmp_path: Path) -> None:
    ad = SlcanPtyAdapter()
    ad.on_frame = _ecu(ad)
    published = tmp_path / "published.jsonl"
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f"""thing = "car-obd"
[can]
interface = "slcan"
channel = "{ad.path}"
mode = "obd"
obd_interval_s = 0.1
slcan_open_delay_s = 0.0
[telemetry]
interval_s = 1
[uplink]
kind = "file"
path = "{published}"
[outbox]
path = "{tmp_path / 'outbox.db'}"
[health]
path = "{tmp_path / 'health.json'}"
interval_s = 1
""")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        records: list[dict[str, Any]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            records = [r for r in _telemetry(published) if RPM in r and ECT in r]
            if records:
                break
            time.sleep(0.2)
        assert records, (proc.poll(), _telemetry(published)[-3:])
        r = records[-1]
        assert r[RPM] == 3000.0 and r[ECT] == 90.0
        assert r["Vehicle.Speed"] == 36.0 and r["speed_source"] == "obd"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        ad.close()
    assert proc.returncode == 0, err.decode()[-2000:]
    health = json.loads((tmp_path / "health.json").read_text())
    assert health["can"]["emit_errors"] == 0 and health["can"]["obd"]["rpm"] == 3000.0
