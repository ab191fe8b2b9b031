"""The synthetic drive generator (sim/generate.py) and the bundled drives it made."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import cantools
import pynmea2
import pytest
import shapely
from shapely.geometry import Point, shape

from sim.drive import iter_timeline, load_drive, nmea_checksum_ok, parse_candump
from sim.generate import DBC_PATH, generate, load_profile, main

DRIVES = Path(__file__).resolve().parents[2] / "sim" / "drives"
BUNDLED = sorted(p.name for p in DRIVES.iterdir() if (p / "profile.toml").is_file())

ROUTE = {"type": "LineString", "coordinates": [[11.5720, 48.1480], [11.5801, 48.1480]]}


def make_profile(d: Path, body: str, route: Mapping[str, object] = ROUTE) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "route.geojson").write_text(json.dumps(route))
    (d / "profile.toml").write_text('route = "route.geojson"\nstart = "2026-05-14T08:30:00Z"\n'
                                    + body)
    return d


SHORT = """seed = 3
[speed]
start_idle_s = 2
end_idle_s = 2
limits = [{from_m = 0, max_kmh = 50}]
[can]
speed_hz = 50
background_fps = 100
"""


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate(load_profile(make_profile(tmp_path / "a", SHORT)))
    b = generate(load_profile(make_profile(tmp_path / "b", SHORT)))
    c = generate(load_profile(make_profile(tmp_path / "c", SHORT.replace("seed = 3", "seed = 4"))))
    assert (a.nmea, a.can, a.drive_toml) == (b.nmea, b.can, b.drive_toml)
    assert a.nmea != c.nmea and a.can != c.can


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_drive_regenerates_byte_identically(name: str, tmp_path: Path) -> None:
    src = DRIVES / name
    g = generate(load_profile(src))
    assert g.nmea == (src / "gnss.nmea").read_bytes()
    assert g.can == (src / "can.log").read_bytes()
    assert g.drive_toml == (src / "drive.toml").read_text()
    size = sum(p.stat().st_size for p in src.iterdir())
    assert size < 2_000_000, f"{name} is {size} bytes: keep bundled drives small"


def test_bundled_drives_exist_with_config_and_zones() -> None:
    assert {"city", "faults"} <= set(BUNDLED)
    from edge.config import load_config

    for name in BUNDLED:
        cfg = load_config(DRIVES / name / "config.toml")
        assert cfg.can.dbc is not None and cfg.can.dbc.resolve() == DBC_PATH
        assert cfg.rules.zones is not None and cfg.rules.zones.is_file()
        assert cfg.uplink.kind == "mqtt" and cfg.uplink.port == 1883 and cfg.uplink.tls is False


def test_nmea_is_what_a_gn_receiver_sends(tmp_path: Path) -> None:
    body = SHORT.replace("[can]", "[gnss]\nrate_hz = 5\n[can]")
    p = load_profile(make_profile(tmp_path / "d", body))
    g = generate(p)
    lines = [x for x in g.nmea.split(b"\r\n") if x and not x.startswith(b"#")]
    assert all(nmea_checksum_ok(x) for x in lines)
    kinds = Counter(x[1:6] for x in lines)
    epochs = kinds[b"GNRMC"]
    assert kinds == {b"GNRMC": epochs, b"GNVTG": epochs, b"GNGGA": epochs, b"GNGSA": epochs}
    assert epochs == pytest.approx(g.duration_s * 5, abs=2)
    hdops = []
    for x in lines:
        msg = pynmea2.parse(x.decode(), check=True)
        if isinstance(msg, pynmea2.GGA):
            hdops.append(float(msg.horizontal_dil))
            assert abs(msg.latitude - 48.148) < 0.001
    assert 0.5 <= min(hdops) < max(hdops) <= 4.0  # HDOP is noisy, not constant


def test_can_carries_the_speed_per_the_dbc_at_a_realistic_load(tmp_path: Path) -> None:
    d = make_profile(tmp_path / "d", "seed = 5\n[speed]\nstart_idle_s = 1\nend_idle_s = 1\n"
                     "limits = [{from_m = 0, max_kmh = 50}]\n")
    g = generate(load_profile(d))  # default [can]: ~2,000 frames/s
    rate = g.can_frames / g.duration_s
    assert 1800 < rate < 2200
    db = cantools.database.load_file(str(DBC_PATH))
    assert isinstance(db, cantools.database.can.Database)
    frames = [parse_candump(x) for x in g.can.splitlines()]
    assert all(f is not None for f in frames)
    ids = Counter(f.arbitration_id for f in frames if f is not None)
    assert len(ids) == 23 and ids[0x3E9] == pytest.approx(50 * g.duration_s, abs=2)
    speeds = [float(db.decode_message(0x3E9, f.data)["SPEED_KMH"])  # type: ignore[call-overload,arg-type]
              for f in frames if f is not None and f.arbitration_id == 0x3E9]
    assert speeds[0] == 0 and speeds[-1] == 0 and max(speeds) == pytest.approx(50, abs=0.01)
    ts = [f.ts for f in frames if f is not None]
    assert ts == sorted(ts)


FAULTS = """
[[faults]]
kind = "gnss_dropout"
at_s = 3
duration_s = 2
[[faults]]
kind = "gnss_dropout"
at_s = 8
duration_s = 2
mode = "silent"
[[faults]]
kind = "checksum"
at_s = 12
duration_s = 1
[[faults]]
kind = "garbage"
at_s = 14
bytes = 100
[[faults]]
kind = "gnss_jump"
at_s = 16
duration_s = 1
distance_m = 500
[[faults]]
kind = "can_error"
at_s = 5
count = 4
[[faults]]
kind = "unplug"
at_s = 6
duration_s = 1.5
[[faults]]
kind = "clock"
offset_s = -86400
"""


def test_faults_are_injected(tmp_path: Path) -> None:
    d = make_profile(tmp_path / "d", SHORT + FAULTS)
    p = load_profile(d)
    g = generate(p)
    lines = [x for x in g.nmea.split(b"\r\n") if x and not x.startswith(b"#")]
    t0 = p.start.timestamp()
    bad = [x for x in lines if not nmea_checksum_ok(x)]
    assert any(x.startswith(b"\xb5\x62") for x in bad)                 # binary garbage
    assert sum(x.startswith(b"$GN") for x in bad) == 4                  # 1 s of bad checksums
    assert sum(x.startswith(b"$GNRMC") and b",V," in x for x in lines) == 2  # void epochs
    rmc_times = [x[7:13] for x in lines if x.startswith(b"$GNRMC") and nmea_checksum_ok(x)]
    assert b"083008" not in rmc_times and b"083009" not in rmc_times  # silent dropout
    pos = {x[7:13]: x for x in lines if x.startswith(b"$GNGGA") and nmea_checksum_ok(x)}
    jumped = pynmea2.parse(pos[b"083016"].decode())
    before = pynmea2.parse(pos[b"083015"].decode())
    assert abs(jumped.latitude - before.latitude) * 111_000 > 300       # ~400 m north

    frames = [f for f in (parse_candump(x) for x in g.can.splitlines()) if f is not None]
    errors = [f for f in frames if f.error]
    assert len(errors) == 4
    recorded = [f.ts for f in frames]
    assert min(recorded) < t0 - 86000                                   # the wrong clock
    true_t = [t + 86400 - t0 for t in recorded]
    assert not any(6.0 <= t < 7.5 for t in true_t)                      # unplugged
    assert max(b - a for a, b in itertools.pairwise(true_t)) >= 1.4
    write = tmp_path / "d"
    assert main([str(write)]) == 0
    drive = load_drive(write)
    assert drive.can_time_offset_s == 86400.0
    assert [u.at - t0 for u in drive.unplugs] == [6.0]
    can_t = [t for t, k, _ in iter_timeline(drive) if k == "can"]
    assert t0 <= min(can_t) < t0 + 1                                    # realigned


def test_gpx_route_is_accepted(tmp_path: Path) -> None:
    d = tmp_path / "gpx"
    d.mkdir()
    (d / "r.gpx").write_text(
        '<gpx xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>'
        '<trkpt lat="48.1480" lon="11.5720"/><trkpt lat="48.1490" lon="11.5720"/>'
        "</trkseg></trk></gpx>")
    (d / "profile.toml").write_text('seed = 1\nroute = "r.gpx"\n[can]\nbackground_fps = 10\n')
    g = generate(load_profile(d))
    assert g.route_m == pytest.approx(111, abs=1)


def test_bad_profile_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = SHORT.replace("[speed]", "[[faults]]\nkind = 'meteor'\n[speed]")
    d = make_profile(tmp_path / "d", body)
    assert main([str(d)]) == 2
    assert "faults[0].kind" in capsys.readouterr().err


# --- the bundled drives are shaped so that every event kind must fire -----------------


def _track(name: str) -> list[tuple[float, float, float, float]]:
    """(t, lon, lat, speed_kmh) of the valid GGA/RMC epochs of a bundled drive."""
    out = []
    for t, kind, line in iter_timeline(load_drive(DRIVES / name)):
        if kind == "gnss" and line.startswith(b"$GNRMC") and nmea_checksum_ok(line):
            m = pynmea2.parse(line.decode())
            if m.status == "A":
                out.append((t, m.longitude, m.latitude, float(m.spd_over_grnd) * 1.852))
    return out


def _zones(name: str) -> dict[str, object]:
    doc = json.loads((DRIVES / name / "zones.geojson").read_text())
    return {f["properties"]["id"]: f for f in doc["features"]}


def _metres(a: Point, b: Point) -> float:
    return float(shapely.distance(a, b)) * 111_320 * 0.667  # cos(48 deg): conservative


def test_city_drive_triggers_every_event_kind() -> None:
    track = _track("city")
    zones = _zones("city")
    school = shape(zones["school-30"]["geometry"])  # type: ignore[index]
    fence = shape(zones["depot-yard"]["geometry"])  # type: ignore[index]
    cafe = shape(zones["cafe-lenbach"]["geometry"])  # type: ignore[index]
    inside_school = [(t, v) for t, lon, lat, v in track if school.contains(Point(lon, lat))]
    fast = [t for t, v in inside_school if v > 45]
    assert len(fast) >= 18                                   # overspeed: > 45 in a 30 zone
    assert any(v < 28 for t, v in inside_school if t > max(fast))  # ... and it ends inside
    in_fence = [t for t, lon, lat, _ in track if fence.contains(Point(lon, lat))]
    assert in_fence[-1] - in_fence[0] > 60 and len(in_fence) > 60  # enter, dwell 30 s, exit
    assert not fence.contains(Point(track[-1][1], track[-1][2]))
    near = min(_metres(Point(lon, lat), cafe) for _, lon, lat, _ in track)
    assert near < 40                                         # poi radius 50 m
    assert track[0][3] < 1 and track[-1][3] < 1              # trip: starts and ends standing
    standing_end = [t for t, _, _, v in track if v < 1 and t > track[-1][0] - 60]
    assert standing_end[-1] - standing_end[0] > 35           # trip end_s = 30
