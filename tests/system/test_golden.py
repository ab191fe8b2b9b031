"""Golden event sequences of the bundled drives, checked on every `make test`.

When a rule change is intended, regenerate with
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/system/test_golden.py`` and review
the diff of ``sim/drives/*/expected_events.jsonl`` like code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_config
from edge.replay import replay_events

ROOT = Path(__file__).resolve().parents[2]
DRIVES = sorted(p for p in (ROOT / "sim" / "drives").iterdir() if (p / "config.toml").exists())


def alert_lines(drive: Path) -> list[str]:
    cfg = load_config(drive / "config.toml")
    out = []
    for env in replay_events(drive, cfg):
        if env.type in ("telemetry", "health"):
            continue
        p = env.payload()
        del p["id"], p["seq"], p["thing"]
        out.append(json.dumps(p, sort_keys=True))
    return out


@pytest.mark.parametrize("drive", DRIVES, ids=[d.name for d in DRIVES])
def test_bundled_drive_events_match_the_golden_file(drive: Path) -> None:
    golden = drive / "expected_events.jsonl"
    got = alert_lines(drive)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text("".join(line + "\n" for line in got))
    assert golden.exists(), f"no golden file: run with UPDATE_GOLDEN=1 to create {golden}"
    assert got == golden.read_text().splitlines()


def test_bundled_drives_together_fire_every_event_kind() -> None:
    seen: set[tuple[str, str]] = set()
    for drive in DRIVES:
        for line in alert_lines(drive):
            e = json.loads(line)
            seen.add((e["type"], e.get("transition") or e.get("phase") or ""))
    for want in [("overspeed", "start"), ("overspeed", "end"), ("geofence", "enter"),
                 ("geofence", "exit"), ("geofence", "dwell"), ("poi", ""), ("trip", "start"),
                 ("trip", "end")]:
        assert want in seen, f"no bundled drive produces {want}"


def test_replay_is_byte_identical_and_summarises_on_stderr(tmp_path: Path) -> None:
    drive = DRIVES[0]
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}.jsonl"
        r = subprocess.run([sys.executable, "-m", "edge", "replay", str(drive), "--config",
                            str(drive / "config.toml"), "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "messages" in r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    lines = [json.loads(x) for x in outs[0].splitlines()]
    assert all(set(x) == {"topic", "payload"} for x in lines)
    ts = [x["payload"]["ts"] for x in lines if x["payload"]["type"] != "telemetry"]
    assert ts == sorted(ts), "events come out in time order"


def test_replay_applies_the_drive_can_time_offset(tmp_path: Path) -> None:
    """A recorder whose clock was an hour behind GNSS time wrote can_time_offset_s;
    replay must put the CAN samples back on GNSS time and decide the same events."""
    import re
    import shutil

    src = ROOT / "sim" / "drives" / "city"
    drive = tmp_path / "city-offset"
    shutil.copytree(src, drive)
    shifted = re.sub(rb"^\((\d+\.\d+)\)",
                     lambda m: b"(%.6f)" % (float(m.group(1)) - 3600.0),
                     (src / "can.log").read_bytes(), flags=re.M)
    (drive / "can.log").write_bytes(shifted)
    toml = (drive / "drive.toml").read_text()
    (drive / "drive.toml").write_text("can_time_offset_s = 3600.0\n" + toml)
    cfg_text = (src / "config.toml").read_text().replace(
        'dbc = "../../dbc/demo.dbc"', f'dbc = "{ROOT / "sim" / "dbc" / "demo.dbc"}"')
    (drive / "config.toml").write_text(cfg_text)
    assert alert_lines(drive) == alert_lines(src)
