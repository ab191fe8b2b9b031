#!/usr/bin/env python3
"""Assemble a pre-2019 drive with real GNSS and CAN encoded by a real car DBC (a substitute).

What the issue asks for is a public real recording with both CAN and GNSS from 2018 (a
comma2k19-like drive). None is reachable from this machine (PyPI, Debian and npm only),
so this builds the closest honest substitute from two real, pinned inputs that the other
fetch scripts download with their sha256:

* ``gnss.nmea``: gpsd 3.22's ``test/daemon/bundg_zeus_9.log`` verbatim -- a B&G Zeus2
  chartplotter on the IJsselmeer, 2018-08-20, ~2.5 minutes at ~12 km/h, talking GGA at
  second t and RMC at t+1, plus depth/wind/heading sentences and ``#`` header lines.
* ``can.log``: candump -L frames of opendbc's Toyota powertrain DBC (``SPEED`` 0xB4
  with its Toyota checksum and ``WHEEL_SPEEDS`` 0xAA, 20 Hz each, encoded by cantools),
  whose speed is the receiver's own speed over ground along that track; the CAN clock
  is the receiver's UTC (2018-08-20), starting 1 s before its first sentence. The log
  starts with a ``#`` comment line, as hand-annotated captures do.

So the positions, times and speeds are real; the CAN bus is synthesised from them with a
real DBC. ``config.toml`` and ``zones.geojson`` (a 8 km/h speed zone over the middle of
the track, a fence around the start, a POI near the end) are generated beside them, so
that the drive has one trip, one overspeed episode, a geofence exit and a POI.

Output: ``${VEHICLE_EDGE_CACHE:-~/.cache/vehicle-edge}/drive-2018-zeus/``. Idempotent;
exit 1 when an input is missing (run the other fetch scripts first: fetch_testdata.py
runs them in order).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType

NAME = "drive-2018-zeus"
FORMAT = "3"  # bump when the output changes: an older drive is rebuilt
SOURCE_LOG = "bundg_zeus_9.log"
CAN_HZ = 20.0
LEAD_S = 1.0  # CAN capture starts this long before the first NMEA time
HERE = Path(__file__).resolve().parent


def cache_root() -> Path:
    return Path(os.environ.get("VEHICLE_EDGE_CACHE") or Path.home() / ".cache" / "vehicle-edge")


def drive_dir() -> Path:
    return cache_root() / NAME


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _deg(value: str, hemi: str) -> float:
    dot = value.index(".")
    deg = float(value[: dot - 2]) + float(value[dot - 2 :]) / 60.0
    return -deg if hemi in ("S", "W") else deg


def track(nmea: bytes) -> list[tuple[float, float, float, float]]:
    """(UTC s, lat, lon, km/h) of the log's valid RMC sentences."""
    out = []
    for raw in nmea.splitlines():
        line = raw.decode("ascii", "replace").strip()
        if not line.startswith("$") or line[3:6] != "RMC" or "*" not in line:
            continue
        f = line[1 : line.index("*")].split(",")
        if len(f) < 10 or f[2] != "A":
            continue
        day = dt.datetime.strptime(f[9] + f[1][:6], "%d%m%y%H%M%S").replace(tzinfo=dt.UTC)
        out.append((day.timestamp(), _deg(f[3], f[4]), _deg(f[5], f[6]), float(f[7]) * 1.852))
    return out


def first_time(nmea: bytes, day: dt.date) -> float:
    """UTC time of the first timed GGA/RMC sentence."""
    for raw in nmea.splitlines():
        f = raw.decode("ascii", "replace").split(",")
        if f[0][-3:] in ("GGA", "RMC") and len(f[1]) >= 6 and f[1][:6].isdigit():
            h, m, s = int(f[1][:2]), int(f[1][2:4]), float(f[1][4:])
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() + (
                h * 3600 + m * 60 + s)
    raise ValueError("no timed sentence")


def speed_at(tr: list[tuple[float, float, float, float]], t: float) -> float:
    if t <= tr[0][0]:
        return tr[0][3]
    for (t0, _, _, v0), (t1, _, _, v1) in itertools.pairwise(tr):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return tr[-1][3]


def can_log(tr: list[tuple[float, float, float, float]], dbc: Path, start: float) -> str:
    import cantools

    sys.path.insert(0, str(HERE.parent))
    from edge.core.canspeed import toyota_checksum

    db = cantools.database.load_file(str(dbc), strict=False)
    speed = db.get_message_by_name("SPEED")
    wheels = db.get_message_by_name("WHEEL_SPEEDS")
    lines = [f"# candump -L, Toyota powertrain bus (opendbc toyota_nodsu_pt); speeds from "
             f"{SOURCE_LOG}'s speed over ground (substitute drive, see {Path(__file__).name})"]
    end = tr[-1][0] + 0.5
    n = 0
    t = start
    while t <= end:
        v = round(speed_at(tr, t), 2)
        data = bytearray(speed.encode({"ENCODER": n % 256, "SPEED": v, "CHECKSUM": 0}))
        data[7] = toyota_checksum(speed.frame_id, bytes(data))
        lines.append(f"({t:.6f}) can0 {speed.frame_id:03X}#{bytes(data).hex().upper()}")
        w = wheels.encode({s.name: v for s in wheels.signals})
        lines.append(f"({t + 0.0021:.6f}) can0 {wheels.frame_id:03X}#{w.hex().upper()}")
        n += 1
        t = start + n / CAN_HZ
    return "\n".join(lines) + "\n"


