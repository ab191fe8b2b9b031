"""Drives along real roads: a route follower on an imported road graph.

``follow(graph, start, length_m, seed)`` walks the graph of a road index
(``edge.roads.index``) from a start segment: at each node it goes on along the same
way when it can, else takes a random allowed turn (one-way streets respected, no
U-turns), until the route is ``length_m`` long or ends in a dead end. The result is a
``Route``: the polyline (lon, lat) for ``sim.generate`` and its pieces, each the part of
one way travelled in one direction, by route distance, so that whoever built the route
knows which way the car is on at any distance -- the truth the map matcher is judged
against, computed without it.

``profile(route, limit_of, ...)`` turns it into a ``sim.generate.Profile`` whose
driver keeps ``factor x limit + offset_kmh`` on every piece (braking before a lower
limit, accelerating after a higher one, as ``sim.generate.Motion`` drives).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from edge.core.geo import haversine_m
from edge.roads.index import RoadIndex, Segment
from sim.generate import Limit, Profile


@dataclass(frozen=True, slots=True)
class Piece:
    from_m: float
    to_m: float
    way: int
    forward: bool  # in the direction the way is drawn


@dataclass(frozen=True, slots=True)
class Route:
    coords: list[tuple[float, float]]  # (lon, lat)
    pieces: list[Piece]
    segments: list[int]  # segment ids, in order

    @property
    def length_m(self) -> float:
        return self.pieces[-1].to_m if self.pieces else 0.0

    def piece_at(self, s: float) -> Piece:
        for p in self.pieces:
            if s < p.to_m:
                return p
        return self.pieces[-1]


class Graph:
    """The index's segments as a directed graph (one-way streets one way only)."""

    def __init__(self, index: RoadIndex, *, with_tunnels: bool = False) -> None:
        self.index = index
        self.segs: dict[int, Segment] = {}
        self.out: dict[int, list[tuple[int, bool]]] = defaultdict(list)  # node -> (seg, fwd)
        for s in index.all_segments():
            if not with_tunnels and index.way(s.way).tunnel:
                continue  # no GNSS fix in there: a generated drive stays out
            self.segs[s.id] = s
            ow = index.way(s.way).oneway
            if ow >= 0:
                self.out[s.n1].append((s.id, True))
            if ow <= 0:
                self.out[s.n2].append((s.id, False))

    def allowed(self, seg_id: int) -> list[bool]:
        ow = self.index.way(self.segs[seg_id].way).oneway
        return [d for d in (True, False) if (ow >= 0 if d else ow <= 0)]


def _ends(s: Segment, forward: bool) -> tuple[tuple[float, float], tuple[float, float], int]:
    """(start lon/lat, end lon/lat, end node) of a segment travelled one way."""
    a, b = (s.lon1, s.lat1), (s.lon2, s.lat2)
    return (a, b, s.n2) if forward else (b, a, s.n1)


def follow(graph: Graph, start: int, length_m: float, seed: int, *,
           forward: bool | None = None) -> Route:
    rng = random.Random(seed)
    dirs = graph.allowed(start)
    fwd = forward if forward is not None and forward in dirs else rng.choice(dirs)
    seg_id = start
    coords: list[tuple[float, float]] = []
    pieces: list[Piece] = []
    order: list[int] = []
    total = 0.0
    visited: set[tuple[int, bool]] = set()
    while True:
        s = graph.segs[seg_id]
        a, b, end = _ends(s, fwd)
        if not coords:
            coords.append(a)
        d = haversine_m(a[1], a[0], b[1], b[0])
        coords.append(b)
        order.append(seg_id)
        visited.add((seg_id, fwd))
        if pieces and pieces[-1].way == s.way and pieces[-1].forward == fwd:
            last = pieces[-1]
            pieces[-1] = Piece(last.from_m, total + d, s.way, fwd)
        else:
            pieces.append(Piece(total, total + d, s.way, fwd))
        total += d
        if total >= length_m:
            break
        nxt = [(i, f) for i, f in graph.out.get(end, []) if i != seg_id
               and (i, f) not in visited]
        if not nxt:
            break
        same = [(i, f) for i, f in nxt if graph.segs[i].way == s.way]
        seg_id, fwd = same[0] if same else rng.choice(nxt)
    return Route(coords, pieces, order)


def profile(route: Route, limit_of: Callable[[Piece], float], *, seed: int,
            factor: float = 0.9, offset_kmh: float = 0.0,
            start: dt.datetime | None = None, **kw: object) -> Profile:
    """A drive of ``route`` at ``factor x limit + offset_kmh`` on every piece."""
    limits = []
    for p in route.pieces:
        kmh = limit_of(p)
        cap = 130.0 if math.isinf(kmh) else kmh * factor + offset_kmh
        if limits and limits[-1].max_kmh == cap:
            continue
        limits.append(Limit(from_m=p.from_m, max_kmh=max(cap, 5.0)))
    return Profile(seed=seed, route=route.coords,
                   start=start or dt.datetime(2026, 5, 14, 6, 30, tzinfo=dt.UTC),
                   limits=limits, with_can=False, start_idle_s=5.0, end_idle_s=5.0,
                   **kw)  # type: ignore[arg-type]
