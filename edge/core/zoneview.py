"""The zone set the rules evaluate against, and the geometric questions they ask of it.

Which zones is the car in or near (``loc``, or the answers ``drive`` precomputed for a
whole drive), which fences did the straight line from the previous fix drive through
(``crossings``), which POIs are in reach (``pois_at``), which speed limits the zones
claim (``limit_claims``). A reload swaps the whole set at once (``swap``); a rejected
zones file keeps the old set and says why (``reject``, ``health``). Pure: the daemon
reads the zones file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Set
from typing import TYPE_CHECKING, Any

from edge.core.geo import M_PER_DEG, wrap_lon
from edge.core.geofence import MAX_CROSS_MPS
from edge.core.limits import LimitClaim
from edge.core.zones import Zone, ZoneLocator, Zones

if TYPE_CHECKING:
    from edge.core.drivegeo import DriveGeometry  # edge replay/report only, not the daemon

__all__ = ["ZoneView"]


class ZoneView:
    """One zone set and its spatial index; ``drive``: answers computed for the drive
    about to be fed (replay, report), dropped on a swap."""

    __slots__ = ("drive", "error", "has_limits", "has_pois", "loc", "rejected", "reloads",
                 "zones")

    def __init__(self, zones: Zones) -> None:
        self.drive: DriveGeometry | None = None
        self.error: str | None = None  # why the last zones update was rejected
        self.reloads = 0
        self.rejected = 0
        self._use(zones, ZoneLocator(zones))

    def _use(self, zones: Zones, loc: ZoneLocator) -> None:
        self.zones = zones
        self.loc = loc
        self.has_pois = bool(zones.pois)
        self.has_limits = bool(zones.limit_claims(range(len(zones.zones))))

    # ------------------------------------------------------------------ changes

    def use_drive_geometry(self, geometry: DriveGeometry | None) -> None:
        if geometry is not None and geometry.zones is not self.zones:
            raise ValueError("drive geometry computed for other zones")
        self.drive = geometry

    def swap(self, zones: Zones, loc: ZoneLocator) -> None:
        """Use ``zones`` (indexed by ``loc``) from now on."""
        self._use(zones, loc)
        self.drive = None
        self.error = None
        self.reloads += 1

    def reject(self, reason: str) -> None:
        """An update that could not be used: the old zones stay."""
        self.error = reason
        self.rejected += 1

    # ------------------------------------------------------------------ questions

    def limit_claims(self, inside: Collection[int]) -> list[LimitClaim]:
        return self.zones.limit_claims(inside) if self.has_limits else []

    def pois_at(self, inside: list[int], lat: float, lon: float) -> list[tuple[Zone, float]]:
        """The POIs the car is in, each with its distance from the centre (m)."""
        zones = self.zones.zones
        return [(z, max(0.0, z.signed_distance_m(lat, lon) + (z.radius_m or 0.0)))
                for z in (zones[i] for i in inside) if z.kind == "poi"]

    def crossings(
        self, lat1: float, lon1: float, lat2: float, lon2: float, h: float, dt: float,
        inside: list[int], before: Set[int], busy: Callable[[int], bool],
        hits: frozenset[int] | None = None,
    ) -> list[int]:
        """Fences the segment from the previous fix drove through, except those the
        car is or was in (``inside``, ``before``) and ``busy`` ones; ``hits``: the
        fences the segment touches when the drive's geometry knows them (None:
        measure)."""
        if hits is not None and not hits:
            return []  # foreseen: no fence on this segment
        dy = lat2 - lat1
        if abs(dy) * M_PER_DEG > MAX_CROSS_MPS * dt:
            return []  # a jump (the north-south part alone is too far)
        # equirectangular is plenty for a segment between two fixes
        kx = math.cos(math.radians(lat2))
        dx = wrap_lon(lon2 - lon1) * kx
        seg = math.sqrt(dx * dx + dy * dy) * M_PER_DEG
        if seg <= 2.0 * h or seg > MAX_CROSS_MPS * dt:
            return []  # jitter, or a jump (not a drive through a fence)
        skip = before | set(inside)
        if hits is not None:
            return [i for i in sorted(hits) if i not in skip and not busy(i)]
        cands = self.loc.nearby(lat2, lon2, seg)
        if cands is None:
            d = seg / 111_000.0 * 2 + 1e-4
            lo_lon = min(lon1, lon2)
            hi_lon = max(lon1, lon2)
            if hi_lon - lo_lon > 180.0:  # the segment crosses the antimeridian
                lo_lon, hi_lon = hi_lon, lo_lon + 360.0
            cands = sorted(self.zones.query_box(lo_lon - d, min(lat1, lat2) - d,
                                                hi_lon + d, max(lat1, lat2) + d))
        zones = self.zones.zones
        out = []
        for i in cands:
            z = zones[i]
            if z.kind != "fence" or i in skip or busy(i):
                continue
            if z.segment_hits(lat1, lon1, lat2, lon2):
                out.append(i)
        return out

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        return {
            "source": self.zones.source,
            **self.zones.counts(),
            "reloads": self.reloads,
            "rejected": self.rejected,
            "error": self.error,
        }
