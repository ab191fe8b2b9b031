"""A pre-2019 drive with CAN and GNSS, end to end through the CLI as a user runs it.

The drive is the substitute built by ``scripts/fetch_real_drive_2018.py``: real GNSS
(gpsd's ``bundg_zeus_9.log``, 2018-08-20) and CAN frames encoded with opendbc's Toyota
DBC from that receiver's speed, on the receiver's UTC clock. Skipped when not built.

The symptoms it guards against: 2018 moved 1024 weeks to 2038, CAN (2018) sorted before
GNSS (2038) giving two trips and every overspeed twice, a '#' first line giving 0 speed
samples, the report crashing on the real DBC.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CACHE = Path(os.environ.get("VEHICLE_EDGE_CACHE") or Path.home() / ".cache" / "vehicle-edge")
DRIVE = CACHE / "drive-2018-zeus"
CONFIG = DRIVE / "config.toml"
EDGE = [sys.executable, "-m", "edge"]
START = dt.datetime(2018, 8, 20, 9, 47, 30, tzinfo=dt.UTC).timestamp()
END = dt.datetime(2018, 8, 20, 9, 50, 30, tzinfo=dt.UTC).timestamp()

pytestmark = pytest.mark.skipif(
    not (DRIVE / "can.log").is_file(),
    reason=f"substitute drive not in {DRIVE}: run scripts/fetch_real_drive_2018.py")


def edge(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def alerts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["payload"] for r in rows if r["payload"]["type"] != "telemetry"]


def check_one_timeline(events: list[dict[str, Any]]) -> None:
    """One trip, each overspeed phase once with a position, every event in 2018."""
    trips = [e for e in events if e["type"] == "trip"]
    assert [e["phase"] for e in trips] == ["start", "end"], trips
    assert trips[1].get("reason") != "clock_step"
    over = [e for e in events if e["type"] == "overspeed"]
    assert [e["phase"] for e in over] == ["start", "end"], over
    assert all(e["limit_source"] == "zone:harbour-8" for e in over)
    assert all(e.get("lat") is not None and e.get("lon") is not None for e in over)
    kinds = {e["type"] for e in events}
    assert {"geofence", "poi"} <= kinds
    for e in events:
        assert START * 1000 <= e["ts"] <= END * 1000, e


def test_replay_keeps_2018_and_meets_can_and_gnss_in_one_timeline(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    r = edge("replay", str(DRIVE), "--config", str(CONFIG), "--out", str(out))
    assert "warning" not in r.stderr  # the clocks agree, the '#' line is a comment
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    check_one_timeline(alerts(rows))
    # CAN speed samples were read past the '#' first line of the log
    assert (DRIVE / "can.log").read_text().startswith("#")
    n = int(r.stderr.split(" speed samples")[0].rsplit(" ", 1)[1])
    assert n > 2500


def test_decode_nmea_says_which_reference_and_keeps_2018() -> None:
    r = edge("decode", "nmea", str(DRIVE / "gnss.nmea"))
    assert "week-rollover reference: CAN log clock can.log (2018-08-20)" in r.stderr
    assert "0 week rollovers corrected" in r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert {x["time"][:10] for x in rows if x["time"]} == {"2018-08-20"}
    # the epochs before the receiver's first date are not guessed (no_date)
    assert all(x["invalid_reason"] == "no_date" for x in rows if not x["time"])


def test_clocks_that_disagree_are_reported_with_the_offset(tmp_path: Path) -> None:
    d = tmp_path / "drive"
    shutil.copytree(DRIVE, d)
    lines = (d / "can.log").read_text().splitlines()
    moved = [ln if ln.startswith("#") else
             f"({float(ln[1:ln.index(')')]) - 3600.0:.6f}" + ln[ln.index(")"):]
             for ln in lines]  # a recorder whose clock was an hour behind
    (d / "can.log").write_text("\n".join(moved) + "\n")
    out = tmp_path / "out.jsonl"
    r = edge("replay", str(d), "--config", str(CONFIG), "--out", str(out))
    import re

    m = re.search(r"disagree by \+([\d.]+) s .* can_time_offset_s = ([\d.]+) in drive.toml",
                  r.stderr)
    assert m is not None, r.stderr
    assert abs(float(m.group(1)) - 3600.0) < 2.0 and abs(float(m.group(2)) - 3600.0) < 2.0
    # and drive.toml's can_time_offset_s puts them back in one timeline
    toml = (d / "drive.toml").read_text()
    (d / "drive.toml").write_text("can_time_offset_s = 3600.0\n" + toml)
    r = edge("replay", str(d), "--config", str(CONFIG), "--out", str(out))
    assert "warning" not in r.stderr
    check_one_timeline(alerts([json.loads(x) for x in out.read_text().splitlines()]))


def test_a_drive_without_speed_from_its_signal_is_a_warning_with_counts(tmp_path: Path) -> None:
    d = tmp_path / "drive"
    shutil.copytree(DRIVE, d)
    cfg = tmp_path / "config.toml"
    text = CONFIG.read_text().replace('speed_signal = "SPEED.SPEED"',
                                      'speed_signal = "DSU_SPEED.FORWARD_SPEED"')
    cfg.write_text(text.replace('zones = "zones.geojson"', f'zones = "{d / "zones.geojson"}"'))
    r = edge("replay", str(d), "--config", str(cfg), "--out", str(tmp_path / "o.jsonl"),
             check=False)
    if "DSU_SPEED" in r.stderr and r.returncode != 0:
        pytest.skip("signal not in this opendbc version")
    assert r.returncode == 0, r.stderr
    assert "gave no DSU_SPEED.FORWARD_SPEED samples" in r.stderr
    assert "frames" in r.stderr and "comment lines" in r.stderr


@pytest.mark.parametrize("can", ["virtual", "slcan"])
def test_sim_max_lives_the_drive_in_2018_too(tmp_path: Path, can: str) -> None:
    # edge sim: the unmodified daemon on ptys and CAN (virtual bus or the slcan adapter),
    # with the drive's clock: the same single trip and overspeed pair as edge replay, at
    # the true 2018 UTC times (no clock_step), within a second of replay's
    cfg = tmp_path / "config.toml"
    text = CONFIG.read_text().replace(str(DRIVE / "published.jsonl"),
                                      str(tmp_path / "published.jsonl"))
    text = text.replace(str(DRIVE / "outbox.db"), str(tmp_path / "outbox.db"))
    cfg.write_text(text.replace('zones = "zones.geojson"', f'zones = "{DRIVE / "zones.geojson"}"'))
    r = subprocess.run([*EDGE, "sim", str(DRIVE), "--config", str(cfg), "--max", "--can",
                        can], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    events = []
    for line in (tmp_path / "published.jsonl").read_text().splitlines():
        p = json.loads(line)["payload"]
        for x in p if isinstance(p, list) else [p]:
            if isinstance(x, dict) and x.get("type") in ("trip", "overspeed", "geofence", "poi"):
                events.append(x)
    check_one_timeline(events)
    out = tmp_path / "replay.jsonl"
    edge("replay", str(DRIVE), "--config", str(CONFIG), "--out", str(out))
    replayed = alerts([json.loads(x) for x in out.read_text().splitlines()])

    def key(e: dict[str, Any]) -> tuple[str, str]:
        return e["type"], str(e.get("phase") or e.get("transition") or e.get("poi"))

    assert [key(e) for e in events] == [key(e) for e in replayed]
    for live, rep in zip(events, replayed, strict=True):
        assert abs(live["ts"] - rep["ts"]) <= 1000, (live, rep)


def test_report_draws_it_with_the_opendbc_dbc(tmp_path: Path) -> None:
    # the report crashed on opendbc's overlapping PCS_HUD signals (strict cantools load)
    out = tmp_path / "report.png"
    r = edge("report", str(DRIVE), "--config", str(CONFIG), "--out", str(out))
    assert "Traceback" not in r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    from edge.config import load_config
    from sim.drive import load_drive
    from sim.report import can_speed_of

    speeds = can_speed_of(load_drive(DRIVE), load_config(CONFIG))
    assert len(speeds) > 2500 and all(5 < v < 20 for _, v in speeds)


@pytest.mark.parametrize("cmd", ["replay", "report", "record", "roads", "keygen"])
def test_out_into_a_missing_folder_is_a_clear_error(tmp_path: Path, cmd: str) -> None:
    missing = tmp_path / "missing" / {"replay": "x.jsonl", "report": "x.png",
                                      "record": "drive", "roads": "roads.db",
                                      "keygen": "outbox.key"}[cmd]
    extract = tmp_path / "x.osm"
    extract.write_text("<osm version='0.6'/>")
    args = {"record": ["record", "--out", str(missing), "--serial", "/dev/null"],
            "roads": ["roads", "import", str(extract), "--out", str(missing)],
            "keygen": ["outbox", "keygen", "--out", str(missing)],
            }.get(cmd, [cmd, str(DRIVE), "--config", str(CONFIG), "--out", str(missing)])
    r = edge(*args, check=False)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "does not exist" in r.stderr
    assert not missing.parent.exists()  # no silent mkdir


def test_decode_can_and_check_config_take_the_real_dbc_and_the_commented_log() -> None:
    # decode can said "holds no CAN frames" for a log whose first line is a comment
    r = edge("decode", "can", str(DRIVE / "can.log"), "--dbc",
             str(CACHE / "opendbc-0.3.1" / "toyota_nodsu_pt_generated.dbc"),
             "--signal", "SPEED.SPEED")
    summary = json.loads(r.stderr.splitlines()[0].split(": ", 1)[1])
    assert summary["format"] == "candump" and summary["comments"] == 1
    assert summary["malformed"] == 0 and summary["samples"] > 2500
    assert summary["checksum"] == "toyota" and summary["checksum_errors"] == 0
    assert len(r.stdout.splitlines()) == summary["samples"]
    r = edge("check-config", str(CONFIG))
    assert ": ok" in r.stdout