def _box(points: list[tuple[float, float]], pad_m: float) -> list[list[float]]:
    lat0 = sum(p[0] for p in points) / len(points)
    dlat = pad_m / 111_195.0
    dlon = pad_m / (111_195.0 * math.cos(math.radians(lat0)))
    s, n = min(p[0] for p in points) - dlat, max(p[0] for p in points) + dlat
    w, e = min(p[1] for p in points) - dlon, max(p[1] for p in points) + dlon
    return [[round(w, 6), round(s, 6)], [round(e, 6), round(s, 6)], [round(e, 6), round(n, 6)],
            [round(w, 6), round(n, 6)], [round(w, 6), round(s, 6)]]


def zones(tr: list[tuple[float, float, float, float]]) -> dict[str, object]:
    k = len(tr)
    mid = [(p[1], p[2]) for p in tr[int(k * 0.35) : int(k * 0.6)]]
    start = [(p[1], p[2]) for p in tr[: max(2, k // 10)]]
    poi = tr[int(k * 0.85)]
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "harbour-8", "name": "Harbour approach "
         "(8 km/h)", "kind": "speed", "maxspeed": 8},
         "geometry": {"type": "Polygon", "coordinates": [_box(mid, 15.0)]}},
        {"type": "Feature", "properties": {"id": "start-area", "name": "Start area",
         "kind": "fence"},
         "geometry": {"type": "Polygon", "coordinates": [_box(start, 20.0)]}},
        {"type": "Feature", "properties": {"id": "buoy", "name": "Buoy", "kind": "poi",
         "radius_m": 40, "offer": {"title": "Fuel dock ahead"}},
         "geometry": {"type": "Point",
                      "coordinates": [round(poi[2], 6), round(poi[1], 6)]}},
    ]}


CONFIG = """\
# Generated by scripts/fetch_real_drive_2018.py: the substitute 2018 drive.
thing = "zeus-2018"

[can]
interface = "virtual"
channel = "zeus-2018"
dbc = "{dbc}"
speed_signal = "SPEED.SPEED"

[rules]
zones = "zones.geojson"

[rules.speed]
limit_kmh = 30
tolerance_kmh = 0
min_duration_s = 3

[rules.trip]
start_kmh = 5
start_s = 5
end_s = 30

[telemetry]
interval_s = 1

[uplink]
kind = "file"
path = "{out}/published.jsonl"

[outbox]
path = "{out}/outbox.db"
"""

DRIVE_TOML = """\
notes = \"""SUBSTITUTE: real 2018-08-20 GNSS (gpsd {log}) + CAN encoded with \
opendbc's Toyota DBC from its speed over ground\"""

[channels]
can = "can0"
gnss = "serial"
"""


def build() -> Path:
    gpsd = _load("fetch_gpsd_logs")
    opendbc = _load("fetch_opendbc")
    log_path = gpsd.cache_dir() / SOURCE_LOG
    dbc = opendbc.dbc_path()
    if not log_path.is_file() and gpsd.main([]) != 0:
        raise RuntimeError(f"{log_path} missing and gpsd logs could not be fetched")
    if not dbc.is_file():
        dbc = opendbc.fetch()
    out = drive_dir()
    stamp = out / ".format"
    if stamp.is_file() and stamp.read_text().strip() == FORMAT:
        return out
    nmea = log_path.read_bytes()
    tr = track(nmea)
    if len(tr) < 100:
        raise RuntimeError(f"{log_path}: only {len(tr)} RMC positions")
    day = dt.datetime.fromtimestamp(tr[0][0], dt.UTC).date()
    start = first_time(nmea, day) - LEAD_S
    out.mkdir(parents=True, exist_ok=True)
    (out / "gnss.nmea").write_bytes(nmea)
    (out / "can.log").write_text(can_log(tr, dbc, start))
    (out / "zones.geojson").write_text(json.dumps(zones(tr), indent=1) + "\n")
    (out / "config.toml").write_text(CONFIG.format(dbc=dbc, out=out))
    (out / "drive.toml").write_text(DRIVE_TOML.format(log=SOURCE_LOG))
    stamp.write_text(FORMAT + "\n")
    return out


def main() -> int:
    try:
        path = build()
    except Exception as exc:
        print(f"fetch_real_drive_2018: {exc}", file=sys.stderr)
        return 1
    print(f"substitute 2018 drive: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
