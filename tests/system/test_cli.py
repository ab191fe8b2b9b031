"""The decode commands as a user runs them in a shell pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CITY = ROOT / "sim" / "drives" / "city"
EDGE = [sys.executable, "-m", "edge"]
DECODES = {
    "nmea": ["decode", "nmea", str(CITY / "gnss.nmea")],
    "can": ["decode", "can", str(CITY / "can.log"), "--dbc", str(ROOT / "sim/dbc/demo.dbc"),
            "--signal", "VEHICLE_SPEED.SPEED_KMH"],
}


@pytest.mark.parametrize("what", sorted(DECODES))
def test_decode_piped_into_head_is_quiet_and_succeeds(what: str) -> None:
    r = subprocess.run(
        " ".join([*EDGE, *DECODES[what]]) + " | head -n 1; exit ${PIPESTATUS[0]}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Broken pipe" not in r.stderr and "Traceback" not in r.stderr
    line = json.loads(r.stdout)
    assert ("lat" in line) if what == "nmea" else ("speed_kmh" in line and "t" in line)


def test_decode_contracts_on_the_bundled_drive() -> None:
    fixes = [json.loads(x) for x in subprocess.run(
        [*EDGE, *DECODES["nmea"]], capture_output=True, text=True, timeout=60,
        check=True).stdout.splitlines()]
    assert set(fixes[0]) == {"time", "lat", "lon", "speed_mps", "course_deg", "alt_m", "mode",
                             "hdop", "sats", "valid"}
    assert fixes[0]["time"].endswith("Z") and fixes[0]["mode"] in (0, 2, 3)
    samples = [json.loads(x) for x in subprocess.run(
        [*EDGE, *DECODES["can"]], capture_output=True, text=True, timeout=60,
        check=True).stdout.splitlines()]
    assert len(samples) > 1000
    ts = [s["t"] for s in samples]
    assert ts == sorted(ts) and abs(ts[0] - 1_778_747_400) < 3600
    assert max(s["speed_kmh"] for s in samples) == pytest.approx(48.0, abs=1.0)
