"""`edge report`: a PNG of the drive with zones, events and speed (sim/report.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edge.config import load_config
from sim.drive import load_drive
from sim.report import iter_event_dicts, render, track_of

pytest.importorskip("matplotlib")

DRIVES = Path(__file__).resolve().parents[2] / "sim" / "drives"


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", head[16:24])
    return w, h


def test_render_with_hand_made_events(tmp_path: Path) -> None:
    drive = load_drive(DRIVES / "city")
    cfg = load_config(DRIVES / "city" / "config.toml")
    track = track_of(drive)
    mid = track[len(track) // 2]
    events = [
        {"type": "trip", "phase": "start", "ts": int(track[5].t * 1000),
         "lat": track[5].lat, "lon": track[5].lon},
        {"type": "overspeed", "phase": "start", "ts": int(track[20].t * 1000),
         "lat": track[20].lat, "lon": track[20].lon},
        {"type": "overspeed", "phase": "end", "ts": int(track[40].t * 1000),
         "lat": track[40].lat, "lon": track[40].lon},
        {"type": "geofence", "transition": "enter", "fence": "depot-yard",
         "ts": int(mid.t * 1000), "lat": mid.lat, "lon": mid.lon},
        {"type": "telemetry", "ts": 0},  # not an event: ignored
        {"type": "poi", "poi": "cafe", "ts": int(mid.t * 1000)},  # no position: time only
    ]
    out = render(drive, cfg, events, tmp_path / "city.png")
    w, h = png_size(out)
    assert (w, h) == (1400, 1000)
    assert 30_000 < out.stat().st_size < 2_000_000


def test_track_skips_invalid_and_corrupt_sentences() -> None:
    track = track_of(load_drive(DRIVES / "faults"))
    # 159 epochs, minus 8 void, 5 silent and 3 with bad checksums
    assert 140 <= len(track) <= 146
    assert all(48.15 < p.lat < 48.18 and 11.58 < p.lon < 11.59 for p in track)


def test_edge_report_command_replays_the_drive(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("edge.commands.replay")
    from edge.commands.report import main

    out = tmp_path / "faults.png"
    assert main(DRIVES / "faults", config=DRIVES / "faults" / "config.toml", out=out) == 0
    assert png_size(out) == (1400, 1000)
    assert main(tmp_path, config=DRIVES / "faults" / "config.toml", out=out) == 2
    assert "not a drive" in capsys.readouterr().err


def test_event_dicts_from_replay_jsonl() -> None:
    lines = ['{"topic": "vehicles/x/events/poi", "payload": {"type": "poi", "ts": 1}}', ""]
    assert list(iter_event_dicts(lines)) == [{"type": "poi", "ts": 1}]
