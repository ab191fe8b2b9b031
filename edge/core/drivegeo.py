"""Geometry for a whole known drive at once (``edge replay``, ``edge report``).

When every fix of a drive is known up front, the geometric questions the rules ask fix
by fix — which zones is the car in, which is it within the hysteresis of, which fences
does the straight line from the previous fix touch — are answered for all fixes in a
few array operations: one ``STRtree.query`` with every fix's search box, every
(fix, candidate zone) pair moved into its zone's frame with numpy, then
``shapely.intersects_xy`` / ``shapely.distance`` / ``shapely.intersects`` /
``shapely.dwithin`` over all pairs at once. The rules then run only their stateful
part (debounce, hysteresis, dwell, gaps) per fix and look the answers up.

The answers are the live path's, float for float: the same frame arithmetic (numpy and
Python round the same IEEE operations the same way), the same GEOS predicates on the
same prepared geometries, the same ``<= 0`` / ``<= h`` comparisons. A question the
bulk pass did not foresee (a fix order the rules do not accept as this pass assumed)
falls back to the live evaluation, so the events are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from edge.core.geo import M_PER_DEG, MIN_COS
from edge.core.geofence import MAX_CROSS_MPS
from edge.core.zones import CIRCLE, CORRIDOR, POLYGON, Zones
from edge.model import Fix

Located = tuple[list[int], list[int]]
_EMPTY: Located = ([], [])
_NO_HITS: frozenset[int] = frozenset()
SLACK = 1.01  # frames differ slightly from the search box's: search a little wider
SLACK_M = 2.0
_TINY = 5e-324


def usable(fix: Fix) -> bool:
    """A fix the rules take for geometry (valid, timed, on the globe)."""
    lat, lon = fix.lat, fix.lon
    return (fix.valid and fix.time is not None and lat is not None and lon is not None
            and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0)


class DriveGeometry:
    """Precomputed ``locate`` and crossing answers for the fixes of one drive."""

    __slots__ = ("_hits", "_located", "pairs", "zones")

    def __init__(self, zones: Zones, fixes: Iterable[Fix],
                 hysteresis: Callable[[float | None], float]) -> None:
        self.zones = zones
        self.pairs = 0  # (fix, zone) pairs evaluated
        pts: list[tuple[float, float, float]] = []
        segs: list[tuple[float, float, float, float]] = []
        seg_h: list[float] = []  # the later fix's hysteresis
        seg_dt: list[float] = []
        hyst: dict[float | None, float] = {}
        prev_t: float | None = None
        prev_lat = prev_lon = 0.0
        for f in fixes:
            t, lat, lon = f.time, f.lat, f.lon
            if (t is None or not f.valid or lat is None or lon is None
                    or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0)):
                continue
            h = hyst.get(f.hdop)
            if h is None:
                h = hyst[f.hdop] = hysteresis(f.hdop)
            pts.append((lat, lon, h))
            if prev_t is None or t > prev_t:  # the rules' order: later fixes only
                if prev_t is not None:
                    segs.append((prev_lat, prev_lon, lat, lon))
                    seg_h.append(h)
                    seg_dt.append(t - prev_t)
                prev_t, prev_lat, prev_lon = t, lat, lon
        self._located: dict[tuple[float, float, float], Located] = dict.fromkeys(pts, _EMPTY)
        self._hits: dict[tuple[float, float, float, float], frozenset[int]] = {}
        if zones.tree is not None:
            self._locate_all(pts)
            self._cross_all(segs, seg_h, seg_dt)

    # ------------------------------------------------------------------ lookups

    def locate(self, lat: float, lon: float, h: float) -> Located | None:
        """(inside, near) as ``ZoneLocator.locate`` gives them (``near`` exact for every
        zone), or None when this fix was not foreseen."""
        return self._located.get((lat, lon, h))

    def hits(self, lat1: float, lon1: float, lat2: float, lon2: float) -> frozenset[int] | None:
        """Fences the segment touches (``Zone.segment_hits``), or None if not foreseen."""
        return self._hits.get((lat1, lon1, lat2, lon2))

    # ------------------------------------------------------------------ bulk passes

    def _query(self, x0: Any, y0: Any, x1: Any, y1: Any) -> tuple[Any, Any]:
        """(item, zone) pairs whose zone box meets item's lon/lat box, longitudes in any
        turn (boxes past ±180 are also asked shifted by a turn), without duplicates."""
        import numpy as np
        import shapely

        items = np.arange(len(x0))
        qx0, qx1, qi = [x0], [x1], [items]
        for shift, mask in ((-360.0, x1 > 180.0), (360.0, x0 < -180.0)):
            if mask.any():
                qx0.append(x0[mask] + shift)
                qx1.append(x1[mask] + shift)
                qi.append(items[mask])
        ys0 = np.concatenate([y0[i] for i in qi])
        ys1 = np.concatenate([y1[i] for i in qi])
        boxes = shapely.box(np.concatenate(qx0), ys0, np.concatenate(qx1), ys1)
        q, t = self.zones.tree.query(boxes)
        item = np.concatenate(qi)[q]
        zone = self.zones.tree_zone[t]
        key = np.unique(item.astype(np.int64) * len(self.zones.zones) + zone)
        return key // len(self.zones.zones), key % len(self.zones.zones)

    def _frames(self, zone: Any) -> tuple[Any, Any, Any, Any]:
        f = self.zones.table().frames
        return f[zone, 0], f[zone, 1], f[zone, 2], f[zone, 3]

    def _locate_all(self, pts: list[tuple[float, float, float]]) -> None:
        import numpy as np
        import shapely

        p = np.array(pts, dtype=float).reshape(-1, 3)
        lat, lon, h = p[:, 0], p[:, 1], p[:, 2]
        r = h * SLACK + SLACK_M
        dlat = r / M_PER_DEG
        dlon = r / (M_PER_DEG * np.maximum(np.cos(np.radians(lat)), MIN_COS))
        fi, zi = self._query(lon - dlon, np.maximum(lat - dlat, -90.0), lon + dlon,
                             np.minimum(lat + dlat, 90.0))
        self.pairs += len(fi)
        lon0, lat0, kx, ky = self._frames(zi)
        # Zone.frame.xy, operation for operation
        xs = ((lon[fi] - lon0 + 180.0) % 360.0 - 180.0) * kx
        ys = (lat[fi] - lat0) * ky
        tab = self.zones.table()
        shape = tab.shape[zi]
        pad = tab.pad[zi]
        geom = tab.geom[zi]
        sd = np.empty(len(fi))
        circle = shape == CIRCLE
        sd[circle] = np.sqrt(xs[circle] * xs[circle] + ys[circle] * ys[circle]) - pad[circle]
        corridor = shape == CORRIDOR
        sd[corridor] = shapely.distance(
            geom[corridor], shapely.points(xs[corridor], ys[corridor])) - pad[corridor]
        poly = shape == POLYGON
        gp, xp, yp = geom[poly], xs[poly], ys[poly]
        inside_p = shapely.intersects_xy(gp, xp, yp)
        # inside: below zero whatever the boundary distance (only the signs matter
        # here); outside is what intersects_xy says (``Zone.signed_distance_xy``)
        sdp = np.full(len(gp), -1.0)
        out_p = ~inside_p
        sdp[out_p] = np.maximum(shapely.distance(
            gp[out_p], shapely.points(xp[out_p], yp[out_p])), _TINY)
        sd[poly] = sdp
        near = sd <= h[fi]
        inside = sd <= 0.0
        out = self._located
        cur = -1
        got: Located = _EMPTY
        for k, z, i in zip(fi[near].tolist(), zi[near].tolist(), inside[near].tolist(),
                           strict=True):
            if k != cur:  # pairs come sorted by fix, then zone
                cur = k
                got = out[pts[k]] = ([], [])
            if i:
                got[0].append(z)
            got[1].append(z)

    def _cross_all(self, segs: list[tuple[float, float, float, float]], seg_h: list[float],
                   seg_dt: list[float]) -> None:
        import numpy as np
        import shapely

        if not segs:
            return
        tab = self.zones.table()
        s = np.array(segs, dtype=float)
        lat1, lon1, lat2, lon2 = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
        # the rules ask only when the fixes are far enough apart (not jitter) and not a
        # jump (``Rules._crossings``); the others are left out, with a margin so that
        # rounding cannot leave out one they ask about (and if it did, they would
        # measure it themselves)
        dx = ((lon2 - lon1 + 180.0) % 360.0 - 180.0) * np.cos(np.radians(lat2))
        seg = np.sqrt(dx * dx + (lat2 - lat1) ** 2) * M_PER_DEG
        asked = (seg > 2.0 * np.array(seg_h) * (1 - 1e-6)) & (
            seg <= MAX_CROSS_MPS * np.array(seg_dt) * (1 + 1e-6))
        keep = np.flatnonzero(asked)
        if not len(keep):
            return
        s = s[keep]
        segs = [segs[k] for k in keep.tolist()]
        self._hits.update(dict.fromkeys(segs, _NO_HITS))
        lat1, lon1, lat2, lon2 = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
        lo, hi = np.minimum(lon1, lon2), np.maximum(lon1, lon2)
        wraps = hi - lo > 180.0  # across the antimeridian: the short way round
        lo, hi = np.where(wraps, hi, lo), np.where(wraps, lo + 360.0, hi)
        pad_deg = 1e-7  # zone boxes hold the whole shape: only rounding to cover
        si, zi = self._query(lo - pad_deg, np.minimum(lat1, lat2) - pad_deg, hi + pad_deg,
                             np.maximum(lat1, lat2) + pad_deg)
        fence = tab.fence[zi]
        si, zi = si[fence], zi[fence]
        lon0, lat0, kx, ky = self._frames(zi)
        coords = np.empty((len(si), 2, 2))
        coords[:, 0, 0] = ((lon1[si] - lon0 + 180.0) % 360.0 - 180.0) * kx
        coords[:, 0, 1] = (lat1[si] - lat0) * ky
        coords[:, 1, 0] = ((lon2[si] - lon0 + 180.0) % 360.0 - 180.0) * kx
        coords[:, 1, 1] = (lat2[si] - lat0) * ky
        lines = shapely.linestrings(coords)
        pad = tab.pad[zi]
        geom = tab.geom[zi]
        padded = pad > 0
        hit = np.empty(len(si), dtype=bool)
        hit[padded] = shapely.dwithin(geom[padded], lines[padded], pad[padded])
        hit[~padded] = shapely.intersects(geom[~padded], lines[~padded])
        found: dict[int, set[int]] = {}
        for k, z in zip(si[hit].tolist(), zi[hit].tolist(), strict=True):
            found.setdefault(k, set()).add(z)
        for k, got in found.items():
            self._hits[segs[k]] = frozenset(got)
