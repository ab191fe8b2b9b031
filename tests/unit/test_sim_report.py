"""`edge report`: a PNG of the drive with zones, events and speed (sim/report.py)."""

from __future__ import annotations

import re
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
    pytest.importorskip("edge.replay")
    from edge.commands.report import main

    out = tmp_path / "faults.png"
    assert main(DRIVES / "faults", config=DRIVES / "faults" / "config.toml", out=out) == 0
    assert png_size(out) == (1400, 1000)
    assert main(tmp_path, config=DRIVES / "faults" / "config.toml", out=out) == 2
    assert "not a drive" in capsys.readouterr().err


def test_event_dicts_from_replay_jsonl() -> None:
    lines = ['{"topic": "vehicles/x/events/poi", "payload": {"type": "poi", "ts": 1}}', ""]
    assert list(iter_event_dicts(lines)) == [{"type": "poi", "ts": 1}]


def _render(drive_dir: Path, cfg_path: Path, tmp_path: Path, events: list[dict[str, object]]
            ) -> tuple[object, object, object]:
    import matplotlib.pyplot as plt

    keep: list[tuple[object, object, object]] = []
    render(load_drive(drive_dir), load_config(cfg_path), events, tmp_path / "r.png", keep=keep)
    fig, ax, axs = keep[0]
    plt.close(fig)  # type: ignore[arg-type]
    return fig, ax, axs


@pytest.mark.parametrize("name", ["city", "faults"])
def test_map_labels_do_not_collide_and_keep_one_scale(tmp_path: Path, name: str) -> None:
    from edge.replay import replay_events
    from sim.report import labels_overlap

    cfg = load_config(DRIVES / name / "config.toml")
    events = [dict(e.payload()) for e in replay_events(DRIVES / name, cfg)
              if e.type != "telemetry"]
    keep: list[tuple[object, object, object]] = []
    render(load_drive(DRIVES / name), cfg, events, tmp_path / "r.png", keep=keep)
    fig, ax, axs = keep[0]
    assert labels_overlap(fig, ax) == 0
    assert ax.get_aspect() == 1.0  # type: ignore[attr-defined]
    legend = " ".join(t.get_text() for t in axs.get_legend().get_texts())  # type: ignore[attr-defined]
    assert "limit applied: default 50 km/h" in legend
    assert re.search(r"zone:[\w-]+ 30 km/h", legend)
    x0, _ = axs.get_xlim()  # type: ignore[attr-defined]
    assert -30 < x0 <= 0  # times from the drive's start
    import matplotlib.pyplot as plt

    plt.close(fig)  # type: ignore[arg-type]


def test_a_north_south_track_is_not_stretched_east(tmp_path: Path) -> None:
    from sim.generate import sentence

    d = tmp_path / "ns"
    d.mkdir()
    lines = []
    for i in range(60):  # due north, ~20 m/s for 60 s: 1.2 km
        minutes = 8.88 + i * 20 / 1852
        lines.append(sentence(f"GNRMC,0830{i:02d}.00,A,48{minutes:08.5f},N,01134.32018,E,"
                              f"38.9,0.0,140526,,,A") + b"\r\n")
    (d / "gnss.nmea").write_bytes(b"".join(lines))
    cfg = tmp_path / "config.toml"  # the city config without its zones: the track alone
    text = (DRIVES / "city" / "config.toml").read_text()
    cfg.write_text(text.replace('zones = "zones.geojson"', "").replace(
        '"../../dbc/demo.dbc"', f'"{DRIVES.parent / "dbc" / "demo.dbc"}"'))
    _, ax, _ = _render(d, cfg, tmp_path, [])
    xs, ys = ax.get_xlim(), ax.get_ylim()  # type: ignore[attr-defined]
    assert ys[1] - ys[0] > 1000
    # equal aspect through the axes box, not by inventing +-1000 m of east
    assert xs[1] - xs[0] < 0.5 * (ys[1] - ys[0])


def test_can_only_and_gnss_only_drives_are_drawn_sensibly(tmp_path: Path) -> None:
    city = DRIVES / "city"
    can_only = tmp_path / "can-only"
    can_only.mkdir()
    (can_only / "can.log").write_bytes((city / "can.log").read_bytes())
    _, ax, axs = _render(can_only, city / "config.toml", tmp_path, [])
    xs, ys = ax.get_xlim(), ax.get_ylim()  # type: ignore[attr-defined]
    assert max(abs(v) for v in (*xs, *ys)) < 5000  # around the zones, not near -9.9e6 m
    assert any("no GNSS track" in t.get_text() for t in ax.texts)  # type: ignore[attr-defined]
    x0, x1 = axs.get_xlim()  # type: ignore[attr-defined]
    assert -50 < x0 <= 0 and x1 < 5000
    gnss_only = tmp_path / "gnss-only"
    gnss_only.mkdir()
    for f in ("gnss.nmea", "drive.toml"):
        (gnss_only / f).write_bytes((city / f).read_bytes())
    _, ax, axs = _render(gnss_only, city / "config.toml", tmp_path, [])
    x0, x1 = axs.get_xlim()  # type: ignore[attr-defined]
    assert -50 < x0 <= 0 and x1 < 5000  # seconds from the start, not 6e8


def test_labels_of_nested_fences_do_not_collide(tmp_path: Path) -> None:
    # The symptom: "Fence with a hole" and "Mid fence" (inside the hole) share a centroid
    import json

    from sim.report import labels_overlap

    lat, lon = track_of(load_drive(DRIVES / "city"))[0].lat, track_of(
        load_drive(DRIVES / "city"))[0].lon

    def square(d: float) -> list[list[float]]:
        return [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
                [lon - d, lat - d]]

    zones = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "holed", "name": "Fence with a hole",
                                           "kind": "fence"},
         "geometry": {"type": "Polygon", "coordinates": [square(0.004), square(0.002)]}},
        {"type": "Feature", "properties": {"id": "mid", "name": "Mid fence", "kind": "fence"},
         "geometry": {"type": "Polygon", "coordinates": [square(0.001)]}},
    ]}
    (tmp_path / "zones.geojson").write_text(json.dumps(zones))
    text = (DRIVES / "city" / "config.toml").read_text()
    cfg = tmp_path / "config.toml"
    cfg.write_text(text.replace('zones = "zones.geojson"',
                                f'zones = "{tmp_path / "zones.geojson"}"').replace(
        '"../../dbc/demo.dbc"', f'"{DRIVES.parent / "dbc" / "demo.dbc"}"'))
    keep: list[tuple[object, object, object]] = []
    render(load_drive(DRIVES / "city"), load_config(cfg), [], tmp_path / "r.png", keep=keep)
    fig, ax, _ = keep[0]
    names = [t.get_text() for t in ax.texts]  # type: ignore[attr-defined]
    assert "Fence with a hole" in names and "Mid fence" in names
    assert labels_overlap(fig, ax) == 0
    import matplotlib.pyplot as plt

    plt.close(fig)  # type: ignore[arg-type]
