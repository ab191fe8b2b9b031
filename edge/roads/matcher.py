"""Online map matching: which road is the car on, fix by fix.

The hidden Markov model of Newson & Krumm (2009), "Hidden Markov Map Matching
Through Noise and Sparseness", in its simplest online form: a state is a road
segment travelled in one direction; each fix scores the states within a radius that
grows with HDOP, and the best path is carried forward one step at a time (Viterbi
without lag, scores as log probabilities).

* **Emission**: the fix's distance to the segment, Gaussian with ``sigma_m`` (grown with
  HDOP), and, when the car moves, its course against the direction of travel
  (Gaussian with ``heading_sigma_deg``); a one-way segment has one direction only, so
  a car driving against it does not match it. A tunnel costs ``tunnel_cost``: a valid
  fix above a tunnel that runs under a street comes from the street.
* **Transition**: ``|great-circle distance - route distance| / beta`` between the
  projections of two consecutive fixes, the route distance going through the shared
  node when two segments connect (or along the way when both belong to it); segments
  that do not connect cost ``jump_cost`` (a bridge above the road, a parallel frontage
  road), leaving a way costs ``way_change_cost``.
* **Hysteresis**: the reported way changes only when another way leads by
  ``switch_margin`` (log units) or the current way has no candidate left, so the limit
  does not flicker at junctions; one fix with no candidate keeps the last match
  (``unmatched_after`` fixes with nothing within the radius, or nothing headed the car's
  way, report "unmatched": car parks, off-road).

Geometry is a point-to-segment projection in a local equirectangular frame around
the fix (metres; ``edge.core.geo``): two dot products per candidate. shapely is not
used on this path: it would add numpy and ~21 MB to the daemon's resident set for a
computation of six lines, and the daemon's budget is 60 MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.core.geo import M_PER_DEG, MIN_COS, wrap_lon
from edge.roads.index import RoadIndex, Segment, Way


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchParams:
    radius_m: float = 25.0  # candidates within this + hdop_radius_m x HDOP
    hdop_radius_m: float = 5.0
    max_radius_m: float = 80.0
    sigma_m: float = 5.0  # GNSS noise (grows with HDOP: max(sigma_m, 2.5 x HDOP))
    heading_sigma_deg: float = 30.0
    max_heading_deg: float = 80.0  # a moving car's course further from every candidate: none
    min_speed_mps: float = 2.0  # slower: course is noise, not used
    beta_m: float = 8.0
    jump_cost: float = 10.0
    way_change_cost: float = 0.5
    switch_margin: float = 1.5
    unmatched_after: int = 2
    gap_s: float = 10.0  # longer without a fix: start over
    prune: float = 25.0  # states this far below the best are dropped
    tunnel_cost: float = 4.0  # a fix from the sky is unlikely to come from a tunnel


@dataclass(frozen=True, slots=True)
class Match:
    way: Way
    segment: int
    forward: bool  # travelling in the direction the way is drawn
    distance_m: float


@dataclass(slots=True)
class _State:
    seg: Segment
    forward: bool
    s: float  # metres along the segment from its first node
    length: float
    d: float  # metres from the fix
    score: float = 0.0


class Matcher:
    def __init__(self, index: RoadIndex, params: MatchParams | None = None) -> None:
        self.index = index
        self.p = params or MatchParams()
        self._states: list[_State] = []
        self._last: tuple[float, float, float] | None = None  # t, lat, lon
        self._current: Match | None = None
        self._misses = 0
        self._links: dict[tuple[int, int], float] = {}
        self.counts = {"fixes": 0, "matched": 0, "unmatched": 0, "switches": 0,
                       "held": 0}

    @property
    def current(self) -> Match | None:
        return self._current

    def reset(self) -> None:
        self._states = []
        self._last = None
        self._current = None
        self._misses = 0

    def on_fix(self, t: float, lat: float, lon: float, *, hdop: float | None = None,
               speed_mps: float | None = None, course_deg: float | None = None
               ) -> Match | None:
        """The road the car is on after this fix, or None ("unmatched")."""
        p = self.p
        self.counts["fixes"] += 1
        h = hdop if hdop is not None and math.isfinite(hdop) and hdop > 0 else 1.0
        radius = min(p.max_radius_m, p.radius_m + p.hdop_radius_m * h)
        sigma = max(p.sigma_m, 2.5 * h)
        moving = (speed_mps is not None and speed_mps >= p.min_speed_mps
                  and course_deg is not None and math.isfinite(course_deg))
        kx = M_PER_DEG * max(math.cos(math.radians(lat)), MIN_COS)
        states: list[_State] = []
        for seg in self.index.near(lat, lon, radius):
            x1 = wrap_lon(seg.lon1 - lon) * kx
            y1 = (seg.lat1 - lat) * M_PER_DEG
            x2 = wrap_lon(seg.lon2 - lon) * kx
            y2 = (seg.lat2 - lat) * M_PER_DEG
            dx, dy = x2 - x1, y2 - y1
            ll = dx * dx + dy * dy
            length = math.sqrt(ll)
            u = 0.0 if ll == 0 else min(1.0, max(0.0, -(x1 * dx + y1 * dy) / ll))
            px, py = x1 + u * dx, y1 + u * dy
            d = math.hypot(px, py)
            if d > radius:
                continue
            way = self.index.way(seg.way)
            bearing = math.degrees(math.atan2(dx, dy)) % 360.0
            for forward in (True, False):
                if (way.oneway == 1 and not forward) or (way.oneway == -1 and forward):
                    continue
                e = -0.5 * (d / sigma) ** 2 - (p.tunnel_cost if way.tunnel else 0.0)
                if moving:
                    assert course_deg is not None
                    travel = bearing if forward else (bearing + 180.0) % 360.0
                    dh = abs((course_deg - travel + 180.0) % 360.0 - 180.0)
                    if dh > p.max_heading_deg:
                        continue
                    e -= 0.5 * (dh / p.heading_sigma_deg) ** 2
                states.append(_State(seg, forward, u * length, length, d, e))
        gap = self._last is None or t - self._last[0] > p.gap_s or t <= self._last[0]
        if not states:
            return self._miss(t, lat, lon)
        if not gap and self._states:
            assert self._last is not None
            gc = _dist(self._last[1], self._last[2], lat, lon)
            # short segments between the two fixes' candidates (a junction's middle)
            self._links = {}
            for st in (*self._states, *states):
                sg = st.seg
                self._links[(sg.n1, sg.n2)] = self._links[(sg.n2, sg.n1)] = st.length
            for st in states:
                st.score += max(prev.score + self._transition(prev, st, gc)
                                for prev in self._states)
        top = max(st.score for st in states)
        self._states = [st for st in states if st.score >= top - p.prune]
        for st in self._states:
            st.score -= top
        self._last = (t, lat, lon)
        self._misses = 0
        return self._decide()

    def _miss(self, t: float, lat: float, lon: float) -> Match | None:
        self._misses += 1
        if self._misses >= self.p.unmatched_after:
            self._states = []
            self._last = (t, lat, lon)
            if self._current is not None:
                self.counts["switches"] += 1
            self._current = None
            self.counts["unmatched"] += 1
            return None
        self.counts["held"] += 1
        if self._current is None:
            self.counts["unmatched"] += 1
        else:
            self.counts["matched"] += 1
        return self._current

    def _decide(self) -> Match | None:
        best = max(self._states, key=lambda st: st.score)
        cur = self._current
        if cur is not None and best.seg.way != cur.way.id:
            mine = [st for st in self._states if st.seg.way == cur.way.id]
            if mine:
                keep = max(mine, key=lambda st: st.score)
                if best.score - keep.score < self.p.switch_margin:
                    best = keep
        if cur is None or best.seg.way != cur.way.id:
            self.counts["switches"] += 1
        self._current = Match(self.index.way(best.seg.way), best.seg.id, best.forward, best.d)
        self.counts["matched"] += 1
        return self._current

    def _transition(self, a: _State, b: _State, gc: float) -> float:
        p = self.p
        sa, sb = a.seg, b.seg
        if sa.id == sb.id:
            if a.forward != b.forward:
                return -p.jump_cost
            route = abs(b.s - a.s)
            return -abs(gc - route) / p.beta_m
        # the node where a leaves and the node where b starts, in their directions
        a_exit = sa.n2 if a.forward else sa.n1
        b_entry = sb.n1 if b.forward else sb.n2
        rest_a = a.length - a.s if a.forward else a.s
        into_b = b.s if b.forward else b.length - b.s
        if a_exit == b_entry:
            cost = 0.0 if sa.way == sb.way else p.way_change_cost
            return -abs(gc - (rest_a + into_b)) / p.beta_m - cost
        if sa.way == sb.way and a.forward == b.forward and (sb.id > sa.id) == a.forward:
            # further along the same way (segments of a way are numbered in its order)
            return -max(0.0, rest_a + into_b - gc) / p.beta_m
        middle = self._links.get((a_exit, b_entry))
        if middle is not None:
            cost = 0.0 if sa.way == sb.way else p.way_change_cost
            return -abs(gc - (rest_a + middle + into_b)) / p.beta_m - cost
        return -p.jump_cost


def _dist(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    kx = M_PER_DEG * max(math.cos(math.radians((lat1 + lat2) / 2)), MIN_COS)
    return math.hypot(wrap_lon(lon2 - lon1) * kx, (lat2 - lat1) * M_PER_DEG)
