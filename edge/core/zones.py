"""Zones: the fences, speed zones and points of interest of one GeoJSON file.

The file is one GeoJSON FeatureCollection (RFC 7946: lon/lat, WGS 84). Each feature
becomes one ``Zone``; its ``properties`` say what it is:

==============  ===============================================================
``id``          required, unique (string or number; the feature's own ``id`` is
                used when ``properties.id`` is absent)
``name``        shown to people; defaults to the id
``kind``        ``"fence"`` | ``"speed"`` | ``"poi"``. Default: ``"poi"`` when the
                feature has an ``offer``, else ``"fence"``. Fences produce geofence
                events (and their ``maxspeed`` applies); ``"speed"`` zones only carry
                a ``maxspeed``; POIs produce offers.
``maxspeed``    km/h as OSM tags it: ``50``, ``"50"``, ``"30 mph"``, ``"none"`` (no limit
                here: wins over the default; see ``edge.core.limits``)
``dwell_s``     fences: emit ``dwell`` once after this long inside
``radius_m``    with a Point geometry: a circle (required for POIs)
``width_m``     with a LineString geometry: a corridor this wide (centre line ± width/2)
``offer``       POIs: the offer sent to the phone (any JSON value)
==============  ===============================================================

Geometry is kept in metres, each zone in its own local frame (``edge.core.geo``), so
circles, corridors and hysteresis are exact in metres and a fence that crosses the
antimeridian (either split as RFC 7946 asks, or drawn with longitudes past ±180) works.
The shapes are shapely geometries in that frame, prepared once: polygons (a
MultiPolygon's parts unioned, validity judged by GEOS and its reason reported), and for
circles and corridors the centre point / centre line with the exact distance minus the
radius / half width (a buffer would cut the round edge into chords). One
``shapely.STRtree`` over every zone's lon/lat bounding box (with a ±360° copy for boxes
that cross the antimeridian) finds candidates. shapely (and numpy) are imported only
when a zones file with zones is parsed: a daemon without zones never loads them.

``ZoneLocator`` answers "which zones is the car in / near" fix by fix (the live path);
``edge.core.drivegeo`` answers it for a whole known drive at once (replay, report).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from edge.core.geo import M_PER_DEG, MIN_COS, LocalFrame, wrap_lon
from edge.core.limits import LimitClaim
from edge.errors import ZonesError

ZoneKind = Literal["fence", "speed", "poi"]
ZoneShape = Literal["polygon", "circle", "corridor"]
KINDS: tuple[str, ...] = ("fence", "speed", "poi")
MPH_KMH = 1.609344
_SAFETY = 1.05
_TINY = 5e-324  # the smallest positive float: outside, by no measurable distance
KNOT_KMH = 1.852
_MAXSPEED_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mph|km/h|kmh|kph|knots)?\s*$", re.I)


def parse_maxspeed(value: Any) -> float | None:
    """km/h from an OSM-style ``maxspeed``; None for ``"none"``. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"maxspeed must be a number or an OSM value, got {value!r}")
    if isinstance(value, int | float):
        kmh = float(value)
    elif isinstance(value, str):
        if value.strip().lower() in ("none", "unlimited"):
            return None
        m = _MAXSPEED_RE.match(value)
        if not m:
            raise ValueError(f"maxspeed {value!r} is not '50', '50 km/h' or '30 mph'")
        kmh = float(m.group(1))
        unit = (m.group(2) or "").lower()
        if unit == "mph":
            kmh *= MPH_KMH
        elif unit == "knots":
            kmh *= KNOT_KMH
    else:
        raise ValueError(f"maxspeed must be a number or an OSM value, got {value!r}")
    if not math.isfinite(kmh) or kmh <= 0:
        raise ValueError(f"maxspeed must be positive, got {value!r}")
    return round(kmh, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Zone:
    """One feature of the zones file, its geometry a shapely geometry in metres in
    ``frame``: a (Multi)Polygon, or the centre (Point) of a circle or the centre line
    (LineString) of a corridor, ``pad`` metres wide on each side."""

    index: int
    id: str
    name: str
    kind: ZoneKind
    shape: ZoneShape
    frame: LocalFrame
    geom: Any  # shapely geometry, metres in ``frame`` (polygons prepared)
    pad: float = 0.0  # circle radius / corridor half width; 0 for polygons
    edge: Any = None  # polygons: their boundary (distances from inside)
    bounds: tuple[float, float, float, float]  # lon/lat box; lon may pass ±180
    maxspeed_kmh: float | None = None
    no_limit: bool = False  # maxspeed "none": no limit applies here (wins over the default)
    dwell_s: float | None = None
    radius_m: float | None = None
    width_m: float | None = None
    offer: Any = None
    digest: str = ""  # hash of the feature: equal digests mean an unchanged zone

    def signed_distance_m(self, lat: float, lon: float) -> float:
        """Metres from the zone's edge: negative inside, positive outside."""
        x, y = self.frame.xy(lat, lon)
        return self.signed_distance_xy(x, y)

    def signed_distance_xy(self, x: float, y: float) -> float:
        import shapely

        if self.shape == "circle":
            # exact, and the same operations as the bulk path (IEEE sqrt)
            return math.sqrt(x * x + y * y) - self.pad
        if self.shape == "corridor":
            return float(shapely.distance(self.geom, shapely.Point(x, y))) - self.pad
        if shapely.intersects_xy(self.geom, x, y):
            return -float(shapely.distance(self.edge, shapely.Point(x, y)))
        # outside is what intersects_xy says, even a rounding away from the edge
        return max(float(shapely.distance(self.geom, shapely.Point(x, y))), _TINY)

    def segment_hits(self, lat1: float, lon1: float, lat2: float, lon2: float) -> bool:
        """Whether the straight segment between two points touches the zone."""
        import shapely

        seg = shapely.LineString([self.frame.xy(lat1, lon1), self.frame.xy(lat2, lon2)])
        if self.pad:
            return bool(shapely.dwithin(self.geom, seg, self.pad))
        return bool(shapely.intersects(self.geom, seg))


CIRCLE, CORRIDOR, POLYGON = 0, 1, 2  # ``ZoneTable.shape`` codes
_SHAPE_CODE = {"circle": CIRCLE, "corridor": CORRIDOR, "polygon": POLYGON}


@dataclass(frozen=True, slots=True)
class ZoneTable:
    """The zones as numpy columns (index = zone index), for bulk evaluation."""

    frames: Any  # (n, 4): lon0, lat0, kx, ky
    bounds: Any  # (n, 4): the lon/lat boxes (lon may pass ±180)
    shape: Any  # CIRCLE | CORRIDOR | POLYGON
    pad: Any
    geom: Any  # object array of the prepared shapely geometries
    fence: Any  # bool: kind == "fence"
    xy_bounds: Any  # (n, 4): the box of each shape in its frame, grown by ``pad``


@dataclass(frozen=True, slots=True, kw_only=True)
class Zones:
    """An immutable, indexed set of zones. Build with ``parse_zones``/``parse_zones_json``."""

    zones: tuple[Zone, ...]
    tree: Any  # shapely.STRtree of lon/lat boxes (also at ±360° across 180°); None: empty
    tree_zone: Any  # numpy: tree item -> zone index (antimeridian boxes appear twice)
    by_id: Mapping[str, Zone]
    source: str = "<zones>"
    fence_index: frozenset[int] = frozenset()  # indices of the fences
    _table: list[ZoneTable] = field(default_factory=list, repr=False, compare=False)

    def table(self) -> ZoneTable:
        """Numpy columns of the zones, built on first use and kept."""
        if not self._table:
            import numpy as np

            zs = self.zones
            geom = np.empty(len(zs), dtype=object)
            geom[:] = [z.geom for z in zs]
            import shapely

            pad = np.array([z.pad for z in zs], dtype=float)
            xy_bounds = shapely.bounds(geom).reshape(-1, 4) + np.outer(pad, [-1, -1, 1, 1])
            self._table.append(ZoneTable(
                frames=np.array([(z.frame.lon0, z.frame.lat0, z.frame.kx, z.frame.ky)
                                 for z in zs], dtype=float).reshape(-1, 4),
                bounds=np.array([z.bounds for z in zs], dtype=float).reshape(-1, 4),
                shape=np.array([_SHAPE_CODE[z.shape] for z in zs], dtype=np.int8),
                pad=pad,
                geom=geom,
                fence=np.array([z.kind == "fence" for z in zs], dtype=bool),
                xy_bounds=xy_bounds))
        return self._table[0]

    @property
    def fences(self) -> tuple[Zone, ...]:
        return tuple(z for z in self.zones if z.kind == "fence")

    @property
    def pois(self) -> tuple[Zone, ...]:
        return tuple(z for z in self.zones if z.kind == "poi")

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for z in self.zones:
            out[z.kind] += 1
        return out

    def limit_claims(self, indices: Iterable[int]) -> list[LimitClaim]:
        """What the zones at these indices say about the speed limit (their
        ``maxspeed``, ``"none"`` included), for ``edge.core.limits.decide_limit``."""
        out = []
        for i in indices:
            z = self.zones[i]
            if z.kind != "poi" and (z.maxspeed_kmh is not None or z.no_limit):
                out.append(LimitClaim(z.maxspeed_kmh, f"zone:{z.id}"))
        return out

    def query_box(self, min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> set[int]:
        """Indices of zones whose bounding box meets the lon/lat box (lon in any turn)."""
        if self.tree is None:
            return set()
        import shapely

        x0 = [min_lon]
        x1 = [max_lon]
        if max_lon > 180.0:
            x0.append(min_lon - 360.0)
            x1.append(max_lon - 360.0)
        if min_lon < -180.0:
            x0.append(min_lon + 360.0)
            x1.append(max_lon + 360.0)
        y0 = [min_lat] * len(x0)
        y1 = [max_lat] * len(x0)
        # an array of boxes: the array query is several times faster than a scalar one
        hits = self.tree.query(shapely.box(x0, y0, x1, y1))[1]
        return set(self.tree_zone[hits].tolist())

    def at(self, lat: float, lon: float) -> list[Zone]:
        """Zones that contain the point (one-off lookup; the rules use ``ZoneLocator``)."""
        idx = self.query_box(lon, lat, lon, lat)
        return [self.zones[i] for i in sorted(idx)
                if self.zones[i].signed_distance_m(lat, lon) <= 0]


EMPTY_ZONES_SOURCE = "<none>"


def empty_zones() -> Zones:
    return _build([], EMPTY_ZONES_SOURCE)


def parse_zones_json(text: str, *, source: str) -> Zones:
    """Index the text of a zones file (``edge.sources.zonesfile.load_zones`` reads it).
    Raises ``ZonesError`` naming ``source`` and the feature."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ZonesError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ZonesError(f"{source}: must be a GeoJSON FeatureCollection object")
    return parse_zones(data, source=source)


def parse_zones(data: Mapping[str, Any], *, source: str = "<zones>") -> Zones:
    """Validate and index a GeoJSON FeatureCollection. Raises ``ZonesError``."""
    if data.get("type") != "FeatureCollection":
        raise ZonesError(f"{source}: type must be 'FeatureCollection', got {data.get('type')!r}")
    features = data.get("features")
    if not isinstance(features, list):
        raise ZonesError(f"{source}: 'features' must be a list")
    zones: list[Zone] = []
    seen: dict[str, int] = {}
    for i, feat in enumerate(features):
        fid = _feature_id(feat)
        where = f"{source}: feature {i}" + (f" (id {fid!r})" if fid is not None else "")
        try:
            zone = _parse_feature(feat, len(zones), fid)
        except ZonesError as exc:
            raise ZonesError(f"{where}: {exc}") from None
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise ZonesError(f"{where}: {exc}") from exc
        if zone.id in seen:
            raise ZonesError(f"{where}: duplicate id (also feature {seen[zone.id]})")
        seen[zone.id] = i
        zones.append(zone)
    return _build(zones, source)


def _build(zones: list[Zone], source: str) -> Zones:
    if not zones:  # no zones: shapely is not even imported
        return Zones(zones=(), tree=None, tree_zone=None, by_id=MappingProxyType({}),
                     source=source)
    import numpy as np
    import shapely

    boxes: list[tuple[float, float, float, float]] = []
    tree_zone: list[int] = []
    for z in zones:
        x0, y0, x1, y1 = z.bounds
        for shift in (0.0, -360.0, 360.0):
            a, b = x0 + shift, x1 + shift
            if b < -180.0 or a > 180.0:
                continue
            boxes.append((a, y0, b, y1))
            tree_zone.append(z.index)
    arr = np.asarray(boxes, dtype=float)
    return Zones(
        zones=tuple(zones),
        tree=shapely.STRtree(shapely.box(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])),
        tree_zone=np.asarray(tree_zone, dtype=np.intp),
        by_id=MappingProxyType({z.id: z for z in zones}),
        source=source,
        fence_index=frozenset(z.index for z in zones if z.kind == "fence"),
    )


def _feature_id(feat: Any) -> str | None:
    if not isinstance(feat, Mapping):
        return None
    props = feat.get("properties")
    raw = props.get("id") if isinstance(props, Mapping) else None
    if raw is None:
        raw = feat.get("id")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    return str(raw)


def _number(props: Mapping[str, Any], key: str, *, positive: bool) -> float | None:
    v = props.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ZonesError(f"{key} must be a number, got {v!r}")
    if v < 0 or (positive and v == 0):
        raise ZonesError(f"{key} must be {'positive' if positive else 'non-negative'}, got {v!r}")
    return float(v)


def _parse_feature(feat: Any, index: int, fid: str | None) -> Zone:
    if not isinstance(feat, Mapping) or feat.get("type") != "Feature":
        raise ZonesError("not a GeoJSON Feature")
    props = feat.get("properties")
    if not isinstance(props, Mapping):
        raise ZonesError("properties must be an object")
    if fid is None or not fid.strip():
        raise ZonesError("needs an 'id' (string or number) in properties or on the feature")
    name = props.get("name", fid)
    if not isinstance(name, str):
        raise ZonesError(f"name must be a string, got {name!r}")
    kind = props.get("kind", "poi" if "offer" in props else "fence")
    if kind not in KINDS:
        raise ZonesError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    try:
        maxspeed = parse_maxspeed(props["maxspeed"]) if props.get("maxspeed") is not None else None
    except ValueError as exc:
        raise ZonesError(str(exc)) from None
    no_limit = props.get("maxspeed") is not None and maxspeed is None
    if kind == "speed" and maxspeed is None and not no_limit:
        raise ZonesError("a 'speed' zone needs a maxspeed (a number, '30 mph' or 'none')")
    dwell = _number(props, "dwell_s", positive=False)
    radius = _number(props, "radius_m", positive=True)
    width = _number(props, "width_m", positive=True)
    if kind == "poi" and "offer" not in props:
        raise ZonesError("a POI needs an 'offer'")
    geom = feat.get("geometry")
    if not isinstance(geom, Mapping):
        raise ZonesError("geometry must be an object")
    gtype = geom.get("type")
    coords = geom.get("coordinates")
    if kind == "poi" and gtype != "Point":
        raise ZonesError(f"a POI must be a Point with radius_m, got {gtype!r}")
    import shapely

    shape: ZoneShape
    pad = 0.0
    edge = None
    if gtype == "Point":
        if radius is None:
            raise ZonesError("a Point needs radius_m (a circle)")
        shape = "circle"
        lon, lat = _position(coords)
        frame = LocalFrame.at(lat, lon)
        g: Any = shapely.Point(0.0, 0.0)
        pad = radius
    elif gtype == "LineString":
        if width is None:
            raise ZonesError("a LineString needs width_m (a corridor)")
        shape = "corridor"
        pts = [_position(c) for c in _list(coords, "coordinates")]
        if len(pts) < 2:
            raise ZonesError("a LineString needs at least 2 positions")
        frame = _frame_for(pts)
        g = shapely.LineString([frame.xy(lat, lon) for lon, lat in pts])
        pad = width / 2.0
    elif gtype in ("Polygon", "MultiPolygon"):
        shape = "polygon"
        polys = [coords] if gtype == "Polygon" else _list(coords, "coordinates")
        rings = [[[_position(c) for c in _list(r, "ring")] for r in _list(p, "polygon")]
                 for p in polys]
        if not rings or any(not p for p in rings):
            raise ZonesError(f"{gtype} has no rings")
        for p in rings:
            for r in p:
                if len(r) < 4 or r[0] != r[-1]:
                    raise ZonesError("a ring needs at least 4 positions and must be closed")
        frame = _frame_for([pt for p in rings for r in p for pt in r])
        g = _polygon(rings, frame)
        edge = shapely.boundary(g)
    else:
        raise ZonesError(
            f"geometry type {gtype!r} not supported (Polygon, MultiPolygon, "
            "Point + radius_m, LineString + width_m)"
        )
    shapely.prepare(g)
    x0, y0, x1, y1 = (float(v) for v in shapely.bounds(g))
    lat_a, lon_a = frame.latlon(x0 - pad, y0 - pad)
    lat_b, lon_b = frame.latlon(x1 + pad, y1 + pad)
    offer = props.get("offer")
    digest = hashlib.sha1(
        json.dumps({"g": geom, "p": props}, sort_keys=True, default=str).encode()
    ).hexdigest()
    return Zone(
        index=index, id=fid, name=name, kind=kind, shape=shape, frame=frame, geom=g,
        pad=pad, edge=edge, bounds=(lon_a, lat_a, lon_b, lat_b), maxspeed_kmh=maxspeed,
        no_limit=no_limit, dwell_s=dwell, radius_m=radius, width_m=width, offer=offer,
        digest=digest,
    )


def _polygon(rings: list[list[list[tuple[float, float]]]], frame: LocalFrame) -> Any:
    """The (multi)polygon in metres in ``frame``, validated part by part with GEOS; the
    parts of a MultiPolygon are unioned (parts may share edges or overlap)."""
    import shapely

    parts = []
    for p in rings:
        # judged in lon/lat (longitudes unwrapped around the frame), so the reason's
        # coordinates are ones the author recognises
        ll = shapely.Polygon(
            [(frame.lon0 + wrap_lon(lon - frame.lon0), lat) for lon, lat in p[0]],
            [[(frame.lon0 + wrap_lon(lon - frame.lon0), lat) for lon, lat in r] for r in p[1:]])
        reason = shapely.is_valid_reason(ll)
        xy = shapely.Polygon([frame.xy(lat, lon) for lon, lat in p[0]],
                             [[frame.xy(lat, lon) for lon, lat in r] for r in p[1:]])
        if reason == "Valid Geometry":
            reason = shapely.is_valid_reason(xy)  # rounding can differ in metres
        if reason != "Valid Geometry":
            raise ZonesError(f"invalid polygon: {reason} (shapely.is_valid_reason)")
        if not xy.area > 0:
            raise ZonesError("polygon has no area")
        parts.append(xy)
    if len(parts) == 1:
        return parts[0]
    multi = shapely.MultiPolygon(parts)
    return multi if shapely.is_valid(multi) else shapely.union_all(parts)


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise ZonesError(f"{what} must be a list")
    return v


def _position(c: Any) -> tuple[float, float]:
    if (not isinstance(c, list | tuple) or len(c) < 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in c[:2])):
        raise ZonesError(f"position must be [lon, lat], got {c!r}")
    lon, lat = float(c[0]), float(c[1])
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90 or abs(lon) > 540:
        raise ZonesError(f"position out of range (lon, lat): {c!r}")
    return lon, lat


def _frame_for(pts: Sequence[tuple[float, float]]) -> LocalFrame:
    """A frame centred on the points' box (longitudes unwrapped around the first)."""
    lon0, lat0 = pts[0]
    f0 = LocalFrame.at(lat0, lon0)
    xs, ys = zip(*(f0.xy(lat, lon) for lon, lat in pts), strict=True)
    lat_c, lon_c = f0.latlon((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2)
    lon_c = (lon_c + 180.0) % 360.0 - 180.0
    return LocalFrame.at(lat_c, lon_c)


# ZoneLocator entry states
_BOUND = 0  # sd holds a lower bound of the distance (from the bounding box)
_EXACT = 1  # sd holds the signed distance
_IN = 2  # inside, distance not measured (re-evaluated at the next fix)
_OUT = 3  # outside, distance not measured (re-evaluated at the next fix)
R_MAX_M = 150.0


class ZoneLocator:
    """Which zones contain a moving point, fast: one per ``Rules`` (mutable, not shared).

    The STRtree is queried with a box of ``radius`` metres around the point and the
    candidates are kept while the point stays well inside that box (the radius halves
    when the point leaves the box at once — fixes that jump about — and grows back to
    150 m while it drives). For each candidate the signed distance to its edge is
    remembered with the place it was measured: while the point has moved less than that
    distance (and less than its distance to the hysteresis line), the answer cannot have
    changed and no geometry is touched. Far candidates keep a lower bound from their
    bounding box instead. A polygon met for the first time is only asked whether it
    holds the point (``intersects_xy``); its distance is measured when it is asked
    again at the next fix (the car stays near it: the distance is worth keeping) or
    when the hysteresis line matters (a watched zone the point is outside).
    """

    __slots__ = ("_box", "_entries", "_geom", "_ixy", "_mkbox", "_q", "_r", "_tree_zone",
                 "_uses", "evaluations", "queries", "zones")

    def __init__(self, zones: Zones, *, radius_m: float = R_MAX_M) -> None:
        self.zones = zones
        self._ixy: Any = None  # shapely.intersects_xy, once there are zones to ask
        self._geom: Any = None  # the zones' geometries as an array (see locate)
        self._box: Any = None  # a one-box array to query the tree with
        self._mkbox: Any = None  # shapely.box
        self._tree_zone: list[int] = []
        if zones.zones:
            import numpy as np
            import shapely

            self._ixy = shapely.intersects_xy
            self._mkbox = shapely.box
            # not ``zones.table()``: its columns are for bulk work, and cost the daemon
            # about 1 MB of RSS
            self._geom = np.empty(len(zones.zones), dtype=object)
            self._geom[:] = [z.geom for z in zones.zones]
            self._box = np.empty(1, dtype=object)
            self._tree_zone = zones.tree_zone.tolist()
        self._r = radius_m
        self._uses = 0  # locate calls answered from the current query box
        self._q: tuple[float, float, float, float] | None = None  # lat0, lon0, kx, ky
        # [anchor x, anchor y, sd (or bound), state, zone index, bx0, by0, bx1, by1]
        self._entries: list[list[Any]] = []
        self.queries = 0
        self.evaluations = 0

    def _requery(self, lat: float, lon: float, h: float) -> None:
        # a box left at once (jumping fixes) shrinks; a box driven through grows back
        r = self._r / 2.0 if self._uses <= 1 else self._r * 2.0
        r = self._r = min(R_MAX_M, max(r, h + 4.0))
        kx = M_PER_DEG * max(math.cos(math.radians(lat)), MIN_COS)  # LocalFrame.at
        ky = M_PER_DEG
        dlat = r / ky
        dlon = r / kx
        x0, y0, x1, y1 = lon - dlon, max(-90.0, lat - dlat), lon + dlon, min(90.0, lat + dlat)
        if self._box is None:  # no zones
            idxs = []
        elif x0 < -180.0 or x1 > 180.0:
            idxs = sorted(self.zones.query_box(x0, y0, x1, y1))
        else:  # ``Zones.query_box`` without the turns, on a one-box array (faster)
            self._box[0] = self._mkbox(x0, y0, x1, y1)
            tz = self._tree_zone
            idxs = sorted({tz[k] for k in self.zones.tree.query(self._box)[1].tolist()})
        entries: list[list[Any]] = []
        zs = self.zones.zones
        lon0, lat0 = lon, lat
        for i in idxs:
            x0, y0, x1, y1 = zs[i].bounds
            cx = (((x0 + x1) / 2.0 - lon0 + 180.0) % 360.0 - 180.0) * kx  # wrap_lon
            half = (x1 - x0) / 2.0 * kx
            entries.append([0.0, 0.0, -math.inf, _BOUND, i, cx - half, (y0 - lat0) * ky,
                            cx + half, (y1 - lat0) * ky])
        self._q = (lat0, lon0, kx, ky)
        self._entries = entries
        self._uses = 0
        self.queries += 1

    def locate(
        self, lat: float, lon: float, hysteresis_m: float, watch: Container[int] = ()
    ) -> tuple[list[int], list[int]]:
        """Zone indices (inside, near), ascending: inside the zone, and within
        ``hysteresis_m`` of it.

        ``near`` is exact only for the zones in ``watch`` (those whose state depends on
        the hysteresis line, i.e. fences the car is inside); for the others it holds
        at least the zones it is inside."""
        q = self._q
        h = hysteresis_m
        if q is not None:
            x = ((lon - q[1] + 180.0) % 360.0 - 180.0) * q[2]  # LocalFrame.xy
            y = (lat - q[0]) * q[3]
            lim = self._r - h - 2.0
            if lim <= 0 or abs(x) > lim or abs(y) > lim:
                q = None
        if q is None:
            self._requery(lat, lon, h)
            x, y = 0.0, 0.0
        self._uses += 1
        inside: list[int] = []
        near: list[int] = []
        zones = self.zones.zones
        intersects_xy = self._ixy
        for e in self._entries:
            st = e[3]
            i = e[4]
            hh = h if i in watch else 0.0
            if st <= _EXACT:
                dx = x - e[0]
                dy = y - e[1]
                m2 = (dx * dx + dy * dy) * _SAFETY  # frames differ slightly: stay wide
                sd = e[2]
                if st == _EXACT:
                    if sd <= 0.0 or hh == 0.0:
                        ok = m2 < sd * sd
                    else:
                        d = sd - hh
                        ok = m2 < sd * sd and m2 < d * d
                else:
                    d = sd - hh
                    ok = d > 0.0 and m2 < d * d
                if ok:
                    if sd <= 0.0:
                        inside.append(i)
                        near.append(i)
                    elif sd <= h:
                        near.append(i)
                    continue
            # a cheap bound from the bounding box first
            bx = e[5] - x
            if bx < 0.0:
                bx = x - e[7]
                if bx < 0.0:
                    bx = 0.0
            by = e[6] - y
            if by < 0.0:
                by = y - e[8]
                if by < 0.0:
                    by = 0.0
            bound = math.sqrt(bx * bx + by * by) * 0.99 - 1.0
            e[0] = x
            e[1] = y
            if bound > hh:
                e[2] = bound
                e[3] = _BOUND
                continue
            z = zones[i]
            self.evaluations += 1
            f = z.frame  # f.xy(lat, lon), inline
            zx = ((lon - f.lon0 + 180.0) % 360.0 - 180.0) * f.kx
            zy = (lat - f.lat0) * f.ky
            shape = z.shape
            if shape == "circle":  # signed_distance_xy's, inline
                sd = math.sqrt(zx * zx + zy * zy) - z.pad
            elif shape != "polygon" or st == _IN or st == _OUT:
                sd = z.signed_distance_xy(zx, zy)
            else:
                # signed_distance_xy's own test; on a one-zone array: a scalar geometry
                # costs shapely a prepare() check per call
                if intersects_xy(self._geom[i:i + 1], zx, zy)[0]:
                    e[3] = _IN
                    inside.append(i)
                    near.append(i)
                    continue
                if hh == 0.0:
                    e[3] = _OUT
                    continue
                sd = z.signed_distance_xy(zx, zy)
            e[2] = sd
            e[3] = _EXACT
            if sd <= 0.0:
                inside.append(i)
                near.append(i)
            elif sd <= h:
                near.append(i)
        return inside, near

    def nearby(self, lat: float, lon: float, within_m: float) -> list[int] | None:
        """Candidates that may lie within ``within_m`` of the point from the cached set,
        or None when the cache does not cover that far (the caller queries the tree)."""
        q = self._q
        if q is None:
            return None
        x = ((lon - q[1] + 180.0) % 360.0 - 180.0) * q[2]
        y = (lat - q[0]) * q[3]
        lim = self._r - within_m - 2.0
        if lim <= 0 or abs(x) > lim or abs(y) > lim:
            return None
        out = []
        for e in self._entries:
            bx = max(e[5] - x, 0.0, x - e[7])
            by = max(e[6] - y, 0.0, y - e[8])
            if math.hypot(bx, by) * 0.99 - 1.0 <= within_m:
                out.append(e[4])
        return out
