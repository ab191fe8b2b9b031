"""Positions against gpsd's answer keys: recall and precision over gpsd's NMEA logs.

gpsd 3.22's regression logs (``test/daemon/*.log``) come with ``*.log.chk``, the JSON
gpsd reports for each (fetched by ``scripts/fetch_gpsd_logs.py``). Per log we compare the
distinct positions (lat/lon rounded to 1e-6 degrees) of gpsd's TPV reports with mode
>= 2 against those of our fixes with mode >= 2 (the receiver's own fix claim; our
``valid`` is a separate quality policy), and pool the counts over every NMEA log. A log
is an NMEA log when at least half of its non-comment bytes are in ``$``/``!`` lines
(the binary ones -- GREIS, UBX, SiRF... -- gpsd decodes with other drivers).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edge.core.nmea import NmeaDecoder, iter_fixes

Pos = tuple[float, float]


def logs_dir() -> Path:
    root = os.environ.get("VEHICLE_EDGE_CACHE") or str(Path.home() / ".cache" / "vehicle-edge")
    return Path(root) / "gpsd-3.22" / "daemon"


def nmea_logs(directory: Path | None = None) -> list[Path]:
    """The NMEA logs that have an answer key."""
    d = directory or logs_dir()
    out = []
    for log in sorted(d.glob("*.log")) if d.is_dir() else []:
        if not log.with_name(log.name + ".chk").is_file():
            continue
        lines = [x for x in log.read_bytes().splitlines() if x and not x.startswith(b"#")]
        total = sum(len(x) for x in lines)
        text = sum(len(x) for x in lines if x[:1] in (b"$", b"!"))
        if total and text / total >= 0.5:
            out.append(log)
    return out


def gpsd_positions(log: Path) -> set[Pos]:
    out: set[Pos] = set()
    chk = log.with_name(log.name + ".chk")
    for line in chk.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith('{"class":"TPV"'):
            continue
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("mode", 0) >= 2 and "lat" in d and "lon" in d:
            out.add((round(d["lat"], 6), round(d["lon"], 6)))
    return out


def our_positions(log: Path, *, valid_only: bool = False) -> set[Pos]:
    with log.open("rb") as fh:
        return {(round(f.lat, 6), round(f.lon, 6)) for f in iter_fixes(fh, decoder=NmeaDecoder())
                if f.mode >= 2 and f.lat is not None and f.lon is not None
                and (f.valid or not valid_only)}


@dataclass(frozen=True, slots=True)
class Parity:
    logs: int
    gpsd: int  # distinct positions gpsd reports, summed over the logs
    ours: int
    both: int
    worst: tuple[tuple[str, int, int, int], ...]  # (log, gpsd, ours, both), largest gaps

    @property
    def recall(self) -> float:
        return self.both / self.gpsd if self.gpsd else 1.0

    @property
    def precision(self) -> float:
        return self.both / self.ours if self.ours else 1.0


def parity(directory: Path | None = None, *, valid_only: bool = False) -> Parity:
    g = o = b = 0
    rows = []
    logs = nmea_logs(directory)
    for log in logs:
        gp, ours = gpsd_positions(log), our_positions(log, valid_only=valid_only)
        both = len(gp & ours)
        g, o, b = g + len(gp), o + len(ours), b + both
        rows.append((log.name, len(gp), len(ours), both))
    rows.sort(key=lambda r: -(r[1] - r[3] + r[2] - r[3]))
    return Parity(logs=len(logs), gpsd=g, ours=o, both=b, worst=tuple(rows[:5]))
