"""Tiny NMEA writer for tests (the generator in sim/ is the full receiver model)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce


def sentence(body: str) -> bytes:
    cs = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{cs:02X}\r\n".encode()


def _dm(value: float, width: int) -> tuple[str, str]:
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60
    return f"{deg:0{width}d}{minutes:07.4f}", ""


def epoch(t: datetime, lat: float, lon: float, speed_kmh: float = 0.0,
          course: float = 0.0, talker: str = "GN") -> bytes:
    """RMC + GGA for one epoch."""
    hms = t.strftime("%H%M%S") + f".{t.microsecond // 10000:02d}"
    dmy = t.strftime("%d%m%y")
    la, _ = _dm(lat, 2)
    lo, _ = _dm(lon, 3)
    ns = "N" if lat >= 0 else "S"
    ew = "E" if lon >= 0 else "W"
    knots = speed_kmh / 1.852
    rmc = sentence(f"{talker}RMC,{hms},A,{la},{ns},{lo},{ew},{knots:.2f},{course:.1f},{dmy},,,A")
    gga = sentence(f"{talker}GGA,{hms},{la},{ns},{lo},{ew},1,10,0.9,35.0,M,47.0,M,,")
    return rmc + gga


def drive(start: datetime, n: int, lat: float, lon: float, *, step_deg: float = 0.0001,
          speed_kmh: float = 40.0) -> list[bytes]:
    return [epoch(start + timedelta(seconds=i), lat + i * step_deg, lon, speed_kmh)
            for i in range(n)]


T0 = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC)
