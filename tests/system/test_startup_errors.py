"""A config that cannot run here: one message naming the field, exit 2, no traceback --
from `edge check-config` and from `edge run` alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DBC = ROOT / "sim" / "dbc" / "demo.dbc"


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True,
                          timeout=60)


CASES = {
    "unknown DBC signal": ("can.speed_signal", f'''
[can]
interface = "virtual"
dbc = "{DBC}"
speed_signal = "VEHICLE_SPEED.NO_SUCH_SIGNAL"
'''),
    "missing DBC": ("can.dbc", '''
[can]
interface = "virtual"
dbc = "nowhere.dbc"
speed_signal = "VEHICLE_SPEED.SPEED_KMH"
'''),
    "broken zones": ("rules.zones", '''
[rules]
zones = "zones.geojson"
'''),
    "missing client cert": ("uplink.cert", '''
[uplink]
kind = "mqtt"
cert = "nowhere.pem"
key = "key.pem"
'''),
    "missing road index": ("roads.index", '''
[roads]
index = "nowhere.db"
'''),
    "not a road index": ("roads.index", '''
[roads]
index = "cert.pem"
'''),
    "world-readable key": ("uplink.key", '''
[uplink]
kind = "mqtt"
cert = "cert.pem"
key = "key.pem"
'''),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_runtime_config_is_one_clear_message(tmp_path: Path, case: str, command: str) -> None:
    field, section = CASES[case]
    (tmp_path / "zones.geojson").write_text('{"type": "FeatureCollection", "features": [7]}')
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    os.chmod(tmp_path / "key.pem", 0o644)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'thing = "car"\n[outbox]\npath = "{tmp_path / "o.db"}"\n{section}')
    r = edge(command, "--config", str(cfg)) if command == "run" else edge(command, str(cfg))
    assert r.returncode == 2, r.stderr
    assert field in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_accepts_the_bundled_drive_configs() -> None:
    for drive in ("city", "faults"):
        r = edge("check-config", str(ROOT / "sim" / "drives" / drive / "config.toml"))
        assert r.returncode == 0, r.stderr
