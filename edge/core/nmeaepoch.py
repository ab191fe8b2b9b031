"""One GNSS epoch's fields, merged from the NMEA sentences that report it. Pure.

``Epoch.fill`` takes the data fields of one RMC, GGA, GNS, GLL, VTG or GSA sentence
(pynmea2's ``data`` list) and merges them into the epoch: empty or malformed fields
leave what other sentences said (never 0,0 for a missing position), a speed or course
from RMC outranks VTG's, any sentence saying "no fix" or "void" wins over one saying
otherwise (``status``, ``faa``), GSA's fix type is the best of the constellations'.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

from edge.core.nmeadate import parse_ddmmyy

__all__ = ["INVALID_FAA", "KNOTS", "Epoch", "field", "parse_int", "position"]

KNOTS = 1852.0 / 3600.0
INVALID_FAA = frozenset("NVESM")  # no fix, invalid, dead reckoning, simulator, manual
_GOOD_FAA = frozenset("ADPRF")
_POS_INDEX = {"RMC": 2, "GGA": 1, "GNS": 1, "GLL": 0}


def field(data: list[str], i: int) -> str:
    return data[i] if i < len(data) else ""


def _float(s: str) -> float | None:
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_int(s: str) -> int | None:
    if not s or not s.isdigit():
        return None
    return int(s)


def _coord(value: str, hemi: str, width: int, limit: float) -> float | None:
    """``ddmm.mmmm`` (width 2) / ``dddmm.mmmm`` (width 3) and N/S/E/W -> degrees."""
    if hemi in ("N", "E"):
        sign = 1.0
    elif hemi in ("S", "W"):
        sign = -1.0
    else:
        return None
    head, dot, frac = value.partition(".")
    if len(head) != width + 2 or not head.isdigit() or (dot and frac and not frac.isdigit()):
        return None
    minutes = float(value[width:])
    if minutes >= 60.0:
        return None
    deg = int(head[:width]) + minutes / 60.0
    if deg > limit:
        return None
    return sign * deg


def position(kind: str, d: list[str]) -> tuple[float, float] | None:
    """The (lat, lon) a positional sentence (RMC, GGA, GNS, GLL) reports, or None."""
    i = _POS_INDEX[kind]
    lat = _coord(field(d, i), field(d, i + 1), 2, 90.0)
    lon = _coord(field(d, i + 2), field(d, i + 3), 3, 180.0)
    return None if lat is None or lon is None else (lat, lon)


class Epoch:
    """Mutable accumulator of one epoch's fields."""

    __slots__ = ("alt", "course", "date", "faa", "gsa_mode", "hdop", "lat", "lon",
                 "mono", "quality", "sats", "speed", "status", "tod", "types")

    def __init__(self, mono: float) -> None:
        self.tod: float | None = None
        self.date: dt.date | None = None
        self.lat: float | None = None
        self.lon: float | None = None
        self.speed: float | None = None
        self.course: float | None = None
        self.alt: float | None = None
        self.hdop: float | None = None
        self.sats: int | None = None
        self.quality: int | None = None
        self.status: str | None = None
        self.faa: str | None = None
        self.gsa_mode: int | None = None
        self.mono = mono
        self.types: dict[str, int] = {}  # talker + type -> sentences of it, in order

    def fill(self, kind: str, d: list[str],
             corrected: Callable[[dt.date], dt.date]) -> None:
        """Merge one sentence's fields; ``corrected`` undoes a week rollover of RMC's
        date."""
        if kind == "RMC":
            self._status(field(d, 1))
            self._position(d, 2)
            spd = _float(field(d, 6))
            if spd is not None and spd >= 0:
                self.speed = spd * KNOTS
            crs = _float(field(d, 7))
            if crs is not None and 0 <= crs <= 360:
                self.course = crs % 360
            date = parse_ddmmyy(field(d, 8))
            if date is not None:
                self.date = corrected(date)
            self._faa(field(d, 11))
        elif kind == "GGA":
            self._position(d, 1)
            q = parse_int(field(d, 5))
            if q is not None:
                self.quality = q
            self._sats_hdop_alt(field(d, 6), field(d, 7), field(d, 8), field(d, 9))
        elif kind == "GNS":
            self._position(d, 1)
            mode = field(d, 5)
            if mode:
                # one character per constellation: usable if any of them has a fix
                if any(ch in _GOOD_FAA for ch in mode):
                    self.faa = self.faa or "A"
                else:
                    self.faa = mode[0]
            self._sats_hdop_alt(field(d, 6), field(d, 7), field(d, 8), "M")
        elif kind == "GLL":
            self._position(d, 0)
            self._status(field(d, 5))
            self._faa(field(d, 6))
        elif kind == "VTG":
            crs = _float(field(d, 0))
            if crs is not None and 0 <= crs <= 360 and self.course is None:
                self.course = crs % 360
            if self.speed is None:
                kmh = _float(field(d, 6))
                kts = _float(field(d, 4))
                if kmh is not None and kmh >= 0:
                    self.speed = kmh / 3.6
                elif kts is not None and kts >= 0:
                    self.speed = kts * KNOTS
            self._faa(field(d, 8))
        elif kind == "GSA":
            m = parse_int(field(d, 1))
            if m in (1, 2, 3):
                self.gsa_mode = m if self.gsa_mode is None else max(self.gsa_mode, m)
            hdop = _float(field(d, 15))
            if hdop is not None and hdop > 0 and self.hdop is None:
                self.hdop = hdop

    def mode(self) -> int:
        """What the receiver says of its fix (gpsd's TPV mode: 0 none, 2 2D, 3 3D): no
        fix when any sentence of the epoch says so, whatever GSA's (possibly stale)
        2D/3D claim."""
        if (self.lat is None or (self.status is not None and self.status != "A")
                or self.quality == 0 or self.faa in ("N", "V") or self.sats == 0):
            return 0
        if self.gsa_mode is not None:
            return 0 if self.gsa_mode == 1 else self.gsa_mode
        return 3 if self.alt is not None else 2

    def _position(self, d: list[str], i: int) -> None:
        lat = _coord(field(d, i), field(d, i + 1), 2, 90.0)
        lon = _coord(field(d, i + 2), field(d, i + 3), 3, 180.0)
        if lat is not None and lon is not None:
            self.lat, self.lon = lat, lon

    def _status(self, status: str) -> None:
        # any RMC/GLL of the epoch that does not say A (empty included) makes it invalid
        if self.status is None or self.status == "A":
            self.status = status

    def _faa(self, mode: str) -> None:
        if mode:
            ch = mode[0]
            if self.faa is None or ch in INVALID_FAA:
                self.faa = ch

    def _sats_hdop_alt(self, sats: str, hdop: str, alt: str, unit: str) -> None:
        n = parse_int(sats)
        if n is not None:
            self.sats = n
        h = _float(hdop)
        if h is not None and h > 0:
            self.hdop = h
        a = _float(alt)
        if a is not None and unit in ("M", "") and -1000.0 < a < 100_000.0:
            self.alt = a
