"""Plain-Python spatial index and planar geometry for the zones (no shapely, no numpy).

* ``BoxTree``: a packed sort-tile-recursive R-tree over axis-aligned boxes, built once.
* ``SegmentGrid``: a uniform grid over a shape's edges: nearest edge and the edges near
  a segment without visiting all of them (shapes with thousands of vertices).
* ``Circle``, ``Corridor``, ``Polygon``: the zone shapes in metres, each with
  ``bounds``, ``signed_distance(x, y)`` (negative inside) and
  ``intersects_segment(ax, ay, bx, by)`` (closed: touching counts).
* ``polygon_problem(rings)``: why a polygon (shell + holes) is not valid, or None.

Polygons follow the OGC model: a point on the boundary is not inside (distance 0);
the parts of a MultiPolygon are unioned (a point is inside when any part holds it,
and edges shared by touching parts are not boundary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

Pt = tuple[float, float]
Box = tuple[float, float, float, float]
Edge = tuple[float, float, float, float]
# (x0, y0, x1, y1, children, leaf): children are nodes, or (x0, y0, x1, y1, item) in a leaf
_Node = tuple[float, float, float, float, tuple[Any, ...], bool]
NODE_SIZE = 16
SMALL = 48  # up to this many edges, a shape scans them all (no grid)


# ---------------------------------------------------------------- R-tree over boxes


class BoxTree:
    """Packed STR R-tree: ``query(x0, y0, x1, y1)`` -> items whose box meets the box."""

    __slots__ = ("_root", "size")

    def __init__(self, boxes: Sequence[Box], node_size: int = NODE_SIZE) -> None:
        self.size = len(boxes)
        level: list[tuple[Any, ...]] = [(b[0], b[1], b[2], b[3], i) for i, b in enumerate(boxes)]
        leaf = True
        self._root: _Node | None = None
        if not level:
            return
        while True:
            nodes = _str_pack(level, node_size, leaf)
            if len(nodes) == 1:
                self._root = nodes[0]
                return
            level = list(nodes)
            leaf = False

    def query(self, x0: float, y0: float, x1: float, y1: float) -> list[int]:
        root = self._root
        if root is None:
            return []
        out: list[int] = []
        stack = [root]
        pop = stack.pop
        push = stack.append
        while stack:
            node = pop()
            if node[5]:
                for c in node[4]:
                    if c[0] <= x1 and c[2] >= x0 and c[1] <= y1 and c[3] >= y0:
                        out.append(c[4])
            else:
                for c in node[4]:
                    if c[0] <= x1 and c[2] >= x0 and c[1] <= y1 and c[3] >= y0:
                        push(c)
        return out


def _str_pack(entries: list[tuple[Any, ...]], m: int, leaf: bool) -> list[_Node]:
    n = len(entries)
    pages = -(-n // m)
    slices = max(1, math.ceil(math.sqrt(pages)))
    per_slice = slices * m
    by_x = sorted(entries, key=lambda e: e[0] + e[2])
    out: list[_Node] = []
    for s in range(0, n, per_slice):
        col = sorted(by_x[s:s + per_slice], key=lambda e: e[1] + e[3])
        for k in range(0, len(col), m):
            kids = tuple(col[k:k + m])
            out.append((min(c[0] for c in kids), min(c[1] for c in kids),
                        max(c[2] for c in kids), max(c[3] for c in kids), kids, leaf))
    return out


# ---------------------------------------------------------------- primitives


def point_segment_d2(x: float, y: float, x1: float, y1: float, x2: float, y2: float) -> float:
    """Squared distance from (x, y) to the segment (x1, y1)-(x2, y2)."""
    dx, dy = x2 - x1, y2 - y1
    d2 = dx * dx + dy * dy
    px, py = x - x1, y - y1
    u = (px * dx + py * dy) / d2 if d2 > 0 else 0.0
    if u < 0.0:
        u = 0.0
    elif u > 1.0:
        u = 1.0
    ex, ey = px - u * dx, py - u * dy
    return ex * ex + ey * ey


def _orient(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> float:
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def _on_box(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> bool:
    """c (collinear with a-b) lies within the box of a-b."""
    return min(ax, bx) <= cx <= max(ax, bx) and min(ay, by) <= cy <= max(ay, by)


def segments_intersect(e: Edge, f: Edge) -> bool:
    """Closed segments meet (touching and collinear overlap count)."""
    ax, ay, bx, by = e
    cx, cy, dx, dy = f
    if (max(ax, bx) < min(cx, dx) or max(cx, dx) < min(ax, bx)
            or max(ay, by) < min(cy, dy) or max(cy, dy) < min(ay, by)):
        return False
    o1 = _orient(ax, ay, bx, by, cx, cy)
    o2 = _orient(ax, ay, bx, by, dx, dy)
    o3 = _orient(cx, cy, dx, dy, ax, ay)
    o4 = _orient(cx, cy, dx, dy, bx, by)
    if ((o1 > 0 and o2 < 0) or (o1 < 0 and o2 > 0)) and (
            (o3 > 0 and o4 < 0) or (o3 < 0 and o4 > 0)):
        return True
    return ((o1 == 0 and _on_box(ax, ay, bx, by, cx, cy))
            or (o2 == 0 and _on_box(ax, ay, bx, by, dx, dy))
            or (o3 == 0 and _on_box(cx, cy, dx, dy, ax, ay))
            or (o4 == 0 and _on_box(cx, cy, dx, dy, bx, by)))


def segment_segment_distance(e: Edge, f: Edge) -> float:
    if segments_intersect(e, f):
        return 0.0
    ax, ay, bx, by = e
    cx, cy, dx, dy = f
    return math.sqrt(min(point_segment_d2(ax, ay, cx, cy, dx, dy),
                         point_segment_d2(bx, by, cx, cy, dx, dy),
                         point_segment_d2(cx, cy, ax, ay, bx, by),
                         point_segment_d2(dx, dy, ax, ay, bx, by)))


def ring_edges(ring: Sequence[Pt]) -> list[Edge]:
    return [(ring[k][0], ring[k][1], ring[k + 1][0], ring[k + 1][1])
            for k in range(len(ring) - 1)]


def ring_area(ring: Sequence[Pt]) -> float:
    """Signed area (positive counter-clockwise) of a closed ring."""
    x0, y0 = ring[0]
    s = 0.0
    for k in range(1, len(ring) - 1):
        s += _orient(x0, y0, ring[k][0], ring[k][1], ring[k + 1][0], ring[k + 1][1])
    return s / 2.0


def _bbox(edges: Sequence[Edge]) -> Box:
    return (min(min(e[0], e[2]) for e in edges), min(min(e[1], e[3]) for e in edges),
            max(max(e[0], e[2]) for e in edges), max(max(e[1], e[3]) for e in edges))


# ---------------------------------------------------------------- edge indexes


class SegmentGrid:
    """Edges bucketed on a uniform grid: nearest-edge distance and edges near a box."""

    __slots__ = ("_cells", "_cs", "_nx", "_ny", "_x0", "_y0", "edges")

    def __init__(self, edges: Sequence[Edge]) -> None:
        self.edges = tuple(edges)
        x0, y0, x1, y1 = _bbox(self.edges)
        w, h = max(x1 - x0, 1e-9), max(y1 - y0, 1e-9)
        n = len(self.edges)
        cs = max(math.sqrt(w * h / max(n, 1)), max(w, h) / 1024.0, 1e-6)
        self._cs = cs
        self._x0, self._y0 = x0, y0
        self._nx = min(int(w / cs) + 1, 1024)
        self._ny = min(int(h / cs) + 1, 1024)
        self._cells: dict[int, list[int]] = {}
        for k, (ax, ay, bx, by) in enumerate(self.edges):
            i0, j0 = self._cell(min(ax, bx), min(ay, by))
            i1, j1 = self._cell(max(ax, bx), max(ay, by))
            if (i1 - i0 + 1) * (j1 - j0 + 1) <= 16:
                keys = {j * self._nx + i for j in range(j0, j1 + 1) for i in range(i0, i1 + 1)}
            else:  # a long edge: the cells along it, not its whole box
                keys = set()
                steps = int(math.hypot(bx - ax, by - ay) / (cs / 2.0)) + 1
                for n_ in range(steps + 1):
                    ci, cj = self._cell(ax + (bx - ax) * n_ / steps, ay + (by - ay) * n_ / steps)
                    for j in range(max(cj - 1, 0), min(cj + 1, self._ny - 1) + 1):
                        for i in range(max(ci - 1, 0), min(ci + 1, self._nx - 1) + 1):
                            keys.add(j * self._nx + i)
            for key in keys:
                self._cells.setdefault(key, []).append(k)

    def _cell(self, x: float, y: float) -> tuple[int, int]:
        i = int((x - self._x0) / self._cs)
        j = int((y - self._y0) / self._cs)
        return min(max(i, 0), self._nx - 1), min(max(j, 0), self._ny - 1)

    def near_box(self, x0: float, y0: float, x1: float, y1: float) -> set[int]:
        """Indices of edges in the cells that meet the box (a superset of those that do)."""
        i0, j0 = self._cell(x0, y0)
        i1, j1 = self._cell(x1, y1)
        if (i1 - i0 + 1) * (j1 - j0 + 1) > len(self.edges):
            return set(range(len(self.edges)))
        out: set[int] = set()
        cells = self._cells
        nx = self._nx
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                c = cells.get(j * nx + i)
                if c:
                    out.update(c)
        return out

    def distance(self, x: float, y: float) -> float:
        """Distance from (x, y) to the nearest edge."""
        ci, cj = self._cell(x, y)
        best = math.inf
        seen: set[int] = set()
        cells, nx, ny, cs = self._cells, self._nx, self._ny, self._cs
        edges = self.edges
        k = 0
        while True:
            i0, i1, j0, j1 = ci - k, ci + k, cj - k, cj + k
            for j in range(max(j0, 0), min(j1, ny - 1) + 1):
                cols = (range(max(i0, 0), min(i1, nx - 1) + 1) if j in (j0, j1)
                        else [i for i in (i0, i1) if 0 <= i < nx])
                for i in cols:
                    c = cells.get(j * nx + i)
                    if not c:
                        continue
                    for e in c:
                        if e in seen:
                            continue
                        seen.add(e)
                        ax, ay, bx, by = edges[e]
                        d2 = point_segment_d2(x, y, ax, ay, bx, by)
                        if d2 < best:
                            best = d2
            # everything not searched lies beyond one of the inner sides of the square
            bound = math.inf
            if i0 > 0:
                bound = min(bound, max(0.0, x - (self._x0 + i0 * cs)))
            if i1 < nx - 1:
                bound = min(bound, max(0.0, self._x0 + (i1 + 1) * cs - x))
            if j0 > 0:
                bound = min(bound, max(0.0, y - (self._y0 + j0 * cs)))
            if j1 < ny - 1:
                bound = min(bound, max(0.0, self._y0 + (j1 + 1) * cs - y))
            if bound == math.inf or best <= bound * bound:
                return math.sqrt(best)
            k += 1


class _Bands:
    """Edges bucketed by horizontal band: the even-odd crossing test visits one band."""

    __slots__ = ("_bands", "_bh", "_n", "_y0", "bounds", "edges")

    def __init__(self, edges: Sequence[Edge]) -> None:
        self.edges = tuple(edges)
        self.bounds = _bbox(self.edges)
        self._y0 = self.bounds[1]
        self._n = max(1, min(len(self.edges) // 4, 4096))
        self._bh = max(self.bounds[3] - self.bounds[1], 1e-9) / self._n
        self._bands: list[list[Edge]] = [[] for _ in range(self._n)]
        for e in self.edges:
            for b in range(self._band(min(e[1], e[3])), self._band(max(e[1], e[3])) + 1):
                self._bands[b].append(e)

    def _band(self, y: float) -> int:
        return min(max(int((y - self._y0) / self._bh), 0), self._n - 1)

    def contains(self, x: float, y: float) -> bool:
        """Even-odd: strictly inside (a point on an edge may go either way; the caller
        asks only after the distance said it is not on the boundary)."""
        b = self.bounds
        if not (b[0] <= x <= b[2] and b[1] <= y <= b[3]):
            return False
        inside = False
        for x1, y1, x2, y2 in self._bands[self._band(y)]:
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return inside


# ---------------------------------------------------------------- shapes


class Circle:
    __slots__ = ("bounds", "radius")

    def __init__(self, radius: float) -> None:
        self.radius = radius
        self.bounds: Box = (-radius, -radius, radius, radius)

    def signed_distance(self, x: float, y: float) -> float:
        return math.hypot(x, y) - self.radius

    def intersects_segment(self, ax: float, ay: float, bx: float, by: float) -> bool:
        return math.sqrt(point_segment_d2(0.0, 0.0, ax, ay, bx, by)) <= self.radius


class Corridor:
    """Every point within ``half`` of a polyline (round ends and joins)."""

    __slots__ = ("_grid", "bounds", "half", "line")

    def __init__(self, line: Sequence[Pt], half: float) -> None:
        self.line = tuple(line)
        self.half = half
        edges = ring_edges(self.line)
        x0, y0, x1, y1 = _bbox(edges)
        self.bounds: Box = (x0 - half, y0 - half, x1 + half, y1 + half)
        self._grid = SegmentGrid(edges)

    def signed_distance(self, x: float, y: float) -> float:
        g = self._grid
        if len(g.edges) <= SMALL:
            best = min(point_segment_d2(x, y, *e) for e in g.edges)
            return math.sqrt(best) - self.half
        return g.distance(x, y) - self.half

    def intersects_segment(self, ax: float, ay: float, bx: float, by: float) -> bool:
        h = self.half
        g = self._grid
        seg = (ax, ay, bx, by)
        cand = g.near_box(min(ax, bx) - h, min(ay, by) - h, max(ax, bx) + h, max(ay, by) + h)
        return any(segment_segment_distance(seg, g.edges[k]) <= h for k in cand)


class Polygon:
    """Polygons with holes, their union when there are several (a MultiPolygon)."""

    __slots__ = ("_grid", "_parts", "bounds", "parts_apart")

    def __init__(self, polygons: Sequence[Sequence[Sequence[Pt]]]) -> None:
        self._parts = [_Bands([e for r in p for e in ring_edges(r)]) for p in polygons]
        edges = [e for p in self._parts for e in p.edges]
        self.bounds: Box = _bbox(edges)
        self.parts_apart = not _boxes_meet([p.bounds for p in self._parts])
        if not self.parts_apart:
            edges = self._union_boundary()
        self._grid = SegmentGrid(edges)

    @property
    def boundary_edges(self) -> tuple[Edge, ...]:
        return self._grid.edges

    def contains(self, x: float, y: float) -> bool:
        return any(p.contains(x, y) for p in self._parts)

    def signed_distance(self, x: float, y: float) -> float:
        d = self._grid.distance(x, y)
        if d == 0.0:
            return 0.0
        return -d if self.contains(x, y) else d

    def intersects_segment(self, ax: float, ay: float, bx: float, by: float) -> bool:
        if self.contains(ax, ay) or self.contains(bx, by):
            return True
        g = self._grid
        seg = (ax, ay, bx, by)
        cand = g.near_box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
        return any(segments_intersect(seg, g.edges[k]) for k in cand)

    def _union_boundary(self) -> list[Edge]:
        """Edges of all parts, minus the pieces inside the union (shared or covered)."""
        b = self.bounds
        eps = 1e-7 * max(b[2] - b[0], b[3] - b[1], 1.0)
        out: list[Edge] = []
        for pi, part in enumerate(self._parts):
            others = [q for qi, q in enumerate(self._parts) if qi != pi
                      and q.bounds[0] <= part.bounds[2] + eps
                      and part.bounds[0] <= q.bounds[2] + eps
                      and q.bounds[1] <= part.bounds[3] + eps
                      and part.bounds[1] <= q.bounds[3] + eps]
            for e in part.edges:
                if not others:
                    out.append(e)
                    continue
                ax, ay, bx, by = e
                ts = [0.0, 1.0]
                for q in others:
                    for f in q.edges:
                        ts.extend(_cut_params(e, f))
                ts.sort()
                ln = math.hypot(bx - ax, by - ay)
                if ln == 0.0:
                    continue
                nx, ny = -(by - ay) / ln * eps, (bx - ax) / ln * eps
                for t0, t1 in pairwise(ts):
                    if (t1 - t0) * ln <= eps:
                        continue
                    tm = (t0 + t1) / 2.0
                    mx, my = ax + tm * (bx - ax), ay + tm * (by - ay)
                    left = any(q.contains(mx + nx, my + ny) for q in self._parts)
                    right = any(q.contains(mx - nx, my - ny) for q in self._parts)
                    if left and right:
                        continue  # inside the union: a seam or a covered edge
                    out.append((ax + t0 * (bx - ax), ay + t0 * (by - ay),
                                ax + t1 * (bx - ax), ay + t1 * (by - ay)))
        return out or [e for p in self._parts for e in p.edges]


def _boxes_meet(boxes: Sequence[Box]) -> bool:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]:
                return True
    return False


def _cut_params(e: Edge, f: Edge) -> list[float]:
    """Parameters along e where f meets it (crossing point, or f's ends on e)."""
    ax, ay, bx, by = e
    cx, cy, dx, dy = f
    if (max(ax, bx) < min(cx, dx) or max(cx, dx) < min(ax, bx)
            or max(ay, by) < min(cy, dy) or max(cy, dy) < min(ay, by)):
        return []
    rx, ry = bx - ax, by - ay
    sx, sy = dx - cx, dy - cy
    den = rx * sy - ry * sx
    r2 = rx * rx + ry * ry
    out = []
    if den != 0.0:
        t = ((cx - ax) * sy - (cy - ay) * sx) / den
        u = ((cx - ax) * ry - (cy - ay) * rx) / den
        if 0.0 <= t <= 1.0 and 0.0 <= u <= 1.0:
            out.append(t)
    if r2 > 0:
        for px, py in ((cx, cy), (dx, dy)):
            t = ((px - ax) * rx + (py - ay) * ry) / r2
            if 0.0 < t < 1.0 and point_segment_d2(px, py, ax, ay, bx, by) <= 1e-18 * r2 + 1e-12:
                out.append(t)
    return out


# ---------------------------------------------------------------- validity


def polygon_problem(rings: Sequence[Sequence[Pt]]) -> str | None:
    """Why a polygon (shell, holes...) is invalid in the OGC sense, or None.

    Checked: rings with fewer than 3 distinct points or no area, edges that cross or
    overlap (any two rings, or one ring with itself; rings of one polygon may touch
    at a point), and holes outside the shell or inside another hole."""
    clean: list[list[Pt]] = []
    for r in rings:
        pts = [r[0]]
        for q in r[1:]:
            if q != pts[-1]:
                pts.append(q)
        if len(pts) < 4 or len(set(pts)) < 3:
            return f"Too few points[{r[0][0]:.6g} {r[0][1]:.6g}]"
        clean.append(pts)
    segs: list[tuple[float, float, float, float, int, int, int]] = []  # edge, ring, k, n
    for ri, r in enumerate(clean):
        n = len(r) - 1
        for k in range(n):
            segs.append((r[k][0], r[k][1], r[k + 1][0], r[k + 1][1], ri, k, n))
    segs.sort(key=lambda s: min(s[0], s[2]))
    active: list[tuple[float, float, float, float, int, int, int]] = []
    for s in segs:
        xmin = min(s[0], s[2])
        active = [a for a in active if max(a[0], a[2]) >= xmin]
        for a in active:
            where = _conflict(a, s)
            if where is not None:
                return f"Self-intersection[{where[0]:.6g} {where[1]:.6g}]"
        active.append(s)
    for r in clean:
        if ring_area(r) == 0.0:
            return f"Ring has no area[{r[0][0]:.6g} {r[0][1]:.6g}]"
    shell = _Bands(ring_edges(clean[0]))
    holes = [_Bands(ring_edges(h)) for h in clean[1:]]
    for hi, h in enumerate(clean[1:]):
        p = _probe(h, clean[0])
        if p is not None and not shell.contains(*p):
            return f"Hole lies outside shell[{p[0]:.6g} {p[1]:.6g}]"
        for oi, other in enumerate(holes):
            if oi != hi and p is not None and other.contains(*p):
                return f"Holes are nested[{p[0]:.6g} {p[1]:.6g}]"
    return None


def _probe(ring: Sequence[Pt], other: Sequence[Pt]) -> Pt | None:
    """A vertex of ``ring`` not on ``other``'s edges (rings may touch at points)."""
    edges = ring_edges(other)
    for x, y in ring[:-1]:
        if all(point_segment_d2(x, y, *e) > 0.0 for e in edges):
            return x, y
    return None


def _conflict(
    a: tuple[float, float, float, float, int, int, int],
    b: tuple[float, float, float, float, int, int, int],
) -> Pt | None:
    """Where two edges meet in a way a valid polygon forbids, or None."""
    e, f = a[:4], b[:4]
    if not segments_intersect(e, f):
        return None
    ax, ay, bx, by = e
    cx, cy, dx, dy = f
    o1 = _orient(ax, ay, bx, by, cx, cy)
    o2 = _orient(ax, ay, bx, by, dx, dy)
    o3 = _orient(cx, cy, dx, dy, ax, ay)
    o4 = _orient(cx, cy, dx, dy, bx, by)
    lo = (max(min(ax, bx), min(cx, dx)), max(min(ay, by), min(cy, dy)))
    hi = (min(max(ax, bx), max(cx, dx)), min(max(ay, by), max(cy, dy)))
    overlap = o1 == 0 and o2 == 0 and (hi[0] > lo[0] or hi[1] > lo[1])
    if a[4] == b[4]:
        n = a[6]
        if abs(a[5] - b[5]) in (1, n - 1):
            return lo if overlap else None  # neighbours share a vertex; a spike is not ok
        return lo  # a ring touching or crossing itself
    if overlap:
        return lo
    if o1 * o2 < 0 and o3 * o4 < 0:
        return lo
    return None  # two rings touching at a point
