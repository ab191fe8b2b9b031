"""Geometry for a whole known drive at once (``edge replay``, ``edge report``).

When every fix of a drive is known up front, the geometric questions the rules ask fix
by fix — which zones is the car in, which is it within the hysteresis of, which fences
does the straight line from the previous fix touch — are answered for all fixes in a
few array operations: one ``STRtree.query`` with every fix's search box, every
(fix, candidate zone) pair moved into its zone's frame with numpy, then
``shapely.intersects_xy`` / ``shapely.distance`` / ``shapely.intersects`` /
``shapely.dwithin`` over all pairs at once (a pair farther from the zone's box than the
hysteresis is not asked at all). The rules then run only their stateful part (debounce,
hysteresis, dwell, gaps) per fix and take the answers in order: the next fix's answer
is checked against the fix by three float comparisons, no per-fix keys or lookups, and
consecutive fixes with the same answer share its lists (the rules skip a repeated
answer by identity).

The answers are the live path's, float for float: the same frame arithmetic (numpy and
Python round the same IEEE operations the same way), the same GEOS predicates on the
same prepared geometries, the same ``<= 0`` / ``<= h`` comparisons. A question the
bulk pass did not foresee (a fix order the rules do not accept as this pass assumed)
falls back to the live evaluation, so the events are the same either way.

Two classes: ``BulkPass`` computes the answers for many fixes at once; ``DriveGeometry``
picks the fixes the rules take, has them computed and hands the answers out per fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from edge.config import SpeedRuleConfig
from edge.core.geo import M_PER_DEG, MIN_COS
from edge.core.geofence import MAX_CROSS_MPS
from edge.core.limits import Limit, decide_limit
from edge.core.zones import CIRCLE, CORRIDOR, POLYGON, Zones
from edge.model import Fix

Located = tuple[list[int], list[int]]
_EMPTY: Located = ([], [])
_NO_HITS: frozenset[int] = frozenset()
SLACK = 1.01  # frames differ slightly from the search box's: search a little wider
SLACK_M = 2.0
CHUNK = 8  # fixes per query box
_TINY = 5e-324
FAR_M = 1.0  # a pair this much beyond the hysteresis of a zone's box is not measured


class DriveGeometry:
    """Precomputed ``locate`` and crossing answers for the fixes of one drive (computed
    by ``BulkPass``), handed out in the order the rules ask.

    The rules ask about the drive's fixes in order (``step``): the answer for the next
    expected fix is found by comparing three floats with it, no lookup at all. A fix
    out of that order is looked up by position (``locate``), and its crossing is left
    to the live path."""

    __slots__ = ("_answers", "_chain", "_h", "_hits", "_k", "_lat", "_lon", "_n", "_where",
                 "zones")

    def __init__(self, zones: Zones, fixes: Iterable[Fix],
                 hysteresis: Callable[[float | None], float]) -> None:
        import numpy as np

        self.zones = zones
        # the fixes the rules take, in their order: per fix its lat, lon, hysteresis,
        # its (inside, near) answer and the fences the segment from the one before hits
        self._lat: list[float] = []
        self._lon: list[float] = []
        self._h: list[float] = []
        self._answers: list[Located] = []
        self._hits: dict[int, frozenset[int]] = {}
        self._n = 0
        self._k = 0  # the next fix expected
        self._chain = False  # the fix before the expected one was answered in order
        self._where: dict[tuple[float, float, float], int] | None = None
        fl = fixes if isinstance(fixes, list) else list(fixes)
        if not fl:
            return
        # the fixes the rules take (valid, timed, on the globe), as arrays
        t = np.array([f.time for f in fl], dtype=float)  # None -> nan
        lat = np.array([f.lat for f in fl], dtype=float)
        lon = np.array([f.lon for f in fl], dtype=float)
        hdop = np.array([f.hdop for f in fl], dtype=float)
        ok = (np.array([f.valid for f in fl], dtype=bool) & np.isfinite(t)
              & (lat >= -90.0) & (lat <= 90.0) & (lon >= -180.0) & (lon <= 180.0))
        t, lat, lon, hdop = t[ok], lat[ok], lon[ok], hdop[ok]
        if not len(t):
            return
        # the rules' order: a fix not later than every fix before it is dropped
        kept = np.ones(len(t), dtype=bool)
        kept[1:] = t[1:] > np.maximum.accumulate(t)[:-1]
        t, lat, lon, hdop = t[kept], lat[kept], lon[kept], hdop[kept]
        # the hysteresis of each distinct HDOP, as the rules compute it
        u, inv = np.unique(hdop, return_inverse=True)
        h = np.array([hysteresis(None if math.isnan(v) else v) for v in u.tolist()])[inv]
        n = self._n = len(t)
        self._lat = lat.tolist()
        self._lon = lon.tolist()
        self._h = h.tolist()
        if zones.tree is None:
            self._answers = [_EMPTY] * n
            return
        bulk = BulkPass(zones)
        self._answers = bulk.locate_all(lat, lon, h)
        # a segment joins consecutive fixes
        self._hits = bulk.cross_all(lat[:-1], lon[:-1], lat[1:], lon[1:], h[1:],
                                    t[1:] - t[:-1])

    # ------------------------------------------------------------------ lookups

    def step(self, lat: float, lon: float, h: float
             ) -> tuple[list[int], list[int], frozenset[int] | None] | None:
        """(inside, near, hits) for the fix the rules take next: ``locate``'s answer,
        and the fences the segment from the fix before touches (None: not foreseen,
        the rules measure it). None when this fix was not foreseen at all."""
        k = self._k
        if k < self._n and self._lat[k] == lat and self._lon[k] == lon and self._h[k] == h:
            hits = self._hits.get(k, _NO_HITS) if self._chain else None
            self._k = k + 1
            self._chain = True
            a = self._answers[k]
            return a[0], a[1], hits
        # out of order: answered by position, the segment left to the rules
        self._chain = False
        i = self._index(lat, lon, h)
        if i is None:
            return None
        self._k = i + 1
        a = self._answers[i]
        return a[0], a[1], None

    def locate(self, lat: float, lon: float, h: float) -> Located | None:
        """(inside, near) as ``ZoneLocator.locate`` gives them (``near`` exact for every
        zone), or None when this fix was not foreseen."""
        i = self._index(lat, lon, h)
        return None if i is None else self._answers[i]

    def _index(self, lat: float, lon: float, h: float) -> int | None:
        if self._where is None:  # built only when a fix comes out of order
            self._where = {}
            for i, key in enumerate(zip(self._lat, self._lon, self._h, strict=True)):
                self._where.setdefault(key, i)
        return self._where.get((lat, lon, h))


class BulkPass:
    """The geometry of many fixes at once (numpy + shapely over every (fix, zone) pair):
    ``locate_all`` answers ``ZoneLocator.locate`` for each fix, ``cross_all`` the fences
    each segment between consecutive fixes touches."""

    __slots__ = ("zones",)

    def __init__(self, zones: Zones) -> None:
        self.zones = zones

    def _query(self, x0: Any, y0: Any, x1: Any, y1: Any) -> tuple[Any, Any]:
        """(item, zone) pairs whose zone box meets item's lon/lat box, longitudes in any
        turn, sorted by item then zone, without duplicates.

        Consecutive items (fixes of a drive lie close together) are asked together, one
        box around ``CHUNK`` of them, and the pairs are then narrowed to each item's own
        box with array arithmetic: a fraction of the query geometries to build."""
        import numpy as np
        import shapely

        n = len(x0)
        starts = np.arange(0, n, CHUNK)
        cx0 = np.minimum.reduceat(x0, starts)
        cx1 = np.maximum.reduceat(x1, starts)
        cy0 = np.minimum.reduceat(y0, starts)
        cy1 = np.maximum.reduceat(y1, starts)
        size = np.diff(np.append(starts, n))
        # a group that straddles the antimeridian would span the globe: ask item by item
        wide = cx1 - cx0 > 180.0
        if wide.any():
            one = np.flatnonzero(np.repeat(wide, size))
            keep = ~wide
            starts = np.concatenate([starts[keep], one])
            size = np.concatenate([size[keep], np.ones(len(one), dtype=size.dtype)])
            cx0 = np.concatenate([cx0[keep], x0[one]])
            cx1 = np.concatenate([cx1[keep], x1[one]])
            cy0 = np.concatenate([cy0[keep], y0[one]])
            cy1 = np.concatenate([cy1[keep], y1[one]])
        groups = np.arange(len(starts))
        gx0, gx1, gi = [cx0], [cx1], [groups]
        for shift, mask in ((-360.0, cx1 > 180.0), (360.0, cx0 < -180.0)):
            if mask.any():  # boxes past ±180 are also asked a turn the other way
                gx0.append(cx0[mask] + shift)
                gx1.append(cx1[mask] + shift)
                gi.append(groups[mask])
        g = np.concatenate(gi)
        q, t = self.zones.tree.query(shapely.box(
            np.concatenate(gx0), cy0[g], np.concatenate(gx1), cy1[g]))
        grp = g[q]
        zone = self.zones.tree_zone[t]
        # every item of the group with every zone the group's box met
        reps = size[grp]
        first = np.repeat(starts[grp], reps)
        offset = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        item = first + offset
        zone = np.repeat(zone, reps)
        # narrowed to the item's own box (longitudes compared in all three turns)
        zb = self.zones.table().bounds[zone]
        ix0, ix1 = x0[item], x1[item]
        lat_ok = (zb[:, 1] <= y1[item]) & (zb[:, 3] >= y0[item])
        lon_ok = np.zeros(len(item), dtype=bool)
        for shift in (0.0, -360.0, 360.0):
            lon_ok |= (zb[:, 0] + shift <= ix1) & (zb[:, 2] + shift >= ix0)
        ok = lat_ok & lon_ok
        nz = len(self.zones.zones)
        # sorted, duplicates (a box met in two turns) dropped; np.unique is many times
        # slower here (it hashes before it sorts)
        key = np.sort(item[ok].astype(np.int64) * nz + zone[ok])
        if len(key) > 1:
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        return key // nz, key % nz

    def _frames(self, zone: Any) -> tuple[Any, Any, Any, Any]:
        f = self.zones.table().frames
        return f[zone, 0], f[zone, 1], f[zone, 2], f[zone, 3]

    def locate_all(self, lat: Any, lon: Any, h: Any) -> list[Located]:
        import numpy as np
        import shapely

        r = h * SLACK + SLACK_M
        dlat = r / M_PER_DEG
        dlon = r / (M_PER_DEG * np.maximum(np.cos(np.radians(lat)), MIN_COS))
        fi, zi = self._query(lon - dlon, np.maximum(lat - dlat, -90.0), lon + dlon,
                             np.minimum(lat + dlat, 90.0))
        tab = self.zones.table()
        lon0, lat0, kx, ky = self._frames(zi)
        # Zone.frame.xy, operation for operation
        xs = ((lon[fi] - lon0 + 180.0) % 360.0 - 180.0) * kx
        ys = (lat[fi] - lat0) * ky
        hf = h[fi]
        shape = tab.shape[zi]
        # a pair farther from the zone's box in its frame (grown by the radius / half
        # width) than the hysteresis is neither inside nor near: no geometry to ask.
        # FAR_M leaves a pair that rounding could put either side for GEOS to judge.
        xb = tab.xy_bounds[zi]
        bx = np.maximum(np.maximum(xb[:, 0] - xs, xs - xb[:, 2]), 0.0)
        by = np.maximum(np.maximum(xb[:, 1] - ys, ys - xb[:, 3]), 0.0)
        keep = np.flatnonzero((bx * bx + by * by <= (hf + FAR_M) ** 2) | (shape == CIRCLE))
        fi, zi, xs, ys, hf, shape = fi[keep], zi[keep], xs[keep], ys[keep], hf[keep], shape[keep]
        pad = tab.pad[zi]
        geom = tab.geom[zi]
        sd = np.empty(len(fi))
        circle = shape == CIRCLE
        sd[circle] = np.sqrt(xs[circle] * xs[circle] + ys[circle] * ys[circle]) - pad[circle]
        corridor = shape == CORRIDOR
        if corridor.any():
            sd[corridor] = shapely.distance(
                geom[corridor], shapely.points(xs[corridor], ys[corridor])) - pad[corridor]
        poly = shape == POLYGON
        gp, xp, yp = geom[poly], xs[poly], ys[poly]
        inside_p = shapely.intersects_xy(gp, xp, yp)
        # inside: below zero whatever the boundary distance (only the signs matter
        # here); outside is what intersects_xy says (``Zone.signed_distance_xy``)
        sdp = np.full(len(gp), -1.0)
        out_p = ~inside_p
        if out_p.any():
            sdp[out_p] = np.maximum(shapely.distance(
                gp[out_p], shapely.points(xp[out_p], yp[out_p])), _TINY)
        sd[poly] = sdp
        near = sd <= hf
        inside = sd <= 0.0
        # per fix: its slice of the near pairs (sorted by fix, then zone) and of the
        # inside ones; a fix with the same answer as the one before shares its lists
        # (consecutive fixes mostly do: the rules then see nothing changed)
        n = len(lat)
        fn, zn = fi[near], zi[near]
        fin, zin = fi[inside], zi[inside]
        n_cnt = np.bincount(fn, minlength=n)
        i_cnt = np.bincount(fin, minlength=n)
        same = np.zeros(n, dtype=bool)
        same[1:] = (n_cnt[1:] == n_cnt[:-1]) & (i_cnt[1:] == i_cnt[:-1])
        for z, f, cnt in ((zn, fn, n_cnt), (zin, fin, i_cnt)):
            # an element equals the one at the same place in the previous fix's slice
            e = np.arange(len(z))
            prev = e - np.where(f > 0, cnt[np.maximum(f - 1, 0)], 0)
            differs = np.zeros(len(z), dtype=bool)
            valid = (f > 0) & (prev >= 0)
            differs[valid] = z[valid] != z[prev[valid]]
            differs[~valid] = True
            bad = np.zeros(n, dtype=bool)
            bad[f[differs]] = True
            same &= ~bad
        new = np.flatnonzero(~same)
        n_end = np.cumsum(n_cnt)
        i_end = np.cumsum(i_cnt)
        near_z = zn.tolist()
        in_z = zin.tolist()
        answers: list[Located] = []
        for a, b, c, d in zip((n_end - n_cnt)[new].tolist(), n_end[new].tolist(),
                              (i_end - i_cnt)[new].tolist(), i_end[new].tolist(),
                              strict=True):
            answers.append((in_z[c:d], near_z[a:b]) if b > a else _EMPTY)
        run = np.cumsum(~same) - 1
        return [answers[r] for r in run.tolist()]

    def cross_all(self, lat1: Any, lon1: Any, lat2: Any, lon2: Any, h: Any,
                  dt: Any) -> dict[int, frozenset[int]]:
        """The fences hit by the segment into each fix (keyed by that fix's index)."""
        import numpy as np
        import shapely

        if not len(lat1):
            return {}
        tab = self.zones.table()
        # the rules ask only when the fixes are far enough apart (not jitter) and not a
        # jump (``Rules._crossings``); the others are left out, with a margin so that
        # rounding cannot leave out one they ask about (and if it did, they would
        # measure it themselves); the ones certainly not asked have no crossing
        dx = ((lon2 - lon1 + 180.0) % 360.0 - 180.0) * np.cos(np.radians(lat2))
        seg = np.sqrt(dx * dx + (lat2 - lat1) ** 2) * M_PER_DEG
        asked = (seg > 2.0 * h * (1 - 1e-6)) & (seg <= MAX_CROSS_MPS * dt * (1 + 1e-6))
        keep = np.flatnonzero(asked)
        if not len(keep):
            return {}
        lat1, lon1, lat2, lon2 = lat1[keep], lon1[keep], lat2[keep], lon2[keep]
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
        # segment j joins fix j and fix j + 1
        for k, z in zip((keep[si[hit]] + 1).tolist(), zi[hit].tolist(), strict=True):
            found.setdefault(k, set()).add(z)
        return {k: frozenset(got) for k, got in found.items()}


def limits_along(zones: Zones, speed: SpeedRuleConfig,
                 points: Sequence[tuple[float, float]]) -> list[Limit]:
    """The applicable speed limit at each (lat, lon) of a track, decided as the rules
    decide it (``Zones.limit_claims`` + ``decide_limit``), the zones found in bulk."""
    fixes = [Fix(time=float(k), lat=lat, lon=lon, valid=True, mode=3)
             for k, (lat, lon) in enumerate(points)]
    geo = DriveGeometry(zones, fixes, lambda hdop: 0.0)
    out = []
    for lat, lon in points:
        got = geo.locate(lat, lon, 0.0)
        inside = got[0] if got is not None else []
        out.append(decide_limit(speed.limit_kmh, speed.limit_policy,
                                zones.limit_claims(inside)))
    return out
