"""Small-area geodesy: metres from lon/lat without pyproj.

Every zone gets its own equirectangular frame centred on the zone (``LocalFrame``):
``x = Δlon·cos(lat0)·k``, ``y = Δlat·k`` with Δlon wrapped into [-180, 180), so a
fence drawn across the antimeridian is contiguous in its frame. The error grows with
the distance from the frame's centre (about 0.1 % at 5 km at 60° latitude), which is
well inside GNSS noise for fences up to a few kilometres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
MIN_COS = 0.01  # keeps frames finite within ~0.6° of the poles


def wrap_lon(dlon: float) -> float:
    """A longitude difference wrapped into [-180, 180)."""
    return (dlon + 180.0) % 360.0 - 180.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalFrame:
    """An equirectangular tangent frame around (lat0, lon0); units are metres."""

    lat0: float
    lon0: float
    kx: float  # metres per degree of longitude at lat0
    ky: float = M_PER_DEG

    @classmethod
    def at(cls, lat0: float, lon0: float) -> LocalFrame:
        c = max(math.cos(math.radians(lat0)), MIN_COS)
        return cls(lat0=lat0, lon0=lon0, kx=M_PER_DEG * c)

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return wrap_lon(lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky

    def latlon(self, x: float, y: float) -> tuple[float, float]:
        """Inverse of ``xy``; the longitude is *not* wrapped (may leave [-180, 180])."""
        return self.lat0 + y / self.ky, self.lon0 + x / self.kx


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(wrap_lon(lon2 - lon1))
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))
